"""finephrase: FinePhrase-style synthetic pretraining data with datatrove.

The pipeline steps are datatrove ``PipelineStep``s and can be dropped into any datatrove
pipeline::

    from finephrase import Rephrase, QualityFilter, LanguageFilter, FormatRows, Mix

Layout (each package's ``__init__`` says what lives there and what it may import):

* ``finephrase.prompts`` — the prompt model, validation, rendering, one resolver (packaged / file / ``hf://``);
* ``finephrase.inference`` — the request path: backends, request builder, protocols, replica pool, lean runner;
* ``finephrase.steps`` — the datatrove steps (filters, ``Rephrase`` and its strategies, rows, mix);
* ``finephrase.report`` — the run report (``report.json``), the summary table and the dataset card;
* top level: ``recipe`` (the YAML recipe), ``pipeline`` (recipe -> datatrove stages), ``run`` (one machine),
  ``hub`` (push), ``cli`` / ``cli_prompts`` (thin CLI), ``errors``, ``lifetime``, ``resources``, ``demo_data``,
  ``embedded_setup``. Top-level modules may import the packages; the packages never import them back
  (except ``recipe``'s generator type, for type checking only).
"""

__version__ = "0.1.0"

from finephrase.prompts import Prompt, load_prompt
from finephrase.recipe import Recipe, load_recipe
from finephrase.steps.format_rows import FormatRows
from finephrase.steps.language_filter import LanguageFilter
from finephrase.steps.mix import Mix
from finephrase.steps.quality_filter import QualityFilter
from finephrase.steps.read_jsonl import SafeJsonlReader
from finephrase.steps.rephrase import Rephrase

__all__ = [
    "FormatRows",
    "LanguageFilter",
    "Mix",
    "Prompt",
    "QualityFilter",
    "Recipe",
    "Rephrase",
    "SafeJsonlReader",
    "load_prompt",
    "load_recipe",
]
