"""Timing shared by the benchmarks: interleaved repetitions, and step times as the
marginal cost of a longer solve."""

import time
from collections.abc import Callable, Hashable
from typing import Any

import jax


def interleaved(
    runs: dict[Hashable, Callable[[jax.Array], Any]],
    reps: int,
    seen: Callable[[Hashable, Any], None] | None = None,
) -> tuple[dict[Hashable, list[float]], dict[Hashable, list[float]]]:
    """Wall and process CPU seconds of each `run(key)`, timed to
    `jax.block_until_ready` on its result: one untimed (compiling) call each with
    `key(0)`, then `reps` rounds, each calling every run once with `key(rep + 1)`
    (the same key for every run of a round) in an order rotated from round to round,
    so that slow drifts of a shared machine's load fall on every run alike.
    `seen(name, result)` is told every timed result."""
    for run in runs.values():
        jax.block_until_ready(run(jax.random.key(0)))
    wall: dict[Hashable, list[float]] = {name: [] for name in runs}
    cpu: dict[Hashable, list[float]] = {name: [] for name in runs}
    names = list(runs)
    for rep in range(reps):
        key = jax.random.key(rep + 1)
        for name in names[rep % len(names) :] + names[: rep % len(names)]:
            start, start_cpu = time.perf_counter(), time.process_time()
            result = jax.block_until_ready(runs[name](key))
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
            if seen is not None:
                seen(name, result)
    return wall, cpu


def per_step(
    times: dict[Hashable, list[float]], sides: list[Hashable], lengths: tuple[int, int]
) -> dict[Hashable, float]:
    """Seconds per step of each side, from `times[side, n]` of solves of both
    `lengths`: the difference of the mean times over the difference of the steps,
    which leaves out what a solve costs once."""
    short, long = lengths

    def mean(x):
        return sum(x) / len(x)

    return {
        side: (mean(times[side, long]) - mean(times[side, short])) / (long - short)
        for side in sides
    }
