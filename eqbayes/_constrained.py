"""Constrained leaves inside a group's value, and priors given per leaf.

A leaf with a constraint is stored in its group's `value` as a `Constrained` node
holding the unconstrained array $z$; the group's position is therefore $z$, and
every group kind samples, fits or optimises in unconstrained space without
knowing it. The plain model (what the loss, `eb.unwrap`, `result.model` and
`posterior.samples` see) is made by `resolve`, which puts $\\theta = T(z)$ in
place of each node. The log prior of a position with such nodes is
`LeafPriors`: each prior on its part of $\\theta$, plus $\\log|\\det J_T(z)|$.
"""

from collections.abc import Callable
from typing import Any, final

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.tree_util import DictKey, FlattenedIndexKey, GetAttrKey, SequenceKey

from ._checks import check_prior
from ._custom_types import Array, ArrayTree, Float, PyTree
from .constraints import AbstractConstraint, is_subset, Real, Simplex
from .priors import AbstractPrior


#: `prior=` not passed to `eb.mark` (a kind of group without a prior).
NOT_GIVEN: Any = object()


class Marker:
    """A unique stand-in for one leaf of a position, to find where that leaf ends
    up in a model built around it; `Constrained` passes it through untransformed."""


@final
class Constrained(eqx.Module):
    """A leaf stored in unconstrained space: the model sees
    `constraint.forward(unconstrained)`."""

    unconstrained: Any
    constraint: AbstractConstraint = eqx.field(static=True)

    def constrained(self) -> Any:
        z = self.unconstrained
        if z is None or isinstance(z, Marker):
            return z
        return self.constraint.forward(z)


def is_constrained(x: Any) -> bool:
    return isinstance(x, Constrained)


def resolve(tree: PyTree) -> PyTree:
    """`tree` with every `Constrained` node replaced by its constrained value
    (works on draws with leading axes too: the transforms act elementwise or on
    the last axis)."""
    return jax.tree.map(
        lambda x: x.constrained() if is_constrained(x) else x,
        tree,
        is_leaf=is_constrained,
    )


def strip(tree: PyTree) -> PyTree:
    """`tree` with every `Constrained` node replaced by its unconstrained array."""
    return jax.tree.map(
        lambda x: x.unconstrained if is_constrained(x) else x,
        tree,
        is_leaf=is_constrained,
    )


def has_constrained(tree: PyTree) -> bool:
    return any(is_constrained(x) for x in jax.tree.leaves(tree, is_leaf=is_constrained))


def get(tree: Any, path: tuple) -> Any:
    """The node of `tree` at the key path `path`."""
    for key in path:
        if tree is None:
            return None
        if isinstance(key, GetAttrKey):
            tree = getattr(tree, key.name)
        elif isinstance(key, SequenceKey):
            tree = tree[key.idx]
        elif isinstance(key, DictKey):
            tree = tree[key.key]
        else:  # pragma: no cover - exotic pytree nodes
            raise TypeError(f"Cannot follow the key {key!r} of a path into a model.")
    return tree


def log_abs_det(tree: PyTree) -> Float[Array, ""] | float:
    """Sum of `log|det J|` over the `Constrained` nodes of `tree`."""
    total: Any = 0.0
    for node in jax.tree.leaves(tree, is_leaf=is_constrained):
        if is_constrained(node) and node.unconstrained is not None:
            term = node.constraint.log_abs_det_jacobian(node.unconstrained)
            total = term if isinstance(total, float) else total + term
    return total


@final
class LeafPriors(eqx.Module):
    """The log prior of a group whose priors are given per part of its sub-tree
    (a prefix pytree), or whose leaves are constrained.

    `parts` holds `(path, prior)`: the prior of the part of the position at that
    key path, evaluated on its constrained value. The log density is their sum plus
    `log|det J|` of every constrained leaf.
    """

    parts: tuple[tuple[tuple, Callable[[ArrayTree], Any]], ...] = eqx.field(static=True)

    def __call__(self, position: ArrayTree) -> Float[Array, ""]:
        total = log_abs_det(position)
        for path, prior in self.parts:
            value = prior(resolve(get(position, path)))
            total = value if isinstance(total, float) else total + value
        return jnp.asarray(total)


def _leaf_priors(value: PyTree, prior: Any) -> list[Any]:
    """`(leaf, its prior)` for every leaf of the plain `value` (None at leaves that
    are not floating-point arrays); `prior` is a group's log prior (one callable, or
    `LeafPriors`)."""
    parts = prior.parts if isinstance(prior, LeafPriors) else (((), prior),)
    out: list[Any] = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(resolve(value))[0]:
        if not eqx.is_inexact_array(leaf):
            out.append(None)
            continue
        owner = max(
            (p for p in parts if path[: len(p[0])] == p[0]), key=lambda p: len(p[0])
        )
        out.append((leaf, owner[1]))
    return out


