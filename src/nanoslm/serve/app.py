"""The web app: the playground page, OpenAI's /v1/completions, /v1/chat/completions and /v1/models, /health."""

import asyncio
import contextlib
import logging
import random
from importlib import resources
from typing import Optional

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from . import chat_api, delivery, limits, protocol
from .generation import Job, Scheduler
from .limits import ApiError
from .registry import Loaded, Registry

log = logging.getLogger("nanoslm.serve")

STATIC = resources.files("nanoslm.serve") / "static"


def error_response(err: ApiError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status)


def create_app(registry: Registry, scheduler: Optional[Scheduler] = None) -> Starlette:
    """The app; it owns `scheduler` (made here when None) and closes it at shutdown."""
    scheduler = scheduler or Scheduler()

    async def load(entry) -> Loaded:
        try:
            return await registry.load(entry, scheduler.run)  # torch's work stays on the worker (generation.py)
        except RuntimeError as err:  # the scheduler is closed
            raise ApiError(503, str(err), code="shutting_down") from None

    async def index(request: Request) -> Response:
        return FileResponse(str(STATIC / "index.html"), headers={"Cache-Control": "no-cache"})

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "streams": scheduler.snapshot(), "loaded": registry.loaded()})

    async def settings(request: Request) -> Response:
        return JSONResponse(limits.settings())

    async def list_models(request: Request) -> Response:
        entries = [e for e in await registry.entries() if e.available]
        chats = await asyncio.to_thread(lambda: [registry.is_chat(e) for e in entries])  # may read checkpoints
        return JSONResponse({"object": "list", "data": [
            {"id": e.id, "object": "model", "created": 0, "owned_by": "nanoslm", "source": e.source, "chat": chat}
            for e, chat in zip(entries, chats)]})

    async def page_models(request: Request) -> Response:
        entries = await registry.entries(refresh=request.query_params.get("refresh") == "1")
        return JSONResponse({"models": [e.public() for e in entries], "note": registry.experiments_note,
                             "repo": str(registry.repo) if registry.repo else None})

    async def model_info(request: Request) -> Response:
        entry = await registry.find(request.query_params.get("id"))
        return JSONResponse((await load(entry)).info)

    async def completions(request: Request) -> Response:
        req = protocol.parse_completion(protocol.parse_json(await _body(request)))
        entry = await registry.find(req.model)
        loaded = await load(entry)
        prompts = [loaded.enc.encode_ordinary(p) for p in req.prompts for _ in range(req.n)]
        return await generate(request, req, entry.id, loaded, prompts, protocol.Shaper)

    async def chat_completions(request: Request) -> Response:
        req = chat_api.parse_chat(protocol.parse_json(await _body(request, "messages", "messages of at most")))
        entry = await registry.find(req.model)
        loaded = await load(entry)
        ids = chat_api.prompt_ids(entry.id, req.messages, loaded.enc, loaded.chat, loaded.engine.block_size)
        return await generate(request, req, entry.id, loaded, [ids] * req.n, chat_api.ChatShaper)

    async def generate(request: Request, req: protocol.Request, model_id: str, loaded: Loaded,
                       prompts: list[list[int]], shape: type[protocol.Shaper]) -> Response:
        """Run `prompts` (the request's rows, as ids) on the worker; stream or answer in `shape`'s shapes."""
        sampling = req.sampling(loaded.engine.model.config.vocab_size)  # parsing checked the table's ranges
        seed = req.seed if req.seed is not None else random.SystemRandom().randrange(2**31)
        sink = delivery.Sink()
        job = Job(loaded.engine, loaded.enc, prompts, sampling, seed, req.stop, sink, ends=loaded.ends)
        shaper = shape(model_id, seed)
        read = sum(len(p) for p in prompts)
        usage = lambda: {"prompt_tokens": read, "completion_tokens": job.completion_tokens,  # noqa: E731
                         "total_tokens": read + job.completion_tokens}
        try:
            scheduler.submit(job)
        except RuntimeError as err:
            raise ApiError(503, str(err), code="shutting_down") from None
        if req.stream:
            return delivery.stream(job, sink, shaper, usage, req.include_usage)
        return await delivery.complete(request, job, sink, shaper, usage)

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
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/api/settings", settings),
        Route("/api/models", page_models),
        Route("/api/model", model_info),
        Mount("/static", StaticFiles(directory=str(STATIC)), name="static"),
    ]
    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={HTTPException: not_found, ApiError: api_error, Exception: server_error})
    app.state.registry, app.state.scheduler = registry, scheduler
    return app


async def _body(request: Request, param: str = "prompt", text: str = "a prompt at most") -> bytes:
    """The request body, refused (413) past MAX_BODY_BYTES before it is all read; `param` holds the long text."""
    declared = request.headers.get("content-length")
    too_big = ApiError(413, f"the request body must be at most {limits.MAX_BODY_BYTES} bytes ({text} "
                            f"{limits.MAX_PROMPT_CHARS} characters)", param=param, code="request_too_large")
    if declared and declared.isdigit() and int(declared) > limits.MAX_BODY_BYTES:
        raise too_big
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limits.MAX_BODY_BYTES:
            raise too_big
        chunks.append(chunk)
    return b"".join(chunks)
