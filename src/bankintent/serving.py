"""The HTTP service: ``bankintent serve DIR`` (FastAPI on uvicorn).

    POST /v1/predict  {"texts": [...], "top_k": 3, "model": "optional name"}
                      -> [{text, intent, confidence, out_of_scope, oos_score, oos_threshold, oos_method,
                           closest_intent, top_k: [{intent, confidence}]}]
    GET  /v1/models   the names served      GET /v1/models/NAME   its intents and out-of-scope fallback
    GET  /healthz     alive                 GET /readyz   models loaded
    GET  /metrics     Prometheus            GET /docs     OpenAPI (Swagger UI, served from here)
    GET  /            a web page

An out-of-scope answer has ``intent`` ``out_of_scope`` and ``confidence`` null: its evidence is
``oos_score`` against ``oos_threshold``, and ``closest_intent`` names the most probable intent apart.

Concurrent requests are grouped into micro-batches (``MicroBatcher``): a batch leaves when it holds
``max_batch`` texts or when its oldest request has waited ``max_wait_ms``, and the forward passes run
one at a time on an inference thread, so requests arriving during a pass form the next batch and
throughput grows with load. ``create_app`` builds the application (tests use it directly); ``serve``
runs it. Every error is JSON, ``{"error": "one line naming the field"}``.
"""

from __future__ import annotations

import asyncio
import ctypes
import hashlib
import hmac
import json
import logging
import os
import signal
import tempfile
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Annotated, Iterator

import torch
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi_offline import FastAPIOffline
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.security.utils import get_authorization_scheme_param
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess
from prometheus_client.core import GaugeMetricFamily
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictInt, StrictStr, StringConstraints
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware
from tqdm import tqdm as std_tqdm
from uvicorn.protocols.http.auto import AutoHTTPProtocol

from bankintent import ood
from bankintent.config import check_port
from bankintent.errors import BankintentError, ConfigError
from bankintent.predict import ANSWER_FIELDS, MAX_CHARS, OUT_OF_SCOPE, OnnxModel, check_threshold
from bankintent.registry import Registry, ServedModel, UnknownModel, Unloaded
from bankintent.text import blank

log = logging.getLogger(__name__)

MAX_TEXTS = 128  # texts per request
MAX_TOP_K = 20
MAX_BODY_BYTES = 1 << 20
BODY_TIMEOUT_S = 30.0  # a body that has not all arrived by then is answered 408: a stalled client holds no connection
HEAD_TIMEOUT_S = 10.0  # a connection that has not sent a whole request head by then is closed (HeadDeadline)
# served on one of these, a request naming another host than these names (and --allowed-host's) is refused
# (400): a web page whose name an attacker points at 127.0.0.1 (DNS rebinding) would otherwise read the
# service from the user's browser
LOOPBACK = ["127.0.0.1", "localhost", "::1", "[::1]"]
COLD_QUEUED_BATCHES = 16  # before a model's first forward pass gives a rate: at most this many batches of texts waiting
QUEUE_TIMEOUT_S = 30.0  # a request that would wait, or waited, this long for its forward pass is answered 503, not computed
ENVIRONMENT = "BANKINTENT_SERVE_OPTIONS"  # create_app's options, for uvicorn's worker processes
METRICS_DIRECTORY = "PROMETHEUS_MULTIPROC_DIR"  # where worker processes write their metrics (prometheus-client's multiprocess mode)
PAGE = Path(__file__).parent / "static" / "index.html"
PATHS = ("/v1/predict", "/v1/models", "/healthz", "/readyz", "/metrics", "/", "/docs", "/redoc", "/openapi.json")
RECENT_ANSWERS = 1000  # the out-of-scope ratio gauge covers this many latest answers of a model (in each worker)
RECENT_ANSWERS_METRIC, RECENT_OUT_OF_SCOPE_METRIC = "bankintent_recent_answers", "bankintent_recent_out_of_scope"  # the ratio's parts


# ---------------------------------------------------------------------------------------- schema


def _not_blank(text: str) -> str:
    if blank(text):
        raise ValueError("empty text")
    return text


Text = Annotated[StrictStr, StringConstraints(max_length=MAX_CHARS), AfterValidator(_not_blank)]


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    texts: list[Text] = Field(min_length=1, max_length=MAX_TEXTS, description=f"1 to {MAX_TEXTS} queries of at most {MAX_CHARS} characters")
    top_k: StrictInt = Field(3, ge=1, le=MAX_TOP_K, description="alternatives listed per query")
    model: StrictStr | None = Field(None, description="which model (GET /v1/models); optional when one is served")


class Ranked(BaseModel):
    intent: str
    confidence: float


class Prediction(BaseModel):
    text: str
    intent: str = Field(description=f"the answer: an intent, or {OUT_OF_SCOPE!r} when oos_score is above oos_threshold")
    confidence: float | None = Field(description="calibrated probability of intent; null for an out-of-scope answer")
    out_of_scope: bool
    oos_score: float | None = Field(description="out-of-scope score of the text (higher: further from every intent); "
                                                "null when the model has no out-of-scope fallback")
    oos_threshold: float | None = Field(description="the answer is out of scope when oos_score is above this")
    oos_method: str | None = Field(description=f"which out-of-scope score: {', '.join(reversed(ood.SCORES))}")
    closest_intent: str = Field(description="the most probable intent, also when the answer is out of scope")
    top_k: list[Ranked]


