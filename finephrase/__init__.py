"""finephrase: FinePhrase-style synthetic pretraining data with datatrove.

The pipeline steps are datatrove ``PipelineStep``s and can be dropped into any datatrove
pipeline::

    from finephrase import Rephrase, QualityFilter, LanguageFilter, FormatRows, Mix

Layout (each package's ``__init__`` says what lives there and what it may import), in the order data flows:

* ``finephrase.recipe`` — the recipe schema (pydantic, no I/O); ``finephrase.plan`` — ``resolve(recipe) -> Plan``,
  the recipe resolved once (prompts as run, models, source files), saved as ``OUTPUT/.finephrase/plan.json``;
* ``finephrase.pipeline`` — the datatrove steps (readers, filters, rephrase, formatters, dedup, decont, mix) and
  ``build`` (plan -> stages); ``finephrase.stats`` — the stat names steps write and the report reads;
* ``finephrase.inference`` — ``client`` (replica pool, protocols, backends), ``runner`` (the rephrase loop,
  checkpoints, cache, writer), ``servers`` (llama.cpp and vLLM on this machine, their set-up);
* ``finephrase.prompts``, ``finephrase.quality`` — prompt files; quality classifiers;
* ``finephrase.report`` — the run report, the card, ``report.html``, the end of a run; ``finephrase.hub`` — push;
* ``finephrase.run`` (one machine), ``finephrase.cluster`` (Slurm / Ray), ``finephrase.cli`` (the command line);
* ``finephrase.docs`` — the recipe reference, rendered from the schema (``python -m finephrase.docs``);
* leaves any part may import: ``errors``, ``lifetime``, ``resources``, ``progress``, ``redact``.
"""

__version__ = "0.1.0"

from finephrase.prompts import Prompt, load_prompt
from finephrase.recipe import Recipe, load_recipe
from finephrase.pipeline.formatters.rows import FormatRows
from finephrase.pipeline.filters.language import LanguageFilter
from finephrase.pipeline.mix import Mix
from finephrase.pipeline.filters.quality import QualityFilter
from finephrase.pipeline.readers.jsonl import SafeJsonlReader
from finephrase.pipeline.rephrase import Rephrase

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
