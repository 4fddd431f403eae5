"""The Solver: `init -> step -> result`, and `run`, the host driver around them."""

import collections
import importlib.util
import logging
import math
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh
from jaxtyping import PRNGKeyArray, PyTree

from . import _optax, _run, _sharding
from ._checks import count, is_count
from ._groups import (
    AbstractChainGroup,
    AbstractGroup,
    AbstractStagedGroup,
    check_fresh,
    Context,
    is_group,
    Mode,
    Solve,
)
from ._loop import (
    chain_positions,
    context,
    init_program,
    loss_args,
    Parts,
    Program,
    SolverState,
    split_key,
    step_program,
    unmarked_leaves,
)
from ._marking import collapse, unwrap
from ._optax import OptaxGroup
from ._paramax import loss_for
from ._posterior import History, Posterior, Result
from ._summary import diagnostics_line, group_labels
from .callbacks import Checkpoint, ProgressBar


logger = logging.getLogger("eqbayes")

#: The name of the optax group that `Solver(optimizer=...)` makes of the unmarked
#: leaves (in logs and messages).
UNMARKED = "unmarked leaves"

_NO_GROUPS = (
    "`Solver.init(model, ...)`: the model has no Bayesian groups and the solver has "
    "no optimiser, so there is nothing to do. Mark a sub-tree with "
    "`eb.bayesian(model, blackjax.nuts, where=...)`."
)
_CHAINS = (
    "`Solver.init(model, ...)`: every group with chains in one solve must run the "
    "same number of chains, but {detail}. Pass the same `num_chains=` to every "
    "call that marks one (`eb.bayesian(...)`, or your own group's)."
)
_NOTHING_TO_OPTIMISE = (
    "`Solver(loss, optimizer=...)`: every floating-point leaf of the model belongs "
    "to a group, so the optimiser has nothing to train. Drop `optimizer=` (or mark "
    "fewer leaves)."
)
_LOSS_SHAPE = (
    "`Solver(loss)`: the loss must return a scalar, but `loss(model, *args)` returned "
    "{what}. Reduce it to a scalar. The posterior is exp(-likelihood_scale * loss) "
    "x prior: a sum of negative log-likelihoods (`jnp.sum(...)`) with "
    "`likelihood_scale=1` is the exact posterior; a mean over N points "
    "(`jnp.mean(...)`) divides the log-likelihood by N, so pass "
    "`likelihood_scale=N` (N / (2σ²) for a mean squared error with noise σ), or "
    "the posterior comes out far too wide."
)
_LOSS_FAILED = (
    "`Solver.init(model, ...)`: the error above came from calling "
    "`loss(model, *args)` on the unwrapped model. The loss is traced by JAX (as "
    "inside every compiled step), so it must be a JAX-traceable function of the "
    "model's arrays: use `jnp.where` or `jax.lax.cond` instead of a Python `if` on "
    "an array value."
)
_NON_FINITE_START = (
    "`Solver.init(model, ...)`: the loss at the starting point is not finite "
    "({values}) for chain(s) {chains}, so every transition from there would be "
    "rejected. Check the model's initial values and `args`/`data` for NaNs or "
    "infinities, or start elsewhere (`init_jitter=`, an initializer, other values "
    "in the model)."
)
_NON_FINITE_VALUES = (
    "`Solver.init(model, ...)`: the starting values of group(s) {names} hold a NaN "
    "or an infinity (in the model's values, or after `init_jitter` or an "
    "initializer), and every chain would start there. Set finite values in the "
    "model before marking it."
)
_KEY = (
    "`Solver.{fn}(..., key=...)`: `key` must be a JAX PRNG key such as "
    "`jax.random.key(0)` (or a legacy `jax.random.PRNGKey(0)`); got {what}."
)
_CALLBACK = (
    "`Solver(..., callbacks=...)`: every callback must be callable "
    "`callback(record)` (a function, or an `eb.callbacks.AbstractCallback`); got an "
    "object of type `{type}`."
)
_CHECKPOINT_EVERY = (
    "`Solver.run(..., checkpoint_every={value!r})`: `checkpoint_every` must be a "
    "positive integer (solver steps between checkpoints), and needs "
    "`checkpoint=path`."
)
_PRINT_EVERY = (
    "`Solver(..., print_every={value!r})`: `print_every` must be a positive integer "
    "(steps per compiled chunk) or None."
)
_STEPS = (
    "`Solver.run(..., steps={steps!r})`: group '{name}' needs {need} steps "
    "(warmup {warmup} + keep {keep} x thin {thin}). Pass `steps >= {need}` or "
    "`steps=None` for exactly that."
)
_STEPS_TYPE = (
    "`Solver.run(..., steps={steps!r})`: `steps` must be a non-negative integer "
    "(0: no steps, the result at the start, for models without chains) or None."
)
_NEED_STEPS = (
    "`Solver.run(model, steps=None, ...)`: no group samples a chain, so there is no "
    "schedule to take the length from. Pass `steps=`."
)
_NEED_KEY = (
    "`Solver.run(model, ...)`: pass `key=` (a JAX PRNG key such as "
    "`jax.random.key(0)`) to start a solve, or `state=` to continue one."
)
_STATE_KEY = (
    "`Solver.run(..., key=..., state=state)`: `state` was started with another key, "
    "and a continued solve keeps the key it started with. Pass the key of the "
    "first run, or leave `key=` out."
)
_STATE_MODEL = (
    "`Solver.run(model, ..., state=state)`: `model` does not match the model "
    "`state` was started from ({why}). A continued solve goes on with the model in "
    "`state`; pass the model of the first run (or `None`)."
)
_STATE_BATCH = (
    "`Solver.run(..., batch_size={value!r}, state=state)`: `state` was started with "
    "`batch_size={had!r}`, and a continued solve keeps it. Pass the same "
    "`batch_size` (or leave it out)."
)
_STATE_INIT = (
    "`Solver.run(..., state=state)`: `{arg}=` only applies when a solve starts; "
    "the state is already placed and initialised. Leave `{arg}=` out."
)
_SUBSTEP_TYPE = (
    "`Solver(..., substeps=...)`: each substep must be an `eb.Substep(loss, "
    "groups)`; got an object of type `{type}`."
)
_SUBSTEPS_OPTIMIZER = (
    "`Solver(..., optimizer=..., substeps=...)`: with substeps, give each trained "
    "part a name and a substep: mark it with `eb.optimise(model, optimizer, "
    "where=..., name=...)` instead of `Solver(optimizer=...)`."
)
_SUBSTEP_UNKNOWN = (
    "`Solver(..., substeps=...)`: substep {n} names group '{name}', but the model's "
    "groups are {names}."
)
_SUBSTEP_TWICE = (
    "`Solver(..., substeps=...)`: group '{name}' is in substeps {a} and {b}; each "
    "group moves in exactly one substep."
)
_SUBSTEP_MISSING = (
    "`Solver(..., substeps=...)`: the groups {names} are in no substep, so they "
    "would never move. Add them to a substep."
)
_STEP_NEEDS_DATA = (
    "`Solver.step(state, ...)` / `Solver.run(..., state=state)`: the state was "
    "initialised with minibatches, so pass the same `data=` (or a `batch=` of your "
    "own to `step`)."
)
_DATA_TYPE = (
    "`Solver.init(..., data=..., batch_size=...)`: to draw minibatches, `data` must "
    "be a pytree of arrays with a common leading axis (the data points)."
)
_DATA_SIZES = (
    "`Solver.init(..., data=..., batch_size=...)`: to draw minibatches, every leaf of "
    "`data` needs the same leading axis (one row per data point); got leading sizes "
    "{sizes}."
)
_BATCH_SIZE = (
    "`Solver.init(..., batch_size={value!r})`: `batch_size` must be an integer "
    "between 1 and the number of data points ({n})."
)
_BATCH_WITHOUT_DATA = (
    "`Solver.init(..., batch_size=...)`: minibatches are drawn from `data=`; pass "
    "the data as `data=` (a pytree with one row per data point)."
)
_BATCH_UNUSED = (
    "`Solver.init(..., batch_size=...)`: no part of this model uses minibatches "
    "(stochastic-gradient kernels, VI and optax parts do; full-data kernels always "
    "see all of `data`). Drop `batch_size=`."
)


