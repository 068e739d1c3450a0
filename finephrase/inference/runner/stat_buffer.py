"""Buffered stats for the lean runner: datatrove's ``stat_update`` and request metrics, folded in batches.

datatrove's ``PipelineStep.stat_update`` is a Welford update of a ``MetricStats`` per call (~1 µs), and its
inference runner adds one ``MetricsKeeper.add_metrics`` per request; the rephrase step makes about ten such
calls per document. :class:`StatBuffer` records the values and folds them into the step's public ``stats``
(``self.stats.stats[label]``) and ``metrics`` in one go (:func:`folded_stats`: the same ``MetricStats`` the
updates one by one would have produced): by the runner at most every ``stats_flush_interval_s``, before every
metrics report and when the step ends, and whenever ``stats`` is read (a property over the ``Stats`` object
``PipelineStep.__init__`` assigns, kept as ``step_stats``) — so ``stats`` is always complete.
"""

from __future__ import annotations

import operator

from datatrove.utils.stats import MetricStats


def folded_stats(values: list, unit: str | None) -> MetricStats:
    """The ``MetricStats`` that ``update(v, unit)`` for every v in ``values`` would have produced."""
    n = len(values)
    total = sum(values)
    mean = total / n
    running_variance = max(0.0, sum(map(operator.mul, values, values)) - n * mean * mean) if n > 1 else 0.0
    return MetricStats.from_dict({"total": total, "n": n, "mean": mean, "min": min(values), "max": max(values),
                                  "variance": running_variance / (n - 1) if n > 1 else 0.0, "unit": unit or "doc"})


class StatBuffer:
    """Mixin of a datatrove ``PipelineStep`` (before it in the bases) with a ``metrics`` ``MetricsKeeper``:
    ``stat_update`` and ``count_request`` are buffered until ``flush_stats``."""

    def __init__(self, *args, **kwargs):
        self.stat_buffer: dict[str, list] = {}  # label -> [unit, values]
        self.metric_sums = [0, 0, 0, 0, 0]  # tokens_input, tokens_output, requests, successful, failed
        self.totals = [0, 0, 0, 0, 0]  # the same, never reset: the live progress (finephrase.progress)
        super().__init__(*args, **kwargs)

    def stat_update(self, *labels, value: int = 1, unit: str = None):
        buffer = self.stat_buffer
        for label in labels:
            entry = buffer.get(label)
            if entry is None:
                buffer[label] = [unit, [value]]
            else:
                entry[1].append(value)
                if unit:
                    entry[0] = unit

    def count_request(self, prompt_tokens: int = 0, completion_tokens: int = 0, ok: bool = True) -> None:
        """What datatrove's runner reports per request (``MetricsKeeper`` fields), summed until the next flush."""
        for sums in (self.metric_sums, self.totals):
            sums[0] += prompt_tokens
            sums[1] += completion_tokens
            sums[2] += 1
            sums[3 if ok else 4] += 1

    @property
    def stats(self):
        """datatrove's ``Stats`` of this step, with the buffered updates folded in first."""
        if self.stat_buffer:
            self.fold_stat_buffer()
        return self.step_stats

    @stats.setter
    def stats(self, value):
        self.step_stats = value

    def fold_stat_buffer(self) -> None:
        buffer, self.stat_buffer = self.stat_buffer, {}
        stats = self.step_stats.stats
        for label, (unit, values) in buffer.items():
            stats[label] = stats[label] + folded_stats(values, unit)

    @property
    def answered(self) -> int:
        """Requests answered so far by this step (never reset)."""
        return self.totals[3]

    def flush_stats(self) -> None:
        """Fold buffered stat updates into ``self.stats`` and buffered request metrics into ``self.metrics``."""
        self.fold_stat_buffer()
        sums = self.metric_sums
        if sums[2]:
            self.metrics.add_metrics(tokens_input=sums[0], tokens_output=sums[1], requests=sums[2],
                                     successful_requests=sums[3], failed_requests=sums[4])
            self.metric_sums = [0, 0, 0, 0, 0]
