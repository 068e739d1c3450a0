"""``OUTPUT/report.html``: one self-contained page to look at a run (``finephrase report OUTPUT``; every run writes it).

The page is rendered with Jinja2 from ``cards/report.html.j2`` (package data, like the card template). It carries
everything inline: its CSS, its script, Chart.js (``cards/vendor/chart.umd.min.js``: see :mod:`.plots` for why that
library), and its data as JSON, so it opens from ``file://`` and as a file of the Hub repository, with no network.

What it shows, all from the run report (:mod:`finephrase.report`) and the parquet files:

* the run: generator, prompts (verbatim, sha256) and throughput, from the same views the dataset card renders
  (:func:`finephrase.report.card.generator_view` / ``prompt_views``), so the two never disagree;
* the funnel: documents in, kept and dropped by every step, with the drop reasons (:func:`.plots.funnel_steps`);
* distributions over every row: source vs generated tokens, generated/source ratio, completion tokens per prompt,
  finish reasons and flags per config, quality and language scores (binned here: the page holds counts);
* samples: at most ``samples`` rows per config (the same source documents in every config,
  :mod:`.samples`), source beside generated text, browsable by config, flag, finish reason and text search.
"""

from __future__ import annotations

import datetime
import json
import os

import jinja2

from finephrase.plan import load_plan

from finephrase.report import plots
from finephrase.report.samples import DEFAULT_MAX_CHARS, DEFAULT_SAMPLES, ConfigRows, read_config
from finephrase.report.views import fmt_num, generator_view, prompt_configs, prompt_views

REPORT_FILE = "report.html"
NO_FLAG = "(none)"


def flags_of(checks: str | None) -> list[str]:
    """The flags of a row's ``checks`` column (``failed:a,failed:b`` -> ``["failed:a", "failed:b"]``)."""
    return [c.strip() for c in (checks or "").split(",") if c.strip()]


def _tally(values) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def _ratio(row_completion, used, total):
    source = used or total
    return row_completion / source if row_completion is not None and source else None


def distribution_charts(configs: list[ConfigRows]) -> dict[str, dict]:
    """The distributions, over every row of every config (name -> Chart.js configuration; empty ones left out)."""
    col = {c.name: c.columns for c in configs}
    charts = {
        "lengths": plots.scatter(
            "Source vs generated length", "source tokens", "generated tokens",
            {n: list(zip(c["source_tokens"], c["completion_tokens"])) for n, c in col.items()}),
        "source_tokens": plots.histogram("Source length", "source tokens",
                                         {n: c["source_tokens"] for n, c in col.items()}),
        "completion_tokens": plots.histogram("Generated tokens per prompt", "completion tokens",
                                             {n: c["completion_tokens"] for n, c in col.items()}),
        "ratio": plots.histogram("Generated / source tokens (the part of the source the model saw)", "ratio",
                                 {n: [_ratio(*t) for t in zip(c["completion_tokens"], c["source_tokens_used"],
                                                              c["source_tokens"])] for n, c in col.items()},
                                 integer=False),
        "finish_reason": plots.stacked_counts("Finish reasons", {n: _tally(str(v) for v in c["finish_reason"])
                                                                 for n, c in col.items()}),
        "flags": plots.stacked_counts("Flags (checks column)", {
            n: _tally(f for v in c["checks"] for f in (flags_of(v) or [NO_FLAG])) for n, c in col.items()}),
        "quality_score": plots.histogram("Quality score of the source (quality filter)", "score",
                                         {n: c["quality_score"] for n, c in col.items()}, integer=False, low=0, high=1),
        "output_quality_score": plots.histogram("Quality score of the generated text (same classifier)", "score",
                                                {n: c["output_quality_score"] for n, c in col.items()}, integer=False,
                                                low=0, high=1),
        "quality_uplift": plots.histogram("Quality uplift (generated score - source score)", "uplift",
                                          {n: c["quality_uplift"] for n, c in col.items()}, integer=False,
                                          low=-1, high=1),
        "language_score": plots.histogram("Language score of the source (language filter)", "score",
                                          {n: c["language_score"] for n, c in col.items()}, integer=False,
                                          low=0, high=1),
    }
    return {name: chart for name, chart in charts.items() if chart is not None}


