"""Shared type aliases."""

from typing import Any, TypeAlias

from jaxtyping import Array, ArrayLike, Bool, Float, Int, PRNGKeyArray, PyTree


#: A pytree whose leaves are (mostly) arrays: a model, a position, a kernel state.
ArrayTree: TypeAlias = PyTree[Any]
#: Posterior draws in the ArviZ layout: chain first, then draw.
Chain: TypeAlias = Float[ArrayLike, "chain draw *p"]

__all__ = [
    "Array",
    "ArrayLike",
    "ArrayTree",
    "Bool",
    "Chain",
    "Float",
    "Int",
    "PRNGKeyArray",
    "PyTree",
]
