r"""Laplace groups: a Gaussian posterior at the optimum a solve reaches.

The group is held at (or trained to) a point $\theta^*$ during the solve; when the
solve ends it fits $N(\theta^*, (H + P)^{-1})$, with $H$ the curvature of
$s \cdot \text{loss}$ at $\theta^*$ (the exact Hessian, the generalised
Gauss–Newton matrix or its diagonal) and $P$ the prior precision.
"""

import dataclasses
import logging
import math
from collections.abc import Callable
from typing import Any, ClassVar, Literal

import equinox as eqx
import jax
import jax.flatten_util
import jax.numpy as jnp
import jax.random as jr
import jax.scipy.linalg
import optax
from jaxtyping import Array, Float, PRNGKeyArray, PyTree

from . import priors as _priors
from ._checks import check_int, check_likelihood_scale
from ._constrained import Marker, resolve
from ._custom_types import ArrayTree
from ._groups import AbstractGroup, Context, GroupResult, Solve
from ._marking import mark
from ._optax import OptaxGroup
from ._vi import AbstractGaussianApproximation


logger = logging.getLogger("eqbayes")

#: The most parameters a group may have for a dense curvature matrix
#: (`hessian="full"` or `"ggn"`): a `d x d` matrix and its Cholesky factor.
MAX_DENSE = 20_000

Hessian = Literal["full", "ggn", "diag"]
_KINDS = ("full", "ggn", "diag")

_HESSIAN = (
    "`eb.laplace(..., hessian={value!r})` for group '{name}': `hessian` must be "
    "'full' (the exact Hessian of the loss), 'ggn' (the generalised Gauss-Newton "
    "matrix, positive semi-definite) or 'diag' (the diagonal of the Gauss-Newton "
    "matrix)."
)
_NEEDS_OUTPUTS = (
    "`eb.laplace(..., hessian={hessian!r})` for group '{name}': the Gauss-Newton "
    "matrix needs the loss written as a function of the model's outputs. Pass "
    "`outputs=(output_fn, output_loss)`, with `output_fn(model, *args) -> outputs` "
    "and `output_loss(outputs, *args) -> scalar` such that `loss(model, *args) == "
    "output_loss(output_fn(model, *args), *args)`, e.g. `outputs=(lambda m, x, y: "
    "jax.vmap(m)(x), lambda f, x, y: jnp.sum((f - y) ** 2))`. (`hessian='full'` "
    "needs no split.)"
)
_OUTPUTS_TYPE = (
    "`eb.laplace(..., outputs=...)` for group '{name}': `outputs` must be a pair of "
    "callables `(output_fn, output_loss)`; got an object of type `{type}`."
)
_OUTPUTS_UNUSED = (
    "`eb.laplace(..., hessian='full', outputs=...)` for group '{name}': the exact "
    "Hessian uses the loss itself, not its split into outputs. Drop `outputs=`, or "
    "pass `hessian='ggn'` (or `'diag'`) to use it."
)
_TOO_LARGE = (
    "`eb.laplace(..., hessian={hessian!r})` for group '{name}': the group has {d} "
    "parameters, and a dense {d} x {d} curvature matrix is limited to {limit} of "
    "them. Pass `hessian='diag'` (the diagonal of the Gauss-Newton matrix: {d} "
    "values, with `outputs=`), or select fewer parameters with `where=` / `mask=` "
    "(e.g. the last layer), for which `'full'` or `'ggn'` fit."
)
_OPTIMIZE_PRIOR = (
    "`eb.laplace(..., optimize_prior=True)` for group '{name}': tuning the prior "
    "precision needs a zero-mean Gaussian prior (`eb.priors.gaussian(...)`, "
    "`eb.priors.layerwise_gaussian(...)`, or the default `prior=None`); got "
    "{prior!r}. Pass such a prior, or `optimize_prior=False`."
)
_OPTIMIZER = (
    "`eb.laplace(..., optimizer=...)` for group '{name}': `optimizer` must be an "
    "optax `GradientTransformation` such as `optax.adam(1e-3)` (or None: the group "
    "is held at its values and they are the optimum); got an object of type "
    "`{type}`."
)
_NOT_PD = (
    "Group '{name}' (`eb.laplace(..., hessian={hessian!r})`): the posterior "
    "precision H + P at the optimum is not positive definite (its smallest "
    "eigenvalue is {smallest:.4g}), so there is no Gaussian to fit. The point is "
    "not a minimum of the loss plus the prior: train the group to convergence (more "
    "steps, or `optimizer=` in `eb.laplace`), add prior precision (a smaller prior "
    "`sigma`), or use `hessian='ggn'`, which is positive semi-definite at any point."
)
_SPLIT = (
    "Group '{name}' (`eb.laplace(..., outputs=(output_fn, output_loss))`): the loss "
    "is not `output_loss(output_fn(model, *args), *args)`: at the optimum "
    "`loss(model, *args)` is {loss:.8g} but the split gives {split:.8g}. The "
    "Gauss-Newton matrix is the curvature of `output_loss` in the outputs, so the "
    "two must be equal (constants included); fix `outputs=`, or use "
    "`hessian='full'`."
)
_NOT_FINITE = (
    "Group '{name}' (`eb.laplace`): the point or the curvature there is not finite "
    "(a NaN or an infinity), so there is no Gaussian to fit. If the group was "
    "trained (`optimizer=`), the training diverged: lower the learning rate; "
    "otherwise check the model's values and the loss at them."
)
_DIAG_PRIOR = (
    "`eb.laplace(..., hessian='diag', prior={prior!r})` for group '{name}': the "
    "group has {d} parameters, and the precision of a prior other than a zero-mean "
    "Gaussian is taken from its dense {d} x {d} Hessian, limited to {limit} "
    "parameters. Pass `eb.priors.gaussian(...)` or "
    "`eb.priors.layerwise_gaussian(...)` (their precision is diagonal, in closed "
    "form), or select fewer parameters."
)
_NEEDS_ARGS = (
    "Group '{name}' (`eb.laplace`) fits its Gaussian when the solve ends, from the "
    "loss: the error above came from calling the loss there. If you called "
    "`Solver.result(state)` yourself, pass the solve's `args=` (and `data=`)."
)
_DRAWS = (
    "`eb.laplace(..., num_draws={draws})` for group '{name}': the solve also samples "
    "group '{other}' with `keep={keep}`. The Laplace draws are paired with the "
    "chain's draws, so that `posterior.samples` is one joint posterior, and their "
    "numbers must match. Pass `num_draws={keep}`."
)
_HELD = (
    "Group '{name}' (`eb.laplace` without `optimizer=`) is held at its values during "
    "the solve: the Solver's optimiser trains only unmarked leaves. The Gaussian is "
    "fitted at the values the model was marked with; pass `eb.laplace(..., "
    "optimizer=optax.adam(1e-3))` to train the group first."
)


