"""Variational groups: a Gaussian q fitted to a sub-tree's posterior by the Solver."""

import abc
import dataclasses
import inspect
from collections.abc import Callable
from typing import Any, ClassVar

import blackjax
import equinox as eqx
import jax
import jax.flatten_util
import jax.numpy as jnp
import jax.random as jr
import optax
from blackjax.vi.fullrank_vi import FRVIState
from blackjax.vi.meanfield_vi import MFVIState
from jaxtyping import Array, Float, PRNGKeyArray, PyTree

from ._checks import check_float, check_int, check_likelihood_scale
from ._custom_types import ArrayTree
from ._groups import AbstractGroup, Context, GroupResult, Solve
from ._marking import mark


MEANFIELD = "mean-field"
FULLRANK = "full-rank"

_NOT_VI = (
    "`eb.vi(..., algorithm={algorithm})` for group '{name}': {why} eqbayes fits the "
    "Gaussian variational families `blackjax.meanfield_vi` (a diagonal covariance) "
    "and `blackjax.fullrank_vi` (a full covariance); pass one of them."
)
_MCMC_KERNEL = (
    "this is an MCMC kernel, not a variational family: sample with "
    "`eb.bayesian(model, blackjax.{algorithm}, ...)`."
)
_NO_OPTIMIZER = (
    "`eb.vi(...)` for group '{name}' needs `optimizer=`: the optax transformation "
    "that fits the variational parameters, e.g. `eb.vi(model, "
    "blackjax.meanfield_vi, optimizer=optax.adam(1e-2))`."
)
_BAD_OPTIMIZER = (
    "`eb.vi(..., optimizer=...)` for group '{name}': `optimizer` must be an optax "
    "`GradientTransformation` such as `optax.adam(1e-2)`; got an object of type "
    "`{type}`."
)
_DRAWS = (
    "`eb.vi(..., posterior_draws={draws})` for group '{name}': the solve also samples "
    "group '{other}' with `keep={keep}`. The variational draws are paired with the "
    "chain's draws, so that `posterior.samples` is one joint posterior (what "
    "`predict` evaluates), and their numbers must match. Pass "
    "`posterior_draws={keep}`."
)


# -- the fitted distributions ------------------------------------------------------


class AbstractGaussianApproximation(eqx.Module):
    """A Gaussian approximation q(θ) of a group's posterior: a variational fit, or a
    Laplace approximation ([`eqbayes.LaplaceGaussian`][]).

    `mean` has the structure of the group's position: the marked sub-tree with its
    floating-point array leaves, `None` at every other leaf (the `eqx.partition`
    convention of `posterior.samples`). Covariances are over the position flattened
    by `jax.flatten_util.ravel_pytree(mean)`.
    """

    mean: eqx.AbstractVar[ArrayTree]

    @abc.abstractmethod
    def covariance(self) -> Float[Array, "d d"]:
        """The `(d, d)` covariance matrix of the flattened position."""

    @abc.abstractmethod
    def sample(self, key: PRNGKeyArray, num_draws: int) -> ArrayTree:
        """`num_draws` i.i.d. draws.

        **Arguments:**

        - `key`: a JAX PRNG key.
        - `num_draws`: how many draws.

        **Returns:**

        A pytree of the structure of `mean` with leaves `(num_draws, *leaf)`.
        """


class MeanFieldGaussian(AbstractGaussianApproximation):
    """The mean-field family: independent Gaussians, q(θ) = ∏ᵢ N(μᵢ, σᵢ²).

    Fitted by `eb.vi(..., algorithm=blackjax.meanfield_vi)`.

    **Fields:**

    - `mean`: μ, with the structure of the group's position.
    - `log_std`: log σ, the same structure (blackjax's `rho`).
    """

    mean: ArrayTree
    log_std: ArrayTree

    @property
    def std(self) -> ArrayTree:
        """σ, with the structure of the group's position."""
        return jax.tree.map(jnp.exp, self.log_std)

    def covariance(self) -> Float[Array, "d d"]:
        flat, _ = jax.flatten_util.ravel_pytree(self.log_std)
        return jnp.diag(jnp.exp(2 * flat))

    def sample(self, key: PRNGKeyArray, num_draws: int) -> ArrayTree:
        flat, unravel = jax.flatten_util.ravel_pytree(self.mean)
        log_std, _ = jax.flatten_util.ravel_pytree(self.log_std)
        noise = jr.normal(key, (num_draws, flat.size), flat.dtype)
        return jax.vmap(unravel)(flat[None] + noise * jnp.exp(log_std)[None])