class Substep(eqx.Module):
    """One stage of a solver step: the named groups step on their own loss.

    With `eb.Solver(loss, substeps=(...))`, each solver step runs the substeps in
    order; in each, only its groups make a transition, on its `loss`, while every
    other group is held at its current value (no gradient flows into it). The
    classic use is a two-stage inverse problem: first an optax step of a surrogate
    on its data, then a kernel step of a physical coefficient on the physics, with
    the surrogate fixed.

    **Arguments:**

    - `loss`: `loss(model, *args) -> scalar` (with `data=`,
        `loss(model, batch_or_data, *args)`), called with the plain model.
    - `groups`: the names of the groups this substep moves (a name or a tuple).
    """

    loss: Callable[..., Any] = eqx.field(static=True)
    groups: tuple[str, ...] = eqx.field(
        static=True, converter=lambda g: (g,) if isinstance(g, str) else tuple(g)
    )


def _groups(model: PyTree) -> list[AbstractGroup]:
    """Every group of a model (masked groups' members included)."""
    return [leaf for leaf in jax.tree.leaves(model, is_leaf=is_group) if is_group(leaf)]


def _solve_groups(state: SolverState) -> list[AbstractGroup]:
    """Every group of a solve, the unmarked-leaves group last."""
    groups = _groups(state.model)
    return groups if state.unmarked is None else [*groups, state.unmarked]