class ModelInfo(BaseModel):
    name: str
    method: str = Field(description="how it was trained (lpft, lora, full, linear-probe...)")
    base_model: str
    intents: list[str]
    oos_method: str | None = Field(description="the out-of-scope score; null: no out-of-scope fallback")
    oos_threshold: float | None
    backend: str = Field(description="what runs the model: onnx (an export) or pytorch")
    saved: str | None = Field(description="when the model folder was saved (UTC, ISO 8601): a retrained model shows here")


class ErrorBody(BaseModel):
    error: str


ERRORS = {status: {"model": ErrorBody} for status in (400, 401, 404, 408, 413, 415, 422, 503)}


# --------------------------------------------------------------------------------------- metrics


class Metrics:
    """The service's Prometheus metrics, in a registry of their own (one per application).

    With ``--workers N`` each worker process answers some of the requests and some of the scrapes:
    its metrics then go to files in ``$PROMETHEUS_MULTIPROC_DIR`` (prometheus-client's multiprocess
    mode, set before the workers start) and ``exposition`` sums every worker's, so that a scrape
    counts all the service's requests whichever worker answers it."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.multiprocess = bool(os.environ.get(METRICS_DIRECTORY))
        self.requests = Counter("bankintent_requests", "HTTP requests by path and status", ["path", "status"], registry=self.registry)
        self.errors = Counter("bankintent_errors", "HTTP requests answered with a 4xx or 5xx status", ["status"], registry=self.registry)
        self.latency = Histogram("bankintent_request_latency_seconds", "time to answer a request", ["path"], registry=self.registry,
                                 buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5))
        self.batch_texts = Histogram("bankintent_batch_texts", "texts per forward pass (micro-batch size)", registry=self.registry,
                                     buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
        # what a team watches for drift: the mix of answers, how many fall out of scope, how sure the rest are
        self.answers = Counter("bankintent_answers", "answers by model and intent (out_of_scope included)", ["model", "intent"],
                               registry=self.registry)
        self.out_of_scope = Counter("bankintent_out_of_scope", "answers that were out of scope, by model", ["model"], registry=self.registry)
        # the out-of-scope share of the recent answers, from two gauges summed over the workers (``exposition``)
        self.recent_answers = Gauge(RECENT_ANSWERS_METRIC, "answers in the model's window of recent answers (this worker's)", ["model"],
                                    registry=self.registry, multiprocess_mode="livesum")
        self.recent_out_of_scope = Gauge(RECENT_OUT_OF_SCOPE_METRIC, "out-of-scope answers in that window", ["model"],
                                         registry=self.registry, multiprocess_mode="livesum")
        self.confidence = Histogram("bankintent_answer_confidence", "calibrated confidence of the in-scope answers", ["model"],
                                    registry=self.registry, buckets=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0))
        self._recent: dict[str, deque] = {}

    def count_answers(self, model: str, results: list[dict]) -> None:
        """Count each answer by intent, the out-of-scope ones, and the out-of-scope share of the recent answers."""
        recent = self._recent.setdefault(model, deque(maxlen=RECENT_ANSWERS))
        for result in results:
            self.answers.labels(model, result["intent"]).inc()
            recent.append(result["out_of_scope"])
            if result["out_of_scope"]:
                self.out_of_scope.labels(model).inc()
            elif result["confidence"] is not None:
                self.confidence.labels(model).observe(result["confidence"])
        self.recent_answers.labels(model).set(len(recent))
        self.recent_out_of_scope.labels(model).set(sum(recent))

    def exposition(self, served: list[str]) -> bytes:
        """The metrics in Prometheus' text format: this process's, or with several workers all of theirs;
        with ``bankintent_out_of_scope_ratio``, each served model's out-of-scope share of its recent
        answers (of every worker's window; none for a model no longer served, whose last share would
        read as its share now). The counters keep counting what every model answered."""
        if self.multiprocess:
            source = CollectorRegistry()
            multiprocess.MultiProcessCollector(source)
        else:
            source = self.registry
        families = list(source.collect())
        window = {family.name: {sample.labels["model"]: sample.value for sample in family.samples}
                  for family in families if family.name in (RECENT_ANSWERS_METRIC, RECENT_OUT_OF_SCOPE_METRIC)}
        ratio = GaugeMetricFamily("bankintent_out_of_scope_ratio", "share of the model's recent answers that were out of scope "
                                  f"(the last {RECENT_ANSWERS} of each worker)", labels=["model"])
        for model in served:
            if window.get(RECENT_ANSWERS_METRIC, {}).get(model):
                ratio.add_metric([model], window[RECENT_OUT_OF_SCOPE_METRIC].get(model, 0.0) / window[RECENT_ANSWERS_METRIC][model])
        shown = [family for family in families if family.name not in window] + [ratio]
        return generate_latest(SimpleNamespace(collect=lambda: shown))

    def observe(self, path: str, status: int, seconds: float) -> None:
        path = path if path in PATHS else "/v1/models/{name}" if path.startswith("/v1/models/") else "other"
        self.requests.labels(path, str(status)).inc()
        self.latency.labels(path).observe(seconds)
        if status >= 400:
            self.errors.labels(str(status)).inc()


# on every response: answers echo customers' queries, so no cache keeps them; no page frames the web page
# (clickjacking); no browser guesses another content type; no link from the page sends its address on
SECURITY_HEADERS = [(b"cache-control", b"no-store"), (b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"),
                    (b"referrer-policy", b"no-referrer")]


class Guard:
    """ASGI middleware: counts and times every request, adds ``SECURITY_HEADERS`` to every response,
    and answers 413 to a body over ``max_body`` bytes (declared so, or growing so) before the
    application reads any of it, and 408 to one not received within ``BODY_TIMEOUT_S`` (the body is
    read here, then replayed). With API ``keys``, a request with a body and no valid key is answered
    401 before a byte of its body is read: an anonymous client cannot make the server receive and parse
    up to ``max_body`` bytes (the routes' own dependency checks every other request)."""

    def __init__(self, app, metrics: Metrics, max_body: int = MAX_BODY_BYTES, keys: ApiKeys | None = None):
        self.app, self.metrics, self.max_body, self.keys = app, metrics, max_body, keys
        self.body_timeout_s = BODY_TIMEOUT_S

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), 500

        async def send_counted(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                given = {name.lower() for name, _ in message.get("headers", [])}
                message = {**message, "headers": [*message.get("headers", []),
                                                  *((name, value) for name, value in SECURITY_HEADERS if name not in given)]}
            await send(message)

        try:
            if scope["method"] in ("POST", "PUT", "PATCH"):
                given = next((value for name, value in scope["headers"] if name == b"authorization"), b"")  # the first, as the routes read it
                if self.keys and not self.keys.accept(given.decode("latin-1")):
                    return await UNAUTHORIZED(scope, receive, send_counted)
                declared = dict(scope["headers"]).get(b"content-length", b"")
                try:
                    body = None if declared.isdigit() and int(declared) > self.max_body else (
                        await asyncio.wait_for(self._read_body(receive), self.body_timeout_s))
                except asyncio.TimeoutError:  # the builtin TimeoutError from Python 3.11, another class in 3.10
                    late = JSONResponse({"error": f"request body not received within {self.body_timeout_s:g} s"}, 408)
                    return await late(scope, receive, send_counted)
                if body is None:
                    too_large = JSONResponse({"error": f"request body over {self.max_body} bytes"}, 413)
                    return await too_large(scope, receive, send_counted)
                receive = self._replay(body, receive)
            await self.app(scope, receive, send_counted)
        finally:
            self.metrics.observe(scope["path"], status, time.perf_counter() - start)

    async def _read_body(self, receive) -> bytes | None:
        """The whole body, or None as soon as it grows larger than allowed."""
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                return None
            chunks.append(chunk)
            more = message.get("more_body", False)
        return b"".join(chunks)

    @staticmethod
    def _replay(body: bytes, receive):
        sent = False

        async def replay():
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        return replay


class HostCheck(TrustedHostMiddleware):
    """Starlette's check of the ``Host`` header (``LOOPBACK``: DNS rebinding), its refusal answered in
    JSON, as every other error of the service is, rather than its plain text."""

    def __init__(self, app, allowed_hosts: list[str]):
        async def allowed(scope, receive, send):
            scope["bankintent.host_allowed"] = True
            await app(scope, receive, send)

        super().__init__(allowed, allowed_hosts=allowed_hosts)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await super().__call__(scope, receive, send)

        async def refused_in_json(message):
            if scope.get("bankintent.host_allowed"):
                return await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):  # starlette's refusal, said again
                host = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
                await JSONResponse({"error": f"Host {host!r} is not a name this service answers to (a name a reverse proxy "
                                             "passes is added with serve --allowed-host NAME)"}, 400)(scope, None, send)

        await super().__call__(scope, receive, refused_in_json)