class FullRankGaussian(AbstractGaussianApproximation):
    """The full-rank family: q(θ) = N(μ, L Lᵀ), a dense covariance.

    Fitted by `eb.vi(..., algorithm=blackjax.fullrank_vi)`.

    **Fields:**

    - `mean`: μ, with the structure of the group's position.
    - `cholesky`: L, `(d, d)` lower triangular with a positive diagonal, over the
        flattened position.
    """

    mean: ArrayTree
    cholesky: Float[Array, "d d"]

    def covariance(self) -> Float[Array, "d d"]:
        return self.cholesky @ self.cholesky.T

    def sample(self, key: PRNGKeyArray, num_draws: int) -> ArrayTree:
        flat, unravel = jax.flatten_util.ravel_pytree(self.mean)
        noise = jr.normal(key, (num_draws, flat.size), flat.dtype)
        return jax.vmap(unravel)(flat[None] + noise @ self.cholesky.T)


def _cholesky_from_params(chol_params: Array, dim: int) -> Array:
    """blackjax's full-rank parametrisation (log-diagonal, then the strictly lower
    triangle row by row) as the lower-triangular matrix."""
    rows, cols = jnp.tril_indices(dim, k=-1)
    lower = (
        jnp.zeros((dim, dim), chol_params.dtype).at[rows, cols].set(chol_params[dim:])
    )
    return lower + jnp.diag(jnp.exp(chol_params[:dim]))


# -- the group -----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class VIConfig:
    """The static configuration of a variational group (hashable)."""

    family: str
    optimizer: optax.GradientTransformation
    prior: Callable[[ArrayTree], Any]
    num_samples: int
    posterior_draws: int
    init_log_std: float
    init_mu_at_position: bool
    likelihood_scale: float

    @property
    def algorithm(self) -> Any:
        return (
            blackjax.meanfield_vi if self.family == MEANFIELD else blackjax.fullrank_vi
        )

    @property
    def algorithm_name(self) -> str:
        return "meanfield_vi" if self.family == MEANFIELD else "fullrank_vi"


class VIState(eqx.Module):
    """Everything a variational group carries between solver steps.

    **Fields:**

    - `params`: blackjax's state, untouched: `MFVIState(mu, rho, opt_state)` or
        `FRVIState(mu, chol_params, opt_state)`.
    - `neg_elbo`: the Monte-Carlo estimate of the negative ELBO at the last step.
    - `key`: the key of the posterior draws (from the solve's key at `init`); the
        draws after `t` steps use `jax.random.fold_in(key, t)`.
    - `num_chains`: K of the chained groups of the solve (1 when there are none):
        the draws are laid out `(K, posterior_draws)`.
    """

    params: ArrayTree
    neg_elbo: Float[Array, ""]
    key: PRNGKeyArray
    num_chains: int = eqx.field(static=True)


