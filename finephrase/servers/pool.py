"""A pool of inference replicas behind one datatrove ``InferenceServer``.

datatrove's ``EndpointServer`` knows one URL and treats HTTP 500 as fatal for the task.
``ReplicaPool`` is a datatrove ``InferenceServer`` that

- talks to several replicas (a static list and/or an endpoints file of ``host:port`` lines
  that server jobs append to; the file is re-read while running),
- sends each request to the healthy replica with the fewest requests in flight,
- keeps one keep-alive HTTP session (aiohttp) for all requests,
- retries 424/429/500/502/503/504, timeouts and connection errors with jittered exponential
  back-off on another replica, taking a replica that refuses connections out of rotation and
  probing it until it answers again,
- reports 400/413/422 (bad request, input too long) as a datatrove ``InferenceError`` whose
  message contains ``BadRequestError`` so the caller can truncate/skip the document,
- never raises ``ServerError`` for a single failed request, so one bad document cannot end a task.

The wire protocol is pluggable (``finephrase.servers.protocols``): OpenAI chat completions
(vLLM, SGLang, llama.cpp, TGI's Messages API) or TGI's native ``/generate``.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from datatrove.pipeline.inference.servers.base import InferenceServer
from datatrove.pipeline.inference.types import InferenceError
from loguru import logger

import aiohttp
from yarl import URL

from finephrase.servers.protocols import Protocol, ProtocolError, make_protocol

if TYPE_CHECKING:
    from datatrove.pipeline.inference.run_inference import InferenceConfig

RETRYABLE_STATUS = {408, 424, 425, 429, 500, 502, 503, 504}
BAD_REQUEST_STATUS = {400, 413, 422}


def normalize_endpoint(e: str) -> str:
    e = e.strip().rstrip("/")
    if not e.startswith(("http://", "https://")):
        e = "http://" + e
    return e.removesuffix("/v1")


def read_endpoints_file(path: str) -> list[str]:
    try:
        with open(path) as f:
            lines = [line.split("#", 1)[0].strip() for line in f]
    except FileNotFoundError:
        return []
    return [normalize_endpoint(line) for line in lines if line]


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

    def url_for(self, path: str) -> URL:
        url = self.urls.get(path)
        if url is None:
            url = self.urls[path] = URL(self.url + path)
        return url


class ReplicaPool(InferenceServer):
    """datatrove InferenceServer over one or more replicas (see module docstring)."""

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
        api_key: str | None = None,
        ready_timeout: float = 600.0,
        tokenizer: str | None = None,
    ):
        super().__init__(config, rank)
        self.static_endpoints = [normalize_endpoint(e) for e in (endpoints or [])]
        self.endpoints_file = endpoints_file
        self.protocol: Protocol = make_protocol(protocol, config, tokenizer=tokenizer)
        self.max_retries = max_retries
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.probe_interval = probe_interval
        self.refresh_interval = refresh_interval
        self.api_key = api_key
        self.ready_timeout = ready_timeout
        self.replicas: dict[str, Replica] = {}
        self._session = None
        self._available = asyncio.Event()
        self._last_refresh = 0.0
        self.server_info: dict = {}
        # request deadlines, enforced by one watchdog task instead of a timer per request (see _watch)
        self._inflight: dict[asyncio.Task, float] = {}
        self._timed_out: set[asyncio.Task] = set()
        self._watchdog: asyncio.Task | None = None
        self.timeouts = 0  # requests that ran past request_timeout (each retried or counted as failed)
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
                self.replicas[url] = Replica(url, healthy=False)
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
            if self.api_key:
                headers["Authorization"] = f"Bearer {self.api_key}"
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=3),
                # the whole-request deadline is the watchdog's (config.request_timeout); connecting gets its own
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=30),
                headers=headers,
                cookie_jar=aiohttp.DummyCookieJar(),  # inference servers set no cookies: skip the jar per request
            )
        return self._session

    # ---------------------------------------------------------------- datatrove server API
    async def start_server(self):
        return None  # replicas are started elsewhere (embedded pool, Slurm jobs, external servers)

    def get_base_url(self) -> str:
        healthy = [r for r in self.replicas.values() if r.healthy]
        return (healthy or list(self.replicas.values()) or [Replica("http://unset")])[0].url

    async def _probe(self, replica: Replica) -> bool:
        session = await self._get_session()
        try:
            ok, info = await self.protocol.health(session, replica.url)
        except Exception:
            ok, info = False, {}
        if ok:
            if info:
                replica.info = info
                self.server_info = self.server_info or info
            if not replica.healthy:
                logger.info(f"replica healthy: {replica.url}")
            replica.healthy, replica.failures, replica.down_since = True, 0, None
            self._available.set()
        return ok

    async def is_ready(self) -> bool:
        self._refresh_endpoints()
        results = await asyncio.gather(*(self._probe(r) for r in list(self.replicas.values())))
        return any(results)

    async def _wait_until_ready(self, max_attempts: int = 300, delay_sec: float = 5.0) -> None:
        deadline = time.monotonic() + self.ready_timeout
        attempt = 0
        while True:
            attempt += 1
            if await self.is_ready():
                healthy = [r.url for r in self.replicas.values() if r.healthy]
                logger.info(f"inference replicas ready: {healthy}")
                return
            if time.monotonic() > deadline:
                from datatrove.pipeline.inference.types import ServerError

                raise ServerError(
                    f"no inference replica answered within {self.ready_timeout:.0f}s "
                    f"(endpoints: {list(self.replicas) or 'none yet'}"
                    + (f", endpoints file {self.endpoints_file}" if self.endpoints_file else "")
                    + ")"
                )
            if attempt % 10 == 1:
                logger.warning(f"waiting for inference replicas {list(self.replicas)} ...")
            await asyncio.sleep(min(delay_sec, 1.0))

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
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        await super().server_cleanup()
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None

    @property
    def ready(self) -> bool:
        return self._server_ready.done() and self._server_ready.exception() is None

    async def wait_ready(self) -> None:
        """Wait until the pool has answered its first health check (server info known)."""
        if not self._server_ready.done() or self._server_ready.exception() is not None:
            await self._server_ready

    # ---------------------------------------------------------------- requests
    def _pick(self, exclude: set[str] | tuple = ()) -> Replica | None:
        """The healthy replica with the fewest requests in flight (then the fewest sent), avoiding ``exclude``
        when another one is healthy."""
        best = None
        for r in self.replicas.values():
            if r.healthy and r.url not in exclude and (
                    best is None or r.in_flight < best.in_flight
                    or (r.in_flight == best.in_flight and r.requests < best.requests)):
                best = r
        if best is None and exclude:
            return self._pick(())
        return best

    def _mark_down(self, replica: Replica, why: str) -> None:
        if replica.healthy:
            logger.warning(f"replica out of rotation: {replica.url} ({why})")
        replica.healthy = False
        replica.down_since = replica.down_since or time.monotonic()
        if not any(r.healthy for r in self.replicas.values()):
            self._available.clear()

    async def _wait_for_replica(self, timeout: float) -> Replica | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.endpoints_file and time.monotonic() - self._last_refresh > self.refresh_interval:
                self._refresh_endpoints()
            r = self._pick(set())
            if r is not None:
                return r
            # probe ourselves too: the monitor may not run when a caller drives the pool directly
            await asyncio.gather(*(self._probe(r) for r in list(self.replicas.values()) if not r.probing))
            r = self._pick(set())
            if r is not None:
                return r
            await asyncio.sleep(self.probe_interval)
        return None

    def _backoff(self, attempt: int) -> float:
        return min(self.backoff_max, self.backoff_base * 2**attempt) * (0.5 + random.random() * 0.5)

    async def _make_request(self, payload: dict) -> dict:
        """Send one request; returns an OpenAI-style response dict. See module docstring for errors."""
        session = self._session
        if session is None or session.closed:
            session = await self._get_session()
        protocol = self.protocol
        body, context = protocol.prepare(payload)
        timeout = self.config.request_timeout
        task = asyncio.current_task() if timeout else None
        if task is not None and self._watchdog is None:
            self._watchdog = asyncio.get_running_loop().create_task(self._watch())
        inflight = self._inflight
        tried: set[str] = set()
        last_error = ""
        for attempt in range(self.max_retries + 1):
            replica = self._pick(tried)
            if replica is None:
                replica = await self._wait_for_replica(timeout=max(30.0, self._backoff(attempt) * 4))
                if replica is None:
                    last_error = "no healthy replica"
                    continue
            tried.add(replica.url)
            replica.in_flight += 1
            replica.requests += 1
            if task is not None:
                inflight[task] = time.monotonic() + timeout
            try:
                async with session.post(replica.url_for(protocol.path), data=body) as r:
                    raw = await r.read()
                    if r.status != 200:
                        raise ProtocolError(r.status, raw.decode("utf-8", "replace"))
                response = protocol.parse(raw, context)
                replica.failures = 0
                return response
            except (ValueError, KeyError, TypeError, IndexError) as e:  # an answer that is not the protocol's JSON
                last_error = f"malformed answer from {replica.url}: {type(e).__name__}: {str(e)[:200]}"
                replica.failures += 1
            except ProtocolError as e:
                last_error = f"HTTP {e.status} from {replica.url}: {e.body[:300]}"
                if e.status in BAD_REQUEST_STATUS:
                    raise InferenceError(None, f"BadRequestError {e.status}: {e.body[:500]}", payload=None) from None
                if e.status not in RETRYABLE_STATUS:
                    raise InferenceError(None, last_error, payload=None) from None
                replica.failures += 1
            except asyncio.CancelledError:
                if task is None or task not in self._timed_out:
                    raise
                self._timed_out.discard(task)
                if task.uncancel() > 0:  # also cancelled from outside: that one wins
                    raise
                self.timeouts += 1
                last_error = f"timeout after {timeout}s from {replica.url}"
            except asyncio.TimeoutError:  # before OSError: TimeoutError is an OSError
                last_error = f"timeout from {replica.url}"
            except (aiohttp.ClientConnectorError, ConnectionRefusedError) as e:
                # nothing listens there (any more): out of rotation until a probe succeeds
                last_error = f"{type(e).__name__} from {replica.url}: {e}"
                self._mark_down(replica, last_error)
            except (aiohttp.ClientConnectionError, ConnectionError, OSError) as e:
                # reset / disconnected mid-request (a dying server, or a keep-alive race): retry elsewhere,
                # and take the replica out after consecutive failures
                last_error = f"{type(e).__name__} from {replica.url}: {e}"
                replica.failures += 1
                if replica.failures >= 2:
                    self._mark_down(replica, last_error)
            finally:
                replica.in_flight -= 1
                if task is not None:
                    inflight.pop(task, None)
            if attempt < self.max_retries:
                logger.debug(f"retrying request (attempt {attempt + 1}/{self.max_retries}): {last_error}")
                await asyncio.sleep(self._backoff(attempt))
        raise InferenceError(None, f"gave up after {self.max_retries + 1} tries: {last_error}", payload=None)

    def stats(self) -> dict:
        return {r.url: {"requests": r.requests, "healthy": r.healthy} for r in self.replicas.values()}