class HeadDeadline(AutoHTTPProtocol):
    """uvicorn's HTTP protocol (httptools', else h11's) that closes a connection which has not sent a
    whole request head within ``HEAD_TIMEOUT_S`` of connecting or of its last response. uvicorn times
    out neither (its keep-alive timer stops at the first byte received and waits for a response), so
    clients sending a header a byte at a time (Slowloris) would hold connections without end; no
    middleware sees a request before its head is complete, and its body is ``Guard``'s. The deadline is
    off while a request is being answered, or waits its turn (pipelined)."""

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._disarm_if_begun()

    def on_response_complete(self) -> None:
        if not getattr(self, "pipeline", None):  # httptools holds a pipelined request whose head came already
            self._arm()  # before: h11 goes on to a request already received, which disarms it
        super().on_response_complete()
        self._disarm_if_begun()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._waiting_after = self.cycle  # the request answered last (None: none yet)
        self._deadline = self.loop.call_later(HEAD_TIMEOUT_S, self._late)

    def _disarm(self) -> None:
        if getattr(self, "_deadline", None) is not None:
            self._deadline.cancel()
        self._deadline = None

    def _disarm_if_begun(self) -> None:
        if self.cycle is not self._waiting_after:  # a new request's head is complete
            self._disarm()

    def _late(self) -> None:
        self._deadline = None
        if self.cycle is self._waiting_after and not self.transport.is_closing():
            log.info("closed a connection from %s that sent no whole request head within %g s", (self.client or ("?",))[0], HEAD_TIMEOUT_S)
            self.transport.close()


