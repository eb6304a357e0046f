"""The one worker thread that owns every model of a server.

onnxruntime-genai holds the GIL while it decodes (``research/serving.md``), so threads per
request would only take turns badly. One thread runs everything instead: it round-robins the
generators in flight (one token each per turn) and runs the classifier batches between turns.
Results go back to the asyncio loop with ``call_soon_threadsafe``.

Admission is counted here too: at most ``max_queue`` requests are admitted at once (generating,
waiting for their first turn, or in a classifier batch); one more is refused with :class:`Busy`,
which the app answers with 429 and ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any


class Busy(Exception):
    """More requests than the queue holds."""


@dataclass
class GenJob:
    """One generation: ``tokens`` (an iterator of ids, made on the worker thread by ``start``)
    pushed one at a time to ``sink`` on ``loop``; ``None`` ends the stream, an exception is
    passed on as is."""

    start: Callable[[], Iterator[int]]
    loop: asyncio.AbstractEventLoop
    sink: asyncio.Queue
    cancelled: threading.Event = field(default_factory=threading.Event)
    produced: int = 0
    tokens: Iterator[int] | None = None

    def push(self, item: Any) -> None:
        self.loop.call_soon_threadsafe(self.sink.put_nowait, item)


class Worker:
    """The decode thread. ``submit_generation`` and ``submit_call`` may be called from any thread.

    ``step_delay`` (seconds, env ``TUNEWRIGHT_SERVE_STEP_DELAY``) sleeps after each token: only the
    tests use it, to make a tiny model slow enough to disconnect from or stop mid-answer.
    """

    def __init__(self, max_queue: int = 16, *, step_delay: float | None = None):
        self.max_queue = max_queue
        self.step_delay = (
            step_delay
            if step_delay is not None
            else float(os.environ.get("TUNEWRIGHT_SERVE_STEP_DELAY") or 0)
        )
        self._inbox: queue.Queue = queue.Queue()
        self._admitted = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tunewright-decode", daemon=True)
        self.generated = 0  # tokens, all jobs
        self.cancelled = 0  # generations stopped before their end

    # -- admission ----------------------------------------------------------------------------

    def admit(self) -> None:
        """Count one request in, or raise :class:`Busy`."""
        with self._lock:
            if self._admitted >= self.max_queue:
                raise Busy(f"the server holds {self.max_queue} requests at once; retry shortly")
            self._admitted += 1

    def release(self) -> None:
        with self._lock:
            self._admitted = max(0, self._admitted - 1)

    @property
    def depth(self) -> int:
        return self._admitted

    # -- work ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the thread (again, after :meth:`stop`: an app's lifespan may run more than once)."""
        if self._thread.is_alive():
            return
        if self._thread.ident is not None:  # it ran and stopped
            self._thread = threading.Thread(target=self._run, name="tunewright-decode", daemon=True)
        self._stop.clear()
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._inbox.put(None)
        self._thread.join(timeout)

    def submit_generation(self, job: GenJob) -> None:
        self._inbox.put(job)

    def submit_call(self, fn: Callable[[], Any]) -> Future:
        future: Future = Future()
        self._inbox.put((fn, future))
        return future

    def _take(self, active: list[GenJob], block: bool) -> None:
        while True:
            try:
                item = self._inbox.get(block=block, timeout=0.5 if block else None)
            except queue.Empty:
                return
            block = False
            if item is None:
                continue
            if isinstance(item, GenJob):
                try:
                    item.tokens = item.start()
                except Exception as exc:  # a prompt the model refuses: the request's error
                    item.push(exc)
                    continue
                active.append(item)
            else:
                fn, future = item
                if future.set_running_or_notify_cancel():
                    try:
                        future.set_result(fn())
                    except Exception as exc:
                        future.set_exception(exc)

    def _run(self) -> None:
        active: list[GenJob] = []
        while not self._stop.is_set():
            self._take(active, block=not active)
            for job in list(active):
                if job.cancelled.is_set():
                    self._finish(job, active, cancelled=True)
                    continue
                try:
                    assert job.tokens is not None
                    token = next(job.tokens)
                except StopIteration:
                    self._finish(job, active)
                    continue
                except Exception as exc:
                    job.push(exc)
                    self._finish(job, active, push=False)
                    continue
                job.produced += 1
                self.generated += 1
                job.push(token)
                if self.step_delay:
                    time.sleep(self.step_delay)
        for job in active:
            self._finish(job, active, cancelled=True)

    def _finish(
        self, job: GenJob, active: list[GenJob], *, cancelled: bool = False, push: bool = True
    ) -> None:
        active.remove(job)
        close = getattr(job.tokens, "close", None)
        if close is not None:
            close()  # frees the runtime's generator (onnxruntime-genai's KV cache)
        if cancelled:
            self.cancelled += 1
        if push:
            job.push(None)


class Batcher:
    """Gathers a classifier's requests that arrive within ``window`` seconds (at most
    ``max_batch`` items) into one call of ``predict(items)`` on the worker thread."""

    def __init__(
        self,
        worker: Worker,
        predict: Callable[[list[Any]], list[Any]],
        *,
        window: float = 0.005,
        max_batch: int = 32,
    ):
        self.worker = worker
        self.predict = predict
        self.window = window
        self.max_batch = max_batch
        self._pending: list[tuple[list[Any], asyncio.Future]] = []
        self._timer: asyncio.TimerHandle | None = None
        self.batches = 0
        #: called with each batch's size (the app counts them in /metrics)
        self.on_batch: Callable[[int], None] | None = None

    async def __call__(self, items: list[Any]) -> list[Any]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future = loop.create_future()
        self._pending.append((list(items), future))
        if sum(len(i) for i, _ in self._pending) >= self.max_batch:
            self._flush()
        elif self._timer is None:
            self._timer = loop.call_later(self.window, self._flush)
        return await future

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        pending, self._pending = self._pending, []
        if not pending:
            return
        self.batches += 1
        everything = [item for items, _ in pending for item in items]
        if self.on_batch is not None:
            self.on_batch(len(everything))
        done = self.worker.submit_call(lambda: self.predict(everything))
        loop = asyncio.get_running_loop()

        def hand_out(result: Future) -> None:
            error = result.exception()
            start = 0
            for items, future in pending:
                if future.done():
                    continue
                if error is not None:
                    future.set_exception(error)
                else:
                    future.set_result(result.result()[start : start + len(items)])
                start += len(items)

        done.add_done_callback(lambda result: loop.call_soon_threadsafe(hand_out, result))


__all__ = ["Busy", "GenJob", "Worker", "Batcher"]
