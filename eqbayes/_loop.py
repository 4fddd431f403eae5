"""The traced side of a solve: the state, one solver step, and the compiled
programs built from it (init, one step, a chunk of steps)."""

import dataclasses
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Float, Int, PRNGKeyArray, PyTree

from ._custom_types import ArrayTree
from ._groups import (
    AbstractChainGroup,
    AbstractGroup,
    AbstractStagedGroup,
    Context,
    is_group,
    Mode,
    num_chains,
)
from ._marking import collapse
from ._optax import OptaxGroup
from ._paramax import frozen_flags
from ._sharding import over_chains


class SolverState(eqx.Module):
    """Everything a solve carries from one step to the next.

    **Fields:**

    - `model`: the marked model; each group holds its own state (kernel states of
        the K chains, step size, inverse mass matrix, adaptation, kept draws,
        variational and optax states).
    - `step`: solver steps taken so far.
    - `key`: the solve's key; step `t` uses `jax.random.fold_in(key, t)`, so a
        solve can be chunked, stepped by hand or resumed without changing its chain.
    - `unmarked`: the optax group of `Solver(optimizer=...)` over the leaves no
        group holds (None without an optimiser).
    - `data_order`: with minibatches, the current epoch's permutation of the data
        (None without).
    - `batch_size`: the minibatch size (static; None: no minibatches).
    """

    model: PyTree
    step: Int[Array, ""]
    key: PRNGKeyArray
    unmarked: OptaxGroup | None = None
    data_order: Int[Array, " data"] | None = None
    batch_size: int | None = eqx.field(static=True, default=None)


@dataclasses.dataclass(frozen=True)
class Program:
    """What a compiled step needs to know beyond the state (hashable, static):
    the loss, and `(loss, group names)` per substep (empty without substeps)."""

    loss: Callable[..., Any]
    substeps: tuple[tuple[Callable[..., Any], tuple[str, ...]], ...] = ()


# Minibatch orders use keys from their own stream: step keys are
# `fold_in(key, step)` with `step < 2**31`.
_DATA_STREAM = 0xFFFFFFFF
# Groups' init keys likewise, beside their start keys `fold_in(init_key, j)`.
_INIT_STREAM = 0xFFFFFFFF


def split_key(key: PRNGKeyArray) -> tuple[PRNGKeyArray, PRNGKeyArray]:
    """`(init key, run key)` of a solve's key."""
    init_key, run_key = jr.split(key)
    return init_key, run_key


def group_keys(init_key: PRNGKeyArray, j: int) -> tuple[PRNGKeyArray, PRNGKeyArray]:
    """`(start key, init key)` of group `j`. Start keys are `fold_in(init_key, j)`
    (a group splits its own per leaf); init keys come from a stream of their own,
    so that no split of a start key is an init key."""
    start = jr.fold_in(init_key, j)
    init = jr.fold_in(jr.fold_in(init_key, jnp.uint32(_INIT_STREAM)), j)
    return start, init


def _is_unmarked(x: Any) -> bool:
    """A floating-point array leaf that no group holds (`Solver(optimizer=...)`
    trains it)."""
    return not is_group(x) and eqx.is_inexact_array(x)


def unmarked_leaves(model: PyTree) -> list[Any]:
    """The unmarked floating-point leaves of a marked model, in flattening order
    (without those inside a `paramax.NonTrainable`)."""
    leaves = jax.tree.leaves(model, is_leaf=is_group)
    frozen = frozen_flags(model, is_group)
    return [x for x, f in zip(leaves, frozen) if _is_unmarked(x) and not f]


class Parts:
    """A marked model as its groups (the unmarked-leaves group last, when there is
    one) and the rest of its leaves: builds the plain model at given positions."""

    def __init__(self, model: PyTree, unmarked: OptaxGroup | None):
        self.leaves, self.treedef = jax.tree.flatten(model, is_leaf=is_group)
        self.index = [i for i, x in enumerate(self.leaves) if is_group(x)]
        groups: list[AbstractGroup] = [self.leaves[i] for i in self.index]
        self.rest: list[int] = []
        if unmarked is not None:
            groups.append(unmarked)
            frozen = frozen_flags(model, is_group)
            self.rest = [
                i
                for i, (x, f) in enumerate(zip(self.leaves, frozen))
                if _is_unmarked(x) and not f
            ]
        self.groups = groups
        self.has_unmarked = unmarked is not None

    def plain(self, groups, values: dict[int, PyTree]) -> PyTree:
        """The plain model with group `j` at `values[j]` (a plain sub-tree), every
        other group at its current value."""
        leaves = list(self.leaves)
        for j, group in enumerate(groups):
            value = values[j] if j in values else group.current()
            if j < len(self.index):
                leaves[self.index[j]] = value
            else:
                for i, x in zip(self.rest, value):
                    leaves[i] = x
        return collapse(jax.tree.unflatten(self.treedef, leaves))

    def rebuild(self, groups) -> tuple[PyTree, OptaxGroup | None]:
        """`(model, unmarked)` holding `groups`. The model's unmarked leaves are
        left as they are (`sync` sets them)."""
        leaves = list(self.leaves)
        for i, group in zip(self.index, groups):
            leaves[i] = group
        unmarked = groups[-1] if self.has_unmarked else None
        return jax.tree.unflatten(self.treedef, leaves), unmarked


