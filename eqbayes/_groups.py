"""The group interface: what every kind of group implements, and what it is given.

A group is a sub-tree of the user's model governed by one inference method (an
MCMC kernel, a variational fit, an optax optimiser, your own). The Solver knows
groups only through [`eqbayes.AbstractGroup`][] (and, for groups with K chains,
[`eqbayes.AbstractChainGroup`][]): it checks them, initialises them, steps them in
a fixed cycle and collects what they hand back, and hands each a
[`eqbayes.Context`][] with the rest of the model.
"""

import abc
import dataclasses
import enum
from collections.abc import Callable, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray, PyTree

from ._constrained import resolve
from ._custom_types import ArrayTree
from ._sharding import over_chains


class Mode(enum.Enum):
    """What a compiled loop knows about all of its steps (static).

    - `GENERAL`: nothing; each group decides from the step counter whether it is
        warming up and whether the step's draw is kept.
    - `WARMUP`: every step is a warmup step of every chain group: adapt, keep
        nothing.
    - `DRAWS`: every step is past every chain group's warmup, and the loop runs
        whole draws (`thin` steps each): each step writes its draw's slot, so the
        last write to a slot is the draw. No conditions on the step counter.
    """

    GENERAL = "general"
    WARMUP = "warmup"
    DRAWS = "draws"


_NO_LOSS = (
    "`Context.{fn}`: this context has no loss (it describes a chunk record or a "
    "result computed without `args`). Pass `args=` (and `data=`) to "
    "`Solver.result(state, args=...)`."
)


@dataclasses.dataclass(frozen=True)
class Context:
    """What a group is given when the Solver initialises, steps or finishes it.

    The Solver builds one per group and call, inside the compiled program (or on
    the host, for [`eqbayes.AbstractGroup.result`][]). The loss it gives access
    to is the user's loss on the plain model, with this group at a position of
    your choice and every other group at its current value: chain groups at one
    chain's position (pick a chain of `others`), groups without chains at their
    single value.

    **Fields:**

    - `key`: this group's key for this call (None in a chunk record).
    - `step`: solver steps done before this call (0 in `init`; the steps done in
        `result`).
    - `mode`: a [`eqbayes.Mode`][]: what the loop knows about its steps.
    - `start`: in `init` of a chain group, its K starting positions (from its
        `start`); None otherwise.
    - `others`: the other chain groups' positions, chain axis first (an opaque
        pytree: pass one chain's slice, or use `over_chains`).
    - `num_chains`: K of the solve's chain groups (1 when there are none).
    - `refresh`: whether another part of the model may have moved since this
        group's last step (a kernel that caches its log density must then
        recompute it).
    - `full_args`: the arguments the loss takes after the model, with all the
        data: `(data, *args)` for a solve with `data=`, else `args`.
    - `batch_args`: the same with this step's minibatch in place of `data` (equal
        to `full_args` without a `batch_size`).

    The remaining fields (`plain`, `loss`) are what `model_fn` and `loss_fn` are
    built from.
    """

    key: PRNGKeyArray | None
    step: Int[Array, ""] | int
    mode: Mode
    start: ArrayTree | None
    others: ArrayTree
    num_chains: int
    refresh: bool
    plain: Callable[[ArrayTree, ArrayTree], PyTree] | None = None
    loss: Callable[..., Any] | None = None
    full_args: tuple = ()
    batch_args: tuple = ()

    def model_fn(self, others_k: ArrayTree) -> Callable[[ArrayTree], PyTree]:
        """`position -> plain model`: this group at `position`, the chain groups at
        `others_k` (one chain's slice of `others`)."""
        plain = self.plain
        if plain is None:
            raise ValueError(_NO_LOSS.format(fn="model_fn"))
        return lambda position: plain(others_k, position)

    def loss_fn(
        self, others_k: ArrayTree, *, minibatch: bool = False
    ) -> Callable[[ArrayTree], Float[Array, ""]]:
        """`position -> loss` on the model of `model_fn(others_k)`, with the full
        data, or with this step's minibatch when `minibatch=True` (the same data
        when the solve has no `batch_size`)."""
        if self.loss is None or self.plain is None:
            raise ValueError(_NO_LOSS.format(fn="loss_fn"))
        loss, plain = self.loss, self.plain
        args = self.batch_args if minibatch else self.full_args
        return lambda position: loss(plain(others_k, position), *args)

    def over_chains(self, fn: Callable[..., Any], *batched: Any) -> Any:
        """`fn(others_k, *batched_k)` for each chain k, stacked on a leading axis
        (`jax.vmap`, each device over its own chains in a sharded solve). Every
        leaf of `batched` has the chain axis first."""
        return over_chains(fn, self.others, *batched)

    def chain(self, k: int) -> ArrayTree:
        """Chain `k`'s slice of `others`."""
        return jax.tree.map(lambda x: x[k], self.others)


