"""Marking: the wrappers that live inside the user's model, and `unwrap`."""

import abc
import dataclasses
import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import equinox as eqx
import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
from jax.tree_util import DictKey, FlattenedIndexKey, GetAttrKey, SequenceKey
from jaxtyping import Array, PyTree

from . import _mcmc, priors as _priors
from ._custom_types import ArrayTree
from ._kernels import check_kernel_kwargs, kernel_spec, position_of
from ._mcmc import MCMCConfig, MCMCState
from .initializers import check_initializer, run_initializer


_INIT_IMM_SHAPE = (
    "The initializer `{init}` of group '{name}' returned an inverse mass matrix of "
    "shape {shape}; the group has {d} sampled components, so it must have shape "
    "({d},) (diagonal) or ({d}, {d}) (dense)."
)
_IMM_SHAPE = (
    "`eb.bayesian(..., inverse_mass_matrix=...)` for group '{name}': the group has "
    "{d} sampled components, so the inverse mass matrix must have shape ({d},) "
    "(diagonal) or ({d}, {d}) (dense); got shape {shape}."
)
_HAS_STATE = (
    "`Solver.init(model, ...)`: group '{name}' already carries solver state. Pass "
    "the marked model (before solving), or continue a solve with "
    "`solver.run(model, key=..., state=state)`."
)


class AbstractGroup(eqx.Module):
    """A sub-tree of a model governed by one inference method.

    `value` is the plain sub-tree as it was marked; the solver's per-group state
    lives beside it. `eb.unwrap` replaces every group by `current()`. The Solver
    only talks to groups through the methods below, so a new kind of group (a
    variational fit, a masked group) plugs into the same cycle.
    """

    value: eqx.AbstractVar[PyTree]
    name: eqx.AbstractVar[str]
    #: The call that makes this kind of group, for error messages (`eb.bayesian`).
    marked_with: eqx.AbstractClassVar[str]

    # -- the plain sub-tree -----------------------------------------------------------

    def materialise(self, position: ArrayTree) -> PyTree:
        """The plain sub-tree with its inferred leaves set to `position`."""
        _, rest = eqx.partition(self.value, eqx.is_inexact_array)
        return eqx.combine(position, rest)

    def initial_position(self) -> ArrayTree:
        """The inferred leaves of the marked sub-tree (None elsewhere)."""
        return eqx.filter(self.value, eqx.is_inexact_array)

    @abc.abstractmethod
    def current(self) -> PyTree:
        """The plain sub-tree at the group's current values (chain 0)."""

    # -- what the Solver asks ---------------------------------------------------------

    @property
    @abc.abstractmethod
    def num_chains(self) -> int:
        """K: the leading axis of `positions()`."""

    @property
    def minibatched(self) -> bool:
        """Whether the group's log density sees minibatches when the solve has a
        `batch_size` (stochastic-gradient kernels, VI, optax); full-data kernels
        always see all the data."""
        return False

    @property
    def sampled(self) -> bool:
        """Whether the group has posterior draws (MCMC, VI) rather than a point
        estimate (optax)."""
        return True

    @property
    def chained(self) -> bool:
        """Whether the group carries K chains (MCMC). A group that is not (an optax
        point estimate, a variational fit) has one value, `current()`, which every
        chain of the other groups sees; `positions()` is then not called."""
        return True

    @property
    def adapts(self) -> bool:
        """Whether the group tunes itself during warmup (window adaptation) against
        the other parts' values of the moment."""
        return False

    @property
    def initializer(self) -> Any:
        """The group's log-density-aware initializer (`init=`), or None."""
        return None

    @property
    def representative(self) -> bool:
        """Whether a group without chains takes its gradient at chain 0 of the
        chained groups (an optax group with `chains="first"`)."""
        return False

    @property
    @abc.abstractmethod
    def schedule(self) -> tuple[int, int, int]:
        """`(warmup, keep, thin)`: the solver steps this group needs."""

    @abc.abstractmethod
    def log_density(self, loss_value: Any, position: ArrayTree) -> Any:
        """The group's log density from the loss at `position` and its prior."""

    @abc.abstractmethod
    def start(self, key: Any) -> ArrayTree:
        """The K starting positions (chain axis first)."""

    def warm_start(
        self, key, positions, logdensity_for, others
    ) -> tuple["AbstractGroup", ArrayTree]:
        """Runs the group's log-density-aware initializer, if it has one, on its log
        density with the other groups at `others` (their starting positions).

        **Returns:**

        The group (carrying the initializer's kernel settings) and its K starting
        positions. By default: the group and `positions`, unchanged.
        """
        return self, positions

    @abc.abstractmethod
    def initialise(self, positions, logdensity_for, others, key) -> "AbstractGroup":
        """The group with its solver state built from `positions`."""

    @abc.abstractmethod
    def transition(
        self, key, step, logdensity_for, others, *, refresh, phase, recording
    ) -> "AbstractGroup":
        """The group after one solver step."""

    @abc.abstractmethod
    def positions(self) -> ArrayTree:
        """The K chains' current positions (chain axis first)."""

    @abc.abstractmethod
    def draws(self, steps_done: int) -> ArrayTree:
        """The kept draws `(K, N, ...)`, oldest first."""

    @abc.abstractmethod
    def kernel_diagnostics(self, steps_done: int) -> Any:
        """Per-draw diagnostics `(K, N)`, or None."""

    @abc.abstractmethod
    def describe(self) -> str:
        """One log line on the configuration, for `Solver.init`."""

    @abc.abstractmethod
    def check(self) -> None:
        """Raises a clear error if the group cannot start a solve."""

    def check_with(self, groups: Sequence["AbstractGroup"]) -> None:
        """Raises a clear error if the group cannot be solved beside `groups` (every
        group of the solve, itself included)."""

    # -- what the result collects (groups without these return None) -------------

    def neg_elbo(self) -> Any:
        """The group's latest negative-ELBO estimate (variational groups), or None."""
        return None

    def approximation(self) -> Any:
        """The group's fitted variational distribution, or None."""
        return None


