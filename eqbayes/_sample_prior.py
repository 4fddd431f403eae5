"""`eb.sample_prior`: draws of every marked group from its prior."""

from typing import Any

import jax
import jax.random as jr
from jaxtyping import PRNGKeyArray, PyTree

from ._bayesian import BayesianLeaf
from ._checks import count
from ._constrained import sample_priors, unsampleable
from ._groups import AbstractGroup, is_group
from ._marking import collapse, unwrap
from ._optax import OptaxGroup
from ._posterior import Posterior
from ._smc import SMCGroup
from ._summary import group_labels
from ._vi import VIGroup


_NO_GROUPS = (
    "`eb.sample_prior(model, ...)`: the model has no group with a prior. Mark the "
    "parameters first, e.g. `eb.bayesian(model, blackjax.nuts, where=..., "
    "prior=eb.priors.normal(0.0, 1.0))`."
)
_NO_PRIOR = (
    "`eb.sample_prior(model, ...)`: group '{name}' is a `{type}`, which has no "
    "prior that eqbayes can draw from. Only `eb.bayesian`, `eb.vi` and `eb.smc` "
    "groups are drawn (`eb.optimise` groups stay at their values)."
)
_NOT_SAMPLEABLE = (
    "`eb.sample_prior(model, ...)`: the prior {prior!r} of group '{name}' cannot "
    "be sampled: only priors from `eb.priors` (each has `.sample`) can. Use one "
    "of them, e.g. `prior=eb.priors.normal(0.0, 1.0)`."
)
_DRAWS = (
    "`eb.sample_prior(..., num_draws={value!r})`: `num_draws` must be a positive "
    "integer, e.g. `num_draws=1000`."
)


def _prior_of(group: AbstractGroup) -> Any:
    if isinstance(group, (BayesianLeaf, VIGroup, SMCGroup)):
        return group.config.prior
    if isinstance(group, OptaxGroup):
        return None
    raise TypeError(_NO_PRIOR.format(name=group.name, type=type(group).__name__))


def _group_draws(group: AbstractGroup, key: PRNGKeyArray, num_draws: int) -> PyTree:
    """Draws `(1, num_draws, ...)` of the group's position (unconstrained at
    constrained leaves), or None for a group without a prior."""
    prior = _prior_of(group)
    if prior is None:
        return None
    bad = unsampleable(group.value, prior)
    if bad is not None:
        raise TypeError(_NOT_SAMPLEABLE.format(prior=bad, name=group.name))
    draws = sample_priors(group.value, prior, key, num_draws)
    return jax.tree.map(lambda x: x[None], draws)


def sample_prior(
    model: PyTree, *, key: PRNGKeyArray, num_draws: int = 1000
) -> Posterior:
    """Draws every marked group of `model` from its prior.

    The result is a [`eqbayes.Posterior`][] with one chain: `samples` holds
    `(1, num_draws, *leaf)` draws at the leaves of `eb.bayesian`, `eb.vi` and
    `eb.smc` groups (drawn independently, leaf by leaf, each from its prior; `None`
    elsewhere), so `predict` gives prior predictive draws and `summary()` the prior
    moments. `eb.optimise` groups and unmarked leaves stay at the model's values.
    Every prior of a drawn group must come from [`eqbayes.priors`][] (they have
    `.sample`).

    **Arguments:**

    - `model`: a marked model.
    - `key`: a JAX PRNG key.
    - `num_draws`: draws per leaf.

    **Returns:**

    A [`eqbayes.Posterior`][] (`diagnostics` are None, `unconstrained` holds the
    draws mapped to unconstrained space).

    !!! Example

        ```python
        model = eb.bayesian(model, blackjax.nuts, where=lambda m: (m.mu, m.tau),
                            prior=(eb.priors.normal(0, 5), eb.priors.half_cauchy(5)))
        prior = eb.sample_prior(model, key=jax.random.key(0), num_draws=500)
        y_rep = prior.predict(lambda m, x: m(x), x)   # (1, 500, ...)
        ```
    """
    n = count(num_draws, _DRAWS.format(value=num_draws))
    leaves, treedef = jax.tree.flatten(model, is_leaf=is_group)
    index = [i for i, x in enumerate(leaves) if is_group(x)]
    if not index:
        raise ValueError(_NO_GROUPS)
    keys = jr.split(key, len(index))
    out: list[Any] = [None] * len(leaves)
    names = []
    for i, k in zip(index, keys):
        group = leaves[i]
        draws = _group_draws(group, k, n)
        if draws is not None:
            names.append(group.name)
        out[i] = draws
    if not names:
        raise ValueError(_NO_GROUPS)
    draws = jax.tree.unflatten(treedef, out)
    plain = unwrap(model)
    return Posterior(
        collapse(draws),
        {name: None for name in names},
        plain,
        group_labels(plain, model),
        collapse(draws, constrained=False),
    )
