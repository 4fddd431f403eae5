"""The Solver: `init -> step -> result`, and `run` as compiled chunks of steps."""

import collections
import contextlib
import dataclasses
import importlib.util
import logging
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.flatten_util
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jax.sharding import Mesh
from jaxtyping import Array, Int, PRNGKeyArray, PyTree

from . import _chunks, _optax, _sharding
from ._custom_types import ArrayTree
from ._mcmc import over_chains
from ._posterior import History, Posterior, Result
from ._summary import diagnostics_line, group_labels
from ._wrappers import AbstractGroup, collapse, is_group, unwrap
from .callbacks import AbstractCallback, Checkpoint, chunk_record, ProgressBar


logger = logging.getLogger("eqbayes")

_NO_GROUPS = (
    "`Solver.init(model, ...)`: the model has no Bayesian groups and the solver has "
    "no optimiser, so there is nothing to do. Mark a sub-tree with "
    "`eb.bayesian(model, blackjax.nuts, where=...)`."
)
_CHAINS = (
    "`Solver.init(model, ...)`: every Bayesian group of one solve must run the same "
    "number of chains, but {detail}. Pass the same `num_chains=` to every "
    "`eb.bayesian(...)` call."
)
_LOSS_SHAPE = (
    "`Solver(loss)`: the loss must return a scalar, but `loss(model, *args)` returned "
    "{what}. Reduce it, e.g. with `jnp.mean(...)` or `jnp.sum(...)`."
)
_LOSS_FAILED = (
    "`Solver.init(model, ...)`: calling `loss(model, *args)` on the unwrapped model "
    "failed: {err}"
)
_STEPS = (
    "`Solver.run(..., steps={steps!r})`: group '{name}' needs {need} steps "
    "(warmup {warmup} + keep {keep} x thin {thin}). Pass `steps >= {need}` or "
    "`steps=None` for exactly that."
)
_STEPS_TYPE = (
    "`Solver.run(..., steps={steps!r})`: `steps` must be a positive integer or None."
)
_NOT_YET = "`{call}`: {what} are not available in this version of eqbayes."
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


class SolverState(eqx.Module):
    """Everything a solve carries from one step to the next.

    **Fields:**

    - `model`: the marked model; each group wrapper holds its state (kernel states
        of the K chains, step size, inverse mass matrix, adaptation, sample buffers,
        optax states).
    - `step`: solver steps taken so far.
    - `key`: the solve's key; step `t` uses `jax.random.fold_in(key, t)`, so a
        solve can be chunked, stepped by hand or resumed without changing its chain.
    - `opt_state`: the state of `Solver(optimizer=...)` for the unmarked leaves
        (None without one).
    - `data_order`: with minibatches, the current epoch's permutation of the data
        (None without).
    - `batch_size`: the minibatch size (static; None: no minibatches).
    """

    model: PyTree
    step: Int[Array, ""]
    key: PRNGKeyArray
    opt_state: PyTree = None
    data_order: Int[Array, " data"] | None = None
    batch_size: int | None = eqx.field(static=True, default=None)


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


@dataclasses.dataclass(frozen=True)
class _Program:
    """What a compiled step needs to know beyond the state (hashable, static)."""

    loss: Callable[..., Any]
    optimizer: Any
    optimizer_chains: str
    substeps: tuple[Substep, ...]


# -- the pure mechanics ---------------------------------------------------------

# Minibatch orders use keys from their own stream: step keys are
# `fold_in(key, step)` with `step < 2**31`.
_DATA_STREAM = 0xFFFFFFFF


def _flatten(model: PyTree):
    leaves, treedef = jax.tree.flatten(model, is_leaf=is_group)
    gidx = tuple(i for i, leaf in enumerate(leaves) if is_group(leaf))
    return leaves, treedef, gidx


def _plain_at(leaves, treedef, gidx, positions: dict[int, ArrayTree]) -> PyTree:
    """The plain model with group j at `positions[j]` (one chain); groups without
    chains (absent from `positions`) at their current value."""
    new = list(leaves)
    for j in gidx:
        if j in positions:
            new[j] = leaves[j].materialise(positions[j])
        else:
            new[j] = leaves[j].current()
    return collapse(jax.tree.unflatten(treedef, new))


