"""Callbacks: what `Solver.run` reports on the host once per compiled chunk.

A callback is any callable `callback(record)` taking a
[`eqbayes.callbacks.ChunkRecord`][]; `eb.Solver(loss, callbacks=(...))` calls each
one after every compiled chunk of the solve (see `print_every` of
[`eqbayes.Solver`][]), on the host, with the state the chunk ended at: in order, on
one background thread, while the next chunk computes. Nothing runs inside the
compiled loop, so a callback costs one call per chunk, never one per step.
A subclass of [`eqbayes.callbacks.AbstractCallback`][] is also told when a run starts
and ends.

Built on it: [`eqbayes.callbacks.ProgressBar`][] (what `progress=True` shows),
[`eqbayes.callbacks.WandbLogger`][] and [`eqbayes.callbacks.Checkpoint`][] (what
`Solver.run(..., checkpoint=...)` uses). Optional dependencies (`tqdm`, `wandb`)
are imported when a run starts, never at `import eqbayes`.
"""

import abc
import contextlib
import functools
import math
import os
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import PyTree

from . import _checkpoint
from ._checks import count
from ._groups import AbstractChainGroup, AbstractGroup, Context, is_group, Mode
from ._mcmc import KernelDiagnostics


__all__ = [
    "AbstractCallback",
    "Checkpoint",
    "ChunkRecord",
    "GroupRecord",
    "ProgressBar",
    "WandbLogger",
]

_NO_WANDB = "`eb.callbacks.WandbLogger()` needs wandb: `pip install 'eqbayes[wandb]'`."
_NO_RUN = (
    "`eb.callbacks.WandbLogger()`: no wandb run is active. Call `wandb.init(...)` "
    "before `solver.run(...)`, or pass the run: `WandbLogger(run=wandb.init(...))`."
)
_DELAY = (
    "`eb.callbacks.ProgressBar(delay={value!r})`: `delay` must be a number of seconds "
    ">= 0 (0.0 shows the bar at once)."
)
_EVERY = (
    "`eb.callbacks.Checkpoint(path, every={value!r})`: `every` must be a positive "
    "integer (solver steps between checkpoints) or None (after every chunk)."
)


class GroupRecord(eqx.Module):
    """Running statistics of one group at the end of a chunk, on the host.

    Taken over the draws the group holds so far (after warmup: at most `keep`).
    A statistic the group's kernel does not record is `None`.

    **Fields:**

    - `n_samples`: draws per chain kept so far.
    - `n_chains`: the group's number of chains K.
    - `mean`: the posterior mean so far, for a group that samples one scalar
        (`None` otherwise, or before the first draw).
    - `n_is_divergent`: divergent transitions among the kept draws (NUTS, HMC).
    - `mean_acceptance_rate`: mean acceptance rate of the kept draws.
    - `mean_energy`: mean Hamiltonian energy of the kept draws (NUTS, HMC).
    """

    n_samples: int
    n_chains: int
    mean: float | None = None
    n_is_divergent: int | None = None
    mean_acceptance_rate: float | None = None
    mean_energy: float | None = None


class ChunkRecord(eqx.Module):
    """What a callback is told after each compiled chunk of a solve.

    **Fields:**

    - `step`: solver steps done at the end of the chunk.
    - `steps`: steps taken in this chunk.
    - `end`: the step this run stops at (`step == end` on the last chunk).
    - `loss`: the loss at the end of the chunk, averaged over chains.
    - `groups`: `{group name: GroupRecord}` for every group with posterior draws
        (optax parts have none); worked out from `state` when first asked for.
    - `neg_elbo`: `{group name: negative ELBO}` of variational groups (empty when
        there are none).
    - `state`: the [`eqbayes.SolverState`][] at the end of the chunk (e.g. to save
        it, as [`eqbayes.callbacks.Checkpoint`][] does).
    - `monitor`: `{group name: {name: value}}`, what each group monitors (see
        [`eqbayes.AbstractGroup.monitor`][]; a variational group's `neg_elbo`).
    """

    step: int
    steps: int
    end: int
    loss: float
    neg_elbo: dict[str, float]
    state: PyTree
    monitor: dict[str, dict[str, float]] = eqx.field(default_factory=dict)

    @functools.cached_property
    def groups(self) -> dict[str, GroupRecord]:
        # Only callbacks that ask pay for the statistics (a progress bar or a
        # checkpoint does not), and they pay once.
        leaves = jax.tree.leaves(self.state.model, is_leaf=is_group)
        records = {g.name: _group_record(g, self.step) for g in leaves if is_group(g)}
        return {name: r for name, r in records.items() if r is not None}

    def metrics(self) -> dict[str, float | int]:
        """The record as flat, named numbers, as logged by
        [`eqbayes.callbacks.WandbLogger`][]: `step`, `loss`, `<key>/<name>` for
        every scalar a group monitors (`neg_elbo/<name>` for variational groups),
        and `posterior/<name>/<statistic>` for every statistic of every group that
        is not `None`."""
        out: dict[str, float | int] = {"step": self.step, "loss": self.loss}
        for name, scalars in self.monitor.items():
            for key, value in scalars.items():
                out[f"{key}/{name}"] = value
        for name, group in self.groups.items():
            for field in (
                "n_samples",
                "n_chains",
                "mean",
                "n_is_divergent",
                "mean_acceptance_rate",
                "mean_energy",
            ):
                value = getattr(group, field)
                if value is not None:
                    out[f"posterior/{name}/{field}"] = value
        return out


