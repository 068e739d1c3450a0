"""The fleet monitor of a ``ReplicaPool``: polls every healthy replica's capacity and gauges, feeds its
:class:`~finephrase.inference.client.window.AdaptiveWindow`, and keeps what happened for the run's record.

Per replica it keeps, once a second (``sample_every``): this task's requests in flight, its window, the server's
running batch and queue (when the server publishes them) and the server's utilisation (running / capacity; for a
server without gauges: in flight / probed capacity). :meth:`FleetMonitor.record` is the record saved with the run
(``.finephrase/fleet/`` per task, see :func:`save_record`) and summarised in the report (:func:`summarise`).

Imports: the standard library, aiohttp (through :mod:`.capacity`), :mod:`.capacity` and :mod:`.window`.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time

from finephrase.inference.client.capacity import read_gauges, static_capacity

MAX_SAMPLES = 1800  # per replica; older samples are thinned (every other one dropped) past it


class FleetMonitor:
    """See the module docstring. ``interval``: seconds between polls of the gauges."""

    def __init__(self, interval: float = 0.25, sample_every: float = 1.0):
        self.interval = interval
        self.sample_every = sample_every
        self.started = time.monotonic()
        self.samples: dict[str, list] = {}  # url -> [[t, in_flight, window, running, waiting, utilisation], ...]
        self._last_sample: dict[str, float] = {}
        self._stated: set[str] = set()  # replicas whose stated capacity was read
        self._misses: dict[str, int] = {}  # polls of /metrics that found no gauges, per replica

    async def run(self, pool) -> None:
        """Poll until cancelled; after each poll, wake the requests waiting for room on a replica. The interval is
        jittered: tasks sharing a replica must not poll in a fixed order (the one polling just after the other grew
        would always be the one to shrink)."""
        while True:
            await asyncio.sleep(self.interval * (0.5 + random.random()))
            session = await pool._get_session()
            replicas = [r for r in pool.replicas.values() if r.healthy]
            await asyncio.gather(*(self.poll(session, r) for r in replicas), return_exceptions=True)
            pool.wake_waiters()

    async def poll(self, session, replica) -> None:
        window = replica.window
        if replica.url not in self._stated:
            self._stated.add(replica.url)
            stated = await static_capacity(session, replica.url)
            if stated.accepts:
                window.ceiling = min(window.ceiling or stated.accepts, stated.accepts)
            if stated.capacity:
                window.set_capacity(stated.capacity, stated.source)
        gauges = None if replica.gauges is False else await read_gauges(session, replica.url)
        if gauges is None:
            misses = self._misses[replica.url] = self._misses.get(replica.url, 0) + 1
            if replica.gauges is None and misses >= 3:  # never published any: probed from now on
                replica.gauges = False
            running = waiting = None
        else:
            replica.gauges = True
            running, waiting = gauges.running, gauges.waiting
            window.on_gauges(running, waiting, replica.in_flight)
        self.sample(replica, running, waiting)

    def sample(self, replica, running: int | None, waiting: int | None) -> None:
        now = time.monotonic()
        if now - self._last_sample.get(replica.url, 0.0) < self.sample_every:
            return
        self._last_sample[replica.url] = now
        capacity = replica.window.capacity
        busy = running if running is not None else replica.in_flight
        utilisation = round(min(1.0, busy / capacity), 3) if capacity else None
        series = self.samples.setdefault(replica.url, [])
        series.append([round(now - self.started, 2), replica.in_flight, replica.window.allowed, running, waiting,
                       utilisation])
        if len(series) > MAX_SAMPLES:
            del series[::2]

    def record(self, pool) -> dict:
        """Per replica: the window's state and decisions, the samples, and the mean utilisation."""
        replicas = {}
        for url, r in pool.replicas.items():
            series = self.samples.get(url, [])
            utilisation = [s[5] for s in series if s[5] is not None]
            replicas[url] = {**r.window.record(), "gauges": bool(r.gauges), "requests": r.requests,
                             "mean_utilisation": round(sum(utilisation) / len(utilisation), 3) if utilisation else None,
                             "samples": series}
        return {"sample_fields": ["t", "in_flight", "window", "running", "waiting", "utilisation"],
                "replicas": replicas}


def save_record(folder: str, rank: int, record: dict) -> str:
    """Write one task's fleet record to ``folder/rank-NNNNN.json``."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"rank-{rank:05d}.json")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(record, f)
    os.replace(tmp, path)
    return path


def summarise(folder: str) -> dict | None:
    """The fleet in one line per replica, over every task's record in ``folder``: mean utilisation (the server's
    own when it publishes gauges), final window, capacity and where it came from, window decisions, most queued."""
    try:
        names = sorted(n for n in os.listdir(folder) if n.endswith(".json"))
    except FileNotFoundError:
        return None
    replicas: dict[str, dict] = {}
    for name in names:
        try:
            with open(os.path.join(folder, name)) as f:
                record = json.load(f)
        except (OSError, ValueError):
            continue
        for url, r in record.get("replicas", {}).items():
            out = replicas.setdefault(url, {"tasks": 0, "window": 0, "decisions": 0, "capacity": r.get("capacity"),
                                            "capacity_source": r.get("capacity_source"), "utilisation": [],
                                            "max_waiting": 0})
            out["tasks"] += 1
            out["window"] += r.get("limit", 0)
            out["decisions"] += len(r.get("decisions", []))
            if r.get("mean_utilisation") is not None:
                out["utilisation"].append(r["mean_utilisation"])
            out["max_waiting"] = max([out["max_waiting"]] + [s[4] for s in r.get("samples", []) if s[4] is not None])
    for out in replicas.values():
        u = out.pop("utilisation")
        out["mean_utilisation"] = round(max(u), 3) if u else None  # every task sees the same server gauges
    return {"replicas": replicas} if replicas else None


def fleet_line(summary: dict | None) -> str | None:
    """The fleet in one sentence for the card and the run report (None without a record)."""
    if not summary or not summary.get("replicas"):
        return None
    replicas = list(summary["replicas"].values())
    utilisation = [r["mean_utilisation"] for r in replicas if r.get("mean_utilisation") is not None]
    sources = sorted({f"{r['capacity']} ({r['capacity_source']})" for r in replicas if r.get("capacity")})
    parts = [f"{len(replicas)} replica{'s' * (len(replicas) != 1)}"]
    if utilisation:
        parts.append(f"mean batch utilisation {sum(utilisation) / len(utilisation):.2f} "
                     f"(lowest {min(utilisation):.2f})")
    if sources:
        parts.append("capacity per replica " + ", ".join(sources[:3]) + (" ..." if len(sources) > 3 else ""))
    parts.append(f"final window {min(r['window'] for r in replicas)}-{max(r['window'] for r in replicas)} "
                 f"requests, {sum(r['decisions'] for r in replicas)} window changes, "
                 f"at most {max(r['max_waiting'] for r in replicas)} queued at a server")
    return "; ".join(parts)