class VIGroup(AbstractGroup):
    """A sub-tree whose floating-point leaves are fitted by variational inference.

    Made by [`eqbayes.vi`][]; do not construct it directly. The group has no chains:
    every other group sees it at the mean of q (and so does `eb.unwrap`, and
    `result.model`). After `Solver.init` its `state` holds blackjax's variational
    state (the mean, the scale parameters and the optimiser state).
    """

    value: PyTree
    config: VIConfig = eqx.field(static=True)
    name: str = eqx.field(static=True)
    state: VIState | None = None

    marked_with: ClassVar[str] = "eb.vi"

    def current(self) -> PyTree:
        if self.state is None:
            return self.value
        return self.materialise(self.state.params.mu)

    @property
    def minibatched(self) -> bool:
        return True

    def _logdensity_for(self, ctx: Context):
        """`others_k -> (theta -> log density at chain k)`, on minibatches."""
        prior, scale = self.config.prior, self.config.likelihood_scale

        def for_chain(others_k):
            loss = ctx.loss_fn(others_k, minibatch=True)
            return lambda theta: -scale * loss(theta) + prior(theta)

        return for_chain

    def init(self, ctx):
        config = self.config
        position = self.initial_position()
        mu = (
            position
            if config.init_mu_at_position
            else jax.tree.map(jnp.zeros_like, position)
        )
        # blackjax's own `init` puts the mean at 0 and the scale at a fixed value.
        # (optax mixes Python floats and integers: standard promotion, as in
        # `step`.)
        init = _lenient(config.optimizer.init)
        if config.family == MEANFIELD:
            rho = jax.tree.map(lambda x: jnp.full_like(x, config.init_log_std), mu)
            params = MFVIState(mu, rho, init((mu, rho)))
        else:
            flat, _ = jax.flatten_util.ravel_pytree(mu)
            d = flat.size
            chol = jnp.concatenate(
                [
                    jnp.full((d,), config.init_log_std, flat.dtype),
                    jnp.zeros((d * (d - 1) // 2,), flat.dtype),
                ]
            )
            params = FRVIState(mu, chol, init((mu, chol)))
        dtype = jax.tree.leaves(mu)[0].dtype
        assert ctx.key is not None
        state = VIState(
            params, jnp.asarray(jnp.inf, dtype), ctx.key, num_chains=ctx.num_chains
        )
        return eqx.tree_at(lambda g: g.state, self, state, is_leaf=lambda x: x is None)

    def step(self, ctx):
        assert self.state is not None
        config = self.config
        logdensity_for = self._logdensity_for(ctx)

        if jax.tree.leaves(ctx.others):
            # Beside K chains: the expected log density over the chains' positions.
            def logdensity(theta):
                per_chain = ctx.over_chains(lambda o: logdensity_for(o)(theta))
                return jnp.mean(per_chain)

        else:
            logdensity = logdensity_for(ctx.others)

        old = self.state.params
        step = _lenient_step(config.algorithm.step, logdensity)
        new, info = step(ctx.key, old, config.optimizer, config.num_samples)
        neg_elbo = jnp.asarray(info.elbo, self.state.neg_elbo.dtype)  # already −ELBO
        # A non-finite estimate or update leaves q as it was (a rejected step). A
        # `cond` picks whole states: an elementwise `where` over every parameter and
        # optimiser leaf costs more than the step itself on a small model.
        finite = jnp.isfinite(neg_elbo)
        for leaf in jax.tree.leaves((new[0], new[1])):  # mean, scale parameters
            finite = finite & jnp.all(jnp.isfinite(leaf))
        params = jax.lax.cond(finite, lambda: new, lambda: old)
        state = eqx.tree_at(
            lambda s: (s.params, s.neg_elbo), self.state, (params, neg_elbo)
        )
        return eqx.tree_at(lambda g: g.state, self, state)

    def approximation(self) -> AbstractGaussianApproximation:
        """The fitted q (after `Solver.init`)."""
        assert self.state is not None
        params = self.state.params
        if self.config.family == MEANFIELD:
            return MeanFieldGaussian(params.mu, params.rho)
        flat, _ = jax.flatten_util.ravel_pytree(params.mu)
        return FullRankGaussian(
            params.mu, _cholesky_from_params(params.chol_params, flat.size)
        )

    def monitor(self):
        assert self.state is not None
        return {"neg_elbo": self.state.neg_elbo}

    def result(self, ctx):
        assert self.state is not None
        approximation = self.approximation()
        shape = (self.state.num_chains, self.config.posterior_draws)
        samples = _draws(approximation, self.state.key, jnp.asarray(ctx.step), shape)
        return GroupResult(samples, None, approximation)

    def check(self, solve: Solve) -> None:
        for other in solve.chain_groups:
            _, keep, _ = other.schedule
            if keep != self.config.posterior_draws:
                raise ValueError(
                    _DRAWS.format(
                        draws=self.config.posterior_draws,
                        name=self.name,
                        other=other.name,
                        keep=keep,
                    )
                )

    def describe(self) -> str:
        config = self.config
        flat, _ = jax.flatten_util.ravel_pytree(self.initial_position())
        k = 1 if self.state is None else self.state.num_chains
        layout = (
            f"{config.posterior_draws}"
            if k == 1
            else (f"{k} x {config.posterior_draws} (one per draw of the {k} chains)")
        )
        return (
            f"Group '{self.name}': variational fit with '{config.algorithm_name}' "
            f"({config.family} Gaussian over {flat.size} components), "
            f"{config.num_samples} Monte-Carlo samples per step, {layout} posterior "
            "draws at the end; diagnostics: none (watch result.history.neg_elbo)"
        )


def _lenient(fn: Callable) -> Callable:
    """`fn` traced under standard dtype and rank promotion."""

    def lenient(*args, **kwargs):
        with jax.numpy_dtype_promotion("standard"), jax.numpy_rank_promotion("allow"):
            return fn(*args, **kwargs)

    return lenient


def _lenient_step(step: Callable, logdensity: Callable) -> Callable:
    """blackjax's VI step traced under standard dtype and rank promotion.

    blackjax and optax rely on implicit promotion (`noise * sigma` of shapes
    `(n, d)` and `(d,)`, Adam's `decay ** count` of a Python float and an int32),
    which `jax_numpy_*_promotion` set to `"strict"`/`"raise"` rejects; the results
    keep the position's dtype either way. The log density (the user's loss) is
    still traced under the ambient settings.
    """
    dtype_mode = getattr(jax.config, "jax_numpy_dtype_promotion")
    rank_mode = getattr(jax.config, "jax_numpy_rank_promotion")

    def ambient_logdensity(theta):
        with (
            jax.numpy_dtype_promotion(dtype_mode),
            jax.numpy_rank_promotion(rank_mode),
        ):
            return logdensity(theta)

    def lenient(key, state, optimizer, num_samples):
        return _lenient(step)(key, state, ambient_logdensity, optimizer, num_samples)

    return lenient


@eqx.filter_jit
def _sample(approximation, key, num_draws):
    return approximation.sample(key, num_draws)


@eqx.filter_jit
def _draws(approximation, key, steps_done, shape: tuple[int, int]):
    """`shape = (K, N)` i.i.d. draws from q, one compiled program (a handful of
    eager operations would cost more than the draws)."""
    flat = _sample(approximation, jr.fold_in(key, steps_done), shape[0] * shape[1])
    return jax.tree.map(lambda x: x.reshape(*shape, *x.shape[1:]), flat)


# -- eb.vi ---------------------------------------------------------------------------


def _family(algorithm: Any, name: str) -> str:
    if algorithm is blackjax.meanfield_vi:
        return MEANFIELD
    if algorithm is blackjax.fullrank_vi:
        return FULLRANK
    shown = _algorithm_name(algorithm)
    why = f"`{shown}` is not a variational family that eqbayes fits."
    if isinstance(algorithm, blackjax.GenerateSamplingAPI):
        params = inspect.signature(algorithm.differentiable).parameters
        if next(iter(params), None) in ("logdensity_fn", "grad_estimator"):
            why = _MCMC_KERNEL.format(algorithm=shown)
    raise TypeError(_NOT_VI.format(algorithm=shown, name=name, why=why))


def _algorithm_name(algorithm: Any) -> str:
    if isinstance(
        algorithm,
        (
            blackjax.GenerateSamplingAPI,
            blackjax.GenerateVariationalAPI,
            blackjax.GeneratePathfinderAPI,
        ),
    ):
        return algorithm.differentiable.__module__.rsplit(".", 1)[-1]
    return getattr(algorithm, "__name__", None) or type(algorithm).__name__


_VI_INIT = (
    "`eb.vi(..., init=...)` for group '{name}': log-density-aware initializers warm "
    "start MCMC chains; a variational fit starts its mean at the model's values "
    "(`init_mu_at_position=True`) and needs none. Drop `init=`, or use "
    "`eb.bayesian(..., init=...)` for a chain."
)


def vi(
    model: PyTree,
    algorithm: Any = blackjax.meanfield_vi,
    *,
    optimizer: Any = None,
    where: Callable[[PyTree], Any] | None = None,
    mask: PyTree | None = None,
    num_samples: int = 8,
    posterior_draws: int = 500,
    init_log_std: float = -3.0,
    init_mu_at_position: bool = True,
    likelihood_scale: float = 1.0,
    prior: Any = None,
    constraint: Any = None,
    name: str | None = None,
    init: Any = None,
) -> PyTree:
    r"""Marks a sub-tree of `model` to be fitted by variational inference.

    The selected sub-tree is replaced by a [`eqbayes.VIGroup`][]. Its
    floating-point array leaves form the position $\theta$, whose posterior

    $$\log p(\theta) = -s \cdot \text{loss}(\text{model}(\theta), \dots)
        + \log \text{prior}(\theta)$$

    ($s$ is `likelihood_scale`) is approximated by a Gaussian $q$. Each solver step
    is one `optimizer` step on a Monte-Carlo estimate of the evidence lower bound
    $\text{ELBO}(q) = \mathbb{E}_q[\log p(\theta) - \log q(\theta)]$, with
    `num_samples` draws from $q$ (blackjax's `meanfield_vi` / `fullrank_vi` step,
    with the stick-the-landing gradient). After the solve, `posterior_draws`
    i.i.d. draws from $q$ become `result.posterior.samples` at the group's leaves,
    shape `(1, posterior_draws, *leaf)`, so `predict`, `eb.rhat` and `eb.ess`
    work as for a chain (but see [Variational inference](../vi.md): R-hat and ESS
    say nothing about a variational fit). The fitted $q$ is
    `result.variational[name]`, and `result.history.neg_elbo[name]` holds the
    negative ELBO estimate at the end of each chunk.

    The group has no chains: every other group, `eb.unwrap` and `result.model` see
    it at the mean of $q$. Beside MCMC groups with K chains, its log density is the
    average over the K chains' positions, and its draws are laid out
    `(K, posterior_draws)` (one per chain draw; `posterior_draws` must then equal
    the chains' `keep`). A step whose ELBO estimate or update is not finite leaves
    $q$ unchanged.

    **Arguments:**

    - `model`: any pytree, usually an `eqx.Module`; may already hold other groups.
    - `algorithm`: `blackjax.meanfield_vi` (independent Gaussians) or
        `blackjax.fullrank_vi` (a dense covariance, $d(d+1)/2$ parameters for $d$
        components: for small groups).
    - `optimizer`: an optax transformation, e.g. `optax.adam(1e-2)` (required).
        Reuse the same object to reuse the compiled program.
    - `where`: selects the sub-tree, like `eqx.tree_at`'s `where`; `None` means the
        whole model. It sees the plain model.
    - `mask`: a pytree of bools over the selected sub-tree (or a prefix of it):
        only `True` floating-point leaves form the group, and the others stay as
        they are or belong to other masked groups. An MCMC group on another mask of
        the same sub-tree makes "Pattern E" (see [Variational
        inference](../vi.md)).
    - `num_samples`: Monte-Carlo draws from $q$ per ELBO estimate.
    - `posterior_draws`: draws from the fitted $q$ kept as `posterior.samples`.
    - `init_log_std`: the initial $\log \sigma$ of every component (the diagonal
        of the Cholesky factor for the full-rank family); the default $-3$
        ($\sigma \approx 0.05$) keeps the first gradient estimates close to the
        mean. `0.0` is blackjax's unit scale.
    - `init_mu_at_position`: start the mean at the model's values (`False`: at
        zero, blackjax's default).
    - `likelihood_scale`: the factor on the loss. With a mean loss over N points the
        ELBO needs the full-data log-likelihood: for a mean squared error with
        Gaussian noise σ, `N / (2 σ²)`. Left at 1 the prior dominates and $q$
        stays wide.
    - `prior`: a prior, a callable `position -> log density` over this group's
        position, or a prefix pytree of priors, as in [`eqbayes.bayesian`][];
        `None` means `eb.priors.gaussian(10.0)`. Leaves with a constrained
        support are fitted in unconstrained space: $q$ is a Gaussian over $z$,
        and its draws are mapped to $\theta = T(z)$.
    - `constraint`: constraints for leaves whose prior does not declare one, as
        in [`eqbayes.bayesian`][].
    - `name`: the group's name; defaults to the `where` path or the model's class
        name.
    - `init`: not accepted (an error says why): initializers warm start MCMC
        chains, while q starts at the model's values.

    **Returns:**

    A new model with the sub-tree wrapped.

    !!! Example

        ```python
        model = eb.vi(model, blackjax.meanfield_vi, optimizer=optax.adam(1e-2),
                      likelihood_scale=len(x) / (2 * 0.1**2))
        result = eb.Solver(loss).run(model, steps=3000, key=jax.random.key(0),
                                     args=(x, y))
        q = result.variational["MLP"]
        ```
    """

    def make(subtree: PyTree, group_name: str, the_prior: Any) -> VIGroup:
        if init is not None:
            raise TypeError(_VI_INIT.format(name=group_name))
        family = _family(algorithm, group_name)
        if optimizer is None:
            raise TypeError(_NO_OPTIMIZER.format(name=group_name))
        if not isinstance(optimizer, optax.GradientTransformation):
            raise TypeError(
                _BAD_OPTIMIZER.format(name=group_name, type=type(optimizer).__name__)
            )
        samples = check_int(
            num_samples,
            "num_samples",
            group_name,
            1,
            "The ELBO needs at least one draw from q per step, e.g. `num_samples=8`.",
            fn="vi",
        )
        draws = check_int(
            posterior_draws,
            "posterior_draws",
            group_name,
            1,
            "Keep at least one draw from q, e.g. `posterior_draws=500`.",
            fn="vi",
        )
        log_std = check_float(
            init_log_std,
            "init_log_std",
            group_name,
            positive=None,
            fix="The default -3.0 starts every σ at about 0.05.",
            fn="vi",
        )
        scale = check_likelihood_scale(likelihood_scale, group_name, fn="vi")
        config = VIConfig(
            family=family,
            optimizer=optimizer,
            prior=the_prior,
            num_samples=samples,
            posterior_draws=draws,
            init_log_std=log_std,
            init_mu_at_position=bool(init_mu_at_position),
            likelihood_scale=scale,
        )
        return VIGroup(value=subtree, config=config, name=group_name)

    return mark(
        model,
        make,
        where=where,
        mask=mask,
        name=name,
        call="eb.vi",
        prior=prior,
        constraint=constraint,
    )