@dataclasses.dataclass(frozen=True)
class WarmStart:
    """What a group's initializer set (static, for the adaptation and the log)."""

    used: tuple[str, ...]  # kernel keyword arguments taken from the initializer
    dropped: tuple[str, ...]  # ... and those the kernel does not take


class BayesianLeaf(AbstractGroup):
    """A sub-tree whose floating-point leaves are sampled by an MCMC kernel.

    Made by [`eqbayes.bayesian`][]; do not construct it directly. Its `value` is
    the sub-tree as marked; after `Solver.init` its `state` holds the kernel
    states of the K chains, the shared step size and inverse mass matrix, the
    adaptation state and the sample buffers.
    """

    value: PyTree
    config: MCMCConfig = eqx.field(static=True)
    name: str = eqx.field(static=True)
    arrays: dict[str, Array]
    state: MCMCState | None = None
    warm: WarmStart | None = eqx.field(static=True, default=None)

    marked_with: ClassVar[str] = "eb.bayesian"

    def current(self) -> PyTree:
        if self.state is None:
            return self.value
        return self.materialise(jax.tree.map(lambda x: x[0], self.positions()))

    @property
    def num_chains(self) -> int:
        return self.config.num_chains

    @property
    def schedule(self) -> tuple[int, int, int]:
        return self.config.warmup, self.config.keep, self.config.thin

    @property
    def minibatched(self) -> bool:
        return self.config.kernel.is_stochastic_gradient

    @property
    def adapts(self) -> bool:
        return self.config.adapts

    @property
    def initializer(self) -> Any:
        return self.config.init

    def log_density(self, loss_value, position):
        log_prior = self.config.prior(position)
        value = -self.config.likelihood_scale * loss_value + log_prior
        # A non-finite log density is a rejected (divergent) transition.
        return jnp.where(jnp.isfinite(value), value, -jnp.inf)

    def start(self, key):
        return _mcmc.initial_positions(self.initial_position(), self.config, key)

    def warm_start(self, key, positions, logdensity_for, others):
        init = self.config.init
        if init is None:
            return self, positions
        first = jax.tree.map(lambda x: x[0], (positions, others))
        positions, update = run_initializer(
            init,
            key,
            logdensity_for(first[1]),
            first[0],
            self.config.num_chains,
            self.name,
        )
        spec = self.config.kernel
        used = {k: v for k, v in update.items() if spec.accepts(k)}
        imm = used.get("inverse_mass_matrix")
        if imm is not None:
            d = jax.flatten_util.ravel_pytree(first[0])[0].size
            if imm.shape not in ((d,), (d, d)):
                raise ValueError(
                    _INIT_IMM_SHAPE.format(
                        init=type(init).__name__, name=self.name, d=d, shape=imm.shape
                    )
                )
        warm = WarmStart(tuple(sorted(used)), tuple(sorted(set(update) - set(used))))
        group = BayesianLeaf(
            value=self.value,
            config=self.config,
            name=self.name,
            arrays={**self.arrays, **used},
            warm=warm,
        )
        return group, positions

    def initialise(self, positions, logdensity_for, others, key):
        # An initializer's inverse mass matrix is kept by the window adaptation
        # (which then tunes the step size only) unless it asks to re-estimate it.
        kept = (
            self.warm is not None
            and "inverse_mass_matrix" in self.warm.used
            and not getattr(self.config.init, "adapt_mass_matrix", False)
        )
        state = _mcmc.init_state(
            self.config,
            self.arrays,
            positions,
            logdensity_for,
            others,
            self.name,
            key,
            adapt_mass_matrix=not kept,
        )
        return eqx.tree_at(lambda g: g.state, self, state, is_leaf=lambda x: x is None)

    def transition(
        self, key, step, logdensity_for, others, *, refresh, phase, recording
    ):
        assert self.state is not None
        state, info = _mcmc.step_state(
            self.config,
            self.arrays,
            self.state,
            key,
            step,
            logdensity_for,
            others,
            refresh=refresh,
            phase=phase,
            name=self.name,
        )
        if recording != "never":
            state = _mcmc.record(
                self.config, state, step, info, self.name, always=recording == "always"
            )
        return eqx.tree_at(lambda g: g.state, self, state)

    def positions(self):
        assert self.state is not None
        return position_of(self.state.kernel_state, self.config.kernel, self.name)

    def draws(self, steps_done):
        assert self.state is not None
        return _mcmc.chronological(self.config, self.state.samples, steps_done)

    def kernel_diagnostics(self, steps_done):
        assert self.state is not None
        diagnostics = _mcmc.chronological(
            self.config, self.state.diagnostics, steps_done
        )
        return diagnostics if jax.tree.leaves(diagnostics) else None

    def check(self) -> None:
        if self.state is not None:
            raise ValueError(_HAS_STATE.format(name=self.name))
        imm = self.arrays.get("inverse_mass_matrix")
        if imm is not None:
            flat, _ = jax.flatten_util.ravel_pytree(self.initial_position())
            d = flat.size
            if imm.shape not in ((d,), (d, d)):
                raise ValueError(
                    _IMM_SHAPE.format(name=self.name, d=d, shape=imm.shape)
                )

    def describe(self) -> str:
        config = self.config
        if self.state is None:  # the info's fields are known once the state is built
            fields = None
        else:
            diagnostics = vars(self.state.diagnostics)
            fields = [k for k, v in diagnostics.items() if v is not None]
        if config.adapts:
            warm = f"warmup {config.warmup} (window adaptation)"
        elif config.adapt and config.warmup > 0 and not config.kernel.is_hmc_family:
            warm = (
                f"warmup {config.warmup} (discarded; adapt=True is ignored: only "
                "HMC-family kernels are adapted)"
            )
        else:
            warm = f"warmup {config.warmup} (discarded)"
        if config.kernel.is_stochastic_gradient:
            recorded = "none (stochastic-gradient kernels report no info)"
        elif fields is None:
            recorded = "known after `Solver.init`"
        elif fields:
            recorded = ", ".join(fields)
        else:
            recorded = "none (the kernel's info has none)"
        return (
            f"Group '{self.name}': Bayesian sampling with '{config.kernel.name}' "
            f"({config.kernel.family} MCMC), K={config.num_chains} chain(s), "
            f"{self._describe_init()}{warm}, keep {config.keep}, thin {config.thin}; "
            f"diagnostics: {recorded}"
        )

    def _describe_init(self) -> str:
        init = self.config.init
        if init is None:
            return ""
        parts = [f"started by the initializer {type(init).__name__}"]
        if self.warm is not None and self.warm.used:
            parts.append(f"which sets {', '.join(self.warm.used)}")
        if self.config.init_jitter > 0:
            parts.append(
                f"init_jitter={self.config.init_jitter} is ignored (the initializer "
                "sets the chains' starting points)"
            )
        if self.warm is not None and self.warm.dropped:
            parts.append(
                f"dropped {', '.join(self.warm.dropped)} (the kernel "
                f"'{self.config.kernel.name}' does not take it)"
            )
        return "; ".join(parts) + "; "


