"""Point estimates with optax: the `eb.optimise` group (also what
`Solver(optimizer=...)` makes of the unmarked leaves)."""

import logging
from collections.abc import Callable
from typing import Any, ClassVar, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jaxtyping import PyTree

from ._custom_types import ArrayTree
from ._groups import AbstractGroup, Context, GroupResult, Solve
from ._marking import mark


logger = logging.getLogger("eqbayes")


Chains = Literal["first", "mean"]

_NOT_OPTIMIZER = (
    "`{call}`: the optimiser must be an optax `GradientTransformation` such as "
    "`optax.adam(1e-3)`; got an object of type `{type}`."
)
_CHAINS = (
    "`{call}`: `{arg}` must be 'first' (the gradient at chain 0 of the sampled "
    "groups) or 'mean' (the gradient averaged over their K chains); got {value!r}."
)
_REPRESENTATIVE = (
    "Group '{name}': with K={k} chains, the optimiser's gradient is taken at chain 0 "
    "of the sampled groups (one representative: a stochastic-approximation EM "
    "step), not at each chain. Pass `optimizer_chains='mean'` (`chains='mean'` in "
    "`eb.optimise`) to average it over the chains, or `num_chains=1` for "
    "independent solves."
)


def check_optimizer(optimizer: Any, call: str) -> None:
    if not (
        isinstance(optimizer, optax.GradientTransformation)
        or (
            callable(getattr(optimizer, "init", None))
            and callable(getattr(optimizer, "update", None))
        )
    ):
        raise TypeError(_NOT_OPTIMIZER.format(call=call, type=type(optimizer).__name__))
    try:
        hash(optimizer)
    except TypeError:
        raise TypeError(
            _NOT_OPTIMIZER.format(call=call, type=type(optimizer).__name__)
            + " (It must be hashable: eqbayes keeps it in static configuration.)"
        ) from None


def check_chains(value: Any, call: str, arg: str) -> None:
    if value not in ("first", "mean"):
        raise ValueError(_CHAINS.format(call=call, arg=arg, value=value))


def update(
    optimizer: optax.GradientTransformation,
    params: ArrayTree,
    opt_state: PyTree,
    ctx: Context,
    chains: Chains,
) -> tuple[ArrayTree, PyTree]:
    """One optax step on `params`, on the loss with the chain groups at chain 0
    (`"first"`, a stochastic-approximation EM step) or averaged over the K chains
    (`"mean"`, a Monte Carlo EM estimate of the expected gradient)."""

    def grad(others_k):
        return jax.grad(ctx.loss_fn(others_k, minibatch=True))(params)

    if chains == "mean" and ctx.num_chains > 1:
        grads = jax.tree.map(lambda g: jnp.mean(g, axis=0), jax.vmap(grad)(ctx.others))
    else:
        grads = grad(ctx.chain(0))
    # Standard promotion for the optimiser's own arithmetic (optax mixes Python
    # floats with integer step counts), whatever the user's promotion setting.
    with jax.numpy_dtype_promotion("standard"):
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state


class OptaxState(eqx.Module):
    """The current point estimate and the optimiser's state."""

    params: ArrayTree
    opt_state: PyTree


class OptaxGroup(AbstractGroup):
    """A sub-tree trained to a point estimate by an optax optimiser.

    Made by [`eqbayes.optimise`][]; do not construct it directly. It has no chains:
    the sampled groups see its current value, and it is stored once (never per
    draw).
    """

    value: PyTree
    optimizer: optax.GradientTransformation = eqx.field(static=True)
    chains: Chains = eqx.field(static=True)
    name: str = eqx.field(static=True)
    state: OptaxState | None = None

    marked_with: ClassVar[str] = "eb.optimise"

    @property
    def minibatched(self) -> bool:
        return True

    def current(self) -> PyTree:
        if self.state is None:
            return self.value
        return self.materialise(self.state.params)

    def init(self, ctx):
        del ctx
        params = self.initial_position()
        with jax.numpy_dtype_promotion("standard"):
            state = OptaxState(params, self.optimizer.init(params))
        return eqx.tree_at(lambda g: g.state, self, state, is_leaf=lambda x: x is None)

    def step(self, ctx):
        assert self.state is not None
        params, opt_state = update(
            self.optimizer, self.state.params, self.state.opt_state, ctx, self.chains
        )
        return eqx.tree_at(lambda g: g.state, self, OptaxState(params, opt_state))

    def monitor(self):
        return {}

    def result(self, ctx):
        return GroupResult()

    def check(self, solve: Solve) -> None:
        if self.chains == "first" and solve.num_chains > 1:
            logger.warning(_REPRESENTATIVE.format(name=self.name, k=solve.num_chains))

    def describe(self) -> str:
        return f"Group '{self.name}': point estimate with optax (no draws stored)"


def optimise(
    model: PyTree,
    optimizer: Any,
    *,
    where: Callable[[PyTree], Any] | None = None,
    mask: PyTree | None = None,
    chains: str = "first",
    name: str | None = None,
    constraint: Any = None,
) -> PyTree:
    """Marks a sub-tree of `model` to be trained to a point estimate by optax.

    Each solver step takes one optimiser step on the loss, with the sampled groups
    at their current values. Different sub-trees may use different optimisers;
    `eb.Solver(loss, optimizer=...)` trains every leaf that no call marks.

    **Arguments:**

    - `model`: any pytree, usually an `eqx.Module`; may already hold other groups.
    - `optimizer`: an optax `GradientTransformation`, e.g. `optax.adam(1e-3)`.
    - `where`: selects the sub-tree, like `eqx.tree_at`'s `where`; `None` means
        the whole model.
    - `mask`: a pytree of bools over the selected sub-tree: only `True` leaves are
        trained (the others stay as they are, or belong to other masked groups).
    - `chains`: with K > 1 chains in the sampled groups, take the gradient at
        chain 0 (`"first"`, the default) or average it over the K chains
        (`"mean"`, K gradient evaluations per step).
    - `name`: the group's name in logs; defaults to the `where` path.
    - `constraint`: an [`eqbayes.constraints`][] object, or a prefix pytree of
        them over the selection: those leaves are optimised in unconstrained
        space ($\theta = T(z)$, the optimiser steps $z$), so they stay inside
        the set.

    **Returns:**

    A new model with the sub-tree wrapped.

    !!! Example

        ```python
        model = eb.optimise(model, optax.adam(1e-3), where=lambda m: m.encoder)
        model = eb.bayesian(model, blackjax.sgld, where=lambda m: m.head,
                            step_size=1e-4)
        ```
    """
    check_optimizer(optimizer, "eb.optimise(model, optimizer, ...)")
    check_chains(chains, "eb.optimise(..., chains=...)", "chains")

    def make(subtree: PyTree, group_name: str) -> OptaxGroup:
        return OptaxGroup(subtree, optimizer, chains, group_name)  # pyright: ignore

    return mark(
        model,
        make,
        where=where,
        mask=mask,
        name=name,
        call="eb.optimise",
        constraint=constraint,
    )
