"""How `Solver.run` cuts a solve into compiled chunks, and where the host work of
each chunk (the record's transfer, the callbacks, checkpoints) runs."""

import collections
import concurrent.futures
import math
import threading
import time
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax


# A watched run aims at chunks of about this many seconds (a progress bar a few
# times a second), and longer ones when the host work of a chunk is slow: each
# chunk takes at least `_HOST_SHARE` times as long as its callbacks did.
REFRESH_SECONDS = 0.25
_HOST_SHARE = 20
# Seconds per step of recent solves, by what they compile to, so that a solve run
# again starts with a chunk of the right length.
_PACE: "collections.OrderedDict[Any, float]" = collections.OrderedDict()
_PACE_SIZE = 64


class ChunkSizes:
    """The lengths, in solver steps, of a run's chunks.

    Fixed (`every` steps), or timed: chunks sized from the measured time per step
    to last about `REFRESH_SECONDS` (or `_HOST_SHARE` times the last chunk's host
    work). The first chunk is sized from the last solve with the same `key` (the
    same compiled program on the same shapes), else 1 % of the solve.
    """

    def __init__(self, total: int, every: int | None, key: Any = None):
        self.total = total
        self.timed = every is None
        self.key = key
        pace = _PACE.get(key) if self.timed and key is not None else None
        if every is not None:
            self.size = min(total, every)
        elif pace is None:
            self.size = math.ceil(total / 100)
        else:
            self.size = max(1, min(total, round(REFRESH_SECONDS / pace)))

    def next(self, done: int) -> int:
        return min(self.size, self.total - done)

    def observe(self, steps: int, seconds: float, host_seconds: float) -> None:
        """A chunk of `steps` took `seconds` to compute; the last finished host work
        took `host_seconds`."""
        if not self.timed or seconds <= 0:
            return
        target = max(REFRESH_SECONDS, _HOST_SHARE * host_seconds)
        self.size = max(1, round(target * steps / seconds))
        if self.key is not None:
            _PACE[self.key] = seconds / steps
            _PACE.move_to_end(self.key)
            if len(_PACE) > _PACE_SIZE:
                _PACE.popitem(last=False)


def pace_key(program: Any, *parts: Any) -> Any:
    """What a solve's speed depends on: its (hashable) compiled `program`, the
    structure of `parts` (state and arguments, static configuration included) and
    the shapes and dtypes of their arrays; `None` if something cannot be hashed."""
    leaves, treedef = jax.tree.flatten(parts)
    shapes = tuple((x.shape, str(x.dtype)) for x in leaves if eqx.is_array(x))
    key = (program, treedef, shapes)
    try:
        hash(key)
    except TypeError:
        return None
    return key


_POOL: concurrent.futures.ThreadPoolExecutor | None = None
_WORKER = "eqbayes-host"


def _pool() -> concurrent.futures.ThreadPoolExecutor:
    """The one background thread of every run in this process (a thread that lives
    on: a new one would set up JAX's per-thread state again in every run)."""
    global _POOL
    if _POOL is None:
        _POOL = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=_WORKER)
    return _POOL


class HostWork:
    """Runs each chunk's host work on a background thread, in order, while the next
    chunk computes (on a CPU, XLA runs a small program on the calling thread, so
    without a thread the two could not overlap).

    A job waits for `release()`, which the run calls just before it dispatches the
    next chunk: the job's Python then runs while that chunk computes (with the
    interpreter lock released), never while the dispatch needs the lock. At most one
    job is in flight: `submit` first waits for the previous one and re-raises its
    exception. Leaving the context runs the last job and waits for it (a checkpoint
    is never left half-done). With `threaded=False`, or in a run started by a
    callback (on the background thread itself), jobs run at once, on the calling
    thread.
    """

    def __init__(self, threaded: bool):
        nested = threading.current_thread().name.startswith(_WORKER)
        self._pool = _pool() if threaded and not nested else None
        self._job: concurrent.futures.Future | None = None
        self._go = threading.Event()
        self.seconds = 0.0  # how long the last finished job took

    def _timed(self, go: threading.Event | None, fn: Callable[..., None], *args: Any):
        if go is not None:
            go.wait()
        start = time.perf_counter()
        fn(*args)
        self.seconds = time.perf_counter() - start

    def submit(self, fn: Callable[..., None], *args: Any, last: bool = False) -> None:
        """Queues `fn(*args)`; the `last` job of a run (nothing left to overlap it
        with) runs at once, on the calling thread."""
        self.wait()
        if self._pool is None or last:
            self._timed(None, fn, *args)
        else:
            self._go = threading.Event()
            self._job = self._pool.submit(self._timed, self._go, fn, *args)

    def release(self) -> None:
        """Lets the job in flight start."""
        self._go.set()

    def wait(self) -> None:
        self.release()
        job, self._job = self._job, None
        if job is not None:
            job.result()

    def __enter__(self) -> "HostWork":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if exc_info[0] is None:
            self.wait()
        elif self._job is not None:  # finish it, but keep the first error
            self.release()
            concurrent.futures.wait([self._job])