def is_group(x: Any) -> bool:
    return isinstance(x, AbstractGroup)


class MaskedGroup(eqx.Module):
    """A sub-tree split by masks into groups, each with its own method.

    Made by `mask=` in [`eqbayes.bayesian`][] (and `eb.optimise`, `eb.vi`); do not
    construct it directly. Each member group's `value` is the sub-tree with `None`
    outside its mask; `rest` holds every leaf no mask selects (frozen, or trained by
    the Solver's own optimiser). Only the members' leaves are ever stored per draw.
    """

    rest: PyTree
    groups: tuple[AbstractGroup, ...]

    def combined(self) -> PyTree:
        """The plain sub-tree: `rest` with each member at its current value."""
        parts = [g.current() if is_group(g) else g for g in self.groups]
        return eqx.combine(self.rest, *[p for p in parts if p is not None])

    def marked_value(self) -> PyTree:
        """The plain sub-tree as it was marked."""
        return eqx.combine(self.rest, *[g.value for g in self.groups])


def is_wrapper(x: Any) -> bool:
    return isinstance(x, (AbstractGroup, MaskedGroup))


def _is_masked(x: Any) -> bool:
    return isinstance(x, MaskedGroup)


def collapse(tree: PyTree) -> PyTree:
    """Replaces every `MaskedGroup` (whose members are already plain sub-trees) by
    the plain sub-tree."""
    return jax.tree.map(
        lambda x: x.combined() if _is_masked(x) else x, tree, is_leaf=_is_masked
    )