class Solver(eqx.Module):
    """Steps every group of a marked model together.

    One `Solver` serves any number of solves: the compiled program is reused by
    later calls with the same model structure and configuration.

    **Arguments:**

    - `loss`: `loss(model, *args) -> scalar`, called with the plain model (every
        wrapper replaced by values). With `data=`, `loss(model, data, *args)`,
        where minibatched parts see a minibatch in place of `data`.
    - `optimizer`: an optax optimiser for every floating-point leaf that no group
        holds (`None`: those leaves stay frozen): they become one optax group
        (as [`eqbayes.optimise`][] makes), stepped after the marked groups, on the
        loss with the sampled groups at their positions.
    - `print_every`: steps per compiled chunk: one dispatch, one host transfer and
        one round of progress-bar update and callbacks per chunk (and one entry of
        `result.history`). By default, with nobody watching, the whole solve in one
        chunk; with a progress bar, callbacks or a checkpoint, chunks timed to last
        about a quarter of a second each (after a first chunk of 1 % of the solve,
        or sized from the pace of the last run of the same solve), or longer when
        the callbacks are slow, so that watching costs next to nothing. Set it
        for a fixed cadence (e.g. a `result.history` that is the same from run to
        run).
    - `progress`: show a progress bar (needs `tqdm`: `pip install 'eqbayes[progress]'`;
        without it, no bar).
    - `callbacks`: callables called on the host after every chunk with an
        [`eqbayes.callbacks.ChunkRecord`][] (step, loss, per-group running
        statistics, the state), e.g. [`eqbayes.callbacks.WandbLogger`][]. Never
        called inside the compiled loop: they run in order on a background thread
        while the next chunk computes (those of the last chunk on the calling
        thread); an exception in a callback stops the run after that chunk.
    - `optimizer_chains`: with K > 1 chains, `optimizer`'s gradient is taken at
        chain 0 of the sampled groups (`"first"`) or averaged over the K chains
        (`"mean"`); see [`eqbayes.optimise`][].
    - `substeps`: a sequence of [`eqbayes.Substep`][]: each solver step then runs
        them in order, each moving only its groups on its own loss. Every group
        must be in exactly one substep; `loss` is still the one reported.

    !!! Example

        ```python
        solver = eb.Solver(loss)
        result = solver.run(model, key=jax.random.key(0), args=(x, y))
        ```
    """

    loss: Callable[..., Any] = eqx.field(static=True)
    optimizer: Any = eqx.field(static=True, default=None)
    print_every: int | None = eqx.field(static=True, default=None)
    progress: bool = eqx.field(static=True, default=True)
    callbacks: Sequence[Any] = eqx.field(static=True, default=())
    optimizer_chains: str = eqx.field(static=True, default="first")
    substeps: tuple[Substep, ...] = eqx.field(static=True, default=(), converter=tuple)

    def __check_init__(self):
        if not callable(self.loss):
            raise TypeError(
                f"`Solver(loss)`: `loss` must be callable `loss(model, *args) -> "
                f"scalar`; got an object of type `{type(self.loss).__name__}`."
            )
        if self.optimizer is not None:
            _optax.check_optimizer(self.optimizer, "Solver(..., optimizer=...)")
        _optax.check_chains(
            self.optimizer_chains,
            "Solver(..., optimizer_chains=...)",
            "optimizer_chains",
        )
        for sub in self.substeps:
            if not isinstance(sub, Substep):
                raise TypeError(_SUBSTEP_TYPE.format(type=type(sub).__name__))
        if self.substeps and self.optimizer is not None:
            raise ValueError(_SUBSTEPS_OPTIMIZER)
        for callback in tuple(self.callbacks):
            if not callable(callback):
                raise TypeError(_CALLBACK.format(type=type(callback).__name__))
        if self.print_every is not None:
            count(self.print_every, _PRINT_EVERY.format(value=self.print_every))

    @property
    def _program(self) -> Program:
        return Program(
            loss_for(self.loss),
            tuple((loss_for(s.loss), s.groups) for s in self.substeps),
        )

    # -- init -> step -> result ---------------------------------------------------

    def init(
        self,
        model: PyTree,
        *,
        key: PRNGKeyArray,
        args: Sequence[Any] = (),
        data: PyTree | None = None,
        batch_size: int | None = None,
        mesh: Mesh | None = None,
    ) -> SolverState:
        """Checks the configuration and builds the initial state.

        Every misconfiguration raises here, before anything is compiled; a loss
        that is not finite at the chains' starting point raises right after the
        initialisation.

        **Arguments:**

        - `model`: the marked model.
        - `key`: a JAX PRNG key; it fixes the chains' starting jitter, every
            transition and every minibatch.
        - `args`: extra arguments of the loss.
        - `data`: optional data pytree (every leaf with the same leading axis N),
            passed to the loss as its second argument.
        - `batch_size`: minibatch size: stochastic-gradient kernels, VI and optax
            parts then see `batch_size` rows of `data` per step (reshuffled every
            epoch, drawn inside the compiled step); full-data kernels still see all
            of it.
        - `mesh`: a `jax.sharding.Mesh` with axes `"chains"` and/or `"data"` to
            place the solve on (see [Scaling out](../scaling.md)): each group's
            chains are sharded over `"chains"`, the `data=` pytree along its
            leading axis over `"data"`. `None`: one device.

        **Returns:**

        A [`eqbayes.SolverState`][] at step 0 (placed on `mesh` when given).
        """
        state, report = self._start(
            model, key=key, args=args, data=data, batch_size=batch_size, mesh=mesh
        )
        _check_start(*report)
        return state

    def _start(self, model, *, key, args, data, batch_size, mesh):
        """`init` without the check of the start (`run` checks it once its first
        chunk is on its way): the state, and what `_check_start` takes."""
        key = _as_key(key, "init")
        groups = _groups(model)
        check_fresh(groups)
        unmarked = None
        if self.optimizer is not None:
            leaves = unmarked_leaves(model)
            if not leaves:
                raise ValueError(_NOTHING_TO_OPTIMISE)
            unmarked = OptaxGroup(
                tuple(leaves),
                self.optimizer,
                self.optimizer_chains,  # pyright: ignore
                UNMARKED,
            )
        everything = groups if unmarked is None else [*groups, unmarked]
        if not everything:
            raise ValueError(_NO_GROUPS)
        chains = {
            g.name: g.num_chains for g in groups if isinstance(g, AbstractChainGroup)
        }
        if len(set(chains.values())) > 1:
            detail = ", ".join(f"'{n}' has num_chains={k}" for n, k in chains.items())
            raise ValueError(_CHAINS.format(detail=detail))
        self._check_substeps(groups)
        solve = Solve(tuple(everything), substeps=bool(self.substeps))
        for group in everything:
            group.check(solve)
        if mesh is not None:
            _sharding.check_mesh(mesh, "init", chains, data)
        first = _check_data(data, batch_size, everything)
        full, mini = loss_args(args, data, first)
        for loss in (self.loss, *(sub.loss for sub in self.substeps)):
            _check_loss(loss_for(loss), model, full)
        init_key, run_key = split_key(key)
        if mesh is not None:
            args, data = _placed(args, data, mesh)
            first = None if first is None else _sharding.place(first, mesh)
            full, mini = loss_args(args, data, first)
        start = SolverState(model, jnp.asarray(0, jnp.int32), init_key, unmarked)
        with _sharding.using(mesh):
            (model, unmarked), report = init_program(self._program, start, full, mini)
        data_order = None
        if batch_size is not None:
            data_order = jnp.zeros(jax.tree.leaves(data)[0].shape[0], jnp.int32)
        state = SolverState(
            model,
            jnp.asarray(0, jnp.int32),
            run_key,
            unmarked,
            data_order,
            batch_size,
        )
        self._log_init(state, data, batch_size)
        return (state if mesh is None else _place_state(state, mesh)), report

    def _check_substeps(self, groups):
        if not self.substeps:
            return
        names = [g.name for g in groups]
        seen: dict[str, int] = {}
        for n, sub in enumerate(self.substeps):
            for name in sub.groups:
                if name not in names:
                    raise ValueError(
                        _SUBSTEP_UNKNOWN.format(n=n, name=name, names=names)
                    )
                if name in seen:
                    raise ValueError(
                        _SUBSTEP_TWICE.format(name=name, a=seen[name], b=n)
                    )
                seen[name] = n
        missing = [name for name in names if name not in seen]
        if missing:
            raise ValueError(_SUBSTEP_MISSING.format(names=missing))

    def _log_init(self, state: SolverState, data, batch_size):
        if not logger.isEnabledFor(logging.INFO):
            return
        for group in _groups(state.model):
            logger.info(group.describe())
        leaves = (
            unmarked_leaves(state.model)
            if state.unmarked is None
            else jax.tree.leaves(state.unmarked.current())
        )
        size = sum(x.size for x in leaves)
        if state.unmarked is not None:
            logger.info(
                f"Unmarked leaves ({len(leaves)} arrays, {size} values): trained "
                "by the Solver's optax optimiser."
            )
        elif leaves:
            logger.info(
                f"Unmarked leaves ({len(leaves)} arrays, {size} values): frozen."
            )
        if batch_size is not None:
            n = jax.tree.leaves(data)[0].shape[0]
            logger.info(
                f"Minibatches of {batch_size} of {n} rows, reshuffled every "
                f"epoch ({n // batch_size} steps; {n % batch_size} rows dropped "
                "per epoch)."
            )

    def step(
        self,
        state: SolverState,
        *,
        args: Sequence[Any] = (),
        data: PyTree | None = None,
        batch: PyTree | None = None,
    ) -> SolverState:
        """Takes one solver step (compiled with `eqx.filter_jit`).

        A loop of `step` calls gives the same chain as `run` for the same key.
        `args` (and `data`) must be the ones the state was initialised with.

        **Arguments:**

        - `state`: the current [`eqbayes.SolverState`][].
        - `args`: extra arguments of the loss.
        - `data`: the data of `init`; with a `batch_size` the step draws its
            minibatch from it, exactly as `run` does.
        - `batch`: a minibatch of your own for the minibatched parts (then `data`,
            if given, is what full-data kernels see; otherwise they see `batch`).

        **Returns:**

        The new [`eqbayes.SolverState`][].
        """
        if batch is None and state.batch_size is not None and data is None:
            raise ValueError(_STEP_NEEDS_DATA)
        if batch is not None and data is None:
            data = batch
        mesh = _sharding.mesh_of(state.step)  # a placed state stays where it is
        if mesh is not None:
            args, data = _placed(args, data, mesh)
            batch = None if batch is None else _sharding.place(batch, mesh)
        with _sharding.using(mesh):
            return step_program(self._program, state, tuple(args), data, batch)

    def result(
        self,
        state: SolverState,
        history: History | None = None,
        *,
        args: Sequence[Any] = (),
        data: PyTree | None = None,
    ) -> Result:
        """Collects the posterior and the plain model from a state.

        Every group hands back what it holds (its draws, diagnostics, a fitted
        distribution) through [`eqbayes.AbstractGroup.result`][].

        **Arguments:**

        - `state`: a [`eqbayes.SolverState`][].
        - `history`: per-chunk records; `run` passes its own. By default, the loss
            is not re-evaluated and the history is empty.
        - `args`, `data`: the loss's arguments, for groups that evaluate the loss
            when they finish (`run` passes its own).

        **Returns:**

        A [`eqbayes.Result`][].
        """
        steps_done = int(state.step)
        parts = Parts(state.model, state.unmarked)
        groups = parts.groups
        full, _ = loss_args(args, data, None)

        positions = chain_positions(groups)

        def ctx(j: int) -> Context:
            return context(
                parts,
                groups,
                j,
                {l: p for l, p in positions.items() if l != j},
                loss=loss_for(self.loss),
                full=full,
                mini=full,
                key=None,
                step=steps_done,
                mode=Mode.GENERAL,
                start=None,
            )

        results = [g.result(ctx(j)) for j, g in enumerate(groups)]
        leaves = [None] * len(parts.leaves)
        for i, r in zip(parts.index, results):
            leaves[i] = r.samples
        draws = jax.tree.unflatten(parts.treedef, leaves)
        samples = collapse(draws)
        unconstrained = collapse(draws, constrained=False)
        named = list(zip((g.name for g in groups), results))
        diagnostics = {n: r.diagnostics for n, r in named if r.samples is not None}
        variational = {
            n: r.approximation for n, r in named if r.approximation is not None
        }
        evidence = [r.log_evidence for r in results if r.log_evidence is not None]
        plain = unwrap(state.model)
        if history is None:
            history = History(jnp.zeros((0,)), {})
        labels = group_labels(plain, state.model)
        posterior = Posterior(
            samples,
            diagnostics,
            plain,
            labels,
            unconstrained,
            log_evidence=evidence[0] if len(evidence) == 1 else None,
        )
        return Result(plain, posterior, history, variational, state)

    # -- run ------------------------------------------------------------------------

    def run(
        self,
        model: PyTree | None,
        steps: int | None = None,
        *,
        key: PRNGKeyArray | None = None,
        args: Sequence[Any] = (),
        data: PyTree | None = None,
        batch_size: int | None = None,
        state: SolverState | None = None,
        mesh: Mesh | None = None,
        checkpoint: str | os.PathLike | None = None,
        checkpoint_every: int | None = None,
    ) -> Result:
        """Runs a whole solve in compiled chunks and returns its result.

        **Arguments:**

        - `model`: the marked model (see [`eqbayes.bayesian`][]); with `state=`, the
            model of the first run (or None).
        - `steps`: solver steps; `None` means the longest sampling group's
            `warmup + keep * thin` (required when no group samples). A longer solve
            keeps each group's last `keep` draws. With a group that decides its
            own number of steps (the tempering stages of [`eqbayes.smc`][]), the
            solve stops once it is finished, after at most `steps` steps (`None`:
            its `max_steps`). `0` takes no step: the result at
            the start (for models without chains, e.g. an [`eqbayes.laplace`][]
            group fitted at the values it was marked with).
        - `key`: a JAX PRNG key (`jax.random.key(0)`); same key, same chain. With
            `state=` it may be left out (the state carries its key); given, it must
            be the first run's.
        - `args`: extra arguments of the loss, `loss(model, *args)`.
        - `data`: optional data, passed as `loss(model, data, *args)`.
        - `batch_size`: minibatch size for the minibatched parts (see
            [`eqbayes.Solver.init`][]); with `state=`, the state's.
        - `state`: continue from this state (`result.state`, or one loaded with
            [`eqbayes.load`][]) instead of initialising; `steps` then counts the
            further steps (default: to the end of the longest group's schedule).
            The chain continues bitwise as if the solve had not stopped.
        - `checkpoint`: a file to save the state to with [`eqbayes.save`][] as the
            solve goes (atomically: a killed process leaves the last complete
            checkpoint), and at the end.
        - `checkpoint_every`: solver steps between checkpoints (chunks are then
            this long, unless `print_every` is set). By default a checkpoint is
            written after every chunk (see `print_every` of [`eqbayes.Solver`][]).
        - `mesh`: a `jax.sharding.Mesh` with axes `"chains"` and/or `"data"`: the
            solve runs sharded over it (see [`eqbayes.Solver.init`][] and
            [Scaling out](../scaling.md)); with `state=`, the state is moved onto
            it. `None`: one device, or the mesh `state` is already placed on.

        **Returns:**

        A [`eqbayes.Result`][]; `result.state` continues the solve.
        """
        if state is None and key is None:
            raise TypeError(_NEED_KEY)
        if state is not None:
            _check_state(state, model, key, batch_size)
        groups = _groups(model if state is None else state.model)
        if not groups and self.optimizer is None:
            raise ValueError(_NO_GROUPS)
        done = 0 if state is None else int(state.step)
        chain_groups = [g for g in groups if isinstance(g, AbstractChainGroup)]
        staged = [g for g in groups if isinstance(g, AbstractStagedGroup)]
        steps, needed = _steps(chain_groups, steps, done, staged)
        if checkpoint_every is not None and (
            checkpoint is None or not is_count(checkpoint_every)
        ):
            raise ValueError(_CHECKPOINT_EVERY.format(value=checkpoint_every))
        report = None
        if state is None:
            assert key is not None
            state, report = self._start(
                model, key=key, args=args, data=data, batch_size=batch_size, mesh=mesh
            )
        elif state.batch_size is not None and data is None:
            raise ValueError(_STEP_NEEDS_DATA)
        elif mesh is not None:  # move the state onto the mesh
            _sharding.check_mesh(
                mesh, "run", {g.name: g.num_chains for g in chain_groups}, data
            )
            state = _place_state(state, mesh)
        args = tuple(args)
        placed_on = _sharding.mesh_of(state.step)
        if placed_on is not None:
            args, data = _placed(args, data, placed_on)
        callbacks = list(self.callbacks)
        if self.progress and importlib.util.find_spec("tqdm") is not None:
            callbacks.insert(0, ProgressBar())
        if checkpoint is not None:
            callbacks.append(Checkpoint(checkpoint, every=checkpoint_every))
        schedules = {g.schedule for g in chain_groups}
        fast = len(schedules) == 1 and done == 0 and steps == needed
        state, history = _run.drive(
            self._program,
            state,
            args,
            data,
            steps=steps,
            warmup=next(iter(schedules))[0] if fast else None,
            every=self.print_every or checkpoint_every,
            callbacks=callbacks,
            check=None if report is None else lambda: _check_start(*report),
        )
        result = self.result(state, history, args=args, data=data)
        if logger.isEnabledFor(logging.INFO):
            for name, diagnostics in result.posterior.diagnostics.items():
                if name in result.history.neg_elbo:
                    neg_elbo = float(result.history.neg_elbo[name][-1])
                    logger.info(f"Group '{name}': final -ELBO estimate {neg_elbo:.6g}")
                else:
                    logger.info(diagnostics_line(name, diagnostics))
        return result