# -- the fitted distribution ---------------------------------------------------------


class LaplaceGaussian(AbstractGaussianApproximation):
    r"""The Laplace approximation $N(\theta^*, \Lambda^{-1})$ of a group's
    posterior, $\Lambda = H + P$, fitted by [`eqbayes.laplace`][].

    `mean` has the structure of the group's position (the marked sub-tree with
    `None` at leaves the group does not hold); matrices are over the position
    flattened by `jax.flatten_util.ravel_pytree(mean)`, of size `d`. A constrained
    leaf is held unconstrained (its $z$, inside a node that maps it back): the
    Gaussian is over $z$, and `model_at(mean)` is the plain model at the mode.

    **Fields:**

    - `mean`: $\theta^*$.
    - `precision`: $\Lambda$, `(d, d)`, or its diagonal `(d,)` for
        `hessian="diag"`.
    - `cholesky`: the lower Cholesky factor of $\Lambda$ (`(d, d)`), or
        $\sqrt{\Lambda}$ (`(d,)`) for `hessian="diag"`.
    - `hessian`: $H$, the curvature of $s \cdot \text{loss}$ (same layout).
    - `prior_precision`: $P$ (same layout; the diagonal `(d,)` for Gaussian
        priors, also with a dense $H$), after tuning with `optimize_prior=True`.
    - `log_marginal_likelihood`: the Laplace estimate of $\log p(\text{data})$,
        $-s \cdot \text{loss}(\theta^*) + \log p(\theta^*) + \tfrac{d}{2}\log 2\pi
        - \tfrac12 \log\det\Lambda$ (up to the constants the loss leaves out).
    - `model`: the plain model at $\theta^*$ (the other groups at their values at
        the end of the solve; chain groups at chain 0).
    - `kind`: `"full"`, `"ggn"` or `"diag"`.
    """

    mean: ArrayTree
    precision: Float[Array, "d d"] | Float[Array, " d"]
    cholesky: Float[Array, "d d"] | Float[Array, " d"]
    hessian: Float[Array, "d d"] | Float[Array, " d"]
    prior_precision: Float[Array, "d d"] | Float[Array, " d"]
    log_marginal_likelihood: Float[Array, ""]
    model: PyTree
    kind: str = eqx.field(static=True)
    # (index of a leaf of `model`, index of the leaf of `mean` it holds)
    slots: tuple[tuple[int, int], ...] = eqx.field(static=True)

    @property
    def diagonal(self) -> bool:
        """Whether the matrices are diagonals (`hessian="diag"`)."""
        return self.kind == "diag"

    def covariance(self) -> Float[Array, "d d"]:
        if self.diagonal:
            return jnp.diag(1 / self.precision)
        eye = jnp.eye(self.cholesky.shape[0], dtype=self.cholesky.dtype)
        return jax.scipy.linalg.cho_solve((self.cholesky, True), eye)

    def variance(self) -> Float[Array, " d"]:
        """The marginal variances of the flattened position, `(d,)`."""
        if self.diagonal:
            return 1 / self.precision
        eye = jnp.eye(self.cholesky.shape[0], dtype=self.cholesky.dtype)
        inverse = jax.scipy.linalg.solve_triangular(self.cholesky, eye, lower=True)
        return jnp.sum(inverse**2, axis=0)

    def sample(self, key: PRNGKeyArray, num_draws: int) -> ArrayTree:
        flat, unravel = jax.flatten_util.ravel_pytree(self.mean)
        noise = jr.normal(key, (num_draws, flat.size), flat.dtype)
        return jax.vmap(unravel)(flat[None] + self._whiten(noise.T).T)

    def _whiten(self, z: Float[Array, "d n"]) -> Float[Array, "d n"]:
        """`Λ^{-1/2} z` (`L^{-T} z`): N(0, I) columns to N(0, Λ^{-1})."""
        if self.diagonal:
            return z / self.cholesky[:, None]
        return jax.scipy.linalg.solve_triangular(self.cholesky, z, lower=True, trans=1)

    def model_at(self, position: ArrayTree) -> PyTree:
        """The plain model with the group's leaves at `position` (a pytree like
        `mean`) and everything else as in `model`."""
        leaves, treedef = jax.tree.flatten(self.model)
        values = jax.tree.leaves(resolve(position))
        for i, j in self.slots:
            leaves[i] = values[j]
        return jax.tree.unflatten(treedef, leaves)

    def predict_linearised(
        self, fn: Callable[..., Any], *args: Any
    ) -> tuple[PyTree, PyTree]:
        r"""The linearised (GLM) predictive of `fn(model, *args)`: its mean and
        variance when `fn` is replaced by its first-order expansion in the group's
        parameters at $\theta^*$,

        $$f(\theta) \approx f(\theta^*) + J (\theta - \theta^*), \qquad
        \text{mean} = f(\theta^*), \quad \text{var} =
        \operatorname{diag}(J \Lambda^{-1} J^\top),$$

        with $J = \partial f / \partial \theta$ at $\theta^*$ (Immer et al. 2021:
        for networks, often better calibrated than pushing draws through $f$).

        **Arguments:**

        - `fn`: `fn(model, *args) -> pytree of arrays`, with the plain model.
        - `*args`: passed to `fn`.

        **Returns:**

        `(mean, variance)`, each with the structure and shapes of `fn`'s output.

        !!! Example

            ```python
            fit = result.variational["head"]
            mean, var = fit.predict_linearised(lambda m, x: jax.vmap(m)(x), x_test)
            lo, hi = mean - 1.645 * jnp.sqrt(var), mean + 1.645 * jnp.sqrt(var)
            ```
        """
        return _linearised(self, fn, args)


