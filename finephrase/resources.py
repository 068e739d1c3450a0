"""Where finephrase's data files are read from: the published prompt sets, the card and HTML report templates
(and Chart.js, vendored for the report).

The source of truth is the repository's top-level ``prompts/`` and ``cards/`` folders. A wheel
(``pip install .``) carries them as package data, ``finephrase/_packaged/prompts`` and
``finephrase/_packaged/cards`` (``[tool.setuptools.package-dir]`` in pyproject.toml maps the
top-level folders to those names), found here with :mod:`importlib.resources`.

An editable install (``pip install -e .``, what ``make setup`` does) or a plain source checkout has
no ``finephrase/_packaged``: setuptools' editable finder does not map a package-data folder that
has no ``__init__.py`` below a regular package (``import finephrase._packaged.prompts`` fails there).
Then the folders are read where they are, next to the ``finephrase`` package folder, and only if
that is a source tree (it holds ``pyproject.toml``), never some unrelated ``site-packages/prompts``.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

PACKAGE = "finephrase"
INSTALLED = "_packaged"  # finephrase/_packaged/<name> inside a wheel


def data_dir(name: str) -> Path:
    """The folder ``name`` (``prompts``, ``cards`` or ``launch``): the wheel's copy, else the source tree's.

    Never raises (module constants are computed from it at import time): when neither exists,
    the wheel location is returned, so a missing file is reported with the path it should have."""
    package = Path(str(files(PACKAGE)))  # a regular package on disk: pip never installs zipped
    installed = package / INSTALLED / name
    if installed.is_dir():
        return installed.resolve()
    source_root = package.resolve().parent
    if (source_root / name).is_dir() and (source_root / "pyproject.toml").is_file():
        return source_root / name
    return installed


def launch_dir() -> Path:
    """The sbatch templates of inference server jobs (``server.sbatch.j2``, ``servers/<kind>.sh.j2``)."""
    return data_dir("launch")


def prompts_dir() -> Path:
    """The published prompt sets: ``<set>/<name>.yaml`` and ``_context/*.yaml``."""
    return data_dir("prompts")


def card_template() -> Path:
    """The dataset-card template (Jinja2, rendered by huggingface_hub's ``DatasetCard``)."""
    return data_dir("cards") / "dataset_card.md.j2"


def report_template() -> Path:
    """The HTML report's page template (Jinja2, rendered by :mod:`finephrase.report.html`)."""
    return data_dir("cards") / "report.html.j2"


def chart_js() -> Path:
    """Chart.js (MIT; ``cards/vendor/chart.js.LICENSE.md``), inlined into the HTML report."""
    return data_dir("cards") / "vendor" / "chart.umd.min.js"