# -- checks -------------------------------------------------------------------------


def _as_key(key: Any, fn: str) -> PRNGKeyArray:
    if isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        if key.shape != ():
            raise ValueError(
                _KEY.format(fn=fn, what=f"a batch of keys, shape {key.shape}")
            )
        return key
    if (
        isinstance(key, (jax.Array, np.ndarray))
        and key.dtype == jnp.uint32
        and (key.shape == (2,))
    ):
        return jr.wrap_key_data(jnp.asarray(key))
    raise TypeError(
        _KEY.format(fn=fn, what=f"an object of type `{type(key).__name__}`")
    )


def _steps(chain_groups, steps, done: int, staged=()) -> tuple[int, int]:
    """`(steps to run, steps the longest schedule needs)`: `steps=None` runs to the
    end of the longest schedule (for staged groups, at most their `max_steps`: the
    solve stops once they finish); a solve that ends before a group's schedule does
    is an error."""
    schedules = {g.schedule for g in chain_groups}
    needed = max((w + k * t for w, k, t in schedules), default=0)
    if steps is None:
        if not schedules and not staged:
            raise ValueError(_NEED_STEPS)
        longest = max([needed, *(g.max_steps for g in staged)])
        steps = max(longest - done, 0)
    elif not is_count(steps, minimum=0):
        raise ValueError(_STEPS_TYPE.format(steps=steps))
    for g in chain_groups:
        warmup, keep, thin = g.schedule
        if done + steps < warmup + keep * thin:
            raise ValueError(
                _STEPS.format(
                    steps=steps,
                    name=g.name,
                    need=warmup + keep * thin - done,
                    warmup=warmup,
                    keep=keep,
                    thin=thin,
                )
            )
    return steps, needed