@eqx.filter_jit
def _linearised(fit: LaplaceGaussian, fn, args):
    flat, unravel = jax.flatten_util.ravel_pytree(fit.mean)
    out = fn(fit.model_at(fit.mean), *args)
    out_flat, unravel_out = jax.flatten_util.ravel_pytree(out)

    def f(theta):
        value = fn(fit.model_at(unravel(theta)), *args)
        return jax.flatten_util.ravel_pytree(value)[0]

    jac = _jacobian(f, flat, out_flat.size)  # (n_out, d)
    # J Λ⁻¹ Jᵀ = (L⁻¹ Jᵀ)ᵀ (L⁻¹ Jᵀ): the variances are the squared column norms.
    if fit.diagonal:
        solved = jac.T / fit.cholesky[:, None]
    else:
        solved = jax.scipy.linalg.solve_triangular(fit.cholesky, jac.T, lower=True)
    variance = jnp.sum(solved**2, axis=0)
    return out, unravel_out(variance.astype(out_flat.dtype))


def _jacobian(f, x, n_out: int):
    """`∂f/∂x`, `(n_out, d)`: forward mode when there are fewer inputs."""
    if x.size <= n_out:
        return jax.jacfwd(f)(x)
    return jax.jacrev(f)(x)


# -- the group -----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LaplaceConfig:
    """The static configuration of a Laplace group (hashable)."""

    hessian: str
    outputs: tuple[Callable, Callable] | None
    prior: Callable[[ArrayTree], Any]
    likelihood_scale: float
    num_draws: int
    optimizer: optax.GradientTransformation | None
    optimize_prior: bool

    @property
    def gaussian_prior(self) -> bool:
        return _is_gaussian(self.prior)


def _is_gaussian(prior: Any) -> bool:
    """A zero-mean Gaussian prior with a diagonal precision (a closed form)."""
    return isinstance(prior, (_priors.GaussianPrior, _priors.LayerwiseGaussianPrior))


