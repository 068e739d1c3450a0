"""The end-of-run table of ``finephrase run``: (label, value) lines read from the report."""

from __future__ import annotations

from finephrase.report.run_report import PromptCount, RunCounts, RunReport


def _prompt_rows(name: str, p: PromptCount) -> list[tuple[str, str]]:
    dropped = ", ".join(f"{k} {v}" for k, v in p.dropped.items()) or "none"
    flagged = ", ".join(f"{k} {v}" for k, v in p.flagged.items())
    return [
        (f"rephrased [{name}]", f"{p.rephrased} ok, {p.failed} failed, {p.truncated_inputs} truncated inputs"),
        (f"  rows kept [{name}]", f"{p.rows} (dropped by checks: {dropped})" + (f"; flagged: {flagged}" if flagged else "")),
        (f"  tokens [{name}]", f"prompt {p.prompt_tokens:,}, completion {p.completion_tokens:,}"),
    ] + _removed_rows(name, p)


def _removed_rows(name: str, p: PromptCount) -> list[tuple[str, str]]:
    """Output dedup and decontamination of a prompt's rows (only when they removed or flagged any)."""
    rows = []
    if p.duplicates:
        rows.append((f"  duplicates [{name}]", ", ".join(f"{k} {v}" for k, v in p.duplicates.items())))
    contaminated = [f"{k} {v}" for k, v in p.contaminated.items()]
    contaminated += [f"{k} {v} flagged" for k, v in p.contaminated_flagged.items()]
    if contaminated:
        rows.append((f"  contaminated [{name}]", ", ".join(contaminated)))
    if p.duplicates or p.contaminated:
        rows.append((f"  rows written [{name}]", str(p.written)))
    return rows


def summary_rows(report: RunReport) -> list[tuple[str, str]]:
    """(label, value) lines for the end-of-run table."""
    c = report.counts or RunCounts()
    rows = [("documents read", str(c.documents_read))]
    rows += [(f"  skipped: {k.replace('_', ' ')}", str(v)) for k, v in c.skipped_input.items()]
    rows += [(f"kept by {f.name}", f"{f.kept} (dropped {f.dropped})") for f in c.filters]
    rows += [(f"kept by {label} dedup", f"{d.kept} (duplicates {d.dropped})") for label, d in c.dedup.items()]
    for name, p in c.prompts.items():
        rows += _prompt_rows(name, p)
    if c.mix is not None:
        m = c.mix
        rows.append(("mix", (f"{m.synthetic_documents} synthetic ({m.synthetic_tokens:,} tok) + "
                             f"{m.real_documents} real ({m.real_tokens:,} tok)")))
    if report.wall_time_s is not None:
        rows.append(("wall time", f"{report.wall_time_s:.0f} s"))
    return rows