def _on_host(group: AbstractGroup, size: int) -> AbstractGroup:
    """The group with its arrays of at most `size` elements (per-draw diagnostics,
    the draws of a scalar) as NumPy views: a handful of tiny device ops (slices,
    sums) would cost more than the statistics themselves. Larger arrays (sample
    buffers, kernel states) stay where they are, never copied to the host."""

    def convert(x):
        if (
            isinstance(x, jax.Array)
            and x.size <= size
            and not jnp.issubdtype(x.dtype, jax.dtypes.prng_key)
        ):
            return np.asarray(x)
        return x

    return jax.tree.map(convert, group)


def _group_record(group: AbstractGroup, step: int) -> GroupRecord | None:
    """The statistics of what the group would hand back after `step` steps; None
    for a group without draws (a point estimate)."""
    if isinstance(group, AbstractChainGroup):
        _, keep, _ = group.schedule
        group = _on_host(group, group.num_chains * keep)
    ctx = Context(
        key=None,
        step=step,
        mode=Mode.GENERAL,
        start=None,
        others={},
        num_chains=1,
        refresh=False,
    )
    result = group.result(ctx)
    if result.samples is None:
        return None
    leaves = jax.tree.leaves(result.samples)
    k, n = leaves[0].shape[:2]
    mean = None
    if n > 0 and sum(math.prod(x.shape[2:]) for x in leaves) == 1:
        mean = float(np.mean(np.asarray(leaves[0])))
    stats: dict[str, Any] = {}
    diagnostics = result.diagnostics if n > 0 else None
    if isinstance(diagnostics, KernelDiagnostics):
        if diagnostics.is_divergent is not None:
            stats["n_is_divergent"] = int(np.sum(diagnostics.is_divergent))
        for field in ("acceptance_rate", "energy"):
            value = getattr(diagnostics, field)
            if value is not None:
                stats[f"mean_{field}"] = float(np.mean(value))
    return GroupRecord(n_samples=n, n_chains=k, mean=mean, **stats)


def chunk_record(
    state: PyTree,
    loss: Any,
    steps: int,
    end: int,
    monitor: dict[str, dict[str, Any]] | None = None,
) -> ChunkRecord:
    """The record of a chunk that ended at `state` (called by `Solver.run`), with
    `{group name: {name: value}}` of what the groups monitor."""
    monitor = {
        name: {k: float(v) for k, v in scalars.items()}
        for name, scalars in (monitor or {}).items()
    }
    return ChunkRecord(
        step=int(state.step),
        steps=steps,
        end=end,
        loss=float(loss),
        neg_elbo={n: m["neg_elbo"] for n, m in monitor.items() if "neg_elbo" in m},
        state=state,
        monitor=monitor,
    )


class AbstractCallback(abc.ABC):
    """A callback that is also told when a run starts and ends.

    Subclass it and implement `__call__(record)`; override `start` and `end` when
    the callback holds something per run (a progress bar, a wandb run). Callbacks
    are ordinary host-side Python objects: they may keep state between calls.
    """

    @abc.abstractmethod
    def __call__(self, record: ChunkRecord) -> None:
        """Called after every chunk with its [`eqbayes.callbacks.ChunkRecord`][]."""

    def start(self, step: int, end: int) -> None:
        """Called before the first chunk: the run goes from `step` to `end`."""

    def end(self) -> None:
        """Called after the last chunk, and also when the run fails."""