class LaplaceState(eqx.Module):
    """What a Laplace group carries between solver steps.

    **Fields:**

    - `params`: the current point (the group's position).
    - `opt_state`: the optimiser's state (None without `optimizer=`).
    - `key`: the key of the draws at the end; after `t` steps they use
        `jax.random.fold_in(key, t)`.
    """

    params: ArrayTree
    opt_state: PyTree
    key: PRNGKeyArray


class LaplaceGroup(AbstractGroup):
    """A sub-tree whose posterior is the Laplace approximation at an optimum.

    Made by [`eqbayes.laplace`][]; do not construct it directly. The group has no
    chains: every other group, `eb.unwrap` and `result.model` see it at its current
    point. It fits its Gaussian (a [`eqbayes.LaplaceGaussian`][]) when the solve
    ends, in `result`.
    """

    value: PyTree
    config: LaplaceConfig = eqx.field(static=True)
    name: str = eqx.field(static=True)
    state: LaplaceState | None = None

    marked_with: ClassVar[str] = "eb.laplace"

    @property
    def minibatched(self) -> bool:
        return self.config.optimizer is not None

    def current(self) -> PyTree:
        if self.state is None:
            return self.value
        return self.materialise(self.state.params)

    def init(self, ctx):
        params = self.initial_position()
        opt_state = None
        if self.config.optimizer is not None:
            with jax.numpy_dtype_promotion("standard"):
                opt_state = self.config.optimizer.init(params)
        if self.config.outputs is not None:
            # Trace the split once now, so that an `output_fn` or `output_loss` that
            # does not fit the loss's arguments fails here, not after the solve.
            output_fn, output_loss = self.config.outputs
            model = ctx.model_fn(ctx.chain(0) if jax.tree.leaves(ctx.others) else {})

            def split(position):
                out = output_fn(model(position), *ctx.full_args)
                return output_loss(out, *ctx.full_args)

            jax.eval_shape(split, params)
        assert ctx.key is not None
        state = LaplaceState(params, opt_state, ctx.key)
        return eqx.tree_at(lambda g: g.state, self, state, is_leaf=lambda x: x is None)

    def _neg_log_posterior(self, ctx: Context, *, minibatch: bool):
        """`θ -> s · loss(θ) - log prior(θ)` (the loss averaged over the chains of
        the chain groups beside, when there are any)."""
        scale, prior = self.config.likelihood_scale, self.config.prior

        def loss(theta):
            return _over_chains(
                ctx, lambda o: ctx.loss_fn(o, minibatch=minibatch)(theta)
            )

        return lambda theta: scale * loss(theta) - prior(theta)

    def step(self, ctx):
        assert self.state is not None
        optimizer = self.config.optimizer
        if optimizer is None:
            return self
        params = self.state.params
        grads = jax.grad(self._neg_log_posterior(ctx, minibatch=True))(params)
        with jax.numpy_dtype_promotion("standard"):
            updates, opt_state = optimizer.update(grads, self.state.opt_state, params)
            params = optax.apply_updates(params, updates)
        state = LaplaceState(params, opt_state, self.state.key)
        return eqx.tree_at(lambda g: g.state, self, state)

    def monitor(self):
        return {}

    def fit(self, ctx: Context) -> LaplaceGaussian:
        """The Laplace approximation at the group's current point (on the host,
        after a solve; `ctx` must carry the loss and its arguments)."""
        assert self.state is not None
        try:
            arrays = _curvature(self, ctx)
        except Exception as err:
            err.add_note(_NEEDS_ARGS.format(name=self.name))
            raise
        config = self.config
        hessian, prior_precision = arrays["hessian"], arrays["prior_precision"]
        log_prior = arrays["log_prior"]
        finite = [arrays["theta"], hessian, prior_precision, arrays["loss"]]
        if not all(bool(jnp.all(jnp.isfinite(x))) for x in finite):
            raise ValueError(_NOT_FINITE.format(name=self.name))
        if config.outputs is not None:
            value, split = float(arrays["loss"]), float(arrays["split"])
            tolerance = math.sqrt(float(jnp.finfo(arrays["loss"].dtype).eps))
            if not abs(value - split) <= tolerance * (1 + abs(value)):
                raise ValueError(_SPLIT.format(name=self.name, loss=value, split=split))
        if config.optimize_prior:
            factor = _tune_prior(hessian, prior_precision, arrays["theta"])
            prior_precision = factor * prior_precision
            log_prior = _gaussian_log_density(prior_precision, arrays["theta"])
        precision, cholesky, log_det = _factor(hessian, prior_precision)
        if not bool(jnp.isfinite(log_det)):
            smallest = float(
                jnp.min(precision)
                if precision.ndim == 1
                else jnp.linalg.eigvalsh(precision)[0]
            )
            raise ValueError(
                _NOT_PD.format(
                    name=self.name, hessian=config.hessian, smallest=smallest
                )
            )
        d = arrays["theta"].size
        log_ml = (
            -config.likelihood_scale * arrays["loss"]
            + log_prior
            + 0.5 * d * math.log(2 * math.pi)
            - 0.5 * log_det
        )
        others_0 = ctx.chain(0) if jax.tree.leaves(ctx.others) else ctx.others
        model, slots = _placed(ctx.model_fn(others_0), self.state.params)
        return LaplaceGaussian(
            mean=self.state.params,
            precision=precision,
            cholesky=cholesky,
            hessian=hessian,
            prior_precision=prior_precision,
            log_marginal_likelihood=jnp.asarray(log_ml, arrays["theta"].dtype),
            model=model,
            kind=config.hessian,
            slots=slots,
        )

    def result(self, ctx):
        if ctx.loss is None:  # a chunk record: the Gaussian is fitted at the end
            return GroupResult()
        assert self.state is not None
        fit = self.fit(ctx)
        shape = (ctx.num_chains, self.config.num_draws)
        key = jr.fold_in(self.state.key, jnp.asarray(ctx.step))
        samples = _draws(fit, key, shape)
        return GroupResult(samples, None, fit)

    def check(self, solve: Solve) -> None:
        for other in solve.chain_groups:
            _, keep, _ = other.schedule
            if keep != self.config.num_draws:
                raise ValueError(
                    _DRAWS.format(
                        draws=self.config.num_draws,
                        name=self.name,
                        other=other.name,
                        keep=keep,
                    )
                )
        if self.config.optimizer is None and any(
            isinstance(g, OptaxGroup) for g in solve.groups
        ):
            logger.warning(_HELD.format(name=self.name))

    def describe(self) -> str:
        config = self.config
        d = _size(self.initial_position())
        how = (
            "trained by its optax optimiser"
            if config.optimizer is not None
            else "held at its values"
        )
        tune = (
            ", prior precision tuned by the evidence" if config.optimize_prior else ""
        )
        return (
            f"Group '{self.name}': Laplace approximation ({config.hessian} curvature "
            f"over {d} components{tune}), {how} during the solve; "
            f"{config.num_draws} draws at the end"
        )