def unsampleable(value: PyTree, prior: Any) -> Any:
    """The first prior of a leaf of `value` that cannot be drawn from (one that is
    not from `eb.priors`), or None."""
    for entry in _leaf_priors(value, prior):
        if entry is not None and not isinstance(entry[1], AbstractPrior):
            return entry[1]
    return None


def sample_priors(value: PyTree, prior: Any, key: Any, num_draws: int) -> PyTree:
    """`num_draws` draws of a group's position from its priors, leaf by leaf,
    each `(num_draws, *leaf)`, with the structure of `value` (a constrained leaf
    holds its draws mapped to unconstrained space). Every prior must be sampleable
    (see `unsampleable`)."""
    entries = _leaf_priors(value, prior)
    keys = jax.random.split(key, max(1, len(entries)))
    draws = []
    for entry, k in zip(entries, keys):
        if entry is None:
            draws.append(None)
            continue
        leaf, the_prior = entry
        shape, dtype = leaf.shape, leaf.dtype
        draws.append(
            jax.vmap(lambda kk: the_prior.sample(kk, shape, dtype))(
                jax.random.split(k, num_draws)
            )
        )
    nodes, treedef = jax.tree.flatten(value, is_leaf=is_constrained)
    filled = [
        Constrained(node.constraint.inverse(draw), node.constraint)
        if is_constrained(node)
        else draw
        for node, draw in zip(nodes, draws, strict=True)
    ]
    return jax.tree.unflatten(treedef, filled)


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


# -- priors and constraints per part of the selection -------------------------------

_PRIOR_PREFIX = (
    "`{fn}(..., {arg}=...)` for group '{name}': `{arg}` must be one {what} for the "
    "whole selection, or a pytree of them that is a prefix of the selected "
    "sub-tree(s) (a tuple with one entry per sub-tree for a tuple `where`, a dict "
    "with the same keys, a Module of the same type). At `{at}` the selection holds "
    "{node} but `{arg}` has {spec}."
)
_NOT_A = (
    "`{fn}(..., {arg}=...)` for group '{name}': the entry at `{at}` is {spec!r} of "
    "type `{type}`, not {what}. Use e.g. {example}."
)
_CONTRADICTS = (
    "`{fn}(..., constraint={constraint!r})` for group '{name}': the leaf `{leaf}` "
    "has a prior with support `{support!r}`, and the constraint `{constraint!r}` "
    "is not inside it. Drop `constraint=` (the prior's support is used), or pass "
    "a constraint inside the support."
)
_OUTSIDE = (
    "`{fn}(...)` for group '{name}': the starting value of `{leaf}` is outside "
    "the support `{support!r}` of its {why} (e.g. {example}). Set a value strictly "
    "inside it in the model before marking (e.g. with `eqx.tree_at`)."
)
_SIMPLEX_SHORT = (
    "`{fn}(...)` for group '{name}': the leaf `{leaf}` of shape {shape} is "
    "constrained to the simplex over its last axis, which needs at least 2 "
    "components (a 1-component simplex is the constant 1). Give the leaf a last "
    "axis of length >= 2, or leave it out of the group."
)


def _is_node_of(spec: Any, node: Any, leaf_type: type) -> bool:
    """Whether `spec` is a container matching the container `node` (rather than
    one prior / constraint for the whole of `node`)."""
    if isinstance(spec, leaf_type):
        return False
    if isinstance(spec, (tuple, list, dict)):
        return True
    return isinstance(spec, eqx.Module) and type(spec) is type(node)


def _children(x: Any) -> list[tuple[Any, Any]]:
    flat = jax.tree_util.tree_flatten_with_path(x, is_leaf=lambda y: y is not x)[0]
    return [(path[0], child) for path, child in flat]