@dataclasses.dataclass(frozen=True)
class Solve:
    """What a group may check itself against before a solve (see
    [`eqbayes.AbstractGroup.check`][]).

    **Fields:**

    - `groups`: every group of the solve (this one included, and the Solver's
        own optimiser group when it has one), in stepping order.
    - `substeps`: whether the solve runs `Solver(substeps=...)`.
    """

    groups: tuple["AbstractGroup", ...]
    substeps: bool = False

    @property
    def chain_groups(self) -> tuple["AbstractChainGroup", ...]:
        return tuple(g for g in self.groups if isinstance(g, AbstractChainGroup))

    @property
    def num_chains(self) -> int:
        """K of the chain groups (1 when there are none)."""
        return num_chains(self.groups)

    @property
    def trains(self) -> bool:
        """Whether a group without chains moves beside the chains (an optax or
        variational part), so that a chain's target changes during the solve."""
        return any(not isinstance(g, AbstractChainGroup) for g in self.groups)


class GroupResult(eqx.Module):
    """What a group hands back at the end of a solve.

    **Fields:**

    - `samples`: draws `(K, N, *leaf)` with the structure of the group's position
        (`None` at leaves it does not hold), or `None` for a point estimate.
    - `diagnostics`: per-draw diagnostics (a Module of `(K, N)` arrays, e.g.
        [`eqbayes.KernelDiagnostics`][]), or None.
    - `approximation`: a fitted distribution (a variational q), or None.
    - `log_evidence`: an estimate of $\\log p(\\text{data})$ with every
        normalising constant included (sequential Monte Carlo), or None.
    """

    samples: ArrayTree | None = None
    diagnostics: Any = None
    approximation: Any = None
    log_evidence: Float[Array, ""] | None = None