def _signature(model: PyTree):
    """A model's structure: its plain tree and leaf shapes, and its groups."""
    plain = unwrap(model)
    leaves, treedef = jax.tree.flatten(plain)
    shapes = [(x.shape, x.dtype) if eqx.is_array(x) else None for x in leaves]
    groups = [(type(g).__name__, g.name) for g in _groups(model)]
    return treedef, shapes, groups


def _check_state(state: SolverState, model, key, batch_size) -> None:
    """Clear errors for `run(state=...)` arguments that disagree with `state`."""
    if key is not None:
        _, run_key = split_key(_as_key(key, "run"))
        if not np.array_equal(jr.key_data(run_key), jr.key_data(state.key)):
            raise ValueError(_STATE_KEY)
    if model is not None:
        treedef, shapes, groups = _signature(model)
        had_treedef, had_shapes, had_groups = _signature(state.model)
        why = None
        if groups != had_groups:
            why = f"its groups are {groups}, the state's {had_groups}"
        elif treedef != had_treedef:
            why = "its structure differs"
        elif shapes != had_shapes:
            why = "the shapes or dtypes of its leaves differ"
        if why is not None:
            raise ValueError(_STATE_MODEL.format(why=why))
    if batch_size is not None and batch_size != state.batch_size:
        raise ValueError(_STATE_BATCH.format(value=batch_size, had=state.batch_size))