# ------------------------------------------------------------------------------- micro-batching


@dataclass
class _Job:
    model: ServedModel
    texts: list[str]
    top_k: int
    future: asyncio.Future
    queued: float
    parts: list[_Job] = field(default_factory=list)  # its request's jobs, itself among them

    def fail(self, exc: Exception) -> None:
        """Its request answered with ``exc``: its other parts are not computed (cancelled here, not
        by the request's handler, which the loop may not reach before the next part's pass)."""
        if not self.future.done():
            self.future.set_exception(exc)  # first: the request's gather raises this, not a part's cancellation
        self.cancel_request()

    def cancel_request(self) -> None:
        """Its request's parts not answered yet are not computed."""
        for job in self.parts:
            if not job.future.done():
                job.future.cancel()


class Overloaded(Exception):
    """More is waiting than the service answers in time: the request is answered 503, with Retry-After."""


@dataclass
class MicroBatcher:
    """Groups concurrent requests for one model into forward passes of up to ``max_batch`` texts,
    waiting at most ``max_wait_s`` after a batch's first request, and runs them on ``executor``. A
    request of more texts than ``max_batch`` is cut into parts of at most that many.

    Overload sheds requests rather than queueing work for clients that have gone: a request whose texts,
    with those waiting, would take longer than ``queue_timeout_s`` at the rate of the recent forward
    passes (``rate``, texts a second; before the first pass, one that would bring more than
    ``COLD_QUEUED_BATCHES`` batches of texts waiting) is refused at once, and one that waited ``queue_timeout_s``
    before its forward pass (its client has most likely given up), or whose handler was cancelled, is
    not computed."""

    executor: ThreadPoolExecutor
    max_batch: int
    max_wait_s: float
    metrics: Metrics
    queue_timeout_s: float = QUEUE_TIMEOUT_S
    rate: float | None = None  # texts a second of the recent forward passes (None: none yet)
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    _full: asyncio.Event = field(default_factory=asyncio.Event)
    _pending: int = 0
    _task: asyncio.Task | None = None

    async def submit(self, model: ServedModel, texts: list[str], top_k: int) -> list[dict]:
        loop = asyncio.get_running_loop()
        if self._task is None:
            self._task = loop.create_task(self._run_forever())
        if self._pending and self.rate and (self._pending + len(texts)) / self.rate > self.queue_timeout_s:  # one request alone waits its turn
            raise Overloaded(f"the service is busy ({self._pending} texts waiting, about {self._pending / self.rate:.0f} s of work); "
                             "try again shortly")
        if self._pending and not self.rate and self._pending + len(texts) > COLD_QUEUED_BATCHES * self.max_batch:  # no pass yet
            raise Overloaded(f"the service is busy ({self._pending} texts waiting before its first answer); try again shortly")
        jobs = [_Job(model, texts[start:start + self.max_batch], top_k, loop.create_future(), loop.time())
                for start in range(0, len(texts), self.max_batch)]
        for job in jobs:
            job.parts = jobs
        for job in jobs:
            self.queue.put_nowait(job)
        self._pending += len(texts)
        if self._pending >= self.max_batch:
            self._full.set()
        try:
            parts = await asyncio.gather(*(job.future for job in jobs))
        except BaseException:  # the handler cancelled (its client gone), or a part failed: the other parts are not computed
            jobs[0].cancel_request()
            raise
        return [answer for part in parts for answer in part]

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _run_forever(self) -> None:
        carried: _Job | None = None
        while True:
            first = carried or await self.queue.get()
            jobs, carried = await self._collect(first)
            try:
                await self._run(jobs)
            except Exception as exc:  # a fault of the batcher's own (counting the answers, say): its requests
                log.exception("micro-batch failed")  # are answered 500, and the loop goes on serving the others
                for job in jobs:
                    job.fail(exc)

    async def _collect(self, first: _Job) -> tuple[list[_Job], _Job | None]:
        """``first`` and the requests that join it, up to ``max_batch`` texts (a request that does
        not fit, or is for another version of the model, is carried to the next batch)."""
        loop = asyncio.get_running_loop()
        remaining = first.queued + self.max_wait_s - loop.time()
        if remaining > 0 and self._pending < self.max_batch:
            self._full.clear()
            try:
                await asyncio.wait_for(self._full.wait(), remaining)
            except asyncio.TimeoutError:
                pass
        jobs, size = [first], len(first.texts)
        while size < self.max_batch and not self.queue.empty():
            job = self.queue.get_nowait()
            if size + len(job.texts) > self.max_batch or job.model is not first.model:
                return jobs, job
            jobs.append(job)
            size += len(job.texts)
        return jobs, None

    async def _run(self, jobs: list[_Job]) -> None:
        self._pending -= sum(len(job.texts) for job in jobs)
        now = asyncio.get_running_loop().time()
        for job in jobs:
            if not job.future.done() and now - job.queued > self.queue_timeout_s:
                job.fail(Overloaded(f"waited {now - job.queued:.0f} s for its turn, past {self.queue_timeout_s:g} s: "
                                    "the service is overloaded; try again shortly"))
        jobs = [job for job in jobs if not job.future.done()]  # a cancelled handler's (its client gone), a late one's
        if not jobs:
            return
        texts = [text for job in jobs for text in job.texts]
        self.metrics.batch_texts.observe(len(texts))
        started = time.perf_counter()
        try:
            results = await asyncio.get_running_loop().run_in_executor(
                self.executor, jobs[0].model.predict, texts, max(job.top_k for job in jobs))
            rate = len(texts) / max(time.perf_counter() - started, 1e-6)
            self.rate = rate if self.rate is None else 0.8 * self.rate + 0.2 * rate
        except Exception as exc:  # handed to each request, which answers 422 or 500
            for job in jobs:
                job.fail(exc)
            return
        self.metrics.count_answers(jobs[0].model.name, results)
        start = 0
        for job in jobs:
            if not job.future.done():  # the client may have gone
                job.future.set_result([_answer(r, job.top_k) for r in results[start : start + len(job.texts)]])
            start += len(job.texts)