def _logdensity_for(loss, leaves, treedef, gidx, i, args) -> Callable:
    """`others_k -> (theta -> log density of group i at chain k)`."""
    leaves = tuple(leaves)
    group = leaves[i]

    def for_chain(others_k):
        def logdensity(theta):
            model = _plain_at(leaves, treedef, gidx, {**others_k, i: theta})
            return group.log_density(loss(model, *args), theta)

        return logdensity

    return for_chain


def _positions(leaves, gidx, exclude: int | None = None) -> dict[int, ArrayTree]:
    """The chained groups' positions, chain axis first."""
    return {
        j: leaves[j].positions() for j in gidx if j != exclude and leaves[j].chained
    }


def _rest_indices(leaves, gidx) -> tuple[int, ...]:
    """The unmarked floating-point leaves: what `Solver(optimizer=...)` trains."""
    marked = set(gidx)
    return tuple(
        i for i, x in enumerate(leaves) if i not in marked and eqx.is_inexact_array(x)
    )


def _train_rest(program: _Program, leaves, treedef, gidx, opt_state, args):
    """One optax step on the unmarked leaves, the groups at their positions."""
    index = _rest_indices(leaves, gidx)

    def loss_for(others_k):
        def loss(params):
            new = list(leaves)
            for i, p in zip(index, params):
                new[i] = p
            return program.loss(_plain_at(new, treedef, gidx, others_k), *args)

        return loss

    params, opt_state = _optax.update(
        program.optimizer,
        loss_for,
        [leaves[i] for i in index],
        opt_state,
        _positions(leaves, gidx),
        program.optimizer_chains,  # type: ignore[arg-type]
    )
    leaves = list(leaves)
    for i, p in zip(index, params):
        leaves[i] = p
    return leaves, opt_state


def _num_data(data) -> int:
    return jax.tree.leaves(data)[0].shape[0]


