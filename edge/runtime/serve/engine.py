"""The one worker thread that owns every model of a server.

onnxruntime-genai holds the GIL while it decodes (``research/serving.md``), so threads per
request would only take turns badly. One thread runs everything instead: it round-robins the
generators in flight (one token each per turn) and runs the classifier batches between turns.
Results go back to the asyncio loop with ``call_soon_threadsafe``.

Generations that can share a forward pass are batched: requests for one model and adapter, with
the same sampling settings and no seed, that reach an idle worker in one burst (each within
``batch_window`` of the one before) or arrive during one turn of a busy one are decoded as the
rows of one batch (the predictor's ``generate_ids_batch``: onnxruntime-genai's batched generator;
``bench/README.md`` has what it gains). Each row ends on its own (its EOS, its ``max_tokens``, its
client gone), and a request that arrives while a batch runs is not held back: it starts beside it
and takes turns.

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
from collections.abc import Callable, Hashable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

#: an idle worker waits for a burst of generations at most this many batch windows
BURST = 4


class Busy(Exception):
    """More requests than the queue holds."""


@dataclass(frozen=True)
class BatchSpec:
    """How a generation may join others in one batch: ``run(prompts, max_new_tokens)`` decodes
    several prompts together and yields, per step, one entry per row (a token id, or ``None`` once
    that row has ended: its EOS); jobs of equal ``key`` (one model, adapter and sampling) may
    share a batch."""

    key: Hashable
    ids: Sequence[int]
    max_new_tokens: int
    run: Callable[[list[Sequence[int]], list[int]], Iterator[list[int | None]]]


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
    #: set where the request may be decoded in a batch with others
    batch: BatchSpec | None = None
    #: whether the worker decodes it in a batch (set before its first token)
    batched: bool = False

    def push(self, item: Any) -> None:
        self.loop.call_soon_threadsafe(self.sink.put_nowait, item)


@dataclass
class GenBatch:
    """Jobs decoded together: ``rows`` yields a list of entries per step, one per job, in order."""

    jobs: list[GenJob]
    rows: Iterator[list[int | None]]
    done: list[bool] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.done = [False] * len(self.jobs)


class Worker:
    """The decode thread. ``submit_generation`` and ``submit_call`` may be called from any thread.

    ``step_delay`` (seconds, env ``TUNEWRIGHT_SERVE_STEP_DELAY``) sleeps after each token: only the
    tests use it, to make a tiny model slow enough to disconnect from or stop mid-answer.
    """

    def __init__(
        self,
        max_queue: int = 16,
        *,
        step_delay: float | None = None,
        batch_window: float = 0.01,
        max_batch: int = 8,
    ):
        self.max_queue = max_queue
        #: seconds an idle worker waits for more generations to batch with the first (0: none)
        self.batch_window = batch_window
        self.max_batch = max(1, max_batch)
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
        self.batches = 0  # batches of several generations started

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

    def _take(self, active: list[Any], block: bool) -> None:
        """Run the calls and start the generations waiting in the inbox, waiting for one when
        ``block``. An idle worker given a generation that may be batched waits for the burst it
        came in to end: until ``batch_window`` passes with no other (at most ``BURST`` windows
        after the first, or until ``max_batch`` are in)."""
        fresh: list[GenJob] = []
        first = deadline = None
        batchable = 0
        while True:
            timeout = 0.5 if block else None
            if deadline is not None:
                timeout = deadline - time.monotonic()
                block = timeout > 0 and batchable < self.max_batch
            try:
                item = self._inbox.get(block=block, timeout=timeout if block else None)
            except queue.Empty:
                break
            block = False
            if item is None:
                continue
            if isinstance(item, GenJob):
                fresh.append(item)
                if (
                    not active
                    and item.batch is not None
                    and self.batch_window > 0
                    and self.max_batch > 1
                ):
                    batchable += 1
                    now = time.monotonic()
                    first = first if first is not None else now
                    deadline = min(now + self.batch_window, first + BURST * self.batch_window)
                continue
            fn, future = item
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn())
                except Exception as exc:
                    future.set_exception(exc)
        self._start(fresh, active)

    def _start(self, fresh: list[GenJob], active: list[Any]) -> None:
        """Start ``fresh`` generations: those that may share a batch with another, in batches of at
        most ``max_batch``; the others one by one."""
        groups: dict[Hashable, list[GenJob]] = {}
        for job in fresh:
            if job.batch is not None and self.max_batch > 1:
                groups.setdefault(job.batch.key, []).append(job)
        batched: set[int] = set()
        for jobs in groups.values():
            for at in range(0, len(jobs), self.max_batch):
                chunk = jobs[at : at + self.max_batch]
                if len(chunk) < 2:
                    continue
                batched.update(id(job) for job in chunk)
                spec = chunk[0].batch
                assert spec is not None
                try:
                    rows = spec.run(
                        [job.batch.ids for job in chunk],  # type: ignore[union-attr]
                        [job.batch.max_new_tokens for job in chunk],  # type: ignore[union-attr]
                    )
                except Exception as exc:  # a prompt the model refuses: every row's error
                    for job in chunk:
                        job.push(exc)
                    continue
                self.batches += 1
                for job in chunk:
                    job.batched = True
                active.append(GenBatch(chunk, rows))
        for job in fresh:
            if id(job) in batched:
                continue
            try:
                job.tokens = job.start()
            except Exception as exc:  # a prompt the model refuses: the request's error
                job.push(exc)
                continue
            active.append(job)

    def _run(self) -> None:
        active: list[Any] = []
        while not self._stop.is_set():
            self._take(active, block=not active)
            for item in list(active):
                if isinstance(item, GenBatch):
                    self._step_batch(item, active)
                else:
                    self._step(item, active)
                if self.step_delay:
                    time.sleep(self.step_delay)
        for item in list(active):
            if isinstance(item, GenBatch):
                for row in range(len(item.jobs)):
                    if not item.done[row]:
                        self._end_row(item, row, cancelled=True)
                self._close(item.rows)
                active.remove(item)
            else:
                self._finish(item, active, cancelled=True)

    def _step(self, job: GenJob, active: list[Any]) -> None:
        if job.cancelled.is_set():
            self._finish(job, active, cancelled=True)
            return
        try:
            assert job.tokens is not None
            token = next(job.tokens)
        except StopIteration:
            self._finish(job, active)
            return
        except Exception as exc:
            job.push(exc)
            self._finish(job, active, push=False)
            return
        job.produced += 1
        self.generated += 1
        job.push(token)

    def _step_batch(self, batch: GenBatch, active: list[Any]) -> None:
        """One token for every row still running; a row ends with its EOS, its ``max_tokens``
        or its client, and the batch when every row has ended (rows that ended early still ride
        along in the runtime's batch until then, their tokens dropped)."""
        for row, job in enumerate(batch.jobs):
            if not batch.done[row] and job.cancelled.is_set():
                self._end_row(batch, row, cancelled=True)
        if all(batch.done):
            self._close(batch.rows)
            active.remove(batch)
            return
        try:
            tokens = next(batch.rows)
        except StopIteration:
            tokens = None
        except Exception as exc:
            for row, job in enumerate(batch.jobs):
                if not batch.done[row]:
                    job.push(exc)
                    batch.done[row] = True
            self._close(batch.rows)
            active.remove(batch)
            return
        for row, job in enumerate(batch.jobs):
            if batch.done[row]:
                continue
            token = tokens[row] if tokens is not None else None
            if token is None:
                self._end_row(batch, row)
                continue
            job.produced += 1
            self.generated += 1
            job.push(token)
            assert job.batch is not None
            if job.produced >= job.batch.max_new_tokens:
                self._end_row(batch, row)
        if all(batch.done):
            self._close(batch.rows)
            active.remove(batch)

    def _end_row(self, batch: GenBatch, row: int, *, cancelled: bool = False) -> None:
        batch.done[row] = True
        if cancelled:
            self.cancelled += 1
        batch.jobs[row].push(None)

    @staticmethod
    def _close(tokens: Any) -> None:
        close = getattr(tokens, "close", None)
        if close is not None:
            close()  # frees the runtime's generator (onnxruntime-genai's KV cache)

    def _finish(
        self, job: GenJob, active: list[Any], *, cancelled: bool = False, push: bool = True
    ) -> None:
        active.remove(job)
        self._close(job.tokens)
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