def unwrap(model: PyTree) -> PyTree:
    """Returns the plain model: every eqbayes wrapper replaced by its current value.

    Sampled leaves hold chain 0's current position (after a solve: its last draw),
    in the leaf's own shape; optimised leaves their current value.

    **Arguments:**

    - `model`: a model marked with [`eqbayes.bayesian`][] (or a plain one, which is
        returned unchanged).

    **Returns:**

    The model with the same structure as before marking.

    !!! Example

        ```python
        marked = eb.bayesian(model, blackjax.nuts)
        assert eqx.tree_equal(eb.unwrap(marked), model)
        ```
    """
    return collapse(
        jax.tree.map(
            lambda x: x.current() if is_group(x) else x, model, is_leaf=is_group
        )
    )


def path_str(path: tuple) -> str:
    """`layers[2].weight` from a key path."""
    out = ""
    for key in path:
        if isinstance(key, GetAttrKey):
            out += f".{key.name}"
        elif isinstance(key, SequenceKey):
            out += f"[{key.idx}]"
        elif isinstance(key, DictKey):
            out += f"[{key.key!r}]"
        elif isinstance(key, FlattenedIndexKey):
            out += f"[{key.key}]"
        else:
            out += str(key)
    return out.lstrip(".")


def groups_with_paths(model: PyTree) -> list[tuple[tuple, AbstractGroup]]:
    """Every wrapper in `model`, with its key path, in flattening order."""
    flat, _ = jax.tree_util.tree_flatten_with_path(model, is_leaf=is_group)
    return [(path, leaf) for path, leaf in flat if is_group(leaf)]


def _wrappers_with_paths(model: PyTree) -> list[tuple[tuple, Any]]:
    flat, _ = jax.tree_util.tree_flatten_with_path(model, is_leaf=is_wrapper)
    return [(path, leaf) for path, leaf in flat if is_wrapper(leaf)]


def _marked_value(x: Any) -> PyTree:
    return x.marked_value() if _is_masked(x) else x.value


def _get(tree: Any, path: tuple) -> Any:
    for key in path:
        if isinstance(key, GetAttrKey):
            tree = getattr(tree, key.name)
        elif isinstance(key, SequenceKey):
            tree = tree[key.idx]
        elif isinstance(key, DictKey):
            tree = tree[key.key]
        else:  # pragma: no cover - exotic pytree nodes
            raise TypeError(f"Cannot follow the key {key!r} of a path into a model.")
    return tree


_WHERE_MANY = (
    "`eb.{fn}(..., where=...)`: `where` selected {n} sub-trees; it must select a "
    "single one (a leaf, a layer, or the whole model). Mark several parts with "
    "several calls, e.g. `eb.{fn}(eb.{fn}(model, ..., where=lambda m: m.a), ..., "
    "where=lambda m: m.b)`."
)
_WHERE_EMPTY = (
    "`eb.{fn}(..., where=...)` for group '{name}': the selected sub-tree has no "
    "floating-point array leaves, so there is nothing to infer. Select a sub-tree "
    "that holds parameters (e.g. `where=lambda m: m.layers[-1]`)."
)
_OVERLAP = (
    "`eb.{fn}(..., where=...)` for group '{name}': the selected sub-tree overlaps "
    "the group '{other}' that is already marked with `{other_fn}`. A leaf can "
    "belong to one group only (a sub-tree is sampled with `eb.bayesian` or fitted "
    "with `eb.vi`, never both); select disjoint sub-trees, or mark again from "
    "`eb.unwrap(model)`."
)
_WHERE_FAILED = (
    "`eb.{fn}(..., where=...)`: calling `where` on the (unwrapped) model failed with "
    "{err!r}. `where` takes the plain model and returns one of its sub-trees, "
    "e.g. `where=lambda m: m.layers[-1]`."
)


