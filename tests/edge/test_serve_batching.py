"""The serve worker's batching of generations (``edge/runtime/serve/engine.py``): which requests
share a batch, and how each row ends on its own. The rows here come from a scripted predictor;
``test_multi_adapter.py`` checks onnxruntime-genai's batches against each prompt alone."""

from __future__ import annotations

import asyncio
import threading

from tunewright.edge.runtime.serve.engine import BatchSpec, GenJob, Worker

#: a scripted model: prompt [p] answers p*10, p*10+1, ...; prompt [0] ends (EOS) after 2 tokens
EOS_AFTER = {0: 2}


def _answer(prompt, n):
    first = prompt[0] * 10
    stop = EOS_AFTER.get(prompt[0], n)
    return [first + i for i in range(min(n, stop))]


class Script:
    """``run`` as a predictor's ``generate_ids_batch``: the rows' answers, ``None`` once a row
    has ended (EOS), until every row has; records each batch it was asked for."""

    def __init__(self, fail: bool = False):
        self.batches: list[list[int]] = []
        self.closed = 0
        self.fail = fail

    def run(self, prompts, limits):
        if self.fail:
            raise ValueError("the model refuses these prompts")
        self.batches.append([p[0] for p in prompts])
        answers = [_answer(p, n) for p, n in zip(prompts, limits)]
        return self._rows(answers, max(limits))

    def _rows(self, answers, longest):
        try:
            for step in range(longest):
                yield [a[step] if step < len(a) else None for a in answers]
        finally:
            self.closed += 1


def _job(loop, script, prompt, n, *, key="k", cancel_after=None):
    job = GenJob(
        start=lambda: iter(_answer([prompt], n)),
        loop=loop,
        sink=asyncio.Queue(),
        batch=BatchSpec(key=key, ids=[prompt], max_new_tokens=n, run=script.run)
        if key is not None
        else None,
    )
    job.cancel_after = cancel_after  # type: ignore[attr-defined]
    return job


async def _collect(job):
    tokens = []
    while True:
        item = await asyncio.wait_for(job.sink.get(), 10)
        if item is None:
            return tokens
        if isinstance(item, Exception):
            return item
        tokens.append(item)
        if job.cancel_after is not None and len(tokens) >= job.cancel_after:
            job.cancelled.set()


def _serve(worker, jobs):
    """Submit ``jobs`` to a running worker at once, then collect what each got."""

    async def main():
        for job in jobs:
            worker.submit_generation(job)
        return await asyncio.gather(*(_collect(job) for job in jobs))

    return main


def _run(worker, make_jobs):
    worker.start()
    try:
        loop = asyncio.new_event_loop()
        try:
            jobs = make_jobs(loop)
            return jobs, loop.run_until_complete(_serve(worker, jobs)())
        finally:
            loop.close()
    finally:
        worker.stop()


def test_requests_of_one_key_arriving_together_share_a_batch_and_end_on_their_own():
    script = Script()
    worker = Worker(batch_window=0.2, max_batch=8)
    jobs, got = _run(
        worker,
        lambda loop: [
            _job(loop, script, 1, 5),
            _job(loop, script, 2, 3),  # its own max_tokens: ends first
            _job(loop, script, 0, 5),  # its EOS after 2 tokens
            _job(loop, script, 3, 5, key="other"),  # another model or sampling: alone
        ],
    )
    assert script.batches == [[1, 2, 0]]
    assert got == [[10, 11, 12, 13, 14], [20, 21, 22], [0, 1], [30, 31, 32, 33, 34]]
    assert [job.batched for job in jobs] == [True, True, True, False]
    assert script.closed == 1 and worker.batches == 1 and worker.generated == 15


def test_an_idle_worker_waits_for_the_end_of_a_burst():
    """Requests that come one after another, each within the window of the one before, make one
    batch although the last comes after the first's window has passed."""
    script = Script()
    worker = Worker(batch_window=0.15)

    def make(loop):
        return [_job(loop, script, p, 2) for p in (1, 2, 3)]

    worker.start()
    try:
        loop = asyncio.new_event_loop()
        try:
            jobs = make(loop)

            async def main():
                for job in jobs:
                    worker.submit_generation(job)
                    await asyncio.sleep(0.1)  # 0.2 s from the first to the last
                return await asyncio.gather(*(_collect(job) for job in jobs))

            got = loop.run_until_complete(main())
        finally:
            loop.close()
    finally:
        worker.stop()
    assert script.batches == [[1, 2, 3]]
    assert got == [[10, 11], [20, 21], [30, 31]]


def test_batches_hold_at_most_max_batch_rows():
    script = Script()
    worker = Worker(batch_window=0.2, max_batch=2)
    _, got = _run(worker, lambda loop: [_job(loop, script, p, 2) for p in (1, 2, 3, 4, 5)])
    assert script.batches == [[1, 2], [3, 4]]  # and the fifth alone
    assert got == [[p * 10, p * 10 + 1] for p in (1, 2, 3, 4, 5)]


def test_a_cancelled_row_ends_and_the_batch_goes_on_until_every_row_has():
    script = Script()
    worker = Worker(batch_window=0.2, step_delay=0.05)  # slow enough for the cancel to land
    _, got = _run(
        worker,
        lambda loop: [_job(loop, script, 1, 6, cancel_after=2), _job(loop, script, 2, 6)],
    )
    assert got[1] == [20, 21, 22, 23, 24, 25]
    assert got[0][:2] == [10, 11] and len(got[0]) < 6  # stopped within a turn of its cancel
    assert worker.cancelled == 1 and script.closed == 1


def test_a_batch_the_model_refuses_is_every_rows_error():
    script = Script(fail=True)
    worker = Worker(batch_window=0.2)
    _, got = _run(worker, lambda loop: [_job(loop, script, 1, 3), _job(loop, script, 2, 3)])
    assert all(isinstance(g, ValueError) and "refuses" in str(g) for g in got)


def test_one_row_batches_run_each_request_alone():
    script = Script()
    worker = Worker(batch_window=0.2, max_batch=1)
    _, got = _run(worker, lambda loop: [_job(loop, script, p, 3) for p in (1, 2)])
    assert script.batches == []
    assert got == [[10, 11, 12], [20, 21, 22]]


def test_without_a_window_the_first_request_starts_at_once_and_later_ones_batch():
    """No window: a request reaching an idle worker starts alone, at once; those that arrive
    while it takes its turn may still share a batch among themselves."""
    script = Script()
    worker = Worker(batch_window=0.0)
    started = threading.Event()

    def make(loop):
        first = _job(loop, script, 9, 2, key="k")

        def start_first():  # batchable, but alone: the others come while it prefills
            started.set()
            threading.Event().wait(0.3)
            return iter([90, 91])

        first.batch = None
        first.start = start_first
        return [first, _job(loop, script, 1, 2), _job(loop, script, 2, 2)]

    worker.start()
    try:
        loop = asyncio.new_event_loop()
        try:
            jobs = make(loop)

            async def main():
                worker.submit_generation(jobs[0])
                await loop.run_in_executor(None, started.wait, 5)
                for job in jobs[1:]:
                    worker.submit_generation(job)
                return await asyncio.gather(*(_collect(job) for job in jobs))

            got = loop.run_until_complete(main())
        finally:
            loop.close()
    finally:
        worker.stop()
    assert got == [[90, 91], [10, 11], [20, 21]]
    assert script.batches == [[1, 2]]