class Draws(eqx.Module):
    """The kept draws of K chains: a ring buffer `(K, keep, ...)` of any pytree.

    A chain group keeps its draws (and per-draw diagnostics) in one. Step `t`
    (0-based) is a draw when `t >= warmup` and `(t - warmup) % thin == thin - 1`;
    the buffer keeps the last `keep` of them.

    **Fields:**

    - `values`: the buffers, each `(K, keep, ...)`.
    - `warmup`, `keep`, `thin`: the schedule.
    """

    values: ArrayTree
    warmup: int = eqx.field(static=True)
    keep: int = eqx.field(static=True)
    thin: int = eqx.field(static=True)

    @classmethod
    def empty(cls, like: ArrayTree, *, warmup: int, keep: int, thin: int) -> "Draws":
        """Zeroed buffers for values like `like` (leaves `(K, ...)`)."""
        values = jax.tree.map(
            lambda x: jnp.zeros((x.shape[0], keep, *x.shape[1:]), x.dtype), like
        )
        return cls(values, warmup, keep, thin)

    def record(self, step: Int[Array, ""], value: ArrayTree, mode: Mode) -> "Draws":
        """The buffers after solver step `step` produced `value` (leaves `(K, ...)`):
        written into its slot if `step` is a draw (always, in `Mode.DRAWS`; never, in
        `Mode.WARMUP`)."""
        if mode is Mode.WARMUP:
            return self
        always = mode is Mode.DRAWS
        offset = step - self.warmup
        slot = (offset // self.thin) % self.keep
        take = (offset >= 0) & (offset % self.thin == self.thin - 1)

        # `lax.dynamic_update_*` rather than `.at[].set`: the latter lowers to a
        # scatter, several times slower per step on CPU.
        def write(buffer, new):
            new = new.astype(buffer.dtype)
            if not always:
                old = jax.lax.dynamic_index_in_dim(buffer, slot, axis=1, keepdims=False)
                new = jnp.where(take, new, old)
            return jax.lax.dynamic_update_index_in_dim(buffer, new, slot, axis=1)

        return eqx.tree_at(
            lambda d: d.values, self, jax.tree.map(write, self.values, value)
        )

    def count(self, steps_done: int) -> int:
        """Draws held after `steps_done` solver steps (at most `keep`)."""
        return min(self.keep, max(0, (steps_done - self.warmup) // self.thin))

    def kept(self, steps_done: int) -> ArrayTree:
        """The held draws `(K, n, ...)` in the order they were taken."""
        n = max(0, (steps_done - self.warmup) // self.thin)
        if n < self.keep:
            return jax.tree.map(lambda b: b[:, :n], self.values)
        shift = n % self.keep
        if shift == 0:
            return self.values

        def roll(b):
            numpy = np if isinstance(b, np.ndarray) else jnp
            return numpy.roll(b, -shift, axis=1)

        return jax.tree.map(roll, self.values)


_HAS_STATE = (
    "`Solver.init(model, ...)`: group '{name}' already carries solver state. Pass "
    "the marked model (before solving), or continue a solve with "
    "`solver.run(model, key=..., state=result.state)`."
)


class AbstractGroup(eqx.Module):
    """A sub-tree of a model governed by one inference method: the base of every
    kind of group.

    A group replaces the sub-tree it governs inside the user's model (made by a
    marking function such as [`eqbayes.bayesian`][]); `value` is the sub-tree as
    marked and `state` the group's solver state (None until `Solver.init`).
    [`eqbayes.unwrap`][] replaces every group by `current()`.

    The Solver talks to groups only through the methods below, in this order:
    `check` (every group, before anything is compiled), `describe` (the log),
    `init` (once, compiled), `step` (once per solver step, compiled, in a fixed
    cycle over the groups), `monitor` (at the end of each compiled chunk) and
    `result` (at the end). A group that carries K chains, each seen by the other
    groups at its own position, subclasses [`eqbayes.AbstractChainGroup`][];
    any other group has one value, `current()`, which every chain sees.

    Besides the methods, a group declares (as fields, properties or class
    variables):

    - `value`: the sub-tree as marked (what `make` of [`eqbayes.mark`][] is given);
    - `name`: the group's name, static;
    - `state`: its solver state, None until `init`;
    - `minibatched`: whether it takes minibatches when the solve has a
        `batch_size` (its `loss_fn(..., minibatch=True)`); a solve with a
        `batch_size` needs at least one group that does;
    - `marked_with`: a class variable naming the call that makes the group, as
        error messages quote it (`"eb.bayesian"`, or your marking function).

    The group's *position* is `initial_position()`: the floating-point array
    leaves of `value`, with `None` at every other leaf. With `mask=` (or a
    `where=` that selects a sub-module) that is a pytree, not one array: write
    `start`, `step` and the position's updates with `jax.tree.map`.

    Subclasses are final: implement every abstract member, override nothing else.
    See [Writing your own group](../tutorials/custom_groups.py).
    """

    value: eqx.AbstractVar[PyTree]
    name: eqx.AbstractVar[str]
    state: eqx.AbstractVar[Any]
    #: Whether the group uses minibatches when the solve has a `batch_size` (a
    #: solve with `batch_size` needs at least one such group).
    minibatched: eqx.AbstractVar[bool]
    #: The call that makes this kind of group, for error messages (`eb.bayesian`).
    marked_with: eqx.AbstractClassVar[str]

    # -- helpers (final) ---------------------------------------------------------------

    def materialise(self, position: ArrayTree) -> PyTree:
        """The plain sub-tree with the group's leaves set to `position` (its
        constrained leaves, stored unconstrained, mapped to their constrained
        values)."""
        _, rest = eqx.partition(self.value, eqx.is_inexact_array)
        return resolve(eqx.combine(position, rest))

    def initial_position(self) -> ArrayTree:
        """The group's leaves as marked: the floating-point array leaves of
        `value` (None elsewhere); a constrained leaf is its unconstrained array,
        inside the node that maps it back."""
        return eqx.filter(self.value, eqx.is_inexact_array)

    # -- the interface -----------------------------------------------------------------

    @abc.abstractmethod
    def current(self) -> PyTree:
        """The plain sub-tree at the group's current value (chain 0 for chain
        groups; `value` before `init`)."""

    @abc.abstractmethod
    def check(self, solve: Solve) -> None:
        """Raises a clear error (or logs a warning on the `"eqbayes"` logger) if the
        group cannot be solved as part of `solve`. Runs before anything is
        compiled."""

    @abc.abstractmethod
    def describe(self) -> str:
        """One log line on the group's configuration."""

    @abc.abstractmethod
    def init(self, ctx: Context) -> "AbstractGroup":
        """The group with its solver state (traced, once per solve)."""

    @abc.abstractmethod
    def step(self, ctx: Context) -> "AbstractGroup":
        """The group after one solver step (traced)."""

    @abc.abstractmethod
    def monitor(self) -> dict[str, Float[Array, ""]]:
        """Scalars recorded at the end of every compiled chunk, e.g.
        `{"neg_elbo": ...}`; `{}` for none. They are `result.history.monitor[name]`
        (one value per chunk), a callback's `record.monitor[name]`, and logged by
        [`eqbayes.callbacks.WandbLogger`][] as `<key>/<name>`."""

    @abc.abstractmethod
    def result(self, ctx: Context) -> GroupResult:
        """What the group hands back after `ctx.step` solver steps. Also called on
        the host for chunk records (with a context that has no loss)."""


class AbstractChainGroup(AbstractGroup):
    """A group that carries K chains (Markov chains, or any per-chain state).

    Every other group sees it, at chain k, at chain k's position: the other chain
    groups step each chain against it, and groups without chains against all K.
    All chain groups of a solve have the same K.
    """

    #: K: the leading axis of `positions()`.
    num_chains: eqx.AbstractVar[int]

    # -- helpers (final) ---------------------------------------------------------------

    def current(self) -> PyTree:
        if self.state is None:
            return resolve(self.value)
        return self.materialise(jax.tree.map(lambda x: x[0], self.positions()))

    # -- the interface -----------------------------------------------------------------

    @property
    @abc.abstractmethod
    def schedule(self) -> tuple[int, int, int]:
        """`(warmup, keep, thin)`: the solver steps this group needs, and its
        draws."""

    @abc.abstractmethod
    def start(self, key: PRNGKeyArray) -> ArrayTree:
        """The K starting positions (chain axis first), before `init`: what the other
        groups see while they initialise."""

    @abc.abstractmethod
    def positions(self) -> ArrayTree:
        """The K chains' current positions (chain axis first)."""

    @abc.abstractmethod
    def chain_axes(self) -> PyTree[bool]:
        """A prefix pytree of the group: True over the parts whose every array has
        the chain axis first (sharded over a mesh's `"chains"` axis), False over
        the rest (replicated)."""


class AbstractStagedGroup(AbstractGroup):
    """A group that decides itself how many solver steps it takes (an adaptive
    number of stages, such as the tempering stages of sequential Monte Carlo).

    `Solver.run(..., steps=None)` runs such a group until `finished()` holds, at
    most `max_steps` solver steps; the compiled loop stops at the step after which
    every staged group of the solve is finished. A finished group's `step` must
    leave it unchanged (a solve stepped by hand may step it again).
    """

    #: The most solver steps the group may take (the length of `steps=None`).
    max_steps: eqx.AbstractVar[int]

    @abc.abstractmethod
    def finished(self) -> Bool[Array, ""]:
        """Whether the group is done (traced; False before `init`)."""


def num_chains(groups: Sequence[AbstractGroup]) -> int:
    """K of the chain groups among `groups` (1 when there are none)."""
    chains = [g for g in groups if isinstance(g, AbstractChainGroup)]
    return chains[0].num_chains if chains else 1


def is_group(x: Any) -> bool:
    return isinstance(x, AbstractGroup)


def check_fresh(groups: Sequence[AbstractGroup]) -> None:
    """A clear error for a group that already carries solver state."""
    for group in groups:
        if group.state is not None:
            raise ValueError(_HAS_STATE.format(name=group.name))


def chain_flags(group: AbstractChainGroup, *parts: Callable[[Any], Any]) -> PyTree:
    """`chain_axes` for a group whose chain-axis parts are selected by `parts`
    (functions of the group, as `eqx.tree_at`'s `where`)."""
    flags = jax.tree.map(lambda _: False, group)
    return eqx.tree_at(
        lambda g: tuple(part(g) for part in parts), flags, (True,) * len(parts)
    )