_MASK_STRUCTURE = (
    "`eb.{fn}(..., mask=...)` for group '{name}': the mask must be a pytree of "
    "`True`/`False` with the structure of the `where`-selected sub-tree (or a prefix "
    "of it, e.g. `True` for a whole layer), such as "
    "`eqx.tree_at(lambda m: m.layers[-1], jax.tree.map(lambda _: False, model), "
    "replace=jax.tree.map(lambda _: True, model.layers[-1]))`. {detail}"
)
_MASK_EMPTY = (
    "`eb.{fn}(..., mask=...)` for group '{name}': the mask selects no floating-point "
    "array leaf of the sub-tree, so there is nothing to infer. Set `True` at the "
    "parameters the group should hold."
)
_MASK_OVERLAP = (
    "`eb.{fn}(..., mask=...)` for group '{name}': the mask selects leaves that "
    "already belong to group '{other}'. Masks on one sub-tree must be disjoint."
)
_MASK_NESTED = (
    "`eb.{fn}(..., where=...)` for group '{name}': the selected sub-tree overlaps the "
    "masked group(s) {others} marked on a different sub-tree. Masked groups that "
    "share parameters' sub-tree must use the same `where` with disjoint masks."
)


def _mask_flags(mask: Any, subtree: PyTree, fn: str, name: str) -> list[bool]:
    """Per leaf of `subtree` (flattening order): selected by `mask` and a
    floating-point array."""
    for leaf in jax.tree.leaves(mask):
        if isinstance(leaf, (bool, np.bool_)):
            continue
        if eqx.is_array(leaf) and leaf.dtype == bool:
            detail = (
                f"Got a boolean array of shape {leaf.shape}: masks select whole "
                "leaves. To sample part of a parameter, make that part its own "
                "leaf (e.g. a low-rank adapter) and select it."
            )
        else:
            detail = f"Got a leaf of type `{type(leaf).__name__}`."
        raise TypeError(_MASK_STRUCTURE.format(fn=fn, name=name, detail=detail))
    marker = _Placeholder()
    try:
        kept = eqx.filter(subtree, mask, replace=marker)
    except Exception as err:  # noqa: BLE001 - re-raised with a clear message
        detail = f"Matching it against the sub-tree failed with: {err}"
        raise ValueError(
            _MASK_STRUCTURE.format(fn=fn, name=name, detail=detail)
        ) from err
    flat = jax.tree.leaves(kept, is_leaf=lambda x: x is marker)
    return [x is not marker and eqx.is_inexact_array(x) for x in flat]


def _claimed(value: PyTree) -> list[bool]:
    """Per leaf of a member's value: whether the member holds it (not None)."""
    flat = jax.tree.leaves(value, is_leaf=lambda x: x is None)
    return [x is not None for x in flat]


def mark(
    model: PyTree,
    where: Callable[[PyTree], Any] | None,
    make: Callable[[PyTree, str], AbstractGroup],
    name: str | None,
    fn: str,
    mask: Any = None,
) -> PyTree:
    """Wraps the sub-tree selected by `where` (on the plain model) with `make`.

    With `mask`, only the selected leaves form the group; it joins (or starts) the
    `MaskedGroup` of that sub-tree. Existing wrappers are looked through: they are
    unwrapped, the new group is placed, and they are put back at their paths.
    """
    existing = _wrappers_with_paths(model)
    plain = jax.tree.map(
        lambda x: _marked_value(x) if is_wrapper(x) else x, model, is_leaf=is_wrapper
    )
    placeholder = _Placeholder()
    if where is None:
        marked = placeholder
    else:
        try:
            marked = eqx.tree_at(where, plain, replace_fn=lambda _: placeholder)
        except Exception as err:  # noqa: BLE001 - re-raised with a clear message
            raise ValueError(_WHERE_FAILED.format(fn=fn, err=err)) from err
    found = [
        (path, leaf)
        for path, leaf in jax.tree_util.tree_flatten_with_path(
            marked, is_leaf=lambda x: x is placeholder
        )[0]
        if leaf is placeholder
    ]
    if len(found) != 1:
        raise ValueError(_WHERE_MANY.format(fn=fn, n=len(found)))
    path = found[0][0]
    subtree = _get(plain, path) if path else plain
    host = None
    if mask is not None:
        hosts = [w for p, w in existing if p == path and _is_masked(w)]
        host = hosts[0] if hosts else None
    if name is None:
        name = path_str(path) or type(plain).__name__
        if mask is not None:
            name = f"{name}/mask{0 if host is None else len(host.groups)}"
    flags = None
    if mask is None:
        if not jax.tree.leaves(eqx.filter(subtree, eqx.is_inexact_array)):
            raise ValueError(_WHERE_EMPTY.format(fn=fn, name=name))
    else:
        flags = _mask_flags(mask, subtree, fn, name)
        if not any(flags):
            raise ValueError(_MASK_EMPTY.format(fn=fn, name=name))
    for other_path, other in existing:
        if other is host:
            continue
        n = min(len(path), len(other_path))
        if path[:n] == other_path[:n]:
            if _is_masked(other):
                others = ", ".join(f"'{g.name}'" for g in other.groups)
                raise ValueError(_MASK_NESTED.format(fn=fn, name=name, others=others))
            raise ValueError(
                _OVERLAP.format(
                    fn=fn, name=name, other=other.name, other_fn=other.marked_with
                )
            )
    for _, other in existing:
        for group in other.groups if _is_masked(other) else (other,):
            if group.name == name:
                raise ValueError(
                    f"`eb.{fn}(..., name={name!r})`: a group named '{name}' already "
                    "exists in this model. Give each group its own `name=`."
                )
    if flags is None:
        node = make(subtree, name)
    else:
        members = () if host is None else host.groups
        for member in members:
            if any(a and b for a, b in zip(flags, _claimed(member.value))):
                raise ValueError(
                    _MASK_OVERLAP.format(fn=fn, name=name, other=member.name)
                )
        leaves, treedef = jax.tree.flatten(subtree)
        value = jax.tree.unflatten(
            treedef, [x if f else None for x, f in zip(leaves, flags)]
        )
        members = (*members, make(value, name))
        claimed = [any(c) for c in zip(*(_claimed(m.value) for m in members))]
        rest = jax.tree.unflatten(
            treedef, [None if c else x for x, c in zip(leaves, claimed)]
        )
        node = MaskedGroup(rest, members)
    out = (
        node if not path else eqx.tree_at(lambda m: _get(m, path), plain, replace=node)
    )
    for other_path, other in existing:
        if other is not host:
            out = eqx.tree_at(lambda m: _get(m, other_path), out, replace=other)
    return out