class ProgressBar(AbstractCallback):
    """A `tqdm` progress bar over the solver steps, with the loss; eqbayes's log
    lines are routed through it while it is shown.

    `eb.Solver(loss, progress=True)` (the default) adds one to every run when
    `tqdm` is installed (`pip install 'eqbayes[progress]'`).

    **Arguments:**

    - `desc`: the bar's label.
    - `delay`: seconds before the bar first appears: a solve that ends sooner shows
        no bar, and costs no terminal output.
    """

    def __init__(self, desc: str = "eqbayes", delay: Any = 0.5):
        if (
            isinstance(delay, bool)
            or not isinstance(delay, (int, float))
            or not delay >= 0
        ):
            raise ValueError(_DELAY.format(value=delay))
        self.desc = desc
        self.delay = delay
        self._bar: Any = None
        self._stack: contextlib.ExitStack | None = None

    def start(self, step: int, end: int) -> None:
        from tqdm.auto import tqdm
        from tqdm.contrib.logging import logging_redirect_tqdm

        self._bar = tqdm(
            total=end - step,
            desc=self.desc,
            unit="step",
            leave=False,
            delay=self.delay,
        )
        self._stack = contextlib.ExitStack()
        self._stack.callback(self._bar.close)
        self._stack.enter_context(logging_redirect_tqdm(loggers=[_logger()]))

    def __call__(self, record: ChunkRecord) -> None:
        if self._bar is not None:
            # The loss, and the tempering of staged groups (adaptive SMC).
            extra = {
                f"{key}[{name}]": f"{value:.3g}"
                for name, scalars in record.monitor.items()
                for key, value in scalars.items()
                if key == "tempering"
            }
            if extra:  # adaptive stages: the length is not known, only its bound
                self._bar.total = None
            self._bar.set_postfix(loss=f"{record.loss:.4g}", **extra, refresh=False)
            self._bar.update(record.steps)

    def end(self) -> None:
        if self._stack is not None:
            self._stack.close()
        self._bar = self._stack = None


def _logger():
    import logging

    return logging.getLogger("eqbayes")


class WandbLogger(AbstractCallback):
    """Logs each chunk's [`metrics`][eqbayes.callbacks.ChunkRecord.metrics] to
    Weights & Biases.

    Per chunk: `loss`, `step`, `<key>/<name>` for what each group monitors
    (`neg_elbo/<name>` for variational groups), and per
    group `posterior/<name>/n_samples`, `n_chains`, `mean` (groups sampling one
    scalar), `n_is_divergent`, `mean_acceptance_rate` and `mean_energy` (where the
    kernel records them). Needs `pip install 'eqbayes[wandb]'`.

    **Arguments:**

    - `run`: the wandb run to log to; `None` means the active run (`wandb.run`)
        when the solve starts.
    - `prefix`: put in front of every key, e.g. `"fit1/"`.

    !!! Example

        ```python
        import wandb

        wandb.init(project="my-project")
        solver = eb.Solver(loss, callbacks=(eb.callbacks.WandbLogger(),))
        result = solver.run(model, key=jax.random.key(0), args=(x, y))
        ```
    """

    def __init__(self, run: Any = None, prefix: str = ""):
        self.run = run
        self.prefix = prefix
        self._active: Any = None

    def start(self, step: int, end: int) -> None:
        run = self.run
        if run is None:
            try:
                import wandb
            except ImportError as err:
                raise ImportError(_NO_WANDB) from err
            run = wandb.run
            if run is None:
                raise RuntimeError(_NO_RUN)
        self._active = run

    def __call__(self, record: ChunkRecord) -> None:
        run = self._active if self._active is not None else self.run
        if run is None:
            raise RuntimeError(_NO_RUN)
        run.log({self.prefix + k: v for k, v in record.metrics().items()})

    def end(self) -> None:
        self._active = None


class Checkpoint(AbstractCallback):
    """Saves the solver state with [`eqbayes.save`][] as the solve goes.

    A checkpoint is written after the first chunk that ends at least `every` steps
    after the last one, and after the run's last chunk; each write replaces the
    file atomically, so a killed process loses at most what it did since.
    `Solver.run(..., checkpoint=path, checkpoint_every=n)` adds one for you (and
    makes the chunks at most `n` steps long).

    **Arguments:**

    - `path`: the checkpoint file.
    - `every`: solver steps between checkpoints; `None` means after every chunk.
    """

    def __init__(self, path: str | os.PathLike, every: int | None = None):
        if every is not None:
            count(every, _EVERY.format(value=every))
        self.path = os.fspath(path)
        self.every = every
        self._last: float = -math.inf
        self._description: dict | None = None

    def start(self, step: int, end: int) -> None:
        self._last = step
        self._description = None

    def __call__(self, record: ChunkRecord) -> None:
        every = 1 if self.every is None else self.every
        if record.step - self._last >= every or record.step == record.end:
            if self._description is None:  # the same for every state of a run
                self._description = _checkpoint.describe(record.state)
            _checkpoint.write(self.path, record.state, self._description)
            self._last = record.step
