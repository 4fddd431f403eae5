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
from jax.tree_util import DictKey, GetAttrKey, SequenceKey

from ._custom_types import Array, ArrayTree, Float, PyTree
from .constraints import AbstractConstraint


@final
class Constrained(eqx.Module):
    """A leaf stored in unconstrained space: the model sees
    `constraint.forward(unconstrained)`."""

    unconstrained: Any
    constraint: AbstractConstraint = eqx.field(static=True)

    def constrained(self) -> Any:
        z = self.unconstrained
        return None if z is None else self.constraint.forward(z)


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