def _next_batch(state: "SolverState", data):
    """The step's minibatch: epoch-wise shuffling without replacement. Each epoch
    (`N // batch_size` steps; the last incomplete batch is dropped) draws a fresh
    permutation, from the solve's key and the epoch number."""
    assert state.batch_size is not None and state.data_order is not None
    n = _num_data(data)
    per_epoch = n // state.batch_size
    i = state.step % per_epoch

    def reshuffle(_):
        stream = jr.fold_in(state.key, jnp.uint32(_DATA_STREAM))
        key = jr.fold_in(stream, state.step // per_epoch)
        return jr.permutation(key, n).astype(jnp.int32)

    order = jax.lax.cond(i == 0, reshuffle, lambda _: state.data_order, None)
    index = jax.lax.dynamic_slice_in_dim(order, i * state.batch_size, state.batch_size)
    batch = jax.tree.map(lambda x: jnp.take(x, index, axis=0), data)
    return batch, order


def _loss_args(args, data, batch):
    """The loss's arguments for full-data groups and for minibatched ones."""
    full = tuple(args) if data is None else (data, *args)
    mini = full if batch is None else (batch, *args)
    return full, mini


def _stages(program: _Program, leaves, gidx):
    """`(loss, group indices)` per substep (one stage without substeps)."""
    if not program.substeps:
        return [(program.loss, gidx)]
    index = {leaves[i].name: i for i in gidx}
    return [
        (sub.loss, tuple(index[name] for name in sub.groups))
        for sub in program.substeps
    ]


def _transition(
    program: _Program, state: SolverState, args, data, batch, *, phase, recording
):
    """One solver step: every group makes one transition, in a fixed cycle (per
    substep), then the unmarked leaves take one optimiser step."""
    leaves, treedef, gidx = _flatten(state.model)
    key = jr.fold_in(state.key, state.step)
    order = state.data_order
    if batch is None and state.batch_size is not None:
        batch, order = _next_batch(state, data)
    full, mini = _loss_args(args, data, batch)
    # Kernel states cache the log density under the other parts' values: refresh
    # them when anything else moves between two of the group's transitions.
    refresh = len(gidx) > 1 or program.optimizer is not None
    number = {i: n for n, i in enumerate(gidx)}
    for loss, members in _stages(program, leaves, gidx):
        for i in members:
            leaves[i] = leaves[i].transition(
                jr.fold_in(key, number[i]) if len(gidx) > 1 else key,
                state.step,
                _logdensity_for(
                    loss,
                    leaves,
                    treedef,
                    gidx,
                    i,
                    mini if leaves[i].minibatched else full,
                ),
                _positions(leaves, gidx, exclude=i),
                refresh=refresh,
                phase=phase,
                recording=recording,
            )
    opt_state = state.opt_state
    if program.optimizer is not None:
        leaves, opt_state = _train_rest(program, leaves, treedef, gidx, opt_state, mini)
    model = jax.tree.unflatten(treedef, leaves)
    return SolverState(
        model, state.step + 1, state.key, opt_state, order, state.batch_size
    )


def _chain_losses(loss, model, args) -> Array:
    """The loss at each chain's current position, shape `(K,)`."""
    leaves, treedef, gidx = _flatten(model)
    positions = _positions(leaves, gidx)
    if not positions:  # no chains: one value
        return jnp.asarray(loss(_plain_at(leaves, treedef, gidx, {}), *args))[None]
    return over_chains(
        lambda p: loss(_plain_at(leaves, treedef, gidx, p), *args), positions
    )


def _records(loss, model, args):
    """What the history keeps at the end of a chunk: the loss (mean over chains)
    and the variational groups' negative ELBO."""
    neg_elbo = {
        g.name: g.neg_elbo() for g in _groups(model) if g.neg_elbo() is not None
    }
    return jnp.mean(_chain_losses(loss, model, args)), neg_elbo


@eqx.filter_jit
def _init_states(program: _Program, model, key, full, mini):
    leaves, treedef, gidx = _flatten(model)
    starts = {j: leaves[j].start(jr.fold_in(key, n)) for n, j in enumerate(gidx)}
    # Log-density-aware initializers run once, on the full data, each seeing the
    # other groups at their starting values.
    new, warm = list(leaves), dict(starts)
    for n, i in enumerate(gidx):
        new[i], warm[i] = leaves[i].warm_start(
            jr.fold_in(jr.fold_in(key, n), 2),
            starts[i],
            _logdensity_for(program.loss, leaves, treedef, gidx, i, full),
            {j: p for j, p in starts.items() if j != i and leaves[j].chained},
        )
    for n, i in enumerate(gidx):
        new[i] = new[i].initialise(
            warm[i],
            _logdensity_for(
                program.loss,
                leaves,
                treedef,
                gidx,
                i,
                mini if leaves[i].minibatched else full,
            ),
            {j: p for j, p in warm.items() if j != i and leaves[j].chained},
            jr.fold_in(jr.fold_in(key, n), 1),
        )
    opt_state = None
    if program.optimizer is not None:
        index = _rest_indices(leaves, gidx)
        with jax.numpy_dtype_promotion("standard"):  # as in `_optax.update`
            opt_state = program.optimizer.init([leaves[i] for i in index])
    return _strong((jax.tree.unflatten(treedef, new), opt_state))


def _strong(tree):
    """Every array leaf strongly typed: a state's types are then the same whether it
    comes from `init` or from a step, so the compiled programs are reused."""
    return jax.tree.map(
        lambda x: jnp.asarray(x, x.dtype) if eqx.is_array(x) else x, tree
    )


def _fori(num, body, state):
    """`lax.fori_loop` over a state that may hold non-array leaves (activations).
    The carry, and so the returned state, is strongly typed."""
    dynamic, static = eqx.partition(_strong(state), eqx.is_array)

    def array_body(i, dynamic):
        out = body(i, eqx.combine(dynamic, static))
        return eqx.filter(_strong(out), eqx.is_array)

    return eqx.combine(jax.lax.fori_loop(0, num, array_body, dynamic), static)


@eqx.filter_jit
def _step(program, state, args, data, batch):
    return _strong(
        _transition(program, state, args, data, batch, phase="any", recording="auto")
    )


@eqx.filter_jit
def _run_general(program, state, args, data, num_steps):
    def body(_, s):
        return _transition(program, s, args, data, None, phase="any", recording="auto")

    state = _fori(num_steps, body, state)
    full, _ = _loss_args(args, data, None)
    return state, _records(program.loss, state.model, full)


@eqx.filter_jit
def _run_fast(program, state, args, data, num_warmup, num_sample):
    """The fast path (every sampled group on one schedule): `num_warmup` warmup
    steps (adaptation, no recording), then `num_sample` steps past warmup, each
    writing its draw's slot (the last write to a slot, at the `thin`-th step, is
    the draw). No conditions on the step counter; one program for every chunk."""

    def warm(_, s):
        return _transition(
            program, s, args, data, None, phase="warmup", recording="never"
        )

    def sample(_, s):
        return _transition(
            program, s, args, data, None, phase="sample", recording="always"
        )

    state = _fori(num_sample, sample, _fori(num_warmup, warm, state))
    full, _ = _loss_args(args, data, None)
    return state, _records(program.loss, state.model, full)


# -- the public Solver ----------------------------------------------------------


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


def _groups(model: PyTree) -> list[AbstractGroup]:
    """Every group of a model (masked groups' members included)."""
    return [leaf for leaf in jax.tree.leaves(model, is_leaf=is_group) if is_group(leaf)]


class Solver(eqx.Module):
    """Steps every group of a marked model together.

    One `Solver` serves any number of solves: the compiled program is reused by
    later calls with the same model structure and configuration.

    **Arguments:**

    - `loss`: `loss(model, *args) -> scalar`, called with the plain model (every
        wrapper replaced by values). With `data=`, `loss(model, data, *args)`,
        where minibatched parts see a minibatch in place of `data`.
    - `optimizer`: an optax optimiser for every floating-point leaf that no group
        holds (`None`: those leaves stay frozen). It takes one step per solver step,
        after the groups, on the loss with the sampled groups at their positions.
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
        pe = self.print_every
        if pe is not None and (
            isinstance(pe, bool) or not isinstance(pe, int) or pe < 1
        ):
            raise ValueError(_PRINT_EVERY.format(value=pe))

    @property
    def _program(self) -> _Program:
        return _Program(self.loss, self.optimizer, self.optimizer_chains, self.substeps)

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

        Every misconfiguration raises here, before anything is compiled.

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
        key = _as_key(key, "init")
        groups = _groups(model)
        if not groups and self.optimizer is None:
            raise ValueError(_NO_GROUPS)
        for group in groups:
            group.check()
        for group in groups:
            group.check_with(groups)
        chains = {g.name: g.num_chains for g in groups if g.chained}
        if len(set(chains.values())) > 1:
            detail = ", ".join(f"'{n}' has num_chains={k}" for n, k in chains.items())
            raise ValueError(_CHAINS.format(detail=detail))
        if mesh is not None:
            _sharding.check_mesh(mesh, "init", chains, data)
        leaves, _, gidx = _flatten(model)
        if self.optimizer is not None and not _rest_indices(leaves, gidx):
            raise ValueError(_NOTHING_TO_OPTIMISE)
        self._check_substeps(groups)
        first = _check_data(data, batch_size, groups, self.optimizer is not None)
        full, mini = _loss_args(args, data, first)
        for loss in (self.loss, *(sub.loss for sub in self.substeps)):
            self._check_loss(loss, model, full)
        init_key, run_key = jr.split(key)
        if mesh is not None:
            args, data = _placed(args, data, mesh)
            first = None if first is None else _sharding.place(first, mesh)
            full, mini = _loss_args(args, data, first)
        with _sharding.using(mesh):
            model, opt_state = _init_states(self._program, model, init_key, full, mini)
        data_order = None
        if batch_size is not None:
            data_order = jnp.zeros(_num_data(data), jnp.int32)
        state = SolverState(
            model, jnp.asarray(0, jnp.int32), run_key, opt_state, data_order, batch_size
        )
        self._log_init(state, data, batch_size)
        return state if mesh is None else _place_state(state, mesh)

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
        for group in groups:
            if group.initializer is not None:
                raise ValueError(_SUBSTEP_INIT.format(name=group.name))
            if group.adapts:
                raise ValueError(_SUBSTEP_ADAPT.format(name=group.name))

    def _log_init(self, state: SolverState, data, batch_size):
        groups = _groups(state.model)
        if logger.isEnabledFor(logging.INFO):
            for group in groups:
                logger.info(group.describe())
            leaves, _, gidx = _flatten(state.model)
            index = _rest_indices(leaves, gidx)
            size = sum(leaves[i].size for i in index)
            if self.optimizer is not None:
                logger.info(
                    f"Unmarked leaves ({len(index)} arrays, {size} values): trained "
                    "by the Solver's optax optimiser."
                )
            elif index:
                logger.info(
                    f"Unmarked leaves ({len(index)} arrays, {size} values): frozen."
                )
            if batch_size is not None:
                n = _num_data(data)
                logger.info(
                    f"Minibatches of {batch_size} of {n} rows, reshuffled every "
                    f"epoch ({n // batch_size} steps; {n % batch_size} rows dropped "
                    "per epoch)."
                )
        trained = self.optimizer is not None or any(not g.chained for g in groups)
        chained = [g for g in groups if g.chained]
        if trained and chained and chained[0].num_chains > 1:
            if self.optimizer is not None and self.optimizer_chains == "first":
                logger.warning(_REPRESENTATIVE.format(k=chained[0].num_chains))
            for g in groups:
                if g.representative:
                    logger.warning(
                        f"Group '{g.name}': "
                        + _REPRESENTATIVE.format(k=chained[0].num_chains)
                    )
        if trained:
            for g in chained:
                if g.adapts:
                    logger.warning(_ADAPT_MIXED.format(name=g.name))

    def _check_loss(self, loss, model, args):
        try:
            out = _loss_shape(loss, unwrap(model), args)
        except Exception as err:  # noqa: BLE001 - re-raised with context
            raise type(err)(_LOSS_FAILED.format(err=err)) from err
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
            return _step(self._program, state, tuple(args), data, batch)

    def result(self, state: SolverState, history: History | None = None) -> Result:
        """Collects the posterior and the plain model from a state.

        **Arguments:**

        - `state`: a [`eqbayes.SolverState`][].
        - `history`: per-chunk records; `run` passes its own. By default, the loss
            is not re-evaluated and the history is empty.

        **Returns:**

        A [`eqbayes.Result`][].
        """
        steps_done = int(state.step)
        plain = unwrap(state.model)
        samples = collapse(
            jax.tree.map(
                lambda x: x.draws(steps_done) if is_group(x) else None,
                state.model,
                is_leaf=is_group,
            )
        )
        diagnostics = {
            g.name: g.kernel_diagnostics(steps_done)
            for g in _groups(state.model)
            if g.sampled
        }
        if history is None:
            history = History(jnp.zeros((0,)), {})
        labels = group_labels(plain, state.model)
        variational = {
            g.name: g.approximation()
            for g in _groups(state.model)
            if g.approximation() is not None
        }
        return Result(
            plain, Posterior(samples, diagnostics, plain, labels), history, variational
        )

    # -- run ------------------------------------------------------------------------

    def run(
        self,
        model: PyTree,
        steps: int | None = None,
        *,
        key: PRNGKeyArray,
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

        - `model`: the marked model (see [`eqbayes.bayesian`][]).
        - `steps`: solver steps; `None` means the longest sampling group's
            `warmup + keep * thin` (required when no group samples). A longer solve
            keeps each group's last `keep` draws.
        - `key`: a JAX PRNG key (`jax.random.key(0)`); same key, same chain.
        - `args`: extra arguments of the loss, `loss(model, *args)`.
        - `data`: optional data, passed as `loss(model, data, *args)`.
        - `batch_size`: minibatch size for the minibatched parts (see
            [`eqbayes.Solver.init`][]).
        - `state`: continue from this state (e.g. one loaded with
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

        A [`eqbayes.Result`][].
        """
        groups = _groups(model if state is None else state.model)
        if not groups and self.optimizer is None:
            raise ValueError(_NO_GROUPS)
        done = 0 if state is None else int(state.step)
        schedules = {g.schedule for g in groups if g.chained}
        needed = max((w + k * t for w, k, t in schedules), default=0)
        if steps is None:
            if not schedules:
                raise ValueError(_NEED_STEPS)
            steps = max(needed - done, 0)
        elif isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(_STEPS_TYPE.format(steps=steps))
        for g in groups:
            if not g.chained:
                continue
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
        if checkpoint_every is not None and (
            checkpoint is None
            or isinstance(checkpoint_every, bool)
            or not isinstance(checkpoint_every, int)
            or checkpoint_every < 1
        ):
            raise ValueError(_CHECKPOINT_EVERY.format(value=checkpoint_every))
        if state is None:
            state = self.init(
                model, key=key, args=args, data=data, batch_size=batch_size, mesh=mesh
            )
        elif state.batch_size is not None and data is None:
            raise ValueError(_STEP_NEEDS_DATA)
        elif mesh is not None:  # move the state onto the mesh
            chains = {g.name: g.num_chains for g in groups if g.chained}
            _sharding.check_mesh(mesh, "run", chains, data)
            state = _place_state(state, mesh)
        args = tuple(args)
        mesh = _sharding.mesh_of(state.step)
        if mesh is not None:
            args, data = _placed(args, data, mesh)
        program = self._program
        callbacks = list(self.callbacks)
        if self.progress and importlib.util.find_spec("tqdm") is not None:
            callbacks.insert(0, ProgressBar())
        if checkpoint is not None:
            callbacks.append(Checkpoint(checkpoint, every=checkpoint_every))
        # Chunks of `print_every` (or `checkpoint_every`) steps; else, with nobody
        # watching, the whole solve in one chunk, and chunks timed to a few per
        # second when somebody is.
        fast = len(schedules) == 1 and done == 0 and steps == needed
        every = self.print_every or checkpoint_every or (None if callbacks else steps)
        sizes = _chunks.ChunkSizes(
            steps,
            every=every,
            key=None
            if every is not None
            else _chunks.pace_key(program, fast, state, args, data),
        )
        warmup = next(iter(schedules))[0] if fast else 0
        records = []

        def tell(state, record, n):
            record = jax.device_get(record)  # one host transfer per chunk
            records.append(record)
            if callbacks:
                loss, neg_elbo = record
                chunk = chunk_record(state, loss, n, done + steps, neg_elbo)
                for callback in callbacks:
                    callback(chunk)

        path = (
            "Fast path (warmup and draws without per-step bookkeeping)"
            if fast
            else "General path (the fast path needs one warmup/keep/thin for all "
            "sampling groups and a fresh solve of exactly their length)"
        )
        cadence = (
            f"about {_chunks.REFRESH_SECONDS} s each" if sizes.timed else sizes.size
        )
        logger.info(f"{path}: {steps} steps in chunks of {cadence}.")
        with (
            _running(callbacks, done, done + steps),
            _sharding.using(mesh),
            _chunks.HostWork(threaded=bool(callbacks)) as host,
        ):
            at = 0
            while at < steps:
                n = sizes.next(at)
                host.release()  # the last chunk's host work runs while this computes
                start = time.perf_counter()
                if fast:
                    n_warm = min(n, max(0, warmup - at))
                    state, record = _run_fast(
                        program,
                        state,
                        args,
                        data,
                        jnp.asarray(n_warm),
                        jnp.asarray(n - n_warm),
                    )
                else:
                    state, record = _run_general(
                        program, state, args, data, jnp.asarray(n)
                    )
                at += n
                if sizes.timed:
                    jax.block_until_ready(record)
                    sizes.observe(n, time.perf_counter() - start, host.seconds)
                host.submit(tell, state, record, n, last=at == steps)
        history = _history(records)
        assert state is not None
        result = self.result(state, history)
        if logger.isEnabledFor(logging.INFO):
            for name, diagnostics in result.posterior.diagnostics.items():
                if name in result.history.neg_elbo:
                    neg_elbo = float(result.history.neg_elbo[name][-1])
                    logger.info(f"Group '{name}': final -ELBO estimate {neg_elbo:.6g}")
                else:
                    logger.info(diagnostics_line(name, diagnostics))
        return result


def _placed(args, data, mesh: Mesh):
    """The loss's arguments on `mesh`: `args` replicated, `data` along its leading
    axis over `"data"` (replicated without that axis)."""
    data = None if data is None else _sharding.place_data(data, mesh)
    return _sharding.place(tuple(args), mesh), data


def _place_state(state: SolverState, mesh: Mesh) -> SolverState:
    """A state on `mesh`: MCMC chains over `"chains"`, everything else replicated."""
    step, key, opt_state, order = _sharding.place(
        (state.step, state.key, state.opt_state, state.data_order), mesh
    )
    model = _sharding.place_model(state.model, mesh)
    return SolverState(model, step, key, opt_state, order, state.batch_size)


def _history(records: list) -> History:
    """The per-chunk `(loss, {name: neg_elbo})` records as a `History`."""
    if not records:
        return History(jnp.zeros((0,)), {})
    losses, neg_elbos = zip(*records)
    return History(
        jnp.asarray(np.stack(losses)),
        {
            name: jnp.asarray(np.stack([r[name] for r in neg_elbos]))
            for name in neg_elbos[0]
        },
    )


def _check_data(data, batch_size, groups, optimizer: bool):
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
    n = _num_data(data)
    if not 1 <= batch_size <= n:
        raise ValueError(_BATCH_SIZE.format(value=batch_size, n=n))
    if not optimizer and not any(g.minibatched for g in groups):
        raise ValueError(_BATCH_UNUSED)
    return jax.tree.map(lambda x: jnp.asarray(x)[:batch_size], data)


_NEED_STEPS = (
    "`Solver.run(model, steps=None, ...)`: no group samples a chain, so there is no "
    "schedule to take the length from. Pass `steps=`."
)
_NOTHING_TO_OPTIMISE = (
    "`Solver(loss, optimizer=...)`: every floating-point leaf of the model belongs "
    "to a group, so the optimiser has nothing to train. Drop `optimizer=` (or mark "
    "fewer leaves)."
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
_SUBSTEP_INIT = (
    "`Solver(..., substeps=...)`: group '{name}' has an initializer "
    "(`eb.bayesian(..., init=...)`), but an initializer runs once on the full loss "
    "while within substeps the group's kernel sees only its substep's loss. Drop "
    "`init=` (start the group from values set in the model), or drop `substeps=`."
)
_SUBSTEP_ADAPT = (
    "`Solver(..., substeps=...)`: group '{name}' adapts its step size "
    "(`adapt=True`), but within substeps its kernel sees only its substep's loss "
    "while the other parts still train. Pass `adapt=False` and a hand-set "
    "`step_size=` to `eb.bayesian(...)`."
)
_REPRESENTATIVE = (
    "with K={k} chains, the optimiser's gradient is taken at chain 0 of the sampled "
    "groups (one representative: a stochastic-approximation EM step), not at each "
    "chain. Pass `optimizer_chains='mean'` (`chains='mean'` in `eb.optimise`) to "
    "average it over the chains, or `num_chains=1` for independent solves."
)
_ADAPT_MIXED = (
    "Group '{name}': window adaptation tunes the step size while the optimised parts "
    "of the model are still near their initial values, so it may not suit the "
    "trained model. With optimised parts, `adapt=False` and a hand-set `step_size=` "
    "are usually the better choice."
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


__all__ = ["Solver", "SolverState", "Substep"]