def _answer(result: dict, top_k: int) -> dict:
    """The fields of ``Prediction`` from a ``Predictor.predict`` result, with ``top_k`` alternatives."""
    return {**{key: result[key] for key in ANSWER_FIELDS}, "top_k": result["top_k"][:top_k]}  # top_k replaced


def _model_info(served: ServedModel) -> dict:
    predictor = served.predictor
    detector = predictor.oos_threshold is not None
    return {"name": served.name, "method": predictor.spec.method, "base_model": predictor.spec.base_model,
            "intents": list(predictor.labels), "oos_method": predictor.oos_score if detector else None,
            "oos_threshold": float(predictor.oos_threshold) if detector else None,
            "backend": "onnx" if isinstance(predictor.model, OnnxModel) else "pytorch",
            "saved": served.saved}


# ----------------------------------------------------------------------------------------- the app


@dataclass
class Service:
    registry: Registry
    max_batch: int
    max_wait_ms: float
    metrics: Metrics = field(default_factory=Metrics)
    executor: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="inference"))
    batchers: dict[str, MicroBatcher] = field(default_factory=dict)

    async def model(self, name: str | None) -> ServedModel:
        served = self.registry.cached(name)
        if served is not None:
            return served
        try:
            return await asyncio.to_thread(self.registry.get, name)
        except UnknownModel as exc:
            raise HTTPException(400 if name is None else 404, str(exc)) from None
        except BankintentError as exc:  # a model folder that cannot be loaded (why, with the server's paths: in the log)
            raise HTTPException(503, str(exc)) from None

    async def predict(self, request: PredictRequest) -> list[dict]:
        served = await self.model(request.model)
        if served.name not in self.batchers:
            self.batchers[served.name] = MicroBatcher(self.executor, self.max_batch, self.max_wait_ms / 1000, self.metrics)
        try:
            try:
                return await self.batchers[served.name].submit(served, request.texts, request.top_k)
            except Unloaded:  # its folder was rewritten while the request waited: the model it holds now answers
                return await self.batchers[served.name].submit(await self.model(request.model), request.texts, request.top_k)
        except BankintentError as exc:
            raise HTTPException(422, str(exc)) from None
        except Overloaded as exc:
            raise HTTPException(503, str(exc), headers={"Retry-After": "1"}) from None

    def close(self) -> None:
        for batcher in self.batchers.values():
            batcher.close()
        self.executor.shutdown(wait=False, cancel_futures=True)


