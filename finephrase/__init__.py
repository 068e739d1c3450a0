"""finephrase: FinePhrase-style synthetic pretraining data with datatrove.

The pipeline steps are datatrove ``PipelineStep``s and can be dropped into any datatrove
pipeline::

    from finephrase import Rephrase, QualityFilter, LanguageFilter, FormatRows, Mix
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
