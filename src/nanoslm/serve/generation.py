"""Making the tokens of many requests on one machine: jobs, and the one thread that steps them in turn.

Design: torch generation is CPU-bound (or one GPU), so every token is made on a single worker thread, never on
the event loop. Each request is a Job around Engine.stream (KV cache, its rows batched together). The worker
takes the job at the head of a queue, makes one step (one new token for each of its rows), hands the text to
the request's event loop and puts the job back at the tail: concurrent requests take turns token by token, on
whatever models they use, so none waits for another to finish and the cores are never oversubscribed. A job
whose client has gone is dropped at its next turn (its generator closed), so no work outlives its reader. A
slow reader does not hold the worker up: its text waits in its own queue (at most max_tokens pieces).

The worker also loads the models (`Scheduler.run`), so that one thread does all of torch's work. Each thread that
runs torch's parallel code keeps its own team of OpenMP threads, and libgomp's teams stop spinning between
parallel regions while it manages more threads than there are cores: one live thread that had loaded a model,
say a pool thread of asyncio.to_thread, halved the worker's tokens/s on 2 cores (docs/benchmarks.md, 2026-12-05
12:25).
"""

import asyncio
import concurrent.futures

import logging
import threading
import time
from collections import deque
from typing import AbstractSet, Callable, Optional, Sequence

import tiktoken

from ..engine import Engine, Sampling, generators
from ..generate import TextStream

log = logging.getLogger("nanoslm.serve")

Event = tuple[int, str, Optional[str]]  # (choice index, new text, finish reason or None)


class StopFilter:
    """Cuts a stream of text before the first stop sequence, holding back any tail that might begin one."""

    def __init__(self, stops: Sequence[str]):
        self.stops, self.held = [s for s in stops if s], ""

    def push(self, text: str) -> tuple[str, bool]:
        """(text that is safe to show, whether a stop sequence was reached)."""
        if not self.stops:
            return text, False
        self.held += text
        hits = [i for i in (self.held.find(s) for s in self.stops) if i >= 0]
        if hits:
            out, self.held = self.held[: min(hits)], ""
            return out, True
        keep = max((k for s in self.stops for k in range(1, min(len(s), len(self.held) + 1))
                    if self.held.endswith(s[:k])), default=0)
        cut = len(self.held) - keep
        out, self.held = self.held[:cut], self.held[cut:]
        return out, False

    def flush(self) -> str:
        out, self.held = self.held, ""
        return out


class _Row:
    def __init__(self, index: int, enc: tiktoken.Encoding, stops: Sequence[str], ends: AbstractSet[int]):
        self.index, self.text, self.stop, self.ends = index, TextStream(enc), StopFilter(stops), ends
        self.tokens, self.finish = 0, None

    def token(self, token: int) -> Optional[Event]:
        self.tokens += 1
        if token in self.ends:
            return self.end("stop")
        text, stopped = self.stop.push(self.text.push(token))
        if stopped:
            self.finish = "stop"
            return self.index, text, "stop"
        return (self.index, text, None) if text else None

    def end(self, reason: str) -> Event:
        """The row ends (end-of-text or max tokens): what the decoder and the stop filter still hold."""
        text, stopped = self.stop.push(self.text.flush())
        self.finish = "stop" if stopped else reason
        return self.index, text if stopped else text + self.stop.flush(), self.finish


