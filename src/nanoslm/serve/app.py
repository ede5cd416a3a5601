"""The web app: the playground page, OpenAI's /v1/completions and /v1/models, /health."""

import asyncio
import contextlib
import logging
import random
from importlib import resources
from typing import Optional

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from . import limits, protocol
from .generation import Job, Scheduler
from .limits import ApiError
from .registry import Registry

log = logging.getLogger("nanoslm.serve")

STATIC = resources.files("nanoslm.serve") / "static"


def error_response(err: ApiError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status)


class _Sink:
    """The event loop's end of a job: the worker thread's events land in an asyncio queue."""

    def __init__(self):
        self.loop, self.queue = asyncio.get_running_loop(), asyncio.Queue()

    def __call__(self, events, done, error) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, (events, done, error))
        except RuntimeError:  # the loop has closed: nobody is listening any more
            pass


class EventStream(StreamingResponse):
    """Server-sent events that cancel their job however the response ends (done, client gone, shutdown)."""

    def __init__(self, content, job: Job):
        super().__init__(content, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.job = job

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.job.cancel()


def create_app(registry: Registry, scheduler: Optional[Scheduler] = None) -> Starlette:
    """The app; it owns `scheduler` (made here when None) and closes it at shutdown."""
    scheduler = scheduler or Scheduler()

    async def index(request: Request) -> Response:
        return FileResponse(str(STATIC / "index.html"), headers={"Cache-Control": "no-cache"})

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "streams": scheduler.snapshot(), "loaded": registry.loaded()})

    async def settings(request: Request) -> Response:
        return JSONResponse(limits.settings())

    async def list_models(request: Request) -> Response:
        entries = await registry.entries()
        return JSONResponse({"object": "list", "data": [
            {"id": e.id, "object": "model", "created": 0, "owned_by": "nanoslm", "source": e.source}
            for e in entries if e.available]})

    async def page_models(request: Request) -> Response:
        entries = await registry.entries(refresh=request.query_params.get("refresh") == "1")
        return JSONResponse({"models": [e.public() for e in entries], "note": registry.experiments_note,
                             "repo": str(registry.repo) if registry.repo else None})

    async def model_info(request: Request) -> Response:
        entry = await registry.find(request.query_params.get("id"))
        return JSONResponse((await registry.load(entry)).info)

    async def completions(request: Request) -> Response:
        req = protocol.parse_completion(protocol.parse_json(await _body(request)))
        entry = await registry.find(req.model)
        loaded = await registry.load(entry)
        engine, enc = loaded.engine, loaded.enc
        sampling = req.sampling(engine.model.config.vocab_size)  # the table's ranges: parse_completion checked them
        seed = req.seed if req.seed is not None else random.SystemRandom().randrange(2**31)
        prompts = [enc.encode_ordinary(p) for p in req.prompts for _ in range(req.n)]
        sink = _Sink()
        job = Job(engine, enc, prompts, sampling, seed, req.stop, sink)
        shaper = protocol.Shaper(entry.id, seed)
        usage = lambda: {"prompt_tokens": sum(len(p) for p in prompts), "completion_tokens": job.completion_tokens,
                         "total_tokens": sum(len(p) for p in prompts) + job.completion_tokens}  # noqa: E731
        try:
            scheduler.submit(job)
        except RuntimeError as err:
            raise ApiError(503, str(err), code="shutting_down") from None
        if req.stream:
            return EventStream(_events(job, sink, shaper, usage, req.include_usage), job)
        return await _complete(request, job, sink, shaper, usage)

    async def not_found(request: Request, exc: HTTPException) -> Response:
        message = f"{request.method} {request.url.path}: {exc.detail}"
        return JSONResponse({"error": {"message": message, "type": "invalid_request_error", "param": None,
                                       "code": None}}, status_code=exc.status_code)

    async def api_error(request: Request, exc: ApiError) -> Response:
        return error_response(exc)

    async def server_error(request: Request, exc: Exception) -> Response:  # a bug: uvicorn logs its traceback
        return error_response(ApiError(500, "internal server error; see the server's log", code="internal_error"))

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        scheduler.close()

    routes = [
        Route("/", index),
        Route("/health", health),
        Route("/healthz", health),
        Route("/v1/models", list_models),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/api/settings", settings),
        Route("/api/models", page_models),
        Route("/api/model", model_info),
        Mount("/static", StaticFiles(directory=str(STATIC)), name="static"),
    ]
    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={HTTPException: not_found, ApiError: api_error, Exception: server_error})
    app.state.registry, app.state.scheduler = registry, scheduler
    return app


async def _body(request: Request) -> bytes:
    """The request body, refused (413) past MAX_BODY_BYTES before it is all read."""
    declared = request.headers.get("content-length")
    too_big = ApiError(413, f"the request body must be at most {limits.MAX_BODY_BYTES} bytes (a prompt at most "
                            f"{limits.MAX_PROMPT_CHARS} characters)", param="prompt", code="request_too_large")
    if declared and declared.isdigit() and int(declared) > limits.MAX_BODY_BYTES:
        raise too_big
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limits.MAX_BODY_BYTES:
            raise too_big
        chunks.append(chunk)
    return b"".join(chunks)


async def _events(job: Job, sink: _Sink, shaper: protocol.Shaper, usage, include_usage: bool):
    try:
        while True:
            events, done, error = await sink.queue.get()
            for index, text, finish in events:
                yield protocol.sse(shaper.chunk(index, text, finish))
            if error is not None:
                if error != "cancelled":
                    yield protocol.sse(ApiError(500, error, code="generation_failed").body())
                return  # no [DONE]: the stream did not complete
            if done:
                break
        if include_usage:
            yield protocol.sse(shaper.usage_chunk(usage(), job.timing()))
        yield protocol.sse("[DONE]")
    finally:
        job.cancel()


async def _complete(request: Request, job: Job, sink: _Sink, shaper: protocol.Shaper, usage) -> Response:
    """Wait for the whole completion; the job is cancelled if the client goes away meanwhile."""

    async def watch():
        while (await request.receive())["type"] != "http.disconnect":
            pass
        job.cancel()

    watcher = asyncio.create_task(watch())
    texts, finishes = [""] * len(job.rows), ["stop"] * len(job.rows)
    try:
        while True:
            events, done, error = await sink.queue.get()
            for index, text, finish in events:
                texts[index] += text
                if finish:
                    finishes[index] = finish
            if error == "cancelled":
                raise ApiError(503, "the completion was cancelled (the server is stopping)", code="cancelled")
            if error is not None:
                raise ApiError(500, error, code="generation_failed")
            if done:
                break
    finally:
        watcher.cancel()
        job.cancel()
    return JSONResponse(shaper.completion(texts, finishes, usage(), job.timing()))