def _check_data(data, batch_size, groups):
    """Validates `data=` / `batch_size=`; returns a first minibatch (or None).
    Without `batch_size`, `data` is passed to the loss as it is."""
    if batch_size is None:
        return None
    if isinstance(batch_size, bool) or not isinstance(batch_size, int):
        raise TypeError(_BATCH_SIZE.format(value=batch_size, n="N"))
    if data is None:
        raise ValueError(_BATCH_WITHOUT_DATA)
    leaves = jax.tree.leaves(data)
    if not leaves or not all(eqx.is_array_like(x) for x in leaves):
        raise TypeError(_DATA_TYPE)
    sizes = {jnp.shape(x)[0] if jnp.ndim(x) else None for x in leaves}
    if len(sizes) != 1 or None in sizes:
        raise ValueError(_DATA_SIZES.format(sizes=sorted(map(str, sizes))))
    n = jnp.shape(leaves[0])[0]
    if not 1 <= batch_size <= n:
        raise ValueError(_BATCH_SIZE.format(value=batch_size, n=n))
    if not any(g.minibatched for g in groups):
        raise ValueError(_BATCH_UNUSED)
    return jax.tree.map(lambda x: jnp.asarray(x)[:batch_size], data)


def _check_loss(loss, model, args):
    try:
        out = _loss_shape(loss, unwrap(model), args)
    except Exception as err:
        # JAX's own error (a tracer used as a Python bool, a shape mismatch) says
        # what went wrong; say where.
        if sys.version_info >= (3, 11):
            err.add_note(_LOSS_FAILED)
        raise
    if not (
        isinstance(out, jax.ShapeDtypeStruct)
        and out.shape == ()
        and jnp.issubdtype(out.dtype, jnp.floating)
    ):
        what = (
            f"an array of shape {out.shape} and dtype {out.dtype}"
            if isinstance(out, jax.ShapeDtypeStruct)
            else f"an object of type `{type(out).__name__}`"
        )
        raise ValueError(_LOSS_SHAPE.format(what=what))


