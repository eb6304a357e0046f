"""The HTTP application: OpenAI-compatible chat for generators, the Open Inference Protocol v2 for
classifiers, Prometheus metrics, a live data profile. Built with FastAPI; run by uvicorn
(:mod:`tunewright.edge.runtime.serve.cli`).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hmac
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from ..bundle import BundleError
from .engine import Batcher, BatchSpec, Busy, GenJob, Worker
from .profile import LiveProfile

#: paths answered without an API key (a load balancer's probes)
OPEN_PATHS = ("/", "/v2/health/live", "/v2/health/ready")
#: items (texts or images) in one inference request
MAX_ITEMS = 64


@dataclass
class ServeOptions:
    """What the operator chose (``serve --help`` says each)."""

    api_key: str | None = None
    allow_remote_images: bool = False
    max_body_bytes: int = 16 * 1024 * 1024
    max_queue: int = 16
    batch_window: float = 0.005
    max_batch: int = 32
    max_tokens_cap: int = 1024
    default_max_tokens: int = 256
    context: int | None = None
    record_dir: Path | None = None
    record_images: bool = False


@dataclass
class ServedModel:
    name: str
    folder: Path
    predictor: Any
    profile: LiveProfile
    batcher: Batcher | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    #: one adapter of a multi-adapter bundle (``tunewright export RUN_A RUN_B ...``), served as a
    #: model of its own over the shared predictor; ``None``: the bundle's base model
    adapter: str | None = None
    #: the model id of that bundle's base model (set with ``adapter``)
    base: str | None = None

    @property
    def generates(self) -> bool:
        return bool(getattr(self.predictor, "generates", False))

    @property
    def kind(self) -> str:
        return str(self.predictor.manifest.get("task_kind", ""))

    @property
    def takes_images(self) -> bool:
        return self.kind in ("image_text_to_text", "image_classification")

    @property
    def context(self) -> int:
        return int(self.predictor.codec.max_length)

    @property
    def labels(self) -> list[str]:
        """A classifier's label names: its adapter's own in a bundle of several classifier runs."""
        labels_for = getattr(self.predictor, "labels_for", None)
        labels = labels_for(self.adapter) if labels_for else self.predictor.labels
        return list(labels or [])


class ApiError(Exception):
    """An error answered as JSON: OpenAI's shape under ``/v1``, the Open Inference Protocol's
    (``{"error": "..."}``) under ``/v2``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ):
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param
        self.headers = headers or {}
        self.extra = extra


def error_body(path: str, status: int, message: str, code=None, param=None, **extra) -> dict:
    if path.startswith("/v2"):
        return {"error": message, **({"code": code} if code else {}), **extra}
    kind = {
        401: "authentication_error",
        404: "not_found_error",
        413: "request_too_large",
        429: "rate_limit_error",
    }.get(status, "invalid_request_error" if status < 500 else "server_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code, **extra}}


def error_response(path: str, status: int, message: str, headers=None, **extra) -> JSONResponse:
    return JSONResponse(error_body(path, status, message, **extra), status, headers=headers)


# ---------------------------------------------------------------------------------------------
# Requests (the OpenAPI schema comes from these)
# ---------------------------------------------------------------------------------------------


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: str | list[dict[str, Any]] | None = None


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1, le=1)
    #: not OpenAI's: generate ``max_tokens`` tokens even past the end-of-sequence token (vLLM's name)
    ignore_eos: bool = False


