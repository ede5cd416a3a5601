"""From the worker thread to the client: a job's events reach the event loop in batches, and leave as one
server-sent-events write per batch or as one JSON answer. Shared by /v1/completions and /v1/chat/completions.

Why batches: the worker makes a token every millisecond or two. Waking the event loop for each one put a thread
hop, a JSON chunk and a socket write on the loop per token, and on a small CPU the loop's thread then competes
with torch's threads for the cores (and the GIL) while they run the next token (issue #23 measured 160-190
tokens/s through the server against the engine's 510-925). Now the worker wakes the loop for the first text at
once and then at most every FLUSH_S seconds (and at once when the job ends); each wake-up delivers everything
made meanwhile, still one chunk per piece of text, written together.
"""

import asyncio
import threading
import time
from typing import Callable, Optional

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from . import protocol
from .generation import Event, Job
from .limits import ApiError

FLUSH_S = 0.02  # at most 50 deliveries a second per stream: smooth to the eye, cheap for the event loop


class Sink:
    """The event loop's end of a job; `__call__` runs on the worker thread, `take` on the event loop."""

    def __init__(self, flush_s: float = FLUSH_S, clock: Callable[[], float] = time.monotonic):
        self.loop, self.ready = asyncio.get_running_loop(), asyncio.Event()
        self.flush_s, self.clock = flush_s, clock
        self._lock = threading.Lock()
        self._events: list[Event] = []
        self._done, self._error = False, None
        self._woken = False  # a wake-up is on its way to the loop and has not been taken yet
        self._last = float("-inf")  # when the loop was last woken

    def __call__(self, events: list[Event], done: bool, error: Optional[str]) -> None:
        with self._lock:
            self._events += events
            self._done, self._error = self._done or done, self._error or error
            now = self.clock()
            if self._woken or not (done or error or now - self._last >= self.flush_s):
                return  # the next step, or the job's end, brings these along
            self._woken, self._last = True, now
        try:
            self.loop.call_soon_threadsafe(self.ready.set)
        except RuntimeError:  # the loop has closed: nobody is listening any more
            pass

    async def take(self) -> tuple[list[Event], bool, Optional[str]]:
        """Everything delivered since the last take: (events, whether the job is done, its error or None)."""
        await self.ready.wait()
        with self._lock:
            self.ready.clear()
            self._woken = False
            events, self._events = self._events, []
            return events, self._done, self._error


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


def stream(job: Job, sink: Sink, shaper: protocol.Shaper, usage: Callable[[], dict], include_usage: bool) -> Response:
    return EventStream(_events(job, sink, shaper, usage, include_usage), job)


async def _events(job: Job, sink: Sink, shaper: protocol.Shaper, usage, include_usage: bool):
    try:
        opening = shaper.opening(len(job.rows))
        if opening:
            yield b"".join(protocol.sse(c) for c in opening)
        while True:
            events, done, error = await sink.take()
            out = [protocol.sse(c) for index, text, finish in events for c in shaper.events(index, text, finish)]
            if error is not None and error != "cancelled":
                out.append(protocol.sse(ApiError(500, error, code="generation_failed").body()))
            if error is None and done:
                if include_usage:
                    out.append(protocol.sse(shaper.usage_chunk(usage(), job.timing())))
                out.append(protocol.sse("[DONE]"))
            if out:
                yield b"".join(out)
            if error is not None or done:
                return  # after an error, no [DONE]: the stream did not complete
    finally:
        job.cancel()


async def complete(request: Request, job: Job, sink: Sink, shaper: protocol.Shaper, usage) -> Response:
    """Wait for the whole completion; the job is cancelled if the client goes away meanwhile."""

    async def watch():
        while (await request.receive())["type"] != "http.disconnect":
            pass
        job.cancel()

    watcher = asyncio.create_task(watch())
    texts, finishes = [""] * len(job.rows), ["stop"] * len(job.rows)
    try:
        while True:
            events, done, error = await sink.take()
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