class _Placeholder:
    """A unique marker for the node that `where` selects."""


# -- eb.bayesian ------------------------------------------------------------------

_NEG_STEP_SIZE = (
    "`eb.bayesian(..., step_size={value!r})` for group '{name}': the step size must "
    "be a positive finite number, e.g. `step_size=1e-2`."
)
_NEED_STEP_SIZE = (
    "`eb.bayesian(..., kernel={kernel})` for group '{name}' needs `step_size=`: "
    "{why} Pass e.g. `step_size=1e-2`."
)
_INT_ARG = (
    "`eb.{fn}(..., {arg}={value!r})` for group '{name}': `{arg}` must be an "
    "integer {bound}; got {value!r} of type `{type}`. {fix}"
)
_FLOAT_ARG = (
    "`eb.{fn}(..., {arg}={value!r})` for group '{name}': `{arg}` must be a "
    "finite number {bound}; got {value!r} of type `{type}`. {fix}"
)
_PRIOR = (
    "`eb.{fn}(..., prior={prior!r})` for group '{name}': a prior must be a "
    "hashable callable `position -> scalar log density` (a function, or an "
    "`eqx.Module` whose fields are Python numbers), e.g. `eb.priors.gaussian(1.0)`."
)
_KWARG_UNHASHABLE = (
    "`eb.bayesian(..., {kwarg}=...)` for group '{name}': kernel keyword arguments "
    "must be arrays or hashable values (numbers, strings, functions); got a value "
    "of type `{type}`."
)
_NOT_YET = (
    "`eb.bayesian(..., {arg}=...)` for group '{name}': {what} are not available in "
    "this version of eqbayes."
)


def check_int(value, arg, name, minimum, fix, fn="bayesian"):
    message = _INT_ARG.format(
        fn=fn,
        arg=arg,
        value=value,
        name=name,
        bound=f">= {minimum}",
        type=type(value).__name__,
        fix=fix,
    )
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(message)
    if value < minimum:
        raise ValueError(message)
    return int(value)


def check_float(value, arg, name, *, positive, fix, fn="bayesian"):
    """`value` as a finite float: `> 0` when `positive` is True, `>= 0` when it is
    False, of either sign when it is None."""
    bounds = {True: "> 0", False: ">= 0", None: "(of either sign)"}
    message = _FLOAT_ARG.format(
        fn=fn,
        arg=arg,
        value=value,
        name=name,
        bound=bounds[positive],
        type=type(value).__name__,
        fix=fix,
    )
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise TypeError(message) from None
    if isinstance(value, bool):
        raise TypeError(message)
    if (
        not math.isfinite(x)
        or (positive is not None and x < 0)
        or (positive and x == 0)
    ):
        raise ValueError(message)
    return x