def sync(state: "SolverState") -> "SolverState":
    """The state with the model's unmarked leaves at the unmarked group's values
    (so that `eb.unwrap(state.model)` is current). Done once per compiled call,
    not per step: inside a loop the group's values are the ones every step reads."""
    if state.unmarked is None:
        return state
    parts = Parts(state.model, state.unmarked)
    leaves = list(parts.leaves)
    for i, x in zip(parts.rest, state.unmarked.current()):
        leaves[i] = x
    model = jax.tree.unflatten(parts.treedef, leaves)
    return eqx.tree_at(lambda s: s.model, state, model)


def chain_positions(groups, exclude: int | None = None) -> dict[int, ArrayTree]:
    """The chain groups' positions, chain axis first."""
    return {
        j: g.positions()
        for j, g in enumerate(groups)
        if j != exclude and isinstance(g, AbstractChainGroup)
    }


def context(
    parts: Parts,
    groups,
    j: int,
    others: dict[int, ArrayTree],
    *,
    loss,
    full,
    mini,
    **fields,
) -> Context:
    """Group `j`'s context: its loss with the chain groups at one chain of
    `others` and every other group at its current value."""
    groups = tuple(groups)
    group = groups[j]

    def plain(others_k, position):
        values = {l: groups[l].materialise(p) for l, p in others_k.items()}
        values[j] = group.materialise(position)
        return parts.plain(groups, values)

    return Context(
        others=others,
        num_chains=num_chains(groups),
        refresh=len(groups) > 1,
        plain=plain,
        loss=loss,
        full_args=full,
        batch_args=mini,
        **fields,
    )


def _num_data(data) -> int:
    return jax.tree.leaves(data)[0].shape[0]


def next_batch(state: SolverState, data):
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


def loss_args(args, data, batch):
    """The loss's arguments with the full data and with the minibatch."""
    full = tuple(args) if data is None else (data, *args)
    mini = full if batch is None else (batch, *args)
    return full, mini


def _stages(program: Program, groups):
    """`(loss, group indices)` per substep (one stage without substeps)."""
    if not program.substeps:
        return [(program.loss, range(len(groups)))]
    index = {g.name: j for j, g in enumerate(groups)}
    return [
        (loss, tuple(index[name] for name in names)) for loss, names in program.substeps
    ]


def transition(
    program: Program, state: SolverState, args, data, batch, mode: Mode
) -> SolverState:
    """One solver step: every group steps once, in a fixed cycle (per substep),
    each seeing the others' values of the moment (Metropolis-within-Gibbs)."""
    parts = Parts(state.model, state.unmarked)
    groups = list(parts.groups)
    key = jr.fold_in(state.key, state.step)
    order = state.data_order
    if batch is None and state.batch_size is not None:
        batch, order = next_batch(state, data)
    full, mini = loss_args(args, data, batch)
    for loss, members in _stages(program, groups):
        for j in members:
            ctx = context(
                parts,
                groups,
                j,
                chain_positions(groups, exclude=j),
                loss=loss,
                full=full,
                mini=mini,
                # (The unmarked-leaves group draws no randomness.)
                key=jr.fold_in(key, j) if len(parts.index) > 1 else key,
                step=state.step,
                mode=mode,
                start=None,
            )
            groups[j] = groups[j].step(ctx)
    model, unmarked = parts.rebuild(groups)
    return SolverState(
        model, state.step + 1, state.key, unmarked, order, state.batch_size
    )


def chain_losses(loss, model, unmarked, args) -> Float[Array, " chains"]:
    """The loss at each chain's current position, shape `(K,)`."""
    parts = Parts(model, unmarked)
    groups = parts.groups
    positions = chain_positions(groups)

    def at(p):
        values = {j: groups[j].materialise(x) for j, x in p.items()}
        return loss(parts.plain(groups, values), *args)

    return over_chains(at, positions)


