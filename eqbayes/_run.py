"""The host driver of `Solver.run`: compiled chunks of steps, and what runs on the
host between them (records, callbacks, checkpoints, the log)."""

import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from . import _chunks, _sharding
from ._loop import chunk_program, finished, Program, SolverState
from ._posterior import History
from .callbacks import AbstractCallback, chunk_record


logger = logging.getLogger("eqbayes")


def drive(
    program: Program,
    state: SolverState,
    args: tuple,
    data: Any,
    *,
    steps: int,
    warmup: int | None,
    every: int | None,
    callbacks: list,
    check: Callable[[], None] | None = None,
) -> tuple[SolverState, History]:
    """Runs `steps` solver steps from `state` in compiled chunks.

    `warmup` is the warmup of the fast path (every chain group on one schedule, a
    fresh solve of exactly its length), None for the general path. `every` fixes
    the chunk length; None times chunks when somebody watches (`callbacks`), and
    runs the whole solve in one chunk otherwise. `check` runs once the first chunk
    is dispatched (the start's check: its figures are ready by then, so it waits
    for nothing).
    """
    fast = warmup is not None
    done = int(state.step)
    mesh = _sharding.mesh_of(state.step)
    sizes = _chunks.ChunkSizes(
        steps,
        every=every if (every or callbacks) else steps,
        key=None
        if every is not None or not callbacks
        else _chunks.pace_key(program, fast, state, args, data),
    )
    records = []

    def tell(state, record, n):
        record = jax.device_get(record)  # one host transfer per chunk
        records.append(record)
        if callbacks:
            loss, monitors = record
            chunk = chunk_record(state, loss, n, done + steps, monitors)
            for callback in callbacks:
                callback(chunk)

    adaptive = finished(state) is not None  # staged groups: it may end early
    if adaptive:
        path = "Staged path (until every staged group finishes, at most)"
    elif fast:
        path = "Fast path (warmup and draws without per-step bookkeeping)"
    else:
        path = (
            "General path (the fast path needs one warmup/keep/thin for all "
            "sampling groups and a fresh solve of exactly their length)"
        )
    cadence = f"about {_chunks.REFRESH_SECONDS} s each" if sizes.timed else sizes.size
    logger.info(f"{path}: {steps} steps in chunks of {cadence}.")
    with (
        _running(callbacks, done, done + steps),
        _sharding.using(mesh),
        _chunks.HostWork(threaded=bool(callbacks)) as host,
    ):
        at = 0
        over = False
        if check is not None and steps == 0:
            check()
        while at < steps and not over:
            n = sizes.next(at)
            host.release()  # the last chunk's host work runs while this computes
            start = time.perf_counter()
            n_warm = min(n, max(0, warmup - at)) if fast else 0
            state, record = chunk_program(
                program, state, args, data, jnp.asarray(n_warm), jnp.asarray(n), fast
            )
            if check is not None and at == 0:
                check()
            if adaptive:  # waits for the chunk, which may have stopped early
                over = bool(finished(state))
                n = int(state.step) - done - at
            at += n
            if sizes.timed:
                jax.block_until_ready(record)
                sizes.observe(max(n, 1), time.perf_counter() - start, host.seconds)
            host.submit(tell, state, record, n, last=at == steps or over)
    return state, history(records)


def history(records: list) -> History:
    """The per-chunk `(loss, {group name: {name: value}})` records as a
    `History`."""
    if not records:
        return History(jnp.zeros((0,)), {})
    losses, monitors = zip(*records)
    monitor = {
        name: {
            key: jnp.asarray(np.stack([m[name][key] for m in monitors]))
            for key in scalars
        }
        for name, scalars in monitors[0].items()
    }
    neg_elbo = {n: m["neg_elbo"] for n, m in monitor.items() if "neg_elbo" in m}
    return History(jnp.asarray(np.stack(losses)), neg_elbo, monitor)


@contextlib.contextmanager
def _running(callbacks, step: int, end: int):
    """Tells the callbacks that a run starts, and that it ended (also on an
    error), in reverse order."""
    with contextlib.ExitStack() as stack:
        for callback in callbacks:
            if isinstance(callback, AbstractCallback):
                callback.start(step, end)
                stack.callback(callback.end)
        yield