def check_likelihood_scale(value, name, fn="bayesian"):
    return check_float(
        value,
        "likelihood_scale",
        name,
        positive=False,
        fix="For an MSE loss with noise σ over N points use N / (2σ²).",
        fn=fn,
    )


def check_prior(prior, name, fn="bayesian"):
    """The prior, `eb.priors.gaussian(10.0)` when None; a clear error unless it is
    a hashable callable."""
    the_prior = _priors.gaussian(10.0) if prior is None else prior
    try:
        hash(the_prior)
        callable_prior = callable(the_prior)
    except TypeError:
        callable_prior = False
    if not callable_prior:
        raise TypeError(_PRIOR.format(fn=fn, prior=the_prior, name=name))
    return the_prior


def bayesian(
    model: PyTree,
    kernel: Callable[..., Any],
    *,
    where: Callable[[PyTree], Any] | None = None,
    mask: PyTree | None = None,
    prior: Callable[[ArrayTree], Any] | None = None,
    warmup: int = 500,
    keep: int = 1000,
    thin: int = 1,
    num_chains: int = 1,
    init_jitter: float = 0.0,
    adapt: bool = True,
    likelihood_scale: float = 1.0,
    init: Any = None,
    name: str | None = None,
    **kernel_kwargs: Any,
) -> PyTree:
    r"""Marks a sub-tree of `model` to be sampled by a blackjax MCMC kernel.

    The selected sub-tree (a leaf, a layer, the whole model) is replaced by a
    [`eqbayes.BayesianLeaf`][]; the model is otherwise unchanged, and
    [`eqbayes.unwrap`][] gives the plain model back. Its floating-point array
    leaves form the group's position $\theta$, sampled from

    $$\log p(\theta) = -s \cdot \text{loss}(\text{model}(\theta), \dots)
        + \log \text{prior}(\theta)$$

    where $s$ is `likelihood_scale`,

    and every other part of the model is at its current value. Several groups in one
    model are stepped in a fixed cycle (Metropolis-within-Gibbs), one transition
    per group per solver step.

    **Arguments:**

    - `model`: any pytree, usually an `eqx.Module`; may already hold other groups.
    - `kernel`: a blackjax kernel factory. Full-data kernels (`blackjax.nuts`,
        `blackjax.hmc`, `blackjax.mala`, or any factory
        `(logdensity_fn, **kwargs) -> blackjax.SamplingAlgorithm`) get the log
        density above on all the data; stochastic-gradient kernels
        (`blackjax.sgld`, `blackjax.sghmc`, `blackjax.sgnht`, or any factory whose
        first parameter is `grad_estimator`) get its gradient on each step's
        minibatch (see `batch_size=` in [`eqbayes.Solver.run`][]). The family is
        read from the name of the factory's first parameter.
    - `where`: selects the sub-tree, like `eqx.tree_at`'s `where`
        (e.g. `lambda m: m.layers[-1]`); `None` means the whole model. It always
        sees the plain model, so groups can be added one call at a time.
    - `mask`: a pytree of bools over the selected sub-tree (or a prefix of it):
        only `True` floating-point leaves form the group; the others stay as they
        are (frozen, trained by `Solver(optimizer=...)`, or held by other masked
        groups: several groups with disjoint masks may share one sub-tree). The
        prior sees only the masked leaves, and only they are stored per draw.
    - `prior`: a callable `position -> log density`, seeing only this group's
        position; `None` means `eb.priors.gaussian(10.0)`.
    - `warmup`: solver steps spent warming up before any draw is kept. For
        HMC-family kernels (NUTS, HMC) with `adapt=True`, window adaptation tunes
        the step size and a diagonal inverse mass matrix during these steps (dense
        when you pass a 2-D `inverse_mass_matrix`); otherwise they are discarded.
    - `keep`: draws to keep per chain.
    - `thin`: keep one draw every `thin` post-warmup steps.
    - `num_chains`: independent chains K, run in parallel with `jax.vmap`. All
        groups of one solve must have the same K.
    - `init_jitter`: chain k starts at θ₀ + init_jitter·N(0, I).
    - `adapt`: run window adaptation for HMC-family kernels (ignored, with a log
        line, for other kernels).
    - `likelihood_scale`: the factor on the loss. For a mean-squared-error loss
        over N points with Gaussian noise σ, `N / (2 σ²)` makes the log density
        the exact Gaussian log-likelihood.
    - `init`: a log-density-aware initializer from [`eqbayes.initializers`][]
        (`pathfinder()`, `laplace()`, `svgd()`, or your own
        [`eqbayes.initializers.AbstractInitializer`][]). It runs once in
        `Solver.init` on the group's log density (other groups at their starting
        values) and sets the chains' starting positions (`init_jitter` is then
        ignored) and possibly the inverse mass matrix. With `adapt=True` window
        adaptation follows from there: it tunes the step size and keeps the
        initializer's inverse mass matrix (or, for an initializer made with
        `adapt_mass_matrix=True`, starts from it and re-estimates it in its slow
        windows, as Stan does with a given metric); with `adapt=False` (or
        `warmup=0`) the initializer's settings and your `step_size` are used.
        With `mask=` it sees only the masked leaves; settings the kernel does not
        take (an inverse mass matrix for MALA or SGLD) are dropped, with a log
        line. Not available for groups inside `Solver(..., substeps=...)`.
    - `name`: the group's name in diagnostics and logs; defaults to the `where`
        path (`"layers[2]"`) or the model's class name.
    - `**kernel_kwargs`: forwarded to `kernel`, e.g. `step_size=1e-2`,
        `num_integration_steps=16`, `inverse_mass_matrix=...` (for
        stochastic-gradient kernels, also the keywords of their `step`, such as
        `temperature`). `step_size` is required except for HMC-family kernels
        with `adapt=True` and `warmup > 0`, where it is the initial step size of
        the adaptation (default 1.0). `inverse_mass_matrix` defaults to the
        identity.

    **Returns:**

    A new model with the sub-tree wrapped.

    !!! Example

        ```python
        model = eb.bayesian(model, blackjax.nuts, where=lambda m: m.layers[-1],
                            num_chains=4, warmup=500, keep=1000)
        result = eb.Solver(loss).run(model, key=jax.random.key(0), args=(x, y))
        ```
    """

    def make(subtree: PyTree, group_name: str) -> BayesianLeaf:
        the_init = None if init is None else check_initializer(init, group_name)
        spec = kernel_spec(kernel, group_name)
        w = check_int(warmup, "warmup", group_name, 0, "Use `warmup=0` for none.")
        k = check_int(keep, "keep", group_name, 1, "Keep at least one draw.")
        t = check_int(thin, "thin", group_name, 1, "`thin=1` keeps every draw.")
        c = check_int(
            num_chains, "num_chains", group_name, 1, "`num_chains=1` runs one chain."
        )
        jitter = check_float(
            init_jitter,
            "init_jitter",
            group_name,
            positive=False,
            fix="`init_jitter=0.0` starts every chain at the model's values.",
        )
        scale = check_likelihood_scale(likelihood_scale, group_name)
        kwargs = dict(kernel_kwargs)
        step_size = kwargs.pop("step_size", None)
        if step_size is not None:
            try:
                ok = math.isfinite(float(step_size)) and float(step_size) > 0
            except (TypeError, ValueError):
                ok = False
            if not ok:
                raise ValueError(
                    _NEG_STEP_SIZE.format(value=step_size, name=group_name)
                )
            step_size = float(step_size)
        adapts = bool(adapt) and spec.is_hmc_family and w > 0
        if step_size is None and spec.takes_step_size and not adapts:
            if spec.is_stochastic_gradient:
                why = (
                    "stochastic-gradient kernels take a step size at every step and "
                    "are not adapted."
                )
            elif spec.is_hmc_family and not adapt:
                why = "with `adapt=False` nothing tunes the step size."
            elif spec.is_hmc_family:
                why = "with `warmup=0` there are no steps to adapt it in."
            else:
                why = (
                    f"`{spec.name}` has no step-size adaptation (only HMC-family "
                    "kernels are adapted)."
                )
            raise ValueError(
                _NEED_STEP_SIZE.format(kernel=spec.name, name=group_name, why=why)
            )
        if step_size is not None:
            kwargs["step_size"] = step_size
        check_kernel_kwargs(spec, kwargs, group_name)
        kwargs.pop("step_size", None)
        arrays = {}
        static = []
        for key, value in sorted(kwargs.items()):
            if eqx.is_array_like(value) and not isinstance(value, (bool, int, float)):
                arrays[key] = jnp.asarray(value)
            else:
                try:
                    hash(value)
                except TypeError:
                    raise TypeError(
                        _KWARG_UNHASHABLE.format(
                            kwarg=key, name=group_name, type=type(value).__name__
                        )
                    ) from None
                static.append((key, value))
        the_prior = check_prior(prior, group_name)
        config = MCMCConfig(
            kernel=spec,
            prior=the_prior,
            warmup=w,
            keep=k,
            thin=t,
            num_chains=c,
            init_jitter=jitter,
            adapt=bool(adapt),
            likelihood_scale=scale,
            step_size=step_size,
            static_kwargs=tuple(static),
            init=the_init,
        )
        return BayesianLeaf(
            value=subtree, config=config, name=group_name, arrays=arrays
        )

    return mark(model, where, make, name, "bayesian", mask)