def _size(tree: ArrayTree) -> int:
    return sum(x.size for x in jax.tree.leaves(tree))


def _over_chains(ctx: Context, fn: Callable[[ArrayTree], Any]) -> Any:
    """`fn(others_k)` averaged over the chains of the chain groups (plain `fn` of
    the empty `others` when there are none)."""
    if not jax.tree.leaves(ctx.others):
        return fn(ctx.others)
    return jax.tree.map(lambda x: jnp.mean(x, axis=0), ctx.over_chains(fn))


def _curvature(group: LaplaceGroup, ctx: Context) -> dict[str, Array]:
    """The arrays of the fit, in one compiled program: the loss's curvature, the
    prior's precision, the loss and the prior at the point."""
    assert group.state is not None
    config = group.config

    @eqx.filter_jit
    def compute(params, others, full_args):
        ctx_ = dataclasses.replace(
            ctx, others=others, full_args=full_args, batch_args=full_args
        )
        theta, unravel = jax.flatten_util.ravel_pytree(params)
        scale = config.likelihood_scale

        def loss_k(others_k):
            return lambda flat: ctx_.loss_fn(others_k)(unravel(flat))

        loss = _over_chains(ctx_, lambda o: loss_k(o)(theta))
        out = {"theta": theta, "loss": loss}
        if config.hessian == "full":
            hessian = _over_chains(ctx_, lambda o: jax.hessian(loss_k(o))(theta))
            out["hessian"] = scale * 0.5 * (hessian + hessian.T)
        else:
            assert config.outputs is not None
            output_fn, output_loss = config.outputs

            def ggn_k(others_k):
                model_fn = ctx_.model_fn(others_k)

                def f(flat):
                    outputs = output_fn(model_fn(unravel(flat)), *full_args)
                    return jax.flatten_util.ravel_pytree(outputs)[0]

                outputs = output_fn(model_fn(params), *full_args)
                f0, unravel_out = jax.flatten_util.ravel_pytree(outputs)

                def ell(v):
                    return output_loss(unravel_out(v), *full_args)

                jac = _jacobian(f, theta, f0.size)  # (n_out, d)

                def curvature_times(v):  # ∇²ℓ v
                    return jax.jvp(jax.grad(ell), (f0,), (v,))[1]

                hjac = jax.vmap(curvature_times, in_axes=1, out_axes=1)(jac)
                if config.hessian == "diag":
                    curvature = jnp.sum(jac * hjac, axis=0)
                else:
                    curvature = jac.T @ hjac
                    curvature = 0.5 * (curvature + curvature.T)
                return curvature, ell(f0)

            curvature, split = _over_chains(ctx_, ggn_k)
            out["hessian"] = scale * curvature
            out["split"] = split
        prior = config.prior
        out["log_prior"] = jnp.asarray(prior(params), theta.dtype)
        if config.gaussian_prior:
            # −∇ log p(1) = P·1 = diag(P) for a zero-mean Gaussian with diagonal P.
            ones = unravel(jnp.ones_like(theta))
            out["prior_precision"] = -jax.flatten_util.ravel_pytree(
                jax.grad(prior)(ones)
            )[0]
        else:
            dense = -jax.hessian(lambda flat: prior(unravel(flat)))(theta)
            dense = 0.5 * (dense + dense.T)
            out["prior_precision"] = (
                jnp.diagonal(dense) if config.hessian == "diag" else dense
            )
        return out

    return compute(group.state.params, ctx.others, ctx.full_args)