def samples_payload(configs: list[ConfigRows]) -> tuple[list[dict], dict[str, dict]]:
    """The sampled rows, and their source texts by source id (one copy for a document every config shows)."""
    rows, sources = [], {}
    for c in configs:
        for r in c.samples:
            source = {"text": r.pop("source_text"), "cut": r.pop("source_cut"), "url": r.get("source_url")}
            sources.setdefault(str(r.get("source_id")), source)
            rows.append({**r, "flags": flags_of(r.get("checks"))})
    return rows, sources


def _config_views(report, configs: list[ConfigRows]) -> list[dict]:
    views = []
    for c in configs:
        files = report.config(c.name)
        views.append({"name": c.name, "rows": c.rows, "shown": len(c.samples), "files": files.files if files else 0,
                      "bytes": files.bytes if files else 0, "flagged_rows": files.flagged_rows if files else None})
    return views


def _run_views(output: str, recipe, prompts, report) -> dict:
    """The run's facts the page prints: the card's own views of the generator and the prompts."""
    from finephrase.report.card import scrub

    generator = generator_view(report, recipe, prompt_configs(report, prompts))
    generator["extra"] = {k: scrub(str(v)) for k, v in generator["extra"].items()}
    return {"name": recipe.name, "description": (recipe.description or "").strip(), "generator": generator,
            "prompts": prompt_views(report, recipe, prompts), "wall_time_s": report.wall_time_s,
            "limit": report.limit, "tasks": report.tasks, "counts": report.counts, "output": os.path.basename(
                os.path.abspath(output))}


def page_data(output: str, recipe, prompts, report, samples: int = DEFAULT_SAMPLES,
              max_chars: int = DEFAULT_MAX_CHARS) -> dict:
    """Everything the page shows: ``run`` (rendered by the template) and ``data`` (JSON read by the page's script)."""
    from finephrase.report.configs import MIX

    names = [p.config_name for p in prompts if report.config(p.config_name) is not None and p.config_name != MIX]
    configs = [read_config(output, name, samples, max_chars) for name in dict.fromkeys(names)]
    steps = plots.funnel_steps(report.counts)
    rows, sources = samples_payload(configs)
    data = {"configs": _config_views(report, configs), "funnel": steps,
            "charts": {"funnel": plots.funnel_chart(steps), **distribution_charts(configs)},
            "samples": rows, "sources": sources, "max_chars": max_chars,
            "flags": sorted({f for r in rows for f in r["flags"]}),
            "finish_reasons": sorted({str(r.get("finish_reason")) for r in rows})}
    return {"run": _run_views(output, recipe, prompts, report), "data": data}


def script_json(value) -> str:
    """JSON that is safe inside a ``<script>`` element (no ``</script>``, no ``<!--``)."""
    text = json.dumps(value, ensure_ascii=False, default=str, allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026") \
        .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def _chart_js() -> str:
    from finephrase.resources import chart_js

    text = chart_js().read_text(encoding="utf-8")
    text = "\n".join(line for line in text.splitlines() if not line.startswith("//# sourceMappingURL"))
    if "</script" in text.lower():
        raise ValueError(f"{chart_js()}: contains </script>, cannot be inlined")
    return text


def render_html(page: dict) -> str:
    """The page from :func:`page_data`'s result."""
    from finephrase.resources import report_template

    template = report_template()
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(template.parent)),
                             autoescape=jinja2.select_autoescape(["html", "j2"]), undefined=jinja2.StrictUndefined)
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return env.get_template(template.name).render(
        run=page["run"], data=page["data"], data_json=script_json(page["data"]), chart_js=_chart_js(),
        generated_at=now, fmt=fmt_num)


def write_html_report(output: str, plan=None, report=None, samples: int = DEFAULT_SAMPLES,
                      max_chars: int = DEFAULT_MAX_CHARS) -> str:
    """Write ``OUTPUT/report.html`` and return its path.

    Args:
        output: the folder a run wrote.
        plan: the run's plan (default: the one the run saved, :func:`finephrase.plan.load_plan`).
        report: the run report (default: the saved one, :func:`finephrase.report.load_report`).
        samples: rows per config shown in the page (the distributions count every row).
        max_chars: characters of each shown text (longer ones are cut, and the page says by how much).
    """
    from finephrase.report import load_report

    plan = plan if plan is not None else load_plan(output)
    report = report if report is not None else load_report(output, plan.prompts)
    html = render_html(page_data(output, plan.recipe, plan.prompts, report, samples, max_chars))
    path = os.path.join(output, REPORT_FILE)
    with open(path, "w", encoding="utf-8") as f:
        f.write(html)
    return path