def read_api_keys(path: str | Path) -> list[bytes]:
    """The keys of an API key file: one a line; blank lines and lines starting with ``#`` are skipped. A
    byte-order mark (Notepad's UTF-8) is no part of the first key; a line with a space inside (a comment
    after its key) is refused: a bearer key has none, and the key would never match."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: API key file not found")
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file of API keys (not UTF-8)") from None
    keys = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    spaced = next((number for number, line in enumerate(lines, start=1) if len(line.split()) > 1 and not line.lstrip().startswith("#")), None)
    if spaced:
        raise ConfigError(f"{path}: line {spaced}: a key with a space in it (a comment goes on a line of its own, starting with #)")
    if not keys:
        raise ConfigError(f"{path}: no API keys in the file")
    return [hashlib.sha256(key.encode()).digest() for key in keys]


class ApiKeys:
    """The keys of an API key file, read again when the file changes (looked at most every
    ``recheck_s``): a key is added or revoked by editing the file, without a restart. A file emptied,
    removed or made unreadable meanwhile refuses every request until it holds keys again, and the log
    says so: emptying or removing it is how a team revokes a leaked key in a hurry, which must not leave
    the old keys working (a file written in place may be empty for an instant: written beside and
    renamed over, it never is)."""

    def __init__(self, path: str | Path, recheck_s: float = 1.0):
        self.path, self.recheck_s = Path(path), recheck_s
        self.digests, self.stamp, self.checked = read_api_keys(self.path), self._stamp(), time.monotonic()
        self.lock = threading.Lock()

    def _stamp(self) -> tuple[int, ...] | None:
        """The file as it is: another file renamed over it (its inode), an edit (size, times) or mended
        permissions (the change time) each count as a change."""
        try:
            stat = self.path.stat()
        except OSError:
            return None
        return stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns

    def current(self) -> list[bytes]:
        if time.monotonic() - self.checked < self.recheck_s:
            return self.digests
        with self.lock:
            self.checked, stamp = time.monotonic(), self._stamp()
            if stamp != self.stamp:
                self.stamp = stamp
                try:
                    self.digests = read_api_keys(self.path)
                    log.info("%s: API keys read again (%d keys)", self.path, len(self.digests))
                except (ConfigError, OSError) as exc:
                    self.digests = []
                    log.error("%s: the API key file changed and holds no usable key (%s); every request is refused until it "
                              "holds keys again", self.path, exc)
        return self.digests

    def accept(self, authorization: str) -> bool:
        """Whether an ``Authorization`` header's value is ``Bearer <key>`` for one of the keys. Digests
        of equal length are compared in constant time, with every key, so timing tells nothing about a key."""
        scheme, key = get_authorization_scheme_param(authorization)
        given = hashlib.sha256(key.encode()).digest() if scheme.lower() == "bearer" and key else b""
        return any([hmac.compare_digest(given, digest) for digest in self.current()])


UNAUTHORIZED_MESSAGE = "missing or invalid API key (Authorization: Bearer <key>)"
UNAUTHORIZED = JSONResponse({"error": UNAUTHORIZED_MESSAGE}, 401, headers={"WWW-Authenticate": "Bearer"})


def bearer_auth(keys: ApiKeys):
    """A dependency accepting ``Authorization: Bearer <key>`` for any of the keys (``ApiKeys.accept``);
    it puts the scheme in the OpenAPI schema, so /docs asks for a key."""
    scheme = HTTPBearer(auto_error=False, description="an API key from the service's --api-key-file")

    def check(request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(scheme)) -> None:
        if not keys.accept(request.headers.get("authorization", "")):
            raise HTTPException(401, UNAUTHORIZED_MESSAGE, headers={"WWW-Authenticate": "Bearer"})

    return check


def _validation_message(exc: RequestValidationError) -> str:
    """One line naming each bad field: ``texts[2]: empty text``."""
    parts = []
    for error in exc.errors()[:3]:
        if error["type"] == "json_invalid":
            parts.append(f"body: invalid JSON ({error.get('ctx', {}).get('error', 'decode error')})")
            continue
        loc = [str(p) for p in error["loc"] if p != "body"] or ["body"]
        where = "".join(f"[{p}]" if p.isdigit() else f".{p}" for p in loc).lstrip(".")
        parts.append(f"{where}: {error['msg'].removeprefix('Value error, ')}")
    return "; ".join(parts)


def check_serve_options(models_dir: str | Path | None, max_batch: int, max_wait_ms: float, oos_threshold: float | None) -> None:
    """The service's options that no model is needed to check: checked once before ``--workers`` start
    their processes, and by ``create_app``."""
    if max_batch < 1 or max_wait_ms < 0:
        raise ConfigError(f"--max-batch must be >= 1 and --max-wait-ms >= 0 (got {max_batch}, {max_wait_ms})")
    check_threshold(oos_threshold)
    if oos_threshold is not None and models_dir:
        raise ConfigError("--oos-threshold is for one model (a threshold is on one model's score scale); serve its folder, "
                          "or give --oos-score alone, which takes each model's threshold for that score")


def create_app(model_dir: str | Path | None = None, models_dir: str | Path | None = None, api_key_file: str | Path | None = None,
               max_batch: int = 64, max_wait_ms: float = 2.0, oos_score: str | None = None,
               oos_threshold: float | None = None, allowed_hosts: list[str] | None = None) -> FastAPI:
    """The service as an ASGI application, its models loaded (errors raise ``BankintentError``).
    ``oos_score``: the out-of-scope score of every model (default: each model's own), with the
    threshold chosen for it at training, or ``oos_threshold`` (one model only: a threshold is on one
    model's scale), as ``predict --oos-threshold`` takes it. ``allowed_hosts``: the Host headers
    answered (None: any; ``serve`` on a loopback address answers its own names only, see ``LOOPBACK``)."""
    check_serve_options(models_dir, max_batch, max_wait_ms, oos_threshold)
    keys = ApiKeys(api_key_file) if api_key_file else None
    auth = [Depends(bearer_auth(keys))] if keys else []
    registry = Registry(model_dir=model_dir, models_dir=models_dir, threads=torch.get_num_threads(), oos_score=oos_score,
                        oos_threshold=oos_threshold)
    loaded = registry.load_all()
    log.info("serving %s", ", ".join(loaded) or f"nothing yet (no model folders in {models_dir})")
    service = Service(registry, max_batch, max_wait_ms)
    page = PAGE.read_text(encoding="utf-8")

    @asynccontextmanager
    async def lifespan(app):
        yield
        service.close()

    # FastAPIOffline serves Swagger UI's and ReDoc's scripts and styles from the service itself: /docs works offline
    app = FastAPIOffline(title="bankintent", version="1", lifespan=lifespan,
                         description="Intent classification for banking chatbots: LoRA fine-tuned transformers.")
    app.state.service = service

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 400 and exc.detail == "There was an error parsing the body":  # FastAPI's, for what json.loads raised
            why = {UnicodeDecodeError: "not UTF-8 text", RecursionError: "nested too deeply"}.get(type(exc.__cause__), "cannot be read")
            return JSONResponse({"error": f"body: invalid JSON ({why})"}, 400)
        return JSONResponse({"error": str(exc.detail)}, exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception):  # answered outside Guard: its headers added here
        log.exception("error answering %s", request.url.path)
        return JSONResponse({"error": f"internal error: {type(exc).__name__}"}, 500,
                            headers={name.decode(): value.decode() for name, value in SECURITY_HEADERS})

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        # a body sent as something else than JSON (curl -d's form encoding, text/plain) is an unsupported media
        # type (415), which FastAPI reports as a body that is no object; a body that is not JSON at all is a bad
        # request (400); JSON with bad fields is unprocessable (422)
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if request.method == "POST" and kind != "application/json" and not kind.endswith("+json"):
            return JSONResponse({"error": f"the body must be JSON, sent with 'Content-Type: application/json' (got "
                                          f"{kind or 'no content type'})"}, 415)
        malformed = all(error["type"] == "json_invalid" for error in exc.errors())
        return JSONResponse({"error": _validation_message(exc)}, 400 if malformed else 422)

    @app.post("/v1/predict", response_model=list[Prediction], responses=ERRORS, dependencies=auth)
    async def predict(request: PredictRequest) -> Response:
        """Predict the intent of each text."""
        return JSONResponse(await service.predict(request))

    @app.get("/v1/models", responses=ERRORS, dependencies=auth)
    async def models() -> dict[str, list[str]]:
        """The names of the models served (the ``model`` field of /v1/predict)."""
        return {"models": registry.names()}

    @app.get("/v1/models/{name}", response_model=ModelInfo, responses=ERRORS, dependencies=auth)
    async def model_info(name: str) -> dict:
        """What a model answers: its intents, how it was trained, and its out-of-scope fallback."""
        return _model_info(await service.model(name))

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """Alive."""
        return {"status": "ok"}

    @app.get("/readyz", responses=ERRORS)
    async def readyz() -> dict[str, str | list[str]]:
        """Ready: at least one model is loaded; ``not_loaded`` names the model folders that could not be.
        A model folder listed since start-up (a deploy) is loaded here, so that one that cannot be is
        named now, not at its first request."""
        for name in registry.unloaded():
            try:
                await asyncio.to_thread(registry.get, name)
            except BankintentError:  # logged once by the registry; named in not_loaded below
                pass
        names, failed = registry.names(), registry.failed()
        if not names:
            raise HTTPException(503, f"no model could be loaded: {', '.join(failed)} (the service's log says why)"
                                if failed else "no model folders in the models folder yet")
        return {"status": "ready", "models": names, **({"not_loaded": failed} if failed else {})}

    @app.get("/metrics", response_class=Response, dependencies=auth)
    async def metrics() -> Response:
        """Prometheus metrics: requests, errors, latency histogram, micro-batch sizes; answers by model and
        intent, out-of-scope answers and their share of the recent answers, confidence of in-scope answers."""
        return Response(service.metrics.exposition(registry.names()), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    if allowed_hosts:  # inside Guard (added last, so outermost): its 400s counted and given the security headers
        app.add_middleware(HostCheck, allowed_hosts=allowed_hosts)
    app.add_middleware(Guard, metrics=service.metrics, keys=keys)
    return app


def inference_threads() -> int:
    """Threads for the forward passes: $OMP_NUM_THREADS if set, else every core. The forward passes
    take most of a request's CPU time, and the event loop's work (HTTP, JSON) fits between them:
    on the 2-core development machine, two inference threads served 16 clients faster than one
    (benchmarks/serve_load.py, docs/benchmarks.md)."""
    return int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1)


MMAP_THRESHOLD = 128 * 1024


def return_freed_memory() -> bool:
    """On glibc, serve every allocation of 128 KiB or more (a batch's activations) from its own
    mmap, given back to the system when freed. glibc's default raises that threshold each time such a
    block is freed (up to 32 MiB); the service's ever-changing batch shapes then fragment the heap and
    its resident memory creeps up, which ``benchmarks/soak.py`` measures with and without the fixed threshold.
    Returns whether the setting took (False off glibc)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_mmap_threshold = -3  # malloc.h
    return bool(libc.mallopt(m_mmap_threshold, MMAP_THRESHOLD))


def prepare_process() -> int:
    """Set up a serving process: its inference threads (returned), its allocator, and a thread lock for
    tqdm, which otherwise makes a multiprocessing lock (a semaphore) when any library creates a bar,
    shown or not, and each worker process would leak it at shutdown."""
    threads = inference_threads()
    torch.set_num_threads(threads)
    return_freed_memory()
    std_tqdm.set_lock(threading.RLock())
    return threads


def forget_dead_workers(folder: str) -> None:
    """Drop the live gauges (the recent answers) of worker processes that have died: uvicorn starts a new
    worker in place of one that stopped, and the old one's window would count on beside it."""
    for path in Path(folder).glob("gauge_live*_*.db"):
        pid = int(path.stem.rsplit("_", 1)[1])
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            multiprocess.mark_process_dead(pid, folder)
        except PermissionError:  # alive, another user's
            pass


def app_from_environment() -> FastAPI:
    """The application of each uvicorn worker process (``--workers N``); options come from the parent.
    Its log says what it loads, as a single process's does, each line naming the worker."""
    logging.basicConfig(level=logging.INFO, format="worker %(process)d: %(message)s")
    prepare_process()
    forget_dead_workers(os.environ[METRICS_DIRECTORY])
    return create_app(**json.loads(os.environ[ENVIRONMENT]))


def serve(model_dir: str | None, models_dir: str | None, host: str, port: int, workers: int, api_key_file: str | None,
          max_batch: int, max_wait_ms: float, oos_score: str | None = None, oos_threshold: float | None = None,
          allowed_hosts: list[str] | None = None) -> None:
    """``allowed_hosts``: on a loopback ``host``, names answered besides its own (a reverse proxy that
    passes the client's Host header)."""
    import uvicorn

    if workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {workers}")
    if allowed_hosts and host not in LOOPBACK:
        raise ConfigError(f"--allowed-host is for a service on 127.0.0.1 or localhost; on {host} it answers every name")
    ported = [name for name in allowed_hosts or [] if ":" in name and not name.startswith("[")]
    if ported:
        raise ConfigError(f"--allowed-host {ported[0]}: a name without its port (the Host header's port is not compared)")
    check_port(host, port)
    threads = prepare_process()
    options = dict(model_dir=model_dir, models_dir=models_dir, api_key_file=api_key_file, max_batch=max_batch, max_wait_ms=max_wait_ms,
                   oos_score=oos_score, oos_threshold=oos_threshold,
                   allowed_hosts=[*LOOPBACK, *(allowed_hosts or [])] if host in LOOPBACK else None)
    settings = dict(host=host, port=port, access_log=False, log_level="info", http=HeadDeadline)
    if workers <= 1:
        app = create_app(**options)
        print(f"bankintent: serving on http://{host}:{port}  (web page /, API docs /docs; {threads} inference thread(s))", flush=True)
        # a hang-up (the terminal closed) drains the requests in flight as SIGTERM does, where it ended the process
        # at once; uvicorn handles SIGINT and SIGTERM only (with --workers, its supervisor restarts the workers on it)
        signal.signal(signal.SIGHUP, lambda signum, frame: os.kill(os.getpid(), signal.SIGTERM))
        uvicorn.run(app, **settings)
        return
    check_serve_options(models_dir, max_batch, max_wait_ms, oos_threshold)  # here, once, not in every worker
    Registry(model_dir=model_dir, models_dir=models_dir)  # a missing folder
    if api_key_file:
        read_api_keys(api_key_file)
    os.environ[ENVIRONMENT] = json.dumps(options)
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, threads // workers)))  # the workers share the cores
    print(f"bankintent: serving on http://{host}:{port} with {workers} worker processes", flush=True)
    # read by prometheus-client when a worker imports it; a folder the user named is kept, ours removed at exit
    given = os.environ.get(METRICS_DIRECTORY)
    with nullcontext(given) if given else tempfile.TemporaryDirectory(prefix="bankintent-metrics-") as metrics_directory:
        os.environ[METRICS_DIRECTORY] = metrics_directory
        # a worker answers the parent's health check only once torch is imported and its model loaded
        uvicorn.run("bankintent.serving:app_from_environment", factory=True, workers=workers, timeout_worker_healthcheck=120, **settings)


@contextmanager
def serve_in_background(app: FastAPI, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Run ``app`` on a real uvicorn server in a thread (tests, notebooks); yields its base URL."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, access_log=False, log_level="warning", http=HeadDeadline))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the server did not start")
        time.sleep(0.01)
    bound = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{bound}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
