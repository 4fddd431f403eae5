"""Models written with paramax: non-trainable leaves and parameterisations.

paramax is optional and never imported here: a model holding paramax objects has
imported it already, so `sys.modules` says whether there is anything to do.
"""

import sys
from collections.abc import Callable
from typing import Any, final

import equinox as eqx
import jax
from jaxtyping import PyTree


def _paramax() -> Any:
    return sys.modules.get("paramax")


def frozen_flags(
    tree: PyTree, is_leaf: Callable[[Any], bool] | None = None
) -> list[bool]:
    """Per leaf of `jax.tree.leaves(tree, is_leaf=is_leaf)`: whether it sits inside
    a `paramax.NonTrainable` (never sampled, fitted or trained)."""
    paramax = _paramax()
    leaves = jax.tree.leaves(tree, is_leaf=is_leaf)
    if paramax is None:
        return [False] * len(leaves)

    def stop(x):
        return isinstance(x, paramax.NonTrainable) or (
            is_leaf is not None and is_leaf(x)
        )

    def flag(x):
        if isinstance(x, paramax.NonTrainable):
            return jax.tree.map(lambda _: True, x, is_leaf=is_leaf)
        return False

    flags = jax.tree.leaves(jax.tree.map(flag, tree, is_leaf=stop))
    assert len(flags) == len(leaves)
    return flags


@final
class UnwrappedLoss(eqx.Module):
    """The user's loss, called on the model with every paramax wrapper unwrapped
    (`paramax.unwrap`)."""

    loss: Callable[..., Any] = eqx.field(static=True)

    def __call__(self, model: PyTree, *args: Any) -> Any:
        paramax = _paramax()
        if paramax is not None:
            model = paramax.unwrap(model)
        return self.loss(model, *args)


def loss_for(loss: Callable[..., Any]) -> Callable[..., Any]:
    """`loss`, unwrapping paramax parameterisations first when paramax is in use."""
    return loss if _paramax() is None else UnwrappedLoss(loss)
