"""The in-flight window of one replica: how many of this task's requests it gets at once.

A batching server (vLLM, TGI, SGLang) gives its throughput only while its running batch is full; a queue beyond
that only adds latency (and, past the server's limit, 429s). :class:`AdaptiveWindow` keeps the batch full with a
short queue, from what the server itself reports, and shares it fairly between the tasks that use the same
replica (each task holds its own window on the same gauges; they never talk to each other):

* with gauges (``running``, ``waiting`` from ``/metrics``, :mod:`finephrase.inference.client.capacity`) — AIMD on the
  server's load ``running + waiting`` against a band ``[capacity + queue_low, capacity + queue_high]``: below
  capacity every task adds the same amount (half the free room, so the batch fills in a few polls), inside the
  band one slot per poll, above it every task shrinks by the same factor (``1 - queue_high / (capacity +
  queue_high)``, which leaves the batch full). Equal increases with proportional decreases converge to equal
  shares (Chiu & Jain's AIMD argument), whatever the number of tasks. Where the task knows how many tasks of its
  run share the replica (``share`` = 1 / tasks), a window at or below its fair share ``(capacity + queue / 2) x
  share`` is never cut and grows back to it at once: each task keeps its part of the batch, and takes slack
  the others leave. The capacity is the stated one
  (:func:`~finephrase.inference.client.capacity.static_capacity`, the launch settings) or, for vLLM which does not
  publish ``max_num_seqs``, learnt: the most sequences seen running while others waited. Until it is known the
  window grows by half each poll while nothing waits;
* without gauges (a plain OpenAI endpoint, llama.cpp) — probed: the window grows by half at a time while the
  throughput it yields (answered tokens per second, counted once the requests in flight are of that size) grows
  by more than 5 %, and settles on the size that gave the most;
* always — a 429 / 503 (the server says it is overloaded) shrinks it to 70 %, once per window of requests (the
  refusal of requests sent before the last cut says nothing new).

``limit`` never goes below 1 nor above ``ceiling`` (``generator.concurrency`` when the recipe sets it, or what the
server accepts at once). Every change is kept (``decisions``: time, new limit, reason) for the run's fleet record.

Imports: the standard library only.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

GROW = 1.5  # the window's growth while the capacity is unknown (and when probing)
OVERLOAD_CUT = 0.7  # on 429 / 503
PROBE_GAIN = 1.05  # the throughput gain that makes a probed step worth it
MAX_DECISIONS = 400


def queue_band(capacity: int) -> tuple[int, int]:
    """(low, high): the queue at a server of ``capacity`` sequences swings between these (short: a quarter of the
    batch at most)."""
    return 0, max(2, math.ceil(capacity / 4))


@dataclass
class ProbeState:
    """The throughput probe of a replica without gauges."""

    level_start: float = 0.0
    window_start: float | None = None  # when this size's answers started counting
    mean_latency: float = 0.0
    tokens: float = 0.0
    samples: int = 0
    best_limit: float = 0.0
    best_throughput: float = 0.0
    settled: bool = False


@dataclass
class AdaptiveWindow:
    """See the module docstring. ``initial``: the first limit; ``ceiling``: the upper bound (None: none)."""

    initial: float = 8.0
    ceiling: int | None = None
    capacity: int | None = None  # sequences in one batch: stated, launch settings, learnt or probed
    capacity_source: str = ""
    limit: float = 0.0
    decisions: list = field(default_factory=list)
    probe: ProbeState = field(default_factory=ProbeState)
    last_cut: float = 0.0
    learnt: int = 0  # the most sequences seen running while others waited
    queued_polls: int = 0  # consecutive polls that found requests waiting at the server
    share: float = 1.0  # this task's fair share of the replica (1 / the tasks of the run that share it)

    def __post_init__(self):
        self.limit = self._bounded(self.initial)
        self.decisions.append((time.monotonic(), int(self.limit), "start"))

    @property
    def allowed(self) -> int:
        """Requests this task may have on the replica now."""
        return max(1, int(self.limit))

    def _bounded(self, value: float) -> float:
        value = max(1.0, value)
        return min(value, float(self.ceiling)) if self.ceiling else value

    def _set(self, value: float, reason: str) -> None:
        value = self._bounded(value)
        if int(value) != int(self.limit):
            self.decisions.append((time.monotonic(), int(value), reason))
            del self.decisions[:-MAX_DECISIONS]
        self.limit = value

    def set_capacity(self, capacity: int | None, source: str) -> None:
        if capacity and capacity != self.capacity:
            self.capacity, self.capacity_source = int(capacity), source

    # ---------------------------------------------------------------- signals
    def on_overload(self, in_flight: int, sent_at: float) -> None:
        """A 429 / 503: cut once per window of requests (not again for those sent before the last cut)."""
        if sent_at < self.last_cut:
            return
        self.last_cut = time.monotonic()
        self._set(min(self.limit, in_flight) * OVERLOAD_CUT, "server overloaded (429/503)")

    def on_gauges(self, running: int, waiting: int, in_flight: int) -> None:
        """One poll of the server's gauges (the whole server: every task's requests); ``in_flight``: this task's."""
        # a batch is full when a real queue stays (a poll often catches a few arrivals the next step schedules);
        # no server ever runs more than its capacity, so a larger batch seen later raises what was learnt
        queued = waiting >= max(2, running / 8)
        self.queued_polls = self.queued_polls + 1 if queued else 0
        if running > self.learnt and (self.queued_polls >= 2 or self.learnt):
            self.learnt = running
            if self.capacity_source in ("", "learnt from /metrics"):
                self.set_capacity(running, "learnt from /metrics")
        load = running + waiting
        if not self.capacity:
            if not queued and in_flight >= self.allowed - 1:
                self._set(self.limit * GROW, "nothing waits at the server: grow")
            return
        high = queue_band(self.capacity)[1]
        fair = (self.capacity + high / 2) * self.share if self.share < 1 else 0.0
        if load > self.capacity + high:
            if self.limit > fair and in_flight <= self.allowed and time.monotonic() - self.last_cut > 0.2:
                self.last_cut = time.monotonic()  # (the last cut took effect: the window binds again)
                self._set(max(fair, self.limit * self.capacity / load), f"queue {waiting} at the server: shrink")
        elif in_flight >= self.allowed - 1:  # the window is used: it binds
            if load < self.capacity:
                self._set(self.limit + max(1.0, (self.capacity - load) / 2), f"batch {running}/{self.capacity}: grow")
            elif self.limit < fair:
                self._set(self.limit + max(1.0, (fair - self.limit) / 2), "below its fair share: grow")
            else:
                self._set(self.limit + max(1.0, self.capacity / 16), f"batch full, queue {waiting}: grow slowly")

    def on_completion(self, sent_at: float, latency: float, tokens: int, in_flight: int) -> None:
        """A request that came back (used only while probing a replica without gauges): the tokens answered per
        second at this window size, counted from one mean latency after the size changed (when the requests in
        flight are the new size's) over at least a window's worth of answers."""
        p = self.probe
        if p.settled:
            return
        now = time.monotonic()
        p.mean_latency = latency if not p.mean_latency else 0.9 * p.mean_latency + 0.1 * latency
        if now < p.level_start + p.mean_latency:
            return
        if p.window_start is None:
            p.window_start, p.tokens, p.samples = now, 0.0, 0
            return
        p.tokens += tokens
        p.samples += 1
        elapsed = now - p.window_start
        if p.samples < max(8, self.allowed) or elapsed < 0.5:
            return
        throughput = p.tokens / elapsed
        if throughput > p.best_throughput * PROBE_GAIN:
            p.best_limit, p.best_throughput = self.limit, throughput
            self._set(self.limit * GROW, f"probe: {throughput:.0f} tokens/s at {self.allowed}: grow")
        else:
            p.settled = True
            keep = self.limit if throughput > p.best_throughput else p.best_limit
            self.set_capacity(int(keep), "probed")
            self._set(keep, f"probe: {throughput:.0f} tokens/s at {self.allowed}, no gain: settle")
        p.level_start, p.window_start = now, None

    def record(self) -> dict:
        """The window's state and decisions, for the fleet record (times relative to the first decision)."""
        t0 = self.decisions[0][0] if self.decisions else 0.0
        return {"limit": self.allowed, "capacity": self.capacity, "capacity_source": self.capacity_source,
                "ceiling": self.ceiling,
                "decisions": [[round(t - t0, 2), limit, reason] for t, limit, reason in self.decisions]}