@jax.jit
def _factor(hessian, prior_precision):
    """`(Λ, its Cholesky factor, log det Λ)`; log det is not finite when Λ is not
    positive definite."""
    if hessian.ndim == 1:
        precision = hessian + prior_precision
        log_det = jnp.where(
            jnp.all(precision > 0), jnp.sum(jnp.log(precision)), jnp.nan
        )
        return precision, jnp.sqrt(jnp.maximum(precision, 0)), log_det
    if prior_precision.ndim == 1:
        precision = hessian + jnp.diag(prior_precision)
    else:
        precision = hessian + prior_precision
    cholesky = jnp.linalg.cholesky(precision)
    log_det = 2 * jnp.sum(jnp.log(jnp.diagonal(cholesky)))
    return precision, cholesky, log_det


def _gaussian_log_density(precision, theta):
    """`log N(θ | 0, diag(precision)⁻¹)`."""
    return 0.5 * (
        jnp.sum(jnp.log(precision))
        - jnp.sum(precision * theta**2)
        - theta.size * math.log(2 * math.pi)
    )


@jax.jit
def _tune_prior(hessian, prior_precision, theta):
    r"""The factor $\alpha$ on a diagonal prior precision $P_0$ that maximises the
    Laplace evidence

    $$f(t) = -\tfrac{\alpha}{2} \theta^\top P_0 \theta + \tfrac{d}{2} \log \alpha
        - \tfrac12 \log\det(H + \alpha P_0), \qquad \alpha = e^t,$$

    (MacKay 1992; laplace-torch's `optimize_prior_precision`). With $\mu_i$ the
    eigenvalues of $P_0^{-1/2} H P_0^{-1/2}$ (clipped at 0), $f$ is concave in $t$
    and $f'(t) = \tfrac12\big(d - \alpha\,\theta^\top P_0\theta - \sum_i \alpha /
    (\mu_i + \alpha)\big)$ decreases from $d/2$: bisection on $f'$ finds it.
    """
    if hessian.ndim == 1:
        mu = hessian / prior_precision
    else:
        root = jnp.sqrt(prior_precision)
        mu = jnp.linalg.eigvalsh(hessian / root[:, None] / root[None, :])
    mu = jnp.maximum(mu, 0)
    a = jnp.sum(prior_precision * theta**2)
    d = theta.size

    def slope(t):
        alpha = jnp.exp(t)
        return d - alpha * a - jnp.sum(alpha / (mu + alpha))

    def bisect(_, bounds):
        lo, hi = bounds
        mid = 0.5 * (lo + hi)
        up = slope(mid) > 0
        return jnp.where(up, mid, lo), jnp.where(up, hi, mid)

    bound = jnp.asarray(60.0, theta.dtype)
    lo, hi = jax.lax.fori_loop(0, 200, bisect, (-bound, bound))
    return jnp.exp(0.5 * (lo + hi))


def _placed(model_fn, position) -> tuple[PyTree, tuple[tuple[int, int], ...]]:
    """The plain model at `position`, and which of its leaves hold which of the
    position's leaves (found by building the model around unique markers)."""
    markers = [Marker() for _ in jax.tree.leaves(position)]
    treedef = jax.tree.structure(position)
    marked = jax.tree.leaves(model_fn(jax.tree.unflatten(treedef, markers)))
    index = {id(m): j for j, m in enumerate(markers)}
    slots = tuple(
        (i, index[id(leaf)]) for i, leaf in enumerate(marked) if id(leaf) in index
    )
    assert len(slots) == len(markers)
    return model_fn(position), slots


@eqx.filter_jit
def _draws(fit: LaplaceGaussian, key, shape: tuple[int, int]):
    """`shape = (K, N)` i.i.d. draws, in one compiled program."""
    flat = fit.sample(key, shape[0] * shape[1])
    return jax.tree.map(lambda x: x.reshape(*shape, *x.shape[1:]), flat)