class Job:
    """One request's stories: len(prompts) rows, row i sampling from seed + i (as `nanoslm generate`).

    `sink(events, done, error)` receives each step's events; it is called on the worker thread. A row also ends
    ("stop") at a token of `ends`: a chat model's role markers, which begin another turn and have no text.
    """

    def __init__(self, engine: Engine, enc: tiktoken.Encoding, prompts: Sequence[Sequence[int]], sampling: Sampling,
                 seed: int, stops: Sequence[str], sink: Callable[[list[Event], bool, Optional[str]], None],
                 ends: AbstractSet[int] = frozenset()):
        self.engine, self.prompts, self.sampling, self.seed = engine, [list(p) for p in prompts], sampling, seed
        self.rows = [_Row(i, enc, stops, ends) for i in range(len(prompts))]
        self.sink = sink
        self.cancelled = False  # set from any thread; the worker drops the job at its next turn
        self.started = self.ended = None
        self.work = 0  # tokens the engine made (rows cut by a stop sequence still run until the job ends)
        self._steps = None

    def cancel(self) -> None:
        self.cancelled = True

    def step(self) -> tuple[list[Event], bool]:
        """Make one token per unfinished row; (events, whether the job is done)."""
        if self._steps is None:
            self.started = time.perf_counter()
            self._steps = self.engine.stream(self.prompts, self.sampling, generators(self.seed, len(self.prompts)))
        try:
            tokens = next(self._steps)
        except StopIteration:
            events = [r.end("length" if r.tokens >= self.sampling.max_new_tokens else "stop")
                      for r in self.rows if r.finish is None]
            return events, self._done()
        events = []
        for row, token in zip(self.rows, tokens):
            if token is not None:
                self.work += 1
            if row.finish is not None:
                continue
            event = row.end("stop") if token is None else row.token(token)  # None: it sampled end-of-text
            if event is not None:
                events.append(event)
        if all(r.finish is not None for r in self.rows):
            return events, self._done()
        if all(r.tokens >= self.sampling.max_new_tokens for r in self.rows if r.finish is None):
            events += [r.end("length") for r in self.rows if r.finish is None]  # no need to ask for one more
            return events, self._done()
        return events, False

    def _done(self) -> bool:
        self.close()
        self.ended = time.perf_counter()
        return True

    def close(self) -> None:
        if self._steps is not None:
            self._steps.close()
            self._steps = None

    @property
    def completion_tokens(self) -> int:
        return sum(r.tokens for r in self.rows)

    def timing(self) -> dict:
        seconds = (self.ended or time.perf_counter()) - (self.started or time.perf_counter())
        tokens = self.completion_tokens
        return {"seconds": round(seconds, 4), "tokens_per_second": round(tokens / seconds, 2) if seconds > 0 else None}


class Scheduler:
    """The worker thread: runs jobs one step at a time, round robin (see the module docstring)."""

    def __init__(self):
        self._queue: deque[Job] = deque()
        self._calls: deque[tuple[concurrent.futures.Future, Callable, tuple]] = deque()  # run() asks, in order
        self._cv = threading.Condition()
        self._closed = False
        self._running: Optional[Job] = None  # the job the worker is stepping, out of the queue meanwhile
        self.stats = {"submitted": 0, "completed": 0, "cancelled": 0, "failed": 0, "tokens_generated": 0}
        self._thread = threading.Thread(target=self._run, name="nanoslm-generate", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> None:
        with self._cv:
            if self._closed:
                raise RuntimeError("the server is shutting down")
            self._queue.append(job)
            self.stats["submitted"] += 1
            self._cv.notify()

    async def run(self, fn: Callable, *args):
        """fn(*args) on the worker thread, between two turns (the module docstring says why); awaits its result."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._cv:
            if self._closed:
                raise RuntimeError("the server is shutting down")
            self._calls.append((future, fn, args))
            self._cv.notify()
        return await asyncio.wrap_future(future)

    def snapshot(self) -> dict:
        with self._cv:
            return {**self.stats, "active": len(self._queue) + (self._running is not None)}

    def cancel_all(self) -> None:
        with self._cv:
            for job in [*self._queue, *filter(None, [self._running])]:
                job.cancel()

    def close(self, timeout: float = 10.0) -> None:
        """Cancel every job, end the thread."""
        with self._cv:
            self._closed = True
            for job in [*self._queue, *filter(None, [self._running])]:
                job.cancel()
            for future, _, _ in self._calls:
                future.cancel()
            self._calls.clear()
            self._cv.notify_all()
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._queue and not self._calls and not self._closed:
                    self._cv.wait()
                call = self._calls.popleft() if self._calls else None
                if call is None:
                    if not self._queue:
                        return
                    job = self._running = self._queue.popleft()
            if call is not None:
                self._call(*call)
                continue
            try:
                self._turn(job)
            finally:
                with self._cv:
                    self._running = None

    def _call(self, future: concurrent.futures.Future, fn: Callable, args: tuple) -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(fn(*args))
        except BaseException as err:  # noqa: BLE001 - the caller's await raises it
            future.set_exception(err)

    def _turn(self, job: Job) -> None:
        if job.cancelled:
            job.close()
            self._count("cancelled", job)
            job.sink([], True, "cancelled")
            return
        work = job.work
        try:
            events, done = job.step()
        except Exception:  # noqa: BLE001 - a bug; logged with its traceback, the client gets a one-line error
            log.exception("generation failed")
            job.close()
            self._count("failed", job)
            job.sink([], True, "generation failed; see the server's log")
            return
        job.sink(events, done, None)
        with self._cv:
            self.stats["tokens_generated"] += job.work - work
            if done:
                self.stats["completed"] += 1
            else:
                self._queue.append(job)

    def _count(self, what: str, job: Job) -> None:
        with self._cv:
            self.stats[what] += 1
