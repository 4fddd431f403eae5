"""How `Solver.run` cuts a solve into compiled chunks, and where the host work of
each chunk (the record's transfer, the callbacks, checkpoints) runs."""

import concurrent.futures
import math
import time
from collections.abc import Callable
from typing import Any


# A watched run aims at chunks of about this many seconds (a progress bar a few
# times a second), and longer ones when the host work of a chunk is slow: each
# chunk takes at least `_HOST_SHARE` times as long as its callbacks did.
REFRESH_SECONDS = 0.25
_HOST_SHARE = 20


class ChunkSizes:
    """The lengths, in solver steps, of a run's chunks.

    Fixed (`every` steps), or timed: a first chunk of about 1 % of the solve, then
    chunks sized from the measured time per step to last about
    `REFRESH_SECONDS` (or `_HOST_SHARE` times the last chunk's host work).
    """

    def __init__(self, total: int, every: int | None):
        self.total = total
        self.timed = every is None
        self.size = min(total, math.ceil(total / 100) if every is None else every)

    def next(self, done: int) -> int:
        return min(self.size, self.total - done)

    def observe(self, steps: int, seconds: float, host_seconds: float) -> None:
        """A chunk of `steps` took `seconds` to compute; the last finished host work
        took `host_seconds`."""
        if not self.timed or seconds <= 0:
            return
        target = max(REFRESH_SECONDS, _HOST_SHARE * host_seconds)
        self.size = max(1, round(target * steps / seconds))


class HostWork:
    """Runs each chunk's host work on one background thread, in order, while the
    next chunk computes (on a CPU, XLA runs a small program on the calling thread,
    so without a thread the two could not overlap). At most one job is in flight:
    `submit` first waits for the previous one and re-raises its exception. Leaving
    the context waits for the last job (a checkpoint is never left half-done).

    With `threaded=False` the work runs at once, on the calling thread.
    """

    def __init__(self, threaded: bool):
        self._pool = (
            concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="eqbayes")
            if threaded
            else None
        )
        self._job: concurrent.futures.Future | None = None
        self.seconds = 0.0  # how long the last finished job took

    def _timed(self, fn: Callable[..., None], *args: Any) -> None:
        start = time.perf_counter()
        fn(*args)
        self.seconds = time.perf_counter() - start

    def submit(self, fn: Callable[..., None], *args: Any) -> None:
        self.wait()
        if self._pool is None:
            self._timed(fn, *args)
        else:
            self._job = self._pool.submit(self._timed, fn, *args)

    def wait(self) -> None:
        job, self._job = self._job, None
        if job is not None:
            job.result()

    def __enter__(self) -> "HostWork":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        try:
            if exc_info[0] is None:
                self.wait()
            elif self._job is not None:  # finish it, but keep the first error
                concurrent.futures.wait([self._job])
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