# -- eb.laplace ----------------------------------------------------------------------


def laplace(
    model: PyTree,
    *,
    where: Callable[[PyTree], Any] | None = None,
    mask: PyTree | None = None,
    hessian: str = "full",
    prior: Any = None,
    likelihood_scale: float = 1.0,
    num_draws: int = 1000,
    name: str | None = None,
    outputs: Any = None,
    constraint: Any = None,
    optimizer: Any = None,
    optimize_prior: bool = False,
) -> PyTree:
    r"""Marks a sub-tree of `model` for a Laplace approximation of its posterior.

    The selected sub-tree is replaced by a [`eqbayes.LaplaceGroup`][]. Its
    floating-point array leaves form the position $\theta$, with posterior

    $$\log p(\theta) = -s \cdot \text{loss}(\text{model}(\theta), \dots)
        + \log \text{prior}(\theta)$$

    ($s$ is `likelihood_scale`). During the solve the group sits at a point: held
    at the values it was marked with (no `optimizer`: mark a *trained* network and
    run `steps=0`), or trained by its own `optimizer`, which minimises
    $s \cdot \text{loss} - \log \text{prior}$ (the posterior mode; with
    minibatches, on each step's batch). When the solve ends the group fits

    $$q(\theta) = N\big(\theta^*, (H + P)^{-1}\big),$$

    with $\theta^*$ its point, $H$ the curvature of $s \cdot \text{loss}$ at
    $\theta^*$ (on all the data) and $P$ the prior precision (closed form for
    [`eqbayes.priors.gaussian`][] and [`eqbayes.priors.layerwise_gaussian`][],
    otherwise $-\nabla^2 \log \text{prior}(\theta^*)$). `num_draws` i.i.d. draws
    from $q$ become `result.posterior.samples` at the group's leaves, shape
    `(K, num_draws, *leaf)` (K = 1 unless chain groups sit beside it), so
    `predict`, `summary`, `to_arviz`, plots and checkpoints work as for a chain.
    The fitted Gaussian is `result.variational[name]`, a
    [`eqbayes.LaplaceGaussian`][], whose
    [`predict_linearised`][eqbayes.LaplaceGaussian.predict_linearised] gives the
    linearised (GLM) predictive.

    The group has no chains: the other groups, `eb.unwrap` and `result.model` see
    it at its point. Beside chain groups with K chains, its loss is averaged over
    the chains' positions (in training and in the fit, as for [`eqbayes.vi`][]),
    and `num_draws` must equal their `keep`.

    This is a Laplace *approximation* (a Gaussian at the mode); it is unrelated to
    the Laplace-distribution prior [`eqbayes.priors.laplace`][] and the warm-start
    initializer [`eqbayes.initializers.laplace`][].

    The curvature (`hessian=`):

    - `"full"`: the exact Hessian `jax.hessian` of the loss over the flattened
        group, $d$ Hessian-vector products. It is positive definite only near a
        minimum: fit at a converged point.
    - `"ggn"`: the generalised Gauss–Newton matrix $J^\top \nabla^2_f \ell\, J$,
        with $J$ the Jacobian of the model's outputs $f$ and $\ell$ the loss as a
        function of them (given by `outputs=`); positive semi-definite wherever it
        is evaluated when $\ell$ is convex in $f$ (squared errors, softmax
        cross-entropy, any exponential-family negative log-likelihood in its
        natural parameter). Costs one pass per output or per parameter, whichever
        is fewer.
    - `"diag"`: the diagonal of the GGN (needs `outputs=`): $d$ numbers, for
        groups too large for a dense matrix.

    A dense matrix (`"full"`, `"ggn"`) is limited to 20,000 parameters. `"ggn"`
    and `"diag"` hold the Jacobian of the outputs, (outputs x parameters), in
    memory. There is no Kronecker-factored or low-rank option: for large networks,
    select the last layer (`where=`).

    **Arguments:**

    - `model`: any pytree, usually an `eqx.Module`; may already hold other groups.
    - `where`: selects the sub-tree, like `eqx.tree_at`'s `where`; `None` means the
        whole model. It sees the plain model.
    - `mask`: a pytree of bools over the selected sub-tree (or a prefix of it):
        only `True` floating-point leaves form the group.
    - `hessian`: `"full"`, `"ggn"` or `"diag"`, as above.
    - `prior`: a prior, a callable `position -> log density` over the group's
        position, or a prefix pytree of priors, as in [`eqbayes.bayesian`][];
        `None` means `eb.priors.gaussian(10.0)`. Leaves with a constrained
        support are fitted in unconstrained space: $\theta^*$, $H$ and $P$ are
        those of $z$ (the log prior including $\log|\det J_T(z)|$, so
        $\theta^*$ is the mode in $z$, not in $\theta$), $q$ is a Gaussian over
        $z$, and its draws are mapped to $\theta = T(z)$.
    - `constraint`: constraints for leaves whose prior does not declare one, as
        in [`eqbayes.bayesian`][].
    - `likelihood_scale`: the factor $s$ on the loss: with a mean loss over N
        points, the full-data log-likelihood needs `N / (2 σ²)` (mean squared
        error with noise σ) or `N` (mean cross-entropy).
    - `num_draws`: draws from $q$ kept as `posterior.samples` (equal to the
        chains' `keep` when chain groups sit beside it).
    - `name`: the group's name; defaults to the `where` path or the model's class
        name.
    - `outputs`: for `"ggn"` and `"diag"`, the pair `(output_fn, output_loss)`:
        `output_fn(model, *args)` returns the model's outputs (any pytree of
        arrays) and `output_loss(outputs, *args)` the loss from them, so that
        `loss(model, *args) == output_loss(output_fn(model, *args), *args)` (with
        `data=`, `*args` starts with the data). The equality is checked at the
        optimum.
    - `optimizer`: an optax transformation that trains the group to its mode
        during the solve (`None`: the group is held at its values).
    - `optimize_prior`: tune the prior precision when the solve ends: the factor
        $\alpha$ on a Gaussian prior's precision ($\sigma \to \sigma/\sqrt\alpha$)
        that maximises the Laplace estimate of the marginal likelihood
        (as laplace-torch's `optimize_prior_precision`). Needs a Gaussian prior.
        $\theta^*$ is not moved.

    **Returns:**

    A new model with the sub-tree wrapped.

    !!! Example

        ```python
        # trained: a network already fitted with Adam
        model = eb.laplace(
            trained, where=lambda m: m.layers[-1], hessian="ggn",
            outputs=(lambda m, x, y: jax.vmap(m)(x),
                     lambda f, x, y: jnp.sum((f - y) ** 2) / (2 * sigma**2)),
            prior=eb.priors.gaussian(1.0), optimize_prior=True,
        )
        result = eb.Solver(loss).run(model, steps=0, key=jax.random.key(0),
                                     args=(x, y))
        fit = result.variational["layers[-1]"]
        mean, var = fit.predict_linearised(lambda m, x: jax.vmap(m)(x), x_test)
        ```
    """
    if optimizer is not None and not isinstance(
        optimizer, optax.GradientTransformation
    ):
        check_name = name or "the selected sub-tree"
        raise TypeError(
            _OPTIMIZER.format(name=check_name, type=type(optimizer).__name__)
        )

    def make(subtree: PyTree, group_name: str, the_prior: Any) -> LaplaceGroup:
        if hessian not in _KINDS:
            raise ValueError(_HESSIAN.format(value=hessian, name=group_name))
        split = None
        if outputs is not None:
            if hessian == "full":
                raise ValueError(_OUTPUTS_UNUSED.format(name=group_name))
            if not (
                isinstance(outputs, (tuple, list))
                and len(outputs) == 2
                and all(callable(f) for f in outputs)
            ):
                raise TypeError(
                    _OUTPUTS_TYPE.format(name=group_name, type=type(outputs).__name__)
                )
            split = (outputs[0], outputs[1])
        elif hessian != "full":
            raise ValueError(_NEEDS_OUTPUTS.format(hessian=hessian, name=group_name))
        d = _size(eqx.filter(subtree, eqx.is_inexact_array))
        if hessian != "diag" and d > MAX_DENSE:
            raise ValueError(
                _TOO_LARGE.format(
                    hessian=hessian, name=group_name, d=d, limit=MAX_DENSE
                )
            )
        if hessian == "diag" and d > MAX_DENSE and not _is_gaussian(the_prior):
            raise ValueError(
                _DIAG_PRIOR.format(
                    prior=the_prior, name=group_name, d=d, limit=MAX_DENSE
                )
            )
        if optimize_prior and not _is_gaussian(the_prior):
            raise ValueError(_OPTIMIZE_PRIOR.format(name=group_name, prior=the_prior))
        config = LaplaceConfig(
            hessian=hessian,
            outputs=split,
            prior=the_prior,
            likelihood_scale=check_likelihood_scale(
                likelihood_scale, group_name, fn="laplace"
            ),
            num_draws=check_int(
                num_draws,
                "num_draws",
                group_name,
                1,
                "Keep at least one draw, e.g. `num_draws=1000`.",
                fn="laplace",
            ),
            optimizer=optimizer,
            optimize_prior=bool(optimize_prior),
        )
        return LaplaceGroup(value=subtree, config=config, name=group_name)

    return mark(
        model,
        make,
        where=where,
        mask=mask,
        name=name,
        call="eb.laplace",
        prior=prior,
        constraint=constraint,
    )
