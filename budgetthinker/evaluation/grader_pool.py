"""Grading worker processes with a hard wall-clock deadline per answer.

A signal time limit cannot interrupt sympy stuck in C code, and cannot be set at all off the main
thread (verl and TRL call rewards from worker threads). A worker process can always be killed:
`Pool.run` feeds many items to a few workers (evaluation), `Worker.ask` one item to one worker
(the RL reward, from any thread). A worker still busy at its deadline is killed and replaced; its
item counts as wrong and timed out.
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import time
from collections import deque
from collections.abc import Callable
from contextlib import suppress
from multiprocessing.connection import wait
from typing import Any

from budgetthinker.errors import UserError

logger = logging.getLogger(__name__)

READY = "ready"
STARTUP_LIMIT_S = 300.0  # spawning and importing sympy/math-verify; slow disks take a while


Job = Callable[..., Any]
"""What a worker runs per item: `job(*item) -> result`. A picklable module-level function (or a
`functools.partial` of one), so the pool knows nothing of what it runs (grading passes its own)."""


def _worker_main(conn: Any, job: Job, warm_up: Callable[[], Any] | None) -> None:
    """Worker process: receive `(index, item)`, send `(index, job(*item))`; `None` stops it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    if warm_up is not None:
        warm_up()  # e.g. the LaTeX parser, before the first deadline
    conn.send(READY)
    while True:
        task = conn.recv()
        if task is None:
            return
        index, item = task
        conn.send((index, job(*item)))


class Worker:
    """One grading process (spawned, so it is safe from threads and from CUDA parents)."""

    def __init__(self, job: Job, warm_up: Callable[[], Any] | None = None) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(child, job, warm_up), daemon=True)
        self.proc.start()
        child.close()
        self.ready = False
        self.index: int | None = None
        self.deadline = time.monotonic() + STARTUP_LIMIT_S

    def ask(self, item: tuple, deadline: float) -> Any:
        """The result for one item, or `None` when the worker was stuck past `deadline` seconds
        or died (then it is dead: kill it and start another)."""
        if not self.ready:
            if not self.conn.poll(STARTUP_LIMIT_S):
                raise UserError(
                    f"a grading worker did not start within {STARTUP_LIMIT_S:.0f} s "
                    "(machine overloaded?)"
                )
            self._started(self.conn.recv())
        self.conn.send((0, item))
        try:
            if self.conn.poll(deadline):
                return self.conn.recv()[1]
        except (EOFError, OSError):
            pass
        return None

    def _started(self, message: Any) -> None:
        if message != READY:
            raise RuntimeError(f"a grading worker sent {message!r} instead of starting")
        self.ready = True

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(5)
        self.conn.close()

    def stop(self) -> None:
        with suppress(OSError, ValueError):
            self.conn.send(None)
        self.proc.join(2)
        self.kill()


class Pool:
    """Worker processes fed one item at a time, each under a wall-clock deadline."""

    def __init__(self, size: int, job: Job, warm_up: Callable[[], Any] | None = None) -> None:
        self.job, self.warm_up = job, warm_up
        self.workers = [Worker(job, warm_up) for _ in range(size)]

    def run(
        self,
        items: list[tuple],
        deadline: float,
        bar: Any,
        lost: Callable[[tuple, bool], Any],
    ) -> list[Any]:
        """Results of `items` in order; `lost(item, timed_out)` stands in for an item whose
        worker was killed at the deadline (`timed_out`) or died."""
        results: list[Any] = [None] * len(items)
        todo = deque(range(len(items)))
        left = len(items)

        def give_work(w: Worker) -> None:
            if todo:
                w.index = todo.popleft()
                w.deadline = time.monotonic() + deadline
                w.conn.send((w.index, items[w.index]))
            else:
                w.index = None

        def finish(index: int, result: Any) -> None:
            nonlocal left
            results[index] = result
            left -= 1
            bar.update()

        def replace(w: Worker, timed_out: bool) -> None:
            finish(w.index, lost(items[w.index], timed_out))
            w.kill()
            self.workers[self.workers.index(w)] = Worker(self.job, self.warm_up)

        for w in self.workers:  # workers left idle by an earlier call
            if w.ready and w.index is None and todo:
                give_work(w)
        while left:
            now = time.monotonic()
            for w in list(self.workers):
                if now < w.deadline:
                    continue
                if not w.ready and w.conn.poll(0):
                    # Started long ago (the pool outlived its start-up limit while the model
                    # generated); its "ready" was waiting in the pipe.
                    w._started(w.conn.recv())
                    give_work(w)
                    continue
                if not w.ready:
                    raise UserError(
                        f"a grading worker did not start within {STARTUP_LIMIT_S:.0f} s (machine "
                        "overloaded?); rerun to resume, or set grading.workers=1 to grade "
                        "in-process"
                    )
                if w.index is not None:
                    logger.warning(
                        "item %d: grading worker still busy after %.1f s; killed and replaced",
                        w.index,
                        deadline,
                    )
                    replace(w, timed_out=True)
            busy = [w for w in self.workers if not w.ready or w.index is not None]
            nearest = min(w.deadline for w in busy)
            for conn in wait([w.conn for w in busy], timeout=max(nearest - now, 0.01)):
                w = next(w for w in self.workers if w.conn is conn)
                try:
                    message = conn.recv()
                except (EOFError, OSError):
                    if not w.ready:
                        raise RuntimeError(
                            f"a grading worker exited while starting (exit code "
                            f"{w.proc.exitcode}); run one `grade` in-process to see the error"
                        ) from None
                    logger.warning("item %d: grading worker died; counted as wrong", w.index)
                    replace(w, timed_out=False)
                    continue
                if w.ready:
                    index, result = message
                    finish(index, result)
                else:
                    w._started(message)
                give_work(w)
            for w in self.workers:  # fresh replacements wait for work once ready
                if w.ready and w.index is None and todo:
                    give_work(w)
        return results

    def close(self) -> None:
        for w in self.workers:
            with suppress(OSError, ValueError):
                w.conn.send(None)
        for w in self.workers:
            w.proc.join(2)
            w.kill()
