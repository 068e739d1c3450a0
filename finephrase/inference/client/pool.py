"""A pool of inference replicas: the server of the lean runner (``finephrase.inference.runner.loop``).

datatrove's ``EndpointServer`` knows one URL and treats HTTP 500 as fatal for the task.
``ReplicaPool`` is finephrase's own client (it does not subclass datatrove's ``InferenceServer``) that

- talks to several replicas (a static list and/or an endpoints file of ``host:port`` lines
  that server jobs append to; the file is re-read while running),
- sends each request to the healthy replica with the most free room in its in-flight window, and holds it
  while every replica's window is full: each replica's window (:mod:`finephrase.inference.client.window`) keeps its
  batch full with a short queue, from the capacity and the running / waiting gauges the server publishes (or a
  throughput probe where it publishes none), polled by the pool's fleet monitor (:mod:`finephrase.inference.client.fleet`,
  which also keeps what happened for the run's record); ``ceiling`` (``generator.concurrency``) bounds it,
- keeps one keep-alive HTTP session (aiohttp) for all requests,
- retries 408/424/425/429/5xx, timeouts and dropped connections with jittered exponential
  back-off on another replica, taking a replica that refuses connections out of rotation and
  probing it (``/health`` or ``/v1/models`` plus a real 1-token generation) until it answers again,
- reads a refusal instead of assuming it: an answer saying the input is too long (413, or a
  400/422 whose message says so) is :class:`InputTooLong` (the caller retries with half the
  input); any other 4xx is :class:`RequestRejected` (a configuration problem: the caller counts
  it and stops the run when nothing but rejections come back); both are
  :class:`~finephrase.errors.RequestFailed`, datatrove ``InferenceError`` instances: the request cache
  records them and raises them again, of the same kind, on resume,
- when no replica is reachable, requests wait (they are not failed: nothing was wrong with the
  document) until one comes back or ``unavailable_timeout`` has passed since the last one went
  away; then :class:`~finephrase.errors.GeneratorUnavailable` ends the task and a rerun resumes.
  Where the replicas' supervisor writes a state file, a supervisor that gave up ends the task
  at once with its reason (:class:`~finephrase.errors.ReplicasCrashed`).

The wire protocol is pluggable (``finephrase.inference.client.protocols``): OpenAI chat completions
(vLLM, SGLang, llama.cpp, TGI's Messages API) or TGI's native ``/generate``.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import random
import re
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import aiohttp
from loguru import logger
from yarl import URL

from finephrase.errors import (
    GeneratorRejected,
    GeneratorUnavailable,
    InputTooLong,
    ReplicasCrashed,
    RequestFailed,
    RequestRejected,
)
from finephrase.inference.client.fleet import FleetMonitor
from finephrase.inference.client.protocols import Protocol, ProtocolError, make_protocol
from finephrase.inference.client.window import AdaptiveWindow
from finephrase.inference.endpoints import (
    READY_REQUEST,
    normalize_endpoint,
    read_endpoints_file,
)

if TYPE_CHECKING:
    from datatrove.pipeline.inference.run_inference import InferenceConfig

RETRYABLE_STATUS = {408, 424, 425, 429, 500, 502, 503, 504}
OVERLOADED_STATUS = {429, 503}  # the server says it takes no more now: the replica's window shrinks
# how servers say "the input is too long" (TGI validation.rs, vLLM, SGLang, llama.cpp, OpenAI error codes)
TOO_LONG = re.compile(
    r"context[ _]length|context window|maximum model length|max_total_tokens|longer than|too long|too large"
    r"|`inputs` tokens|must have less than \d+ tokens|exceed", re.IGNORECASE)


# the health check's generation (see ReplicaPool._generates)
PROBE_PAYLOAD = READY_REQUEST
# marks the health generation (servers ignore it; test servers count it apart from the work)
HEALTH_HEADERS = {"X-Finephrase-Health": "generation"}


def server_message(body: str) -> str:
    """The human part of an error body: ``error`` / ``message`` / ``detail`` of a JSON body, else the text."""
    try:
        data = json.loads(body)
    except ValueError:
        return body.strip()[:500]
    if isinstance(data, dict):
        for key in ("error", "message", "detail"):
            value = data.get(key)
            if isinstance(value, dict):
                value = value.get("message") or value
            if value:
                return str(value)[:500]
    return body.strip()[:500]


# words of a refusal -> the recipe key that sets what the server refused
REJECTION_HINTS = (
    ("top_p", "generator.params.top_p"), ("temperature", "generator.params.temperature"),
    ("max_new_tokens", "generator.params.max_new_tokens"), ("max_tokens", "generator.params.max_new_tokens"),
    ("seed", "generator.params.seed"), ("model", "generator.model"),
)


def rejection_hint(status: int | None, message: str) -> str:
    """Which recipe key to change for a refusal (best effort, from the status and the server's words)."""
    if status in (401, 403):
        return "check the API key: generator.api_key_env names the environment variable that holds it"
    if status in (404, 405):
        return "check generator.endpoints, generator.server / generator.api (the route) and generator.model"
    lowered = message.lower()
    for word, key in REJECTION_HINTS:
        if word in lowered:
            return f"change {key} in the recipe (or in the prompt's generation defaults)"
    return "check the generator section of the recipe against what this server accepts"


def refusal(status: int, body: str, url: str) -> RequestFailed:
    """The typed error for a 4xx that is not worth retrying as it is."""
    message = server_message(body)
    kind = InputTooLong if status == 413 or (status in (400, 422) and TOO_LONG.search(message)) else RequestRejected
    return kind(f"BadRequestError {status} from {url}: {message}", status=status, body=message)


@dataclass
class Replica:
    url: str
    in_flight: int = 0
    healthy: bool = True
    failures: int = 0
    requests: int = 0
    down_since: float | None = None
    probing: bool = False
    info: dict = field(default_factory=dict)
    urls: dict = field(default_factory=dict)  # path -> parsed URL (parsed once, not per request)
    refused: "RequestFailed | None" = None  # the health generation's refusal (4xx), if the last one was refused
    window: AdaptiveWindow = field(default_factory=AdaptiveWindow)  # this task's requests it may have at once
    gauges: bool | None = None  # whether it publishes running / waiting gauges (None: not asked yet)

    def url_for(self, path: str) -> URL:
        url = self.urls.get(path)
        if url is None:
            url = self.urls[path] = URL(self.url + path)
        return url


class ReplicaPool:
    """One or more replicas behind ``request(payload)`` (see module docstring).

    Use it as an async context manager (``async with pool``: it becomes ready in the background, and everything
    it started is stopped on exit), or directly: the first ``request`` starts it. ``ready`` / ``wait_ready()``
    tell when a replica answered its first health check (``server_info`` is known then)."""

    def __init__(
        self,
        config: "InferenceConfig",
        rank: int,
        endpoints: list[str] | None = None,
        endpoints_file: str | None = None,
        protocol: str = "openai",
        max_retries: int = 4,
        backoff_base: float = 0.5,
        backoff_max: float = 20.0,
        probe_interval: float = 1.0,
        refresh_interval: float = 5.0,
        api_key_env: str | None = None,
        unavailable_timeout: float = 600.0,
        tokenizer: str | None = None,
        state_file: str | None = None,
        window: dict | None = None,
    ):
        self.config = config
        # AdaptiveWindow settings of every replica (initial, ceiling, capacity + capacity_source when launched here)
        self.window_settings = dict(window or {})
        self.fleet = FleetMonitor()
        self._room: collections.deque[asyncio.Future] = collections.deque()  # requests waiting for a window slot
        self._fleet_task: asyncio.Task | None = None
        self.rank = rank
        self.readiness: asyncio.Future | None = None  # resolved when a replica answered, or failed with the reason
        self.starter: asyncio.Task | None = None  # the background start (``start``)
        self.static_endpoints = [normalize_endpoint(e) for e in (endpoints or [])]
        self.endpoints_file = endpoints_file
        self.protocol: Protocol = make_protocol(protocol, config, tokenizer=tokenizer)
        self.max_retries = max_retries
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.probe_interval = probe_interval
        self.refresh_interval = refresh_interval
        self.api_key_env = api_key_env  # the variable's name: the key itself is read when the session is made
        self.unavailable_timeout = unavailable_timeout
        self.state_file = state_file  # written by the replicas' supervisor (embedded servers)
        self._unavailable_since: float | None = time.monotonic()
        self.replicas: dict[str, Replica] = {}
        self._session = None
        self._available = asyncio.Event()
        self._last_refresh = 0.0
        self.server_info: dict = {}
        # request deadlines, enforced by one watchdog task instead of a timer per request (see _watch)
        self._inflight: dict[asyncio.Task, float] = {}
        self._timed_out: set[asyncio.Task] = set()
        self._watchdog: asyncio.Task | None = None
        self._monitor: asyncio.Task | None = None  # the health monitor, started once the pool is ready
        self.timeouts = 0  # requests that ran past request_timeout (each retried or counted as failed)
        self.retries = 0  # attempts sent again after a failed one (the live progress shows them)
        self._refresh_endpoints()

    # ---------------------------------------------------------------- membership
    def _refresh_endpoints(self) -> None:
        urls = list(self.static_endpoints)
        if self.endpoints_file:
            urls += read_endpoints_file(self.endpoints_file)
        seen = set()
        for url in urls:
            seen.add(url)
            if url not in self.replicas:
                self.replicas[url] = Replica(url, healthy=False, window=AdaptiveWindow(**self.window_settings))
                logger.info(f"replica joined: {url}")
        if self.endpoints_file:
            for url in list(self.replicas):
                if url not in seen and self.replicas[url].in_flight == 0:
                    logger.info(f"replica left: {url}")
                    del self.replicas[url]
        self._last_refresh = time.monotonic()

    async def _get_session(self):
        if self._session is None or self._session.closed:
            headers = {"Content-Type": "application/json"}
            key = os.environ.get(self.api_key_env) if self.api_key_env else None
            if key:
                headers["Authorization"] = f"Bearer {key}"
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=3),
                # the whole-request deadline is the watchdog's (config.request_timeout); connecting gets its own
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=30),
                headers=headers,
                cookie_jar=aiohttp.DummyCookieJar(),  # inference servers set no cookies: skip the jar per request
            )
        return self._session

    # ---------------------------------------------------------------- lifetime
    async def __aenter__(self) -> "ReplicaPool":
        self.starter = asyncio.create_task(self.start())
        return self

    async def __aexit__(self, exc_type, exc_val, exc_tb) -> None:
        if self.starter is not None:
            self.starter.cancel()
            try:
                await asyncio.wait_for(self.starter, timeout=10.0)
            except (asyncio.TimeoutError, asyncio.CancelledError):
                pass
        await self.server_cleanup()

    def readiness_future(self) -> asyncio.Future:
        if self.readiness is None:
            self.readiness = asyncio.get_running_loop().create_future()
        return self.readiness

    async def start(self) -> None:
        """Nothing to start here (replicas are started elsewhere: embedded pool, Slurm jobs, external servers):
        wait for a replica, then keep probing the others. The reason the pool could not become ready
        (:class:`GeneratorUnavailable`, :class:`ReplicasCrashed`) reaches every waiting request as it is."""
        readiness = self.readiness_future()
        try:
            await self.wait_for_replicas()
        except Exception as e:  # noqa: BLE001 - handed to every waiter
            if not readiness.done():
                readiness.set_exception(e)
            return
        if not readiness.done():
            readiness.set_result(True)
        self._monitor = asyncio.create_task(self.monitor_health())
        self._fleet_task = asyncio.create_task(self.fleet.run(self))

    async def _probe(self, replica: Replica) -> bool:
        """Healthy means it generated: the protocol's health route, then a real 1-token generation."""
        session = await self._get_session()
        try:
            ok, info = await self.protocol.health(session, replica.url)
            # generate even when the health route failed: a refusal (401, 404, 422) says why it will not work
            ok = await self._generates(session, replica) and ok
        except Exception:
            ok, info = False, {}
        if ok:
            if info:
                replica.info = info
                self.server_info = self.server_info or info
            if not replica.healthy:
                logger.info(f"replica healthy: {replica.url}")
            replica.healthy, replica.failures, replica.down_since = True, 0, None
            self._unavailable_since = None
            self._available.set()
        return ok

    async def _generates(self, session, replica: Replica) -> bool:
        """One real 1-token generation through the pool's own protocol: a server that loads but crashes or
        fails on generation (a CPU instruction it cannot run, a broken model) is not healthy."""
        body, context = self.protocol.prepare({**PROBE_PAYLOAD, "model": self.config.model_name_or_path})
        timeout = aiohttp.ClientTimeout(total=min(self.config.request_timeout or 120, 120))
        async with session.post(replica.url_for(self.protocol.path), data=body, timeout=timeout,
                                headers=HEALTH_HEADERS) as r:
            raw = await r.read()
            if r.status != 200:
                text = raw.decode("utf-8", "replace")
                logger.debug(f"health generation on {replica.url}: HTTP {r.status}: {server_message(text)}")
                if r.status not in RETRYABLE_STATUS and 400 <= r.status < 500:
                    replica.refused = refusal(r.status, text, replica.url)
                return False
        self.protocol.parse(raw, context)
        replica.refused = None
        return True

    async def is_ready(self) -> bool:
        self._refresh_endpoints()
        results = await asyncio.gather(*(self._probe(r) for r in list(self.replicas.values()) if not r.healthy))
        return any(results) or any(r.healthy for r in self.replicas.values())

    async def wait_for_replicas(self) -> None:
        attempt = 0
        while not await self.is_ready():
            attempt += 1
            self._check_unavailable()
            if attempt % 10 == 1:
                logger.warning(f"waiting for inference replicas {list(self.replicas) or self.endpoints_file} ...")
            await asyncio.sleep(self.probe_interval)
        healthy = [r.url for r in self.replicas.values() if r.healthy]
        logger.info(f"inference replicas ready: {healthy}")

    def _check_unavailable(self) -> None:
        """Raise when the supervisor gave up or no replica has answered for ``unavailable_timeout``."""
        state = self._supervisor_state()
        if state.get("failed"):
            raise ReplicasCrashed(state["failed"])
        refused = [r.refused for r in self.replicas.values()]
        if refused and all(refused):
            e = refused[0]
            raise GeneratorRejected(f"every replica refused a 1-token test generation with HTTP {e.status}: {e.body[:300]}"
                                    f"\nfix: {rejection_hint(e.status, e.body)}")
        since = self._unavailable_since
        if since is not None and time.monotonic() - since > self.unavailable_timeout:
            where = ", ".join(self.replicas) or "none yet"
            if self.endpoints_file:
                where += f"; endpoints file {self.endpoints_file}"
            raise GeneratorUnavailable(
                f"no inference replica answered for {self.unavailable_timeout:.0f}s (endpoints: {where}). "
                "Work done so far is kept: start or fix the servers and run the same command again to resume "
                "(generator.unavailable_timeout sets the wait).")

    def _supervisor_state(self) -> dict:
        if not self.state_file:
            return {}
        try:
            with open(self.state_file) as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}

    async def monitor_health(self) -> None:
        """Background: re-read the endpoints file and probe replicas that are out of rotation."""
        while True:
            await asyncio.sleep(self.probe_interval)
            if self.endpoints_file and time.monotonic() - self._last_refresh > self.refresh_interval:
                self._refresh_endpoints()
            down = [r for r in self.replicas.values() if not r.healthy and not r.probing]
            for r in down:
                r.probing = True
            try:
                await asyncio.gather(*(self._probe(r) for r in down))
            finally:
                for r in down:
                    r.probing = False

    async def _watch(self) -> None:
        """Cancel requests past their deadline, as aiohttp's own timeout does (``task.cancel()``, turned into a
        timeout by the request's ``except CancelledError``), but with one timer for all requests."""
        timeout = self.config.request_timeout
        interval = min(1.0, max(0.01, timeout / 20))
        while True:
            await asyncio.sleep(interval)
            if not self._inflight:
                continue
            now = time.monotonic()
            for task, deadline in list(self._inflight.items()):
                if now >= deadline and task not in self._timed_out:
                    self._timed_out.add(task)
                    task.cancel()

    async def server_cleanup(self) -> None:
        """Stop the background tasks and close the HTTP session; the pool is not ready any more (a later request
        starts it again)."""
        readiness = self.readiness
        if readiness is not None and readiness.done() and readiness.exception() is None:
            self.readiness = None
        self.starter = None
        for task in (self._watchdog, self._monitor, self._fleet_task):  # watchdog, health and fleet monitors
            if task is not None:
                task.cancel()
        self._watchdog = self._monitor = self._fleet_task = None
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None

    @property
    def ready(self) -> bool:
        readiness = self.readiness
        return readiness is not None and readiness.done() and readiness.exception() is None

    async def wait_ready(self) -> None:
        """Wait until the pool has answered its first health check (server info known); raises why it never will.
        Starts the pool when it is used without ``async with``."""
        if not self.ready:
            if self.starter is None:
                self.starter = asyncio.create_task(self.start())
            await self.readiness_future()

    @property
    def window_total(self) -> int:
        """Requests the healthy replicas' windows take now (what the runner keeps documents ready for)."""
        return sum(r.window.allowed for r in self.replicas.values() if r.healthy) or 8

    @property
    def in_flight(self) -> int:
        """Requests on a replica right now."""
        return sum(r.in_flight for r in self.replicas.values())

    # ---------------------------------------------------------------- requests
    def _pick(self, exclude: set[str] | tuple = ()) -> Replica | None:
        """The healthy replica with the most free room in its window (then the fewest sent), avoiding ``exclude``
        when another one has room; None when no healthy replica has room."""
        best, best_room = None, 0
        for r in self.replicas.values():
            if r.healthy and r.url not in exclude:
                room = r.window.allowed - r.in_flight
                if room > best_room or (room == best_room and best is not None and r.requests < best.requests):
                    best, best_room = r, room
        if best is None and exclude:
            return self._pick(())
        return best

    def wake_waiters(self, n: int | None = None) -> None:
        """Let ``n`` requests waiting for room (all when None) look again (a slot freed, a window grew)."""
        room = self._room
        while room and (n is None or n > 0):
            fut = room.popleft()
            if not fut.done():
                fut.set_result(None)
                if n is not None:
                    n -= 1

    async def _wait_for_room(self) -> None:
        """Until a slot frees on some replica (``wake_waiters``: after every answer, and after every poll of the
        fleet monitor, so a replica that went down or a window that grew is seen within a poll)."""
        fut = asyncio.get_running_loop().create_future()
        self._room.append(fut)
        await fut

    def _mark_down(self, replica: Replica, why: str) -> None:
        if replica.healthy:
            logger.warning(f"replica out of rotation: {replica.url} ({why})")
        replica.healthy = False
        replica.down_since = replica.down_since or time.monotonic()
        if not any(r.healthy for r in self.replicas.values()):
            self._available.clear()
            if self._unavailable_since is None:
                self._unavailable_since = time.monotonic()

    async def _wait_for_replica(self) -> Replica:
        """A healthy replica, waiting while none is (probes run in ``monitor_health``, or here when the pool is
        driven directly); raises :class:`GeneratorUnavailable` / :class:`ReplicasCrashed` (see ``_check_unavailable``)."""
        while True:
            if self.endpoints_file and time.monotonic() - self._last_refresh > self.refresh_interval:
                self._refresh_endpoints()
            r = self._pick(())
            if r is not None:
                return r
            if any(r.healthy for r in self.replicas.values()):  # every window is full: wait for a slot
                await self._wait_for_room()
                continue
            self._check_unavailable()
            monitor = self._monitor
            if monitor is None or monitor.done():
                await asyncio.gather(*(self._probe(r) for r in list(self.replicas.values()) if not r.probing))
                if self._pick(()) is not None:
                    continue
            try:
                await asyncio.wait_for(self._available.wait(), timeout=self.probe_interval)
            except asyncio.TimeoutError:
                pass

    def _backoff(self, attempt: int) -> float:
        return min(self.backoff_max, self.backoff_base * 2**attempt) * (0.5 + random.random() * 0.5)

    async def request(self, payload: dict) -> dict:
        """The one public way to send a request (waits for the pool to be ready first); returns an OpenAI-style
        response dict. See the module docstring for errors.

        Attempts that reached a replica (an error status, a timeout, a dropped connection, a malformed answer)
        count against ``max_retries``; a replica that refuses connections is taken out of rotation and the request
        goes elsewhere or waits for one, without spending an attempt: nothing was wrong with the request."""
        session = await self._ready_session()
        protocol = self.protocol
        body, context = protocol.prepare(payload)
        timeout = self.config.request_timeout
        task = self._watched_task() if timeout else None
        inflight = self._inflight
        tried: set[str] = set()
        last_error = ""
        attempt = 0
        while attempt <= self.max_retries:
            replica = self._pick(tried) or await self._wait_for_replica()
            tried.add(replica.url)
            replica.in_flight += 1
            replica.requests += 1
            sent_at = time.monotonic()
            if task is not None:
                inflight[task] = sent_at + timeout
            try:
                async with session.post(replica.url_for(protocol.path), data=body) as r:
                    raw = await r.read()
                    if r.status != 200:
                        raise ProtocolError(r.status, raw.decode("utf-8", "replace"))
                response = protocol.parse(raw, context)
                replica.failures = 0
                if replica.gauges is False:  # no gauges: the window probes with the answers' throughput
                    replica.window.on_completion(sent_at, time.monotonic() - sent_at,
                                                 (response.get("usage") or {}).get("completion_tokens", 0),
                                                 replica.in_flight)
                return response
            except asyncio.CancelledError:
                if not self._timed_out_here(task):
                    raise
                last_error = f"timeout after {timeout}s from {replica.url}"
            except Exception as e:  # noqa: BLE001 - sorted (and re-raised when not a failed attempt) below
                if isinstance(e, ProtocolError) and e.status in OVERLOADED_STATUS:
                    replica.window.on_overload(replica.in_flight, sent_at)
                last_error = self._attempt_error(e, replica)
                if last_error is None:
                    continue  # not an attempt: the replica refused the connection
            finally:
                replica.in_flight -= 1
                if self._room:
                    self.wake_waiters(1)
                if task is not None:
                    inflight.pop(task, None)
            attempt += 1
            if attempt <= self.max_retries:
                self.retries += 1
                logger.debug(f"retrying request (attempt {attempt}/{self.max_retries}): {last_error}")
                await asyncio.sleep(self._backoff(attempt - 1))
        raise RequestFailed(f"gave up after {self.max_retries + 1} tries: {last_error}")

    async def _ready_session(self):
        """The HTTP session, once the pool is ready (started here when used without ``async with``)."""
        if not self.ready:
            await self.wait_ready()  # raises why the pool never became ready (GeneratorUnavailable, ReplicasCrashed...)
        session = self._session
        if session is None or session.closed:
            session = await self._get_session()
        return session

    def _watched_task(self) -> asyncio.Task | None:
        """The current task, watched for ``request_timeout`` by one watchdog task."""
        task = asyncio.current_task()
        if task is not None and self._watchdog is None:
            self._watchdog = asyncio.get_running_loop().create_task(self._watch())
        return task

    def _timed_out_here(self, task: asyncio.Task | None) -> bool:
        """True when the watchdog (not someone else) cancelled ``task``: the attempt timed out."""
        if task is None or task not in self._timed_out:
            return False
        self._timed_out.discard(task)
        if task.uncancel() > 0:  # also cancelled from outside: that one wins
            return False
        self.timeouts += 1
        return True

    def _attempt_error(self, e: Exception, replica: Replica) -> str | None:
        """What a failed attempt says (it counts against ``max_retries``); None: not an attempt (nothing listens
        there: out of rotation). A refusal (a non-retryable 4xx) and anything unexpected are raised."""
        if isinstance(e, ProtocolError):
            if e.status not in RETRYABLE_STATUS:
                raise refusal(e.status, e.body, replica.url) from None
            replica.failures += 1
            return f"HTTP {e.status} from {replica.url}: {server_message(e.body)[:300]}"
        if isinstance(e, (ValueError, KeyError, TypeError, IndexError)):  # an answer that is not the protocol's JSON
            replica.failures += 1
            return f"malformed answer from {replica.url}: {type(e).__name__}: {str(e)[:200]}"
        if isinstance(e, asyncio.TimeoutError):  # before OSError: TimeoutError is an OSError
            return f"timeout from {replica.url}"
        if isinstance(e, (aiohttp.ClientConnectorError, ConnectionRefusedError)):
            self._mark_down(replica, f"{type(e).__name__}: {e}")
            return None
        if isinstance(e, (aiohttp.ClientConnectionError, ConnectionError, OSError)):
            # reset / disconnected mid-request (a dying server, or a keep-alive race): retry elsewhere,
            # and take the replica out after consecutive failures
            replica.failures += 1
            if replica.failures >= 2:
                self._mark_down(replica, f"{type(e).__name__} from {replica.url}: {e}")
            return f"{type(e).__name__} from {replica.url}: {e}"
        raise e

    def stats(self) -> dict:
        return {r.url: {"requests": r.requests, "healthy": r.healthy, "window": r.window.allowed}
                for r in self.replicas.values()}

    def fleet_record(self) -> dict:
        """What happened on every replica (windows, decisions, in flight, server gauges): see ``fleet``."""
        return self.fleet.record(self)