def records(loss, state: SolverState, args):
    """What the history keeps at the end of a chunk: the loss (mean over chains)
    and each group's monitored scalars."""
    monitors = {g.name: g.monitor() for g in Parts(state.model, state.unmarked).groups}
    losses = chain_losses(loss, state.model, state.unmarked, args)
    return jnp.mean(losses), {name: m for name, m in monitors.items() if m}


def strong(tree):
    """Every array leaf strongly typed: a state's types are then the same whether it
    comes from `init` or from a step, so the compiled programs are reused."""
    return jax.tree.map(
        lambda x: jnp.asarray(x, x.dtype) if eqx.is_array(x) else x, tree
    )


def finished(state: SolverState) -> Array | None:
    """Whether every staged group of the solve is finished (None: it has none)."""
    staged = [
        g
        for g in Parts(state.model, state.unmarked).groups
        if isinstance(g, AbstractStagedGroup)
    ]
    if not staged:
        return None
    return jnp.all(jnp.stack([g.finished() for g in staged]))


def _fori(num, body, state):
    """`num` steps of `body` (`lax.fori_loop`) over a state that may hold non-array
    leaves (activations); fewer when the solve has staged groups and they all
    finish first (`lax.while_loop`). The carry, and so the returned state, is
    strongly typed."""
    dynamic, static = eqx.partition(strong(state), eqx.is_array)

    def array_body(i, dynamic):
        out = body(eqx.combine(dynamic, static))
        return eqx.filter(strong(out), eqx.is_array)

    if finished(state) is None:
        return eqx.combine(jax.lax.fori_loop(0, num, array_body, dynamic), static)

    def go_on(carry):
        i, dynamic = carry
        done = finished(eqx.combine(dynamic, static))
        return (i < num) & jnp.logical_not(done)

    def while_body(carry):
        i, dynamic = carry
        return i + 1, array_body(i, dynamic)

    start = jnp.zeros((), jnp.asarray(num).dtype)
    _, dynamic = jax.lax.while_loop(go_on, while_body, (start, dynamic))
    return eqx.combine(dynamic, static)


# -- the compiled programs ----------------------------------------------------------


@eqx.filter_jit
def init_program(program: Program, state: SolverState, full, mini):
    """Every group initialised (`state.step` is 0; `state.key` the init key), the
    loss at every chain's start, and whether each group's starting values are
    finite."""
    parts = Parts(state.model, state.unmarked)
    groups = parts.groups
    keys = [group_keys(state.key, j) for j in range(len(groups))]
    starts = {
        j: g.start(keys[j][0])
        for j, g in enumerate(groups)
        if isinstance(g, AbstractChainGroup)
    }
    new = []
    for j, group in enumerate(groups):
        ctx = context(
            parts,
            groups,
            j,
            {l: p for l, p in starts.items() if l != j},
            loss=program.loss,
            full=full,
            mini=mini,
            key=keys[j][1],
            step=state.step,
            mode=Mode.GENERAL,
            start=starts.get(j),
        )
        new.append(group.init(ctx))
    model, unmarked = parts.rebuild(new)
    out = sync(SolverState(model, state.step, state.key, unmarked))
    losses = chain_losses(program.loss, out.model, out.unmarked, full)
    finite = {g.name: _all_finite(_start_values(g)) for g in new}
    return strong((out.model, out.unmarked)), (losses, finite)


def _start_values(group: AbstractGroup) -> ArrayTree:
    if isinstance(group, AbstractChainGroup):
        return group.positions()
    return group.initial_position()


def _all_finite(tree: ArrayTree) -> Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


@eqx.filter_jit
def step_program(program: Program, state: SolverState, args, data, batch):
    """One solver step (`Solver.step`)."""
    return strong(sync(transition(program, state, args, data, batch, Mode.GENERAL)))


@eqx.filter_jit
def chunk_program(
    program: Program,
    state: SolverState,
    args,
    data,
    num_warmup: Int[Array, ""],
    num_steps: Int[Array, ""],
    fast: bool,
):
    """`num_steps` solver steps and the chunk's records.

    With `fast` (every chain group on one schedule, a fresh solve of exactly its
    length): the first `num_warmup` steps in `Mode.WARMUP`, the rest in
    `Mode.DRAWS`; otherwise every step in `Mode.GENERAL`.
    """

    def body(mode):
        return lambda s: transition(program, s, args, data, None, mode)

    if fast:
        state = _fori(num_warmup, body(Mode.WARMUP), state)
        state = _fori(num_steps - num_warmup, body(Mode.DRAWS), state)
    else:
        state = _fori(num_steps, body(Mode.GENERAL), state)
    state = sync(state)
    full, _ = loss_args(args, data, None)
    return state, records(program.loss, state, full)
