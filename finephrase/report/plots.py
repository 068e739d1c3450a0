"""The HTML report's charts, as Chart.js configurations (plain dicts, JSON in the page).

The page draws them with Chart.js (``cards/vendor/chart.umd.min.js``, MIT, ~210 KB, vendored from npm and inlined
into the page, so that it works from ``file://`` and on the Hub with no network). Chart.js rather than plotly's
Python package: plotly.js inlined is ~4.6 MB per page (and a ~10 MB runtime dependency) for bar, scatter and
histogram charts that Chart.js draws from a few numbers. The binning is done here, over every row, so the page
carries counts, not rows: it stays small at 100k rows.

The funnel (documents in and out of every step) comes from the run report's :class:`RunCounts`; the
distributions from the configs' rows (:class:`finephrase.report.samples.ConfigRows`).
"""

from __future__ import annotations

import math
import unicodedata

from finephrase.report.run_report import RunCounts

PALETTE = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7", "#9c755f"]
KEPT, DROPPED = "#4e79a7", "#e15759"
BINS = 20
MAX_POINTS = 2000  # scatter points per config


def color(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def _edges(values: list[float], bins: int, low: float | None, high: float | None, integer: bool) -> list[float]:
    """Bin edges over [low, high]; integers get whole-number bins (one per value when fewer values than bins)."""
    low = min(values) if low is None else low
    high = max(values) if high is None else high
    if integer:
        step = max(1, math.ceil((high - low + 1) / bins))
        return [low + i * step for i in range(math.ceil((high - low + 1) / step) + 1)]
    if high <= low:
        high = low + 1
    step = (high - low) / bins
    return [low + i * step for i in range(bins + 1)]


def _count(values: list[float], edges: list[float]) -> list[int]:
    counts = [0] * (len(edges) - 1)
    low, step = edges[0], edges[1] - edges[0]
    for v in values:
        counts[min(len(counts) - 1, max(0, int((v - low) / step)))] += 1
    return counts


def _label(a: float, b: float, integer: bool) -> str:
    if integer:
        return f"{a:.0f}" if b - a == 1 else f"{a:.0f}–{b - 1:.0f}"
    return f"{a:.2f}–{b:.2f}"


def histogram(title: str, x_label: str, series: dict[str, list], *, integer: bool = True, bins: int = BINS,
              low: float | None = None, high: float | None = None) -> dict | None:
    """A histogram (bars on shared bins) of each named series; ``None`` when no series has a value."""
    clean = {name: [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
             for name, values in series.items()}
    clean = {name: values for name, values in clean.items() if values}
    if not clean:
        return None
    edges = _edges([v for values in clean.values() for v in values], bins, low, high, integer)
    datasets = [{"label": name, "data": _count(values, edges), "backgroundColor": color(i) + "cc"}
                for i, (name, values) in enumerate(clean.items())]
    labels = [_label(edges[i], edges[i + 1], integer) for i in range(len(edges) - 1)]
    return {"type": "bar", "data": {"labels": labels, "datasets": datasets},
            "options": {"plugins": {"title": {"display": True, "text": title}},
                        "scales": {"x": {"title": {"display": True, "text": x_label}},
                                   "y": {"title": {"display": True, "text": "rows"}, "beginAtZero": True}},
                        "datasets": {"bar": {"categoryPercentage": 1.0, "barPercentage": 0.9}}}}


def scatter(title: str, x_label: str, y_label: str, series: dict[str, list[tuple]]) -> dict | None:
    """A scatter plot of (x, y) points per series (``MAX_POINTS`` at most each)."""
    datasets = []
    for i, (name, points) in enumerate(series.items()):
        data = [{"x": x, "y": y} for x, y in points if x is not None and y is not None][:MAX_POINTS]
        if data:
            datasets.append({"label": name, "data": data, "backgroundColor": color(i) + "99", "borderColor": color(i),
                             "pointRadius": 3})
    if not datasets:
        return None
    return {"type": "scatter", "data": {"datasets": datasets},
            "options": {"plugins": {"title": {"display": True, "text": title}},
                        "scales": {"x": {"title": {"display": True, "text": x_label}},
                                   "y": {"title": {"display": True, "text": y_label}}}}}


def stacked_counts(title: str, categories: dict[str, dict[str, int]]) -> dict | None:
    """Stacked bars: one bar per config (``categories``: config -> value -> rows), one colour per value."""
    values = list(dict.fromkeys(v for counts in categories.values() for v in counts))
    if not values:
        return None
    labels = list(categories)
    datasets = [{"label": v, "data": [categories[c].get(v, 0) for c in labels], "backgroundColor": color(i)}
                for i, v in enumerate(values)]
    return {"type": "bar", "data": {"labels": labels, "datasets": datasets},
            "options": {"plugins": {"title": {"display": True, "text": title}},
                        "scales": {"x": {"stacked": True}, "y": {"stacked": True, "beginAtZero": True,
                                                                 "title": {"display": True, "text": "rows"}}}}}


# --- the funnel ------------------------------------------------------------------------------------------------


def plain(label: str) -> str:
    """A step's display name without its emoji (datatrove's names start with one; a font may not have it)."""
    kept = "".join(ch for ch in label if unicodedata.category(ch) not in ("So", "Sk", "Cs", "Co")
                   and not 0xFE00 <= ord(ch) <= 0xFE0F and ord(ch) != 0x200D)
    return " ".join(kept.split())


def _step(step: str, n_in: int, kept: int, reasons: dict | None = None, flagged: dict | None = None) -> dict:
    return {"step": step, "in": n_in, "kept": kept, "dropped": n_in - kept, "reasons": dict(reasons or {}),
            "flagged": dict(flagged or {})}


def funnel_steps(counts: RunCounts | None) -> list[dict]:
    """The documents in, kept and dropped at every step of the run (read, filters, dedup, generation, output
    rules, output dedup, decontamination), with the drop reasons the stats name and the flags of the rows kept."""
    if counts is None or counts.documents_read is None:
        return []
    skipped = dict(counts.skipped_input)
    steps = [_step("read", counts.documents_read + sum(skipped.values()), counts.documents_read, skipped)]
    steps += [_step(f"filter: {plain(f.name)}", f.documents_in, f.kept) for f in counts.filters]
    steps += [_step(f"dedup: {kind}", d.documents_in, d.kept) for kind, d in counts.dedup.items()]
    for name, p in counts.prompts.items():
        steps.append(_step(f"{name}: generate", p.rephrased + p.failed, p.rephrased,
                           {"generation_failed": p.failed} if p.failed else {}))
        rules = {reason: n for reason, n in p.dropped.items() if reason != "generation_failed"}
        steps.append(_step(f"{name}: output rules", p.rephrased, p.rows, rules, p.flagged))
        deduped = p.rows - sum(p.duplicates.values())
        if p.duplicates:
            steps.append(_step(f"{name}: output dedup", p.rows, deduped, p.duplicates))
        if p.contaminated or p.contaminated_flagged:
            steps.append(_step(f"{name}: decontamination", deduped, p.written, p.contaminated, p.contaminated_flagged))
    return steps


def funnel_chart(steps: list[dict]) -> dict | None:
    """The funnel as horizontal stacked bars: kept (blue) and dropped (red) documents of each step."""
    if not steps:
        return None
    labels = [s["step"] for s in steps]
    return {"type": "bar",
            "data": {"labels": labels, "datasets": [
                {"label": "kept", "data": [s["kept"] for s in steps], "backgroundColor": KEPT},
                {"label": "dropped", "data": [s["dropped"] for s in steps], "backgroundColor": DROPPED}]},
            "options": {"indexAxis": "y",
                        "plugins": {"title": {"display": True, "text": "Documents in and out of every step"}},
                        "scales": {"x": {"stacked": True, "beginAtZero": True,
                                         "title": {"display": True, "text": "documents"}},
                                   "y": {"stacked": True}}}}
