"""Point estimates with optax: the `eb.optimise` wrapper and the update both it and
`Solver(optimizer=...)` use."""

from collections.abc import Callable
from typing import Any, ClassVar, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jaxtyping import PyTree

from ._custom_types import ArrayTree
from ._wrappers import _HAS_STATE, AbstractGroup, mark


Chains = Literal["first", "mean"]

_NOT_OPTIMIZER = (
    "`{call}`: the optimiser must be an optax `GradientTransformation` such as "
    "`optax.adam(1e-3)`; got an object of type `{type}`."
)
_CHAINS = (
    "`{call}`: `{arg}` must be 'first' (the gradient at chain 0 of the sampled "
    "groups) or 'mean' (the gradient averaged over their K chains); got {value!r}."
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
    loss_for: Callable[[Any], Callable[[ArrayTree], Any]],
    params: ArrayTree,
    opt_state: PyTree,
    others: dict,
    chains: Chains,
) -> tuple[ArrayTree, PyTree]:
    """One optax step on `params`.

    `loss_for(others_k)` is the loss as a function of `params` with the sampled
    groups at one chain's positions; `others` holds those positions, chain axis
    first. With K > 1 chains the gradient is taken at chain 0 (`"first"`, a
    stochastic-approximation EM step) or averaged over the K chains (`"mean"`, a
    Monte Carlo EM estimate of the expected gradient).
    """
    num_chains = max((x.shape[0] for x in jax.tree.leaves(others)), default=1)
    if chains == "mean" and num_chains > 1:
        grads = jax.vmap(lambda o: jax.grad(loss_for(o))(params))(others)
        grads = jax.tree.map(lambda g: jnp.mean(g, axis=0), grads)
    else:
        first = jax.tree.map(lambda x: x[0], others)
        grads = jax.grad(loss_for(first))(params)
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
    def chained(self) -> bool:
        return False

    @property
    def sampled(self) -> bool:
        return False

    @property
    def minibatched(self) -> bool:
        return True

    @property
    def representative(self) -> bool:
        return self.chains == "first"

    @property
    def num_chains(self) -> int:
        return 1

    @property
    def schedule(self) -> tuple[int, int, int]:
        return 0, 0, 1

    def current(self) -> PyTree:
        if self.state is None:
            return self.value
        return self.materialise(self.state.params)

    def log_density(self, loss_value, position):
        del position
        return -loss_value

    def start(self, key):
        del key
        return self.initial_position()

    def initialise(self, positions, logdensity_for, others, key):
        del logdensity_for, others, key
        with jax.numpy_dtype_promotion("standard"):
            state = OptaxState(positions, self.optimizer.init(positions))
        return eqx.tree_at(lambda g: g.state, self, state, is_leaf=lambda x: x is None)

    def transition(
        self, key, step, logdensity_for, others, *, refresh, phase, recording
    ):
        del key, step, refresh, phase, recording
        assert self.state is not None

        def loss_for(others_k):
            logdensity = logdensity_for(others_k)
            return lambda params: -logdensity(params)

        params, opt_state = update(
            self.optimizer,
            loss_for,
            self.state.params,
            self.state.opt_state,
            others,
            self.chains,
        )
        return eqx.tree_at(lambda g: g.state, self, OptaxState(params, opt_state))

    def positions(self):
        raise NotImplementedError("An optax group has no chains.")

    def draws(self, steps_done):
        return None

    def kernel_diagnostics(self, steps_done):
        return None

    def check(self) -> None:
        if self.state is not None:
            raise ValueError(_HAS_STATE.format(name=self.name))

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

    return mark(model, where, make, name, "optimise", mask)