# ---------------------------------------------------------------------------------------------
# The gate: metrics, body limit and API key, before any route
# ---------------------------------------------------------------------------------------------


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "tunewright_serve_requests",
            "HTTP requests",
            ["model", "endpoint", "status"],
            registry=r,
        )
        self.errors = Counter(
            "tunewright_serve_errors",
            "HTTP requests answered 4xx/5xx",
            ["model", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "tunewright_serve_request_seconds",
            "request latency, to the last byte",
            ["model", "endpoint"],
            registry=r,
        )
        self.ttft = Histogram(
            "tunewright_serve_time_to_first_token_seconds",
            "time from the request to its first generated token",
            ["model"],
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.tokens = Counter(
            "tunewright_serve_generated_tokens", "tokens generated", ["model"], registry=r
        )
        self.prompt_tokens = Counter(
            "tunewright_serve_prompt_tokens", "prompt tokens read", ["model"], registry=r
        )
        self.items = Counter(
            "tunewright_serve_classified_items", "texts or images classified", ["model"], registry=r
        )
        self.cancelled = Counter(
            "tunewright_serve_cancelled_generations",
            "generations stopped early (client gone, stop string)",
            ["model"],
            registry=r,
        )
        self.batches = Counter(
            "tunewright_serve_batches", "classifier batches run", ["model"], registry=r
        )
        self.batched_generations = Counter(
            "tunewright_serve_batched_generations",
            "generations decoded in a batch with others",
            ["model"],
            registry=r,
        )
        self.batch_size = Histogram(
            "tunewright_serve_batch_size",
            "items per classifier batch",
            ["model"],
            buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=r,
        )
        self.queue = Gauge(
            "tunewright_serve_queue_depth",
            "requests admitted and not yet done",
            ["model"],
            registry=r,
        )
        self.drift = Gauge(
            "tunewright_serve_drift_psi",
            "population stability index of served traffic against the bundle's training profile",
            ["model", "feature"],
            registry=r,
        )


def _endpoint(path: str) -> str:
    if path.startswith("/v1/chat"):
        return "chat"
    if path.startswith("/v2/models/") and path.endswith("/infer"):
        return "infer"
    if path.startswith(("/v1", "/v2")):
        return "meta"
    return "other"


class Gate:
    """ASGI middleware: counts and times every request, refuses bodies over the limit (413,
    whether or not a Content-Length says so) and requests without the API key (401)."""

    def __init__(self, app, *, state: ServerState):
        self.app = app
        self.state = state

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        path = scope.get("path", "")
        scope.setdefault("state", {})
        status_seen = {"status": 500}

        async def send_counted(message):
            if message["type"] == "http.response.start":
                status_seen["status"] = message["status"]
            await send(message)

        try:
            await self._guarded(scope, receive, send_counted, path)
        finally:
            status = status_seen["status"]
            model = scope["state"].get("model", "")
            endpoint = _endpoint(path)
            m = self.state.metrics
            m.requests.labels(model, endpoint, str(status)).inc()
            if status >= 400:
                m.errors.labels(model, str(status)).inc()
            m.latency.labels(model, endpoint).observe(time.perf_counter() - started)

    async def _guarded(self, scope, receive, send, path):
        options = self.state.options
        if options.api_key and path not in OPEN_PATHS:
            headers = {k.decode("latin-1").lower(): v for k, v in scope.get("headers", [])}
            given = headers.get("authorization", b"")
            if given[:7].lower() == b"bearer ":
                given = given[7:]
            else:
                given = headers.get("x-api-key", b"")
            if not hmac.compare_digest(given.strip(), options.api_key.encode()):
                response = error_response(
                    path,
                    401,
                    "missing or wrong API key (send Authorization: Bearer KEY)",
                    headers={"WWW-Authenticate": "Bearer"},
                )
                return await response(scope, receive, send)
        if scope.get("method") in ("POST", "PUT", "PATCH"):
            limit = options.max_body_bytes
            for key, value in scope.get("headers", []):
                if key.lower() == b"content-length" and value.isdigit() and int(value) > limit:
                    return await self._too_large(scope, receive, send, path, limit)
            chunks, size = [], 0
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > limit:
                    return await self._too_large(scope, receive, send, path, limit)
                chunks.append(chunk)
                if not message.get("more_body"):
                    break
            body = b"".join(chunks)
            replayed = False

            async def replay():
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()

            return await self.app(scope, replay, send)
        return await self.app(scope, receive, send)

    async def _too_large(self, scope, receive, send, path, limit):
        response = error_response(
            path, 413, f"the request body is larger than the limit of {limit:,} bytes"
        )
        await response(scope, receive, send)


# ---------------------------------------------------------------------------------------------
# The server's state
# ---------------------------------------------------------------------------------------------


class Recorder:
    """``--record DIR``: one JSONL file per model, in the formats ``tunewright validate`` reads
    (chat ``messages``; ``text`` + ``label``). Image bytes only with ``--record-images``."""

    def __init__(self, folder: Path, *, images: bool = False):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.images = images
        self._lock = threading.Lock()

    def write(self, model: str, record: dict) -> None:
        line = json.dumps(record, ensure_ascii=False)
        with self._lock, open(self.folder / f"{model}.jsonl", "a", encoding="utf-8") as out:
            out.write(line + "\n")

    def chat(self, model: str, messages: list[dict], reply: str) -> None:
        """One exchange; none when the reply is blank (validate refuses an empty turn)."""
        if not reply.strip():
            return
        kept = []
        for message in messages:
            content = message.get("content")
            if isinstance(content, list):
                parts = [
                    part
                    for part in content
                    if part.get("type") != "image_url" or (self.images and _is_data_url(part))
                ]
                if not any(p.get("type") == "image_url" for p in parts):
                    content = "".join(p.get("text", "") for p in parts)
                else:
                    content = parts
            kept.append({"role": message["role"], "content": content or ""})
        self.write(model, {"messages": [*kept, {"role": "assistant", "content": reply}]})


def _is_data_url(part: dict) -> bool:
    url = (part.get("image_url") or {}).get("url", "")
    return isinstance(url, str) and url.startswith("data:")


class ServerState:
    def __init__(self, models: dict[str, ServedModel], options: ServeOptions, worker: Worker):
        self.models = models
        self.options = options
        self.worker = worker
        self.metrics = Metrics()
        self.recorder = (
            Recorder(options.record_dir, images=options.record_images)
            if options.record_dir
            else None
        )
        self.created = int(time.time())
        self.ready = False
        self.vision_settings: Any = None

    def model(self, name: str, path: str) -> ServedModel:
        if name not in self.models:
            raise ApiError(
                404,
                f"unknown model {name!r}; known: {', '.join(sorted(self.models))}",
                code="model_not_found",
                param="model",
                known=sorted(self.models),
            )
        return self.models[name]

    def admit(self, model: ServedModel) -> None:
        try:
            self.worker.admit()
        except Busy as exc:
            raise ApiError(429, str(exc), code="busy", headers={"Retry-After": "1"}) from None
        self.metrics.queue.labels(model.name).inc()

    def release(self, model: ServedModel) -> None:
        self.worker.release()
        self.metrics.queue.labels(model.name).dec()

    def settings(self):
        """The image rules ``tunewright validate`` applies (``vision`` settings), with remote URLs
        as the operator allows."""
        if self.vision_settings is None:
            from tunewright.vision import VisionSettings

            self.vision_settings = VisionSettings(allow_remote=self.options.allow_remote_images)
        return self.vision_settings


def _refused(exc: Any, where: str) -> ApiError:
    """400 from a :class:`tunewright.vision.ImageRefused`: its message, its reason as the code."""
    return ApiError(400, f"{where}: {exc}", code=exc.reason, param="messages")


def check_image_reference(state: ServerState, url: Any, where: str):
    """A checked PIL image from an ``image_url`` url: validate's rules, validate's reasons."""
    from tunewright.vision import ImageRefused, check_reference

    if not isinstance(url, str) or not url.startswith(("data:", "http://", "https://")):
        raise ApiError(
            400,
            f"{where}: the url must be a data URL (data:image/png;base64,...)"
            + (
                " or an http(s) URL"
                if state.options.allow_remote_images
                else "; remote URLs are off"
            ),
            code="reference",
            param="messages",
        )
    try:
        return check_reference(url, root=None, settings=state.settings()).image
    except ImageRefused as exc:
        raise _refused(exc, where) from None


def check_image_bytes(state: ServerState, data: bytes, where: str):
    from tunewright.vision import ImageRefused, check_image

    try:
        return check_image(data, state.settings()).image
    except ImageRefused as exc:
        raise _refused(exc, where) from None


# ---------------------------------------------------------------------------------------------
# Chat completions
# ---------------------------------------------------------------------------------------------


def _prepare_messages(state: ServerState, model: ServedModel, messages: list[ChatMessage]):
    """Messages as the predictor takes them, image parts checked and replaced by images; and the
    messages as sent (for the recorder)."""
    sent = [m.model_dump(exclude_none=True) for m in messages]
    prepared: list[dict[str, Any]] = []
    images = 0
    for number, message in enumerate(messages, 1):
        content = message.content
        if isinstance(content, list):
            parts: list[dict[str, Any]] = []
            for part in content:
                kind = part.get("type")
                if kind == "text":
                    parts.append({"type": "text", "text": str(part.get("text", ""))})
                elif kind == "image_url":
                    if model.kind != "image_text_to_text":
                        raise ApiError(
                            400,
                            f"model {model.name!r} takes no images (message {number})",
                            code="images-not-supported",
                            param="messages",
                        )
                    images += 1
                    limit = state.settings().max_images
                    if images > limit:
                        raise ApiError(
                            400,
                            f"more than {limit} images, more than vision.max_images allows",
                            code="too-many-images",
                            param="messages",
                        )
                    spec = part.get("image_url") or {}
                    url = spec.get("url") if isinstance(spec, dict) else spec
                    image = check_image_reference(state, url, f"message {number}, image {images}")
                    detail = spec.get("detail") if isinstance(spec, dict) else None
                    parts.append(
                        {
                            "type": "image_url",
                            "image_url": {"url": image, **({"detail": detail} if detail else {})},
                        }
                    )
                else:
                    raise ApiError(
                        400,
                        f"message {number}: content part {kind!r} is not text or image_url",
                        param="messages",
                    )
            if model.kind != "image_text_to_text":
                parts_text = "".join(p["text"] for p in parts)
                prepared.append({"role": message.role, "content": parts_text})
            else:
                prepared.append({"role": message.role, "content": parts})
        else:
            prepared.append({"role": message.role, "content": content or ""})
    return prepared, sent


def _encode(model: ServedModel, prepared: list[dict]) -> tuple[list[int], Any]:
    predictor = model.predictor
    try:
        if model.kind == "image_text_to_text":
            return predictor.encode(prepared)
        return predictor.prompt_ids(prepared), None
    except BundleError as exc:
        raise ApiError(400, str(exc), param="messages") from None


class Decoder:
    """Token ids to text as they come, holding back what could still become a stop string or an
    unfinished UTF-8 character."""

    def __init__(self, codec: Any, stops: Sequence[str]):
        self.codec = codec
        self.stops = [s for s in stops if s]
        self.hold = max((len(s) for s in self.stops), default=1) - 1
        self.ids: list[int] = []
        self.sent = 0
        self.stopped = False

    def add(self, token: int) -> str:
        self.ids.append(token)
        text = self.codec.decode(self.ids)
        for stop in self.stops:
            at = text.find(stop)
            if at >= 0:
                self.stopped = True
                return self._emit(text[:at])
        if text.endswith("\ufffd"):
            return ""
        return self._emit(text[: len(text) - self.hold] if self.hold else text)

    def finish(self) -> str:
        return "" if self.stopped else self._emit(self.codec.decode(self.ids))

    def _emit(self, text: str) -> str:
        new = text[self.sent :]
        self.sent = max(self.sent, len(text))
        return new


def _batch_spec(
    model: ServedModel, ids: list[int], pixels: Any, options: dict[str, Any]
) -> BatchSpec | None:
    """How this generation may share a batch with others (the worker batches those of one key),
    or ``None`` where it must run alone: a predictor without ``generate_ids_batch``, an image, a
    seed (a seeded answer must not depend on its neighbours), a prompt the predictor will not
    pad."""
    predictor = model.predictor
    batch = getattr(predictor, "generate_ids_batch", None)
    if batch is None or pixels is not None or options.get("seed") is not None:
        return None
    if not predictor.can_batch(ids):
        return None
    sampling = {k: v for k, v in options.items() if k not in ("max_new_tokens", "seed")}
    key = (id(predictor), tuple(sorted(sampling.items())))
    return BatchSpec(
        key=key,
        ids=ids,
        max_new_tokens=options["max_new_tokens"],
        run=lambda prompts, limits: batch(prompts, max_new_tokens=limits, **sampling),
    )


async def _generate(
    state: ServerState, model: ServedModel, ids: list[int], pixels: Any, body: ChatRequest, started
) -> AsyncIterator[tuple[str, str | None]]:
    """``(text, finish_reason)`` pieces; the last has the finish reason. Cancelling the consumer
    (a client gone) stops the generation on the worker thread."""
    limit = body.max_completion_tokens or body.max_tokens or state.options.default_max_tokens
    options: dict[str, Any] = {
        "max_new_tokens": limit,
        "temperature": body.temperature,
        "top_p": body.top_p,
        "seed": body.seed,
        "stop_at_eos": not body.ignore_eos,
    }
    if model.adapter is not None:
        options["adapter"] = model.adapter
    predictor = model.predictor
    if pixels is not None:
        start = lambda: predictor.generate_ids(ids, pixels, **options)
    else:
        start = lambda: predictor.generate_ids(ids, **options)
    loop = asyncio.get_running_loop()
    job = GenJob(
        start=start, loop=loop, sink=asyncio.Queue(), batch=_batch_spec(model, ids, pixels, options)
    )
    stops = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    decoder = Decoder(predictor.codec, stops)
    metrics = state.metrics
    produced = 0
    state.worker.submit_generation(job)
    try:
        while True:
            token = await job.sink.get()
            if token is None:
                break
            if isinstance(token, Exception):
                raise token
            if produced == 0:
                metrics.ttft.labels(model.name).observe(time.perf_counter() - started)
                if job.batched:
                    metrics.batched_generations.labels(model.name).inc()
            produced += 1
            metrics.tokens.labels(model.name).inc()
            piece = decoder.add(token)
            if decoder.stopped:
                job.cancelled.set()
                metrics.cancelled.labels(model.name).inc()
                yield piece, None
                break
            if piece:
                yield piece, None
        rest = decoder.finish()
        reason = "length" if produced >= limit and not decoder.stopped else "stop"
        body.__dict__["_completion_tokens"] = produced
        yield rest, reason
    except (asyncio.CancelledError, GeneratorExit):
        job.cancelled.set()
        metrics.cancelled.labels(model.name).inc()
        raise
    finally:
        job.cancelled.set()


#: how often a non-streamed generation looks for its client (seconds)
DISCONNECT_POLL = 0.2


async def _unless_disconnected(request: Request, work: Awaitable[None]) -> None:
    """Await ``work``, cancelling it when the client goes away: a non-streamed answer nobody waits
    for stops generating, as a streamed one does (Starlette cancels only the latter by itself).
    The client gone, the request ends as 499 (nginx's "client closed request") in the metrics."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL)
            if done:
                return task.result()
            if await request.is_disconnected():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                raise ApiError(499, "the client closed the connection", code="client_closed")
    finally:
        if not task.done():
            task.cancel()


def build_app(models: dict[str, ServedModel], options: ServeOptions, worker: Worker) -> FastAPI:
    from contextlib import asynccontextmanager

    state = ServerState(models, options, worker)
    for name, served in models.items():
        if served.batcher is not None:

            def counted(size: int, name: str = name) -> None:
                state.metrics.batches.labels(name).inc()
                state.metrics.batch_size.labels(name).observe(size)

            served.batcher.on_batch = counted

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        worker.start()
        state.ready = True
        yield
        state.ready = False
        worker.stop()

    app = FastAPI(
        title="tunewright edge serve",
        description="OpenAI-compatible chat for generator bundles; Open Inference Protocol v2 "
        "for classifier bundles.",
        lifespan=lifespan,
    )
    app.state.serve = state

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        return error_response(
            request.url.path,
            exc.status,
            exc.message,
            headers=exc.headers,
            code=exc.code,
            param=exc.param,
            **exc.extra,
        )

    @app.exception_handler(Exception)
    async def failed(request: Request, exc: Exception):  # a model that failed: JSON, not text
        return error_response(
            request.url.path, 500, f"the model failed: {type(exc).__name__}: {exc}"
        )

    @app.get("/", include_in_schema=False)
    async def playground():
        from fastapi.responses import HTMLResponse

        from .playground import PAGE

        return HTMLResponse(PAGE)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        problems = exc.errors()
        if any(p.get("type") == "json_invalid" for p in problems):
            message = "the body is not valid JSON"
        else:
            message = "; ".join(
                f"{'.'.join(str(x) for x in p.get('loc', ())[1:]) or 'body'}: {p.get('msg')}"
                for p in problems[:5]
            )
        return error_response(request.url.path, 400, message, code="invalid_request")

    # -- OpenAI-compatible ------------------------------------------------------------------

    @app.get("/v1/models")
    async def list_models():
        return {
            "object": "list",
            "data": [
                {
                    "id": name,
                    "object": "model",
                    "created": state.created,
                    "owned_by": "tunewright",
                    "task_kind": m.kind,
                    **({"adapter": m.adapter, "base": m.base} if m.adapter is not None else {}),
                }
                for name, m in models.items()
            ],
        }

    @app.post(
        "/v1/chat/completions",
        responses={
            200: {"content": {"text/event-stream": {}}},
            400: {},
            401: {},
            404: {},
            413: {},
            429: {},
        },
    )
    async def chat_completions(body: ChatRequest, request: Request):
        started = time.perf_counter()
        model = state.model(body.model, request.url.path)
        request.state.model = model.name
        if not model.generates:
            raise ApiError(
                400,
                f"model {model.name!r} is a classifier: POST /v2/models/{model.name}/infer",
                param="model",
            )
        cap = options.max_tokens_cap
        asked = body.max_completion_tokens or body.max_tokens
        if asked is not None and asked > cap:
            name = "max_completion_tokens" if body.max_completion_tokens else "max_tokens"
            raise ApiError(
                400, f"{name} {asked} is over the server's cap of {cap}", param=name, limit=cap
            )
        prepared, sent = await run_in_threadpool(_prepare_messages, state, model, body.messages)
        ids, pixels = await run_in_threadpool(_encode, model, prepared)
        context = options.context or model.context
        if len(ids) > context:
            raise ApiError(
                400,
                f"the prompt is {len(ids)} tokens, longer than the model's context of {context}",
                code="context_length_exceeded",
                param="messages",
                limit=context,
            )
        model.profile.observe(prompt_tokens=len(ids))
        state.metrics.prompt_tokens.labels(model.name).inc(len(ids))
        state.admit(model)
        completion_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        recorder = state.recorder

        def usage(completion: int) -> dict:
            return {
                "prompt_tokens": len(ids),
                "completion_tokens": completion,
                "total_tokens": len(ids) + completion,
            }

        if not body.stream:
            pieces, reason = [], "stop"

            async def collect() -> None:
                nonlocal reason
                async for piece, finish in _generate(state, model, ids, pixels, body, started):
                    pieces.append(piece)
                    reason = finish or reason

            try:
                await _unless_disconnected(request, collect())
            finally:
                state.release(model)
            reply = "".join(pieces)
            if recorder:
                recorder.chat(model.name, sent, reply)
            return {
                "id": completion_id,
                "object": "chat.completion",
                "created": created,
                "model": model.name,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": reply},
                        "finish_reason": reason,
                        "logprobs": None,
                    }
                ],
                "usage": usage(body.__dict__.get("_completion_tokens", 0)),
            }

        include_usage = bool(body.stream_options and body.stream_options.include_usage)

        def chunk(delta: dict, finish: str | None, with_usage: dict | None = None) -> str:
            payload: dict[str, Any] = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model.name,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]
                if with_usage is None
                else [],
            }
            if with_usage is not None:
                payload["usage"] = with_usage
            return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"

        async def events():
            pieces = []
            try:
                yield chunk({"role": "assistant", "content": ""}, None)
                async for piece, finish in _generate(state, model, ids, pixels, body, started):
                    pieces.append(piece)
                    if finish:
                        yield chunk({"content": piece} if piece else {}, finish)
                    elif piece:
                        yield chunk({"content": piece}, None)
                if include_usage:
                    yield chunk({}, None, usage(body.__dict__.get("_completion_tokens", 0)))
                yield "data: [DONE]\n\n"
                if recorder:
                    recorder.chat(model.name, sent, "".join(pieces))
            except BundleError as exc:  # the model failed mid-answer: an error event, then end
                yield f"data: {json.dumps(error_body('/v1', 500, str(exc)))}\n\n"
            finally:
                state.release(model)

        return StreamingResponse(
            events(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    # -- Open Inference Protocol v2 ---------------------------------------------------------

    @app.get("/v2")
    async def v2_server():
        return {"name": "tunewright", "version": _version(), "extensions": []}

    @app.get("/v2/health/live")
    async def live():
        return {"live": True}

    @app.get("/v2/health/ready")
    async def ready():
        if not state.ready:
            return JSONResponse({"ready": False}, 503)
        return {"ready": True}

    def classifier(name: str, request: Request) -> ServedModel:
        model = state.model(name, request.url.path)
        request.state.model = model.name
        if model.generates:
            raise ApiError(
                400,
                f"model {name!r} generates text: POST /v1/chat/completions",
                known=sorted(n for n, m in models.items() if not m.generates),
            )
        return model

    def metadata(model: ServedModel) -> dict:
        image = model.kind == "image_classification"
        labels = model.labels
        return {
            "name": model.name,
            "versions": ["1"],
            "platform": "tunewright",
            "inputs": [{"name": "image" if image else "text", "datatype": "BYTES", "shape": [-1]}],
            "outputs": [
                {"name": "label", "datatype": "BYTES", "shape": [-1]},
                {"name": "probabilities", "datatype": "FP32", "shape": [-1, len(labels)]},
            ],
            "parameters": {
                "labels": labels,
                "task_kind": model.kind,
                **({"adapter": model.adapter, "base": model.base} if model.adapter else {}),
            },
        }

    @app.get("/v2/models/{name}")
    @app.get("/v2/models/{name}/versions/{version}")
    async def model_metadata(name: str, request: Request, version: str | None = None):
        model = state.model(name, request.url.path)
        request.state.model = model.name
        if model.generates:
            return {
                "name": name,
                "versions": ["1"],
                "platform": "tunewright",
                "inputs": [],
                "outputs": [],
            }
        return metadata(model)

    @app.get("/v2/models/{name}/ready")
    @app.get("/v2/models/{name}/versions/{version}/ready")
    async def model_ready(name: str, request: Request, version: str | None = None):
        state.model(name, request.url.path)
        return {"name": name, "ready": state.ready}

    @app.post("/v2/models/{name}/infer", responses={400: {}, 401: {}, 404: {}, 413: {}, 429: {}})
    @app.post("/v2/models/{name}/versions/{version}/infer")
    async def infer(name: str, request: Request, version: str | None = None):
        model = classifier(name, request)
        try:
            body = json.loads(await request.body())
        except (ValueError, UnicodeDecodeError):
            raise ApiError(400, "the body is not valid JSON") from None
        items = await run_in_threadpool(_infer_items, state, model, body)
        wanted = [o.get("name") for o in body.get("outputs") or [] if isinstance(o, dict)]
        for output in wanted:
            if output not in ("label", "probabilities"):
                raise ApiError(400, f"unknown output {output!r}; outputs: label, probabilities")
        state.admit(model)
        try:
            assert model.batcher is not None
            results = await model.batcher(items)
        finally:
            state.release(model)
        state.metrics.items.labels(model.name).inc(len(items))
        labels = model.labels or (sorted(results[0]["scores"]) if results else [])
        for item, result in zip(items, results):
            model.profile.observe(label=result["label"])
            if state.recorder and isinstance(item, str):
                state.recorder.write(model.name, {"text": item, "label": result["label"]})
        outputs = [
            {
                "name": "label",
                "datatype": "BYTES",
                "shape": [len(results)],
                "data": [r["label"] for r in results],
            },
            {
                "name": "probabilities",
                "datatype": "FP32",
                "shape": [len(results), len(labels)],
                "data": [r["scores"][label] for r in results for label in labels],
            },
        ]
        if wanted:
            outputs = [o for o in outputs if o["name"] in wanted]
        answer: dict[str, Any] = {
            "model_name": model.name,
            "model_version": "1",
            "outputs": outputs,
            "parameters": {"labels": labels},
        }
        if isinstance(body, dict) and body.get("id") is not None:
            answer["id"] = str(body["id"])
        return answer

    # -- monitoring -------------------------------------------------------------------------

    @app.get("/metrics")
    async def metrics():
        for name, model in models.items():
            for feature, value in (
                ("prompt_tokens", model.profile.length_psi()),
                ("labels", model.profile.label_psi()),
            ):
                if value is not None:
                    state.metrics.drift.labels(name, feature).set(value)
        return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/profile")
    async def profile():
        """Each model's training profile (from its bundle), live profile and drift (PSI)."""
        return {name: model.profile.snapshot() for name, model in models.items()}

    app.add_middleware(Gate, state=state)
    return app


def _infer_items(state: ServerState, model: ServedModel, body: Any) -> list[Any]:
    """The texts or checked images of an inference request."""
    if not isinstance(body, dict) or not isinstance(body.get("inputs"), list) or not body["inputs"]:
        raise ApiError(400, 'the request needs "inputs": [{"name", "shape", "datatype", "data"}]')
    if len(body["inputs"]) != 1:
        raise ApiError(400, f"model {model.name!r} takes one input, got {len(body['inputs'])}")
    tensor = body["inputs"][0]
    if not isinstance(tensor, dict) or tensor.get("datatype") != "BYTES":
        raise ApiError(400, "the input's datatype must be BYTES (texts, or base64 images)")
    data = _flatten(tensor.get("data"))
    if not data or not all(isinstance(x, str) for x in data):
        raise ApiError(400, "the input's data must be a non-empty list of strings")
    if len(data) > MAX_ITEMS:
        raise ApiError(400, f"{len(data)} items in one request, more than the limit of {MAX_ITEMS}")
    shape = tensor.get("shape")
    if isinstance(shape, list) and shape and all(isinstance(s, int) for s in shape):
        count = 1
        for s in shape:
            count *= s
        if count != len(data):
            raise ApiError(400, f"shape {shape} does not hold {len(data)} elements")
    if model.kind != "image_classification":
        return list(data)
    images = []
    for number, item in enumerate(data, 1):
        where = f"image {number}"
        if item.startswith(("data:", "http://", "https://")):
            images.append(check_image_reference(state, item, where))
            continue
        try:
            raw = base64.b64decode(item, validate=True)
        except (binascii.Error, ValueError):
            raise ApiError(400, f"{where}: not base64 (nor a data URL)", code="reference") from None
        images.append(check_image_bytes(state, raw, where))
    return images


def _flatten(data: Any) -> list[Any]:
    if not isinstance(data, list):
        return []
    out: list[Any] = []
    for item in data:
        out.extend(_flatten(item) if isinstance(item, list) else [item])
    return out


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("tunewright")
    except Exception:
        return "0"


__all__ = ["build_app", "ServeOptions", "ServedModel", "ApiError", "Decoder"]