class Spec:
    """Matches `prior=` / `constraint=` prefix pytrees against a selection and
    turns the selected value into its unconstrained form."""

    def __init__(
        self, selection, several, offsets, anchor, prior, constraint, fn, name
    ):
        self.several, self.offsets = several, offsets
        self.anchor, self.fn, self.name = anchor, fn, name
        self.has_prior = prior is not NOT_GIVEN
        self.priors = (
            self._match(prior, selection, "prior") if self.has_prior else [((), None)]
        )
        self.constraints = self._match(constraint, selection, "constraint")
        self.plain_prior = prior

    def _match(self, spec, selection, arg):
        leaf_type = AbstractPrior if arg == "prior" else AbstractConstraint
        out: list[tuple[tuple, Any]] = []

        def walk(s, node, path):
            if s is None or isinstance(s, leaf_type):
                out.append((path, s))
                return
            if _is_node_of(s, node, leaf_type):
                same = type(s) is type(node)
                if same:
                    mine, theirs = _children(s), _children(node)
                    same = [k for k, _ in mine] == [k for k, _ in theirs]
                if not same:
                    raise ValueError(
                        _PRIOR_PREFIX.format(
                            fn=self.fn,
                            arg=arg,
                            name=self.name,
                            what="prior" if arg == "prior" else "constraint",
                            at=path_str(self._absolute(path)) or "(the selection)",
                            node=_describe(node),
                            spec=_describe(s),
                        )
                    )
                for (key, a), (_, b) in zip(mine, theirs):
                    walk(a, b, (*path, key))
                return
            if arg == "prior" and callable(s):
                out.append((path, s))
                return
            raise TypeError(
                _NOT_A.format(
                    fn=self.fn,
                    arg=arg,
                    name=self.name,
                    at=path_str(self._absolute(path)) or "(the selection)",
                    spec=s,
                    type=type(s).__name__,
                    what="a prior" if arg == "prior" else "an `eb.constraints` object",
                    example="`eb.priors.normal(0.0, 1.0)`"
                    if arg == "prior"
                    else "`eb.constraints.positive`",
                )
            )

        walk(spec, selection, ())
        # Paths relative to the group's value.
        return [(self._relative(p), s) for p, s in out]

    def _relative(self, path: tuple) -> tuple:
        """A path into the selection as a path into the group's value."""
        if not self.several:
            return (*self.offsets[0], *path)
        if not path:
            return ()
        return (*self.offsets[path[0].idx], *path[1:])

    def _absolute(self, path: tuple) -> tuple:
        return (*self.anchor, *self._relative(path))

    @staticmethod
    def _owner(entries, path):
        best = None
        for p, s in entries:
            if path[: len(p)] == p and (best is None or len(p) > len(best[0])):
                best = (p, s)
        return best

    def apply(self, value: PyTree) -> tuple[PyTree, Any]:
        """`(value with constrained leaves unconstrained, the group's log prior)`."""
        leaves = jax.tree_util.tree_flatten_with_path(value)[0]
        held: set[tuple] = set()
        replaced = []
        any_constrained = False
        for path, leaf in leaves:
            if not eqx.is_inexact_array(leaf):
                continue
            owner = self._owner(self.priors, path)
            prior_path, the_prior = owner if owner is not None else ((), None)
            held.add(prior_path)
            _, given = self._owner(self.constraints, path) or ((), None)
            c = self._constraint_of(path, leaf, the_prior, given)
            if c is not None:
                replaced.append((path, Constrained(c.inverse(leaf), c)))
                any_constrained = True
        for path, node in replaced:
            if not path:
                value = node
                continue
            value = eqx.tree_at(lambda v, p=path: get(v, p), value, replace=node)
        if not self.has_prior:
            return value, None
        single = len(self.priors) == 1 and self.priors[0][0] == ()
        if single and not any_constrained:
            return value, check_prior(self.plain_prior, self.name, _fn_name(self.fn))
        parts = tuple(
            (p, check_prior(s, self.name, _fn_name(self.fn)))
            for p, s in self.priors
            if p in held
        )
        return value, LeafPriors(parts)

    def _constraint_of(self, path, leaf, the_prior, given):
        leaf_name = path_str((*self.anchor, *path)) or "(the model)"
        support = the_prior.support if isinstance(the_prior, AbstractPrior) else None
        if given is not None and support is not None and not is_subset(given, support):
            raise ValueError(
                _CONTRADICTS.format(
                    fn=self.fn,
                    name=self.name,
                    leaf=leaf_name,
                    support=support,
                    constraint=given,
                )
            )
        c = given if given is not None else support
        if c is None or isinstance(c, Real):
            return None
        if isinstance(c, Simplex) and (leaf.ndim == 0 or leaf.shape[-1] < 2):
            raise ValueError(
                _SIMPLEX_SHORT.format(
                    fn=self.fn, name=self.name, leaf=leaf_name, shape=leaf.shape
                )
            )
        if _is_concrete(leaf):
            try:
                inside = c.contains(np.asarray(leaf))
            except ValueError:  # bounds that do not broadcast against the leaf
                inside = False
            if not inside:
                flat = np.asarray(leaf).ravel()
                raise ValueError(
                    _OUTSIDE.format(
                        fn=self.fn,
                        name=self.name,
                        leaf=leaf_name,
                        support=c,
                        why="constraint" if given is not None else "prior",
                        example=f"{flat[:4].tolist()}{' ...' if flat.size > 4 else ''}",
                    )
                )
        return c


def _is_concrete(x: Any) -> bool:
    try:
        np.asarray(x)
    except jax.errors.TracerArrayConversionError:
        return False
    return True


def _fn_name(call: str) -> str:
    return call[3:] if call.startswith("eb.") else call


def _describe(x: Any) -> str:
    if eqx.is_array(x):
        return f"an array of shape {x.shape}"
    if isinstance(x, (tuple, list)):
        return f"a {type(x).__name__} of {len(x)}"
    if isinstance(x, dict):
        return f"a dict with keys {sorted(map(str, x))}"
    return f"a `{type(x).__name__}`"
