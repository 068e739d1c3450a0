"""The rephrase step and its two ways of fitting a document into a request.

* :mod:`.step` — :class:`Rephrase`, the datatrove step: prompts per document (routing), provenance, stats, the
  breaker on repeated refusals; it hands each (prompt, document) to the prompt's strategy;
* :mod:`.truncate` — ``context: truncate`` (default): cut to the token budget, one request;
* :mod:`.chunked` — ``context: chunked``: Kimi K2-style rewriting chunk by chunk with carried context;
* :mod:`.splitting` — cutting text into chunks that fit a budget.

Imports: finephrase.inference, finephrase.prompts, finephrase.pipeline.formatters.output_checks (the chunked strategy cleans
each chunk's answer). Nothing imports back.
"""

from finephrase.pipeline.rephrase.step import REJECTIONS_BEFORE_STOP, STRATEGIES, Rephrase

__all__ = ["REJECTIONS_BEFORE_STOP", "STRATEGIES", "Rephrase"]