def _check_start(losses: jax.Array, finite: dict[str, jax.Array]) -> None:
    """A clear error when a group starts at non-finite values, or the loss is not
    finite at some chain's start."""
    if isinstance(losses, jax.core.Tracer):  # (`Solver.init` under `jax.eval_shape`)
        return
    bad_groups = [name for name, ok in finite.items() if not bool(ok)]
    if bad_groups:
        raise ValueError(_NON_FINITE_VALUES.format(names=bad_groups))
    if not losses.is_fully_addressable:  # chains on other processes too
        losses = multihost_utils.process_allgather(losses, tiled=True)
    losses = np.asarray(losses)
    bad = [k for k, x in enumerate(losses) if not math.isfinite(float(x))]
    if bad:
        values = ", ".join(sorted({str(float(losses[k])) for k in bad}))
        raise ValueError(_NON_FINITE_START.format(values=values, chains=bad))


_LOSS_SHAPES: "collections.OrderedDict[Any, Any]" = collections.OrderedDict()
_LOSS_SHAPES_SIZE = 64


def _loss_shape(loss, model, args):
    """`eqx.filter_eval_shape` of the loss, remembered (for the last few losses and
    input shapes) so that a repeated solve does not trace the loss again."""
    leaves, treedef = jax.tree.flatten((model, args))
    signature = tuple(
        (x.shape, x.dtype, getattr(x, "weak_type", False)) if eqx.is_array(x) else x
        for x in leaves
    )
    try:
        key = (loss, treedef, signature)
        hash(key)
    except TypeError:
        return eqx.filter_eval_shape(loss, model, *args)
    if key in _LOSS_SHAPES:
        _LOSS_SHAPES.move_to_end(key)
    else:
        _LOSS_SHAPES[key] = eqx.filter_eval_shape(loss, model, *args)
        if len(_LOSS_SHAPES) > _LOSS_SHAPES_SIZE:
            _LOSS_SHAPES.popitem(last=False)
    return _LOSS_SHAPES[key]


# -- placement ----------------------------------------------------------------------


def _placed(args, data, mesh: Mesh):
    """The loss's arguments on `mesh`: `args` replicated, `data` along its leading
    axis over `"data"` (replicated without that axis)."""
    data = None if data is None else _sharding.place_data(data, mesh)
    return _sharding.place(tuple(args), mesh), data


def _chain_axes(node: Any) -> Any:
    return node.chain_axes() if isinstance(node, AbstractChainGroup) else None


def _place_state(state: SolverState, mesh: Mesh) -> SolverState:
    """A state on `mesh`: the chain groups' chains over `"chains"`, everything else
    replicated."""
    step, key, unmarked, order = _sharding.place(
        (state.step, state.key, state.unmarked, state.data_order), mesh
    )
    model = _sharding.place_model(state.model, mesh, _chain_axes)
    return SolverState(model, step, key, unmarked, order, state.batch_size)


__all__ = ["Solver", "SolverState", "Substep"]
