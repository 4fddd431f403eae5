r"""Log-density-aware initializers: warm starts for MCMC groups.

An initializer runs once, inside `Solver.init`'s compiled program, on the log
density of one group (every other group at its starting value). It returns the K
chains' starting positions and, optionally, kernel settings such as an inverse mass
matrix. Pass one as `eb.bayesian(..., init=...)`:

- [`eqbayes.initializers.pathfinder`][]: blackjax's Pathfinder (L-BFGS, then the
  best normal approximation along its path);
- [`eqbayes.initializers.laplace`][]: the MAP by optax, then the Gaussian with the
  inverse Hessian of the negative log density as its covariance;
- [`eqbayes.initializers.svgd`][]: Stein variational gradient descent with K
  particles, one per chain.

How the initializer combines with `adapt=` (for HMC-family kernels):

- no initializer, `adapt=True`: window adaptation from the model's values (the
  default);
- no initializer, `adapt=False`: the model's values, the user's `step_size` and
  inverse mass matrix;
- initializer, `adapt=True`: the initializer, then window adaptation from its
  positions: the window tunes the step size and keeps the initializer's inverse
  mass matrix (if it set one; without one, the window estimates it as usual). An
  initializer with `adapt_mass_matrix=True` (a class attribute or field) lets the
  slow windows re-estimate it from there instead, as Stan does with a given metric;
- initializer, `adapt=False`: the initializer only: its positions and inverse mass
  matrix, the user's `step_size`.

`init_jitter` is ignored when an initializer is set (the initializer spreads the
chains itself); `Solver.init` says so in its log line. Settings that the kernel does
not take (an inverse mass matrix for MALA) are dropped, with a log line too.

Write your own by subclassing [`eqbayes.initializers.AbstractInitializer`][].
"""

import abc
import contextlib
import math
import numbers
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, final

import blackjax
import equinox as eqx
import jax
import jax.flatten_util
import jax.numpy as jnp
import jax.random as jr
import optax

from ._checks import count
from ._custom_types import Array, ArrayTree, Float, PRNGKeyArray


__all__ = [
    "AbstractInitializer",
    "LaplaceInitializer",
    "PathfinderInitializer",
    "SVGDInitializer",
    "laplace",
    "pathfinder",
    "svgd",
]


class AbstractInitializer(eqx.Module):
    r"""The protocol of a log-density-aware initializer.

    Subclass it and implement `__call__`. An initializer is static configuration
    (it is hashed into the group's settings, so that equal settings reuse the
    compiled program): give it only hashable fields — Python numbers, strings,
    functions — and mark them `eqx.field(static=True)`; never arrays.

    `__call__` runs once, while `Solver.init` traces its program, so it must be
    traceable JAX code (no Python control flow on array values).

    **Attributes:**

    - `requires_logdensity`: always `True`: the initializer is called with the
        group's log density.

    !!! Example

        A MAP warm start by plain gradient ascent, with no mass matrix:

        ```python
        class GradientAscent(eb.initializers.AbstractInitializer):
            learning_rate: float = eqx.field(static=True, default=1e-3)
            num_steps: int = eqx.field(static=True, default=500)

            def __call__(self, key, logdensity_fn, position, num_chains):
                grad = jax.grad(logdensity_fn)

                def ascend(_, p):
                    g = grad(p)
                    return jax.tree.map(lambda x, d: x + self.learning_rate * d, p, g)

                best = jax.lax.fori_loop(0, self.num_steps, ascend, position)
                if num_chains > 1:  # one (here: the same) position per chain
                    best = jax.tree.map(
                        lambda x: jnp.broadcast_to(x, (num_chains, *x.shape)), best
                    )
                return best, {}

        model = eb.bayesian(model, blackjax.nuts, init=GradientAscent())
        ```
    """

    requires_logdensity: ClassVar[bool] = True

    @abc.abstractmethod
    def __call__(
        self,
        key: PRNGKeyArray,
        logdensity_fn: Callable[[ArrayTree], Float[Array, ""]],
        position: ArrayTree,
        num_chains: int,
    ) -> tuple[ArrayTree, Mapping[str, Any]]:
        """**Arguments:**

        - `key`: a JAX PRNG key for the initializer's own randomness.
        - `logdensity_fn`: the group's log density, `position -> scalar`: minus
            `likelihood_scale` times the loss, plus the log prior, with every other
            part of the model at its starting value.
        - `position`: the group's starting position (its floating-point leaves, as
            marked), a pytree of arrays without a chain axis.
        - `num_chains`: K, the group's number of chains.

        **Returns:**

        A pair `(position, kernel_kwargs_update)`:

        - `position`: with `num_chains == 1`, a pytree like `position`; with
            `num_chains > 1`, the same pytree with a leading axis of size K on every
            leaf (one starting position per chain, preferably distinct).
        - `kernel_kwargs_update`: a dict of kernel keyword arguments to use from
            now on, e.g. `{"inverse_mass_matrix": imm}` with `imm` of shape `(d,)`
            (diagonal) or `(d, d)` (dense) for a position of `d` components, or
            `{}`. Keys the kernel does not take are dropped.
        """


def _permissive():
    """blackjax's internals mix ranks and dtypes: trace them under the standard
    promotion rules, whatever the user's configuration."""
    stack = contextlib.ExitStack()
    stack.enter_context(jax.numpy_dtype_promotion("standard"))
    stack.enter_context(jax.numpy_rank_promotion("allow"))
    return stack


def _like(new: ArrayTree, position: ArrayTree) -> ArrayTree:
    """`new` in the dtypes of `position`'s leaves, strongly typed."""
    return jax.tree.map(lambda n, p: jnp.asarray(n, p.dtype), new, position)


def _flat_draws(draws: ArrayTree) -> Array:
    """A batch of positions `(M, ...)` as a matrix `(M, d)`."""
    return jax.vmap(lambda p: jax.flatten_util.ravel_pytree(p)[0])(draws)


def _positive(values: Array) -> Array:
    """Positive, finite `values` as they are; the others replaced by the median of
    the valid ones (1 when there are none)."""
    valid = jnp.isfinite(values) & (values > 0)
    fill = jnp.nanmedian(jnp.where(valid, values, jnp.nan))
    fill = jnp.where(jnp.isfinite(fill), fill, jnp.ones((), values.dtype))
    return jnp.where(valid, values, fill)


_POSITIVE_INT = (
    "`eb.initializers.{fn}({arg}={value!r})`: `{arg}` must be an integer >= "
    "{minimum}; got {value!r} of type `{type}`."
)
_POSITIVE_FLOAT = (
    "`eb.initializers.{fn}({arg}={value!r})`: `{arg}` must be a finite number > 0; "
    "got {value!r} of type `{type}`."
)
_OPTIMIZER = (
    "`eb.initializers.{fn}(optimizer={value!r})`: `optimizer` must be an optax "
    "`GradientTransformation` (e.g. `optax.adam(1e-2)`) or None; got an object of "
    "type `{type}`."
)


def _int(value, fn, arg, minimum=1) -> int:
    return count(
        value,
        _POSITIVE_INT.format(
            fn=fn, arg=arg, value=value, minimum=minimum, type=type(value).__name__
        ),
        minimum,
    )


def _float(value, fn, arg) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not (0 < float(value) < math.inf)
    ):
        raise ValueError(
            _POSITIVE_FLOAT.format(
                fn=fn, arg=arg, value=value, type=type(value).__name__
            )
        )
    return float(value)


def _optimizer(value, fn):
    if value is not None and not isinstance(value, optax.GradientTransformation):
        raise TypeError(
            _OPTIMIZER.format(fn=fn, value=value, type=type(value).__name__)
        )
    return value


# -- pathfinder --------------------------------------------------------------------


@final
class PathfinderInitializer(AbstractInitializer):
    """Pathfinder (Zhang et al., 2022) as a warm start. Build it with
    [`eqbayes.initializers.pathfinder`][]."""

    maxiter: int = eqx.field(static=True)
    num_samples: int = eqx.field(static=True)
    num_draws: int = eqx.field(static=True)
    maxcor: int = eqx.field(static=True)
    maxls: int = eqx.field(static=True)
    gtol: float = eqx.field(static=True)
    ftol: float = eqx.field(static=True)
    mass_matrix: bool = eqx.field(static=True)
    adapt_mass_matrix: bool = eqx.field(static=True, default=False)

    def __call__(
        self,
        key: PRNGKeyArray,
        logdensity_fn: Callable[[ArrayTree], Float[Array, ""]],
        position: ArrayTree,
        num_chains: int,
    ) -> tuple[ArrayTree, Mapping[str, Any]]:
        fit_key, chains_key, draws_key = jr.split(key, 3)
        with _permissive():
            state, _ = blackjax.pathfinder.approximate(
                fit_key,
                logdensity_fn,
                position,
                self.num_samples,
                maxiter=self.maxiter,
                maxcor=self.maxcor,
                maxls=self.maxls,
                gtol=self.gtol,
                ftol=self.ftol,
            )
            if num_chains == 1:
                # The L-BFGS iterate whose normal approximation has the best ELBO.
                new = state.position
            else:
                new, _ = blackjax.pathfinder.sample(chains_key, state, num_chains)
            update = {}
            if self.mass_matrix:
                draws, _ = blackjax.pathfinder.sample(draws_key, state, self.num_draws)
                variance = jnp.var(_flat_draws(draws), axis=0)
                update["inverse_mass_matrix"] = _positive(variance)
        flat, _ = jax.flatten_util.ravel_pytree(position)
        update = {k: v.astype(flat.dtype) for k, v in update.items()}
        return _like(new, position), update


def pathfinder(
    maxiter: int = 30,
    num_samples: int = 200,
    num_draws: int = 200,
    *,
    maxcor: int = 10,
    maxls: int = 1000,
    gtol: float = 1e-8,
    ftol: float = 1e-5,
    mass_matrix: bool = True,
    adapt_mass_matrix: bool = False,
) -> PathfinderInitializer:
    r"""A Pathfinder warm start (`blackjax.pathfinder.approximate`).

    Pathfinder (Zhang et al., 2022) runs L-BFGS on the negative log density from
    the group's starting position and, at every iterate, forms a normal
    approximation $q$ from L-BFGS's inverse-Hessian estimate; it keeps the one with
    the best ELBO. From that $q$:

    - one chain starts at the iterate $q$ is built around (a mode-like point);
      K > 1 chains start at K independent draws of $q$ (over-dispersed);
    - the inverse mass matrix is diagonal: the per-component variance of
      `num_draws` draws of $q$ (with `mass_matrix=True`).

    Cheap (tens to hundreds of gradient evaluations) and good at finding the bulk
    of a unimodal posterior from a poor start; its variances are rough where
    L-BFGS's curvature estimate is.

    **Arguments:**

    - `maxiter`: L-BFGS iterations.
    - `num_samples`: draws of each $q$ to estimate its ELBO.
    - `num_draws`: draws of the chosen $q$ for the variance estimate.
    - `maxcor`: L-BFGS history size.
    - `maxls`: maximum line-search steps per L-BFGS iteration.
    - `gtol`, `ftol`: L-BFGS stops when the gradient norm is below `gtol` or the
        relative decrease of the objective below `ftol`.
    - `mass_matrix`: return the diagonal inverse mass matrix. With `False` only
        the positions are set (and window adaptation, if on, starts from the
        identity or your `inverse_mass_matrix`).
    - `adapt_mass_matrix`: with `adapt=True`, let window adaptation re-estimate
        the inverse mass matrix in its slow windows, starting from this one (Stan's
        convention with a given metric). By default the window tunes the step size
        only and this inverse mass matrix is kept.

    **Returns:**

    A [`eqbayes.initializers.PathfinderInitializer`][] for
    `eb.bayesian(..., init=...)`.

    !!! Example

        ```python
        model = eb.bayesian(model, blackjax.nuts, num_chains=4, warmup=100,
                            init=eb.initializers.pathfinder(maxiter=50))
        ```
    """
    fn = "pathfinder"
    return PathfinderInitializer(
        maxiter=_int(maxiter, fn, "maxiter"),
        num_samples=_int(num_samples, fn, "num_samples"),
        num_draws=_int(num_draws, fn, "num_draws", minimum=2),
        maxcor=_int(maxcor, fn, "maxcor"),
        maxls=_int(maxls, fn, "maxls"),
        gtol=_float(gtol, fn, "gtol"),
        ftol=_float(ftol, fn, "ftol"),
        mass_matrix=bool(mass_matrix),
        adapt_mass_matrix=bool(adapt_mass_matrix),
    )


# -- laplace -----------------------------------------------------------------------


def _minimise(objective, x0, optimizer, num_steps):
    """`num_steps` optax steps from `x0`; the best finite iterate seen."""
    optimizer = optax.with_extra_args_support(optimizer)
    value_and_grad = jax.value_and_grad(objective)
    inf = jnp.asarray(jnp.inf, x0.dtype)

    def body(_, carry):
        x, state, best_x, best = carry
        value, grad = value_and_grad(x)
        better = jnp.isfinite(value) & (value < best)
        best_x = jnp.where(better, x, best_x)
        best = jnp.where(better, value, best)
        updates, state = optimizer.update(
            grad, state, x, value=value, grad=grad, value_fn=objective
        )
        return optax.apply_updates(x, updates), state, best_x, best

    x, _, best_x, best = jax.lax.fori_loop(
        0, num_steps, body, (x0, optimizer.init(x0), x0, inf)
    )
    value = objective(x)
    return jnp.where(jnp.isfinite(value) & (value < best), x, best_x)


def _hessian_diagonal(objective, x, dense_limit):
    if x.size <= dense_limit:
        return jnp.diag(jax.hessian(objective)(x))
    grad = jax.grad(objective)

    def entry(i):
        e = jnp.zeros_like(x).at[i].set(1)
        return jax.jvp(grad, (x,), (e,))[1][i]

    return jax.lax.map(entry, jnp.arange(x.size))


def _hessian(objective, x, dense_limit):
    if x.size <= dense_limit:
        return jax.hessian(objective)(x)
    grad = jax.grad(objective)

    def row(i):
        e = jnp.zeros_like(x).at[i].set(1)
        return jax.jvp(grad, (x,), (e,))[1]

    return jax.lax.map(row, jnp.arange(x.size))


@final
class LaplaceInitializer(AbstractInitializer):
    """The Laplace approximation as a warm start. Build it with
    [`eqbayes.initializers.laplace`][]."""

    hessian: str = eqx.field(static=True)
    num_steps: int = eqx.field(static=True)
    optimizer: Any = eqx.field(static=True)
    dense_limit: int = eqx.field(static=True)
    mass_matrix: bool = eqx.field(static=True)
    adapt_mass_matrix: bool = eqx.field(static=True, default=False)

    def __call__(
        self,
        key: PRNGKeyArray,
        logdensity_fn: Callable[[ArrayTree], Float[Array, ""]],
        position: ArrayTree,
        num_chains: int,
    ) -> tuple[ArrayTree, Mapping[str, Any]]:
        x0, unravel = jax.flatten_util.ravel_pytree(position)

        def objective(x):
            return -logdensity_fn(unravel(x))

        optimizer = optax.lbfgs() if self.optimizer is None else self.optimizer
        with _permissive():  # optax's L-BFGS mixes integer dtypes under x64
            mode = _minimise(objective, x0, optimizer, self.num_steps)
        noise = jr.normal(key, (num_chains, x0.size), x0.dtype)
        if self.hessian == "diagonal":
            precision = _positive(_hessian_diagonal(objective, mode, self.dense_limit))
            covariance = 1 / precision
            draws = mode[None] + noise * jnp.sqrt(covariance)[None]
        else:
            h = _hessian(objective, mode, self.dense_limit)
            eigenvalues, vectors = jnp.linalg.eigh((h + h.T) / 2)
            scales = vectors * jax.lax.rsqrt(_positive(eigenvalues))[None]  # V Λ^(-1/2)
            covariance = scales @ scales.T
            draws = mode[None] + noise @ scales.T
        new = unravel(mode) if num_chains == 1 else jax.vmap(unravel)(draws)
        update = {"inverse_mass_matrix": covariance} if self.mass_matrix else {}
        return _like(new, position), update


def laplace(
    hessian: str = "diagonal",
    *,
    num_steps: int = 100,
    optimizer: Any = None,
    dense_limit: int = 2048,
    mass_matrix: bool = True,
    adapt_mass_matrix: bool = False,
) -> LaplaceInitializer:
    r"""A Laplace-approximation warm start.

    Finds the MAP $\hat\theta$ by minimising the negative log density with optax
    (L-BFGS with a zoom line search by default), then computes the Hessian $H$ of
    the negative log density at $\hat\theta$ (MacKay, 1992; Daxberger et al., 2021).
    The Gaussian $N(\hat\theta, H^{-1})$ gives:

    - one chain starts at the MAP; K > 1 chains at K draws of the Gaussian;
    - the inverse mass matrix is its covariance: `1 / diag(H)` with
        `hessian="diagonal"` (a diagonal mass matrix), the dense $H^{-1}$ with
        `hessian="full"` (a dense mass matrix).

    Directions of non-positive curvature (the optimiser has not reached a maximum
    there) get the median curvature of the others.

    Exact on Gaussian posteriors; a good choice when the posterior is close to
    Gaussian around one mode and the dimension is moderate (`"full"` costs
    $d$ Hessian-vector products and $O(d^2)$ memory).

    **Arguments:**

    - `hessian`: `"diagonal"` or `"full"`.
    - `num_steps`: optimiser steps to the MAP (the best finite iterate is kept).
    - `optimizer`: an optax `GradientTransformation`; `None` means `optax.lbfgs()`.
        Line-search optimisers get the value and the objective through optax's
        extra arguments.
    - `dense_limit`: up to this many components the Hessian is built with
        `jax.hessian` (all columns at once); above it, one Hessian-vector product
        at a time (`jax.lax.map`), which needs memory for one gradient only — and
        for the diagonal, only the $d$ diagonal entries are kept.
    - `mass_matrix`: return the inverse mass matrix. With `False` only the
        positions are set.
    - `adapt_mass_matrix`: with `adapt=True`, let window adaptation re-estimate
        the inverse mass matrix in its slow windows, starting from this one. By
        default the window tunes the step size only and this one is kept.

    **Returns:**

    A [`eqbayes.initializers.LaplaceInitializer`][] for `eb.bayesian(..., init=...)`.

    !!! Example

        ```python
        model = eb.bayesian(model, blackjax.nuts, step_size=0.5, adapt=False,
                            warmup=0, init=eb.initializers.laplace("full"))
        ```
    """
    fn = "laplace"
    if hessian not in ("diagonal", "full"):
        raise ValueError(
            f"`eb.initializers.laplace(hessian={hessian!r})`: `hessian` must be "
            "`'diagonal'` or `'full'`."
        )
    return LaplaceInitializer(
        hessian=hessian,
        num_steps=_int(num_steps, fn, "num_steps"),
        optimizer=_optimizer(optimizer, fn),
        dense_limit=_int(dense_limit, fn, "dense_limit", minimum=0),
        mass_matrix=bool(mass_matrix),
        adapt_mass_matrix=bool(adapt_mass_matrix),
    )


# -- svgd --------------------------------------------------------------------------

_FEW_PARTICLES = (
    "`eb.initializers.svgd(num_particles={n})` for {k} chains: every chain starts "
    "at a particle, so `num_particles` must be at least `num_chains`. Pass "
    "`num_particles={k}` or more, or None (one particle per chain)."
)


@final
class SVGDInitializer(AbstractInitializer):
    """Stein variational gradient descent as a warm start. Build it with
    [`eqbayes.initializers.svgd`][]."""

    num_steps: int = eqx.field(static=True)
    learning_rate: float = eqx.field(static=True)
    num_particles: int | None = eqx.field(static=True)
    init_scale: float = eqx.field(static=True)
    optimizer: Any = eqx.field(static=True)

    def __call__(
        self,
        key: PRNGKeyArray,
        logdensity_fn: Callable[[ArrayTree], Float[Array, ""]],
        position: ArrayTree,
        num_chains: int,
    ) -> tuple[ArrayTree, Mapping[str, Any]]:
        if self.num_particles is None:
            n = max(num_chains, 2)  # SVGD's kernel bandwidth needs two particles
        elif self.num_particles < num_chains:
            raise ValueError(_FEW_PARTICLES.format(n=self.num_particles, k=num_chains))
        else:
            n = self.num_particles
        leaves, treedef = jax.tree.flatten(position)
        keys = jr.split(key, len(leaves))
        particles = jax.tree.unflatten(
            treedef,
            [
                x + self.init_scale * jr.normal(k, (n, *x.shape), x.dtype)
                for x, k in zip(leaves, keys)
            ],
        )
        optimizer = self.optimizer
        if optimizer is None:
            schedule = optax.cosine_decay_schedule(
                self.learning_rate, self.num_steps, alpha=1e-3
            )
            optimizer = optax.rmsprop(schedule)
        dtype = leaves[0].dtype
        grad = jax.grad(logdensity_fn)
        with _permissive():  # blackjax.svgd's step, as its top-level API builds it
            step = blackjax.vi.svgd.build_kernel(optimizer)
            state = blackjax.vi.svgd.init(
                particles, {"length_scale": jnp.ones((), dtype)}, optimizer
            )

            def one_step(_, state):
                state = step(state, grad, blackjax.vi.svgd.rbf_kernel)
                return blackjax.vi.svgd.update_median_heuristic(state)

            state = jax.lax.fori_loop(0, self.num_steps, one_step, state)
        chosen = jax.tree.map(
            lambda x: x[0] if num_chains == 1 else x[:num_chains], state.particles
        )
        return _like(chosen, position), {}


def svgd(
    num_steps: int = 1000,
    learning_rate: float = 0.5,
    *,
    num_particles: int | None = None,
    init_scale: float = 0.1,
    optimizer: Any = None,
) -> SVGDInitializer:
    r"""A Stein variational gradient descent warm start (`blackjax.svgd`).

    SVGD (Liu & Wang, 2016) moves a set of particles along the gradient of the log
    density, with an RBF-kernel repulsion between them (bandwidth by the median
    heuristic), so that together they approximate the posterior. It starts them at
    the group's position plus `init_scale` · N(0, I) noise; chain k starts at
    particle k.

    No inverse mass matrix is returned: with `adapt=True` window adaptation tunes
    the step size and the mass matrix from the particles on; with `adapt=False`
    your settings are used.

    Gives K distinct, spread-out starting points for K chains; costs `num_steps`
    gradient evaluations per particle (plus the pairwise kernel, $O(K^2 d)$ per
    step).

    **Arguments:**

    - `num_steps`: SVGD steps.
    - `learning_rate`: the initial learning rate of the default optimiser:
        RMSprop with a cosine decay to a thousandth of it over `num_steps`.
        RMSprop's per-coordinate normalisation moves the particles about
        `learning_rate` per step at first, whatever the scale of the gradient, so
        they cross large distances early; the decay lets them settle.
    - `num_particles`: particles; `None` means one per chain (two for one chain,
        which starts at the first). At least `num_chains`.
    - `init_scale`: the spread of the initial particles around the position
        (SVGD needs them distinct).
    - `optimizer`: an optax `GradientTransformation` replacing the default (then
        `learning_rate` is not used).

    **Returns:**

    A [`eqbayes.initializers.SVGDInitializer`][] for `eb.bayesian(..., init=...)`.

    !!! Example

        ```python
        model = eb.bayesian(model, blackjax.nuts, num_chains=4, warmup=200,
                            init=eb.initializers.svgd(num_steps=500))
        ```
    """
    fn = "svgd"
    return SVGDInitializer(
        num_steps=_int(num_steps, fn, "num_steps"),
        learning_rate=_float(learning_rate, fn, "learning_rate"),
        num_particles=(
            None
            if num_particles is None
            else _int(num_particles, fn, "num_particles", minimum=2)
        ),
        init_scale=_float(init_scale, fn, "init_scale"),
        optimizer=_optimizer(optimizer, fn),
    )


# -- running one, for a group -----------------------------------------------------

_NOT_INITIALIZER = (
    "`eb.bayesian(..., init={init!r})` for group '{name}': `init` must be a "
    "log-density-aware initializer such as `eb.initializers.pathfinder()`, "
    "`eb.initializers.laplace()` or `eb.initializers.svgd()`, or a subclass of "
    "`eb.initializers.AbstractInitializer`; got an object of type `{type}`. (To "
    "start from other values, set them in the model before marking it.)"
)
_UNHASHABLE = (
    "`eb.bayesian(..., init=...)` for group '{name}': the initializer "
    "`{type}` is not hashable, so it cannot be part of the group's static settings. "
    "Give it only hashable fields (Python numbers, strings, functions) marked "
    "`eqx.field(static=True)` — no arrays."
)
_BAD_RETURN = (
    "The initializer `{init}` of group '{name}' must return a pair "
    "`(position, kernel_kwargs_update)`; it returned an object of type `{type}`."
)
_BAD_UPDATE = (
    "The initializer `{init}` of group '{name}' returned a `kernel_kwargs_update` "
    "of type `{type}`; it must be a dict of kernel keyword arguments, e.g. "
    "`{{'inverse_mass_matrix': imm}}`, or `{{}}`."
)
_BAD_STRUCTURE = (
    "The initializer `{init}` of group '{name}' returned a position whose structure "
    "differs from the group's: expected {expected}, got {got}. Return a pytree like "
    "the `position` argument{chains}."
)
_BAD_SHAPE = (
    "The initializer `{init}` of group '{name}' returned a position whose leaf "
    "{path} has shape {got} and dtype {dtype}; with num_chains={k} it must be a "
    "floating-point array of shape {expected}{why}."
)


def check_initializer(init: Any, name: str) -> AbstractInitializer:
    """`init` if it is a hashable initializer, else a clear error."""
    if not isinstance(init, AbstractInitializer):
        raise TypeError(
            _NOT_INITIALIZER.format(init=init, name=name, type=type(init).__name__)
        )
    try:
        hash(init)
    except TypeError:
        raise TypeError(
            _UNHASHABLE.format(name=name, type=type(init).__name__)
        ) from None
    return init


def run_initializer(
    init: AbstractInitializer,
    key: PRNGKeyArray,
    logdensity_fn: Callable[[ArrayTree], Float[Array, ""]],
    position: ArrayTree,
    num_chains: int,
    name: str,
) -> tuple[ArrayTree, dict[str, Array]]:
    """Calls `init` and checks what it returns (at trace time).

    **Returns:**

    The K starting positions (chain axis first, in the dtypes of `position`) and
    the kernel keyword update as a dict of arrays.
    """
    label = type(init).__name__
    out = init(key, logdensity_fn, position, num_chains)
    if not (isinstance(out, tuple) and len(out) == 2):
        raise TypeError(
            _BAD_RETURN.format(init=label, name=name, type=type(out).__name__)
        )
    new, update = out
    if not isinstance(update, Mapping):
        raise TypeError(
            _BAD_UPDATE.format(init=label, name=name, type=type(update).__name__)
        )
    expected_def = jax.tree.structure(position)
    got_def = jax.tree.structure(new)
    chains = (
        "" if num_chains == 1 else f", each leaf with a leading axis of {num_chains}"
    )
    if got_def != expected_def:
        raise ValueError(
            _BAD_STRUCTURE.format(
                init=label,
                name=name,
                expected=expected_def,
                got=got_def,
                chains=chains,
            )
        )
    paths = jax.tree_util.tree_flatten_with_path(position)[0]
    out_leaves = []
    for (path, old), leaf in zip(paths, jax.tree.leaves(new)):
        want = old.shape if num_chains == 1 else (num_chains, *old.shape)
        shape = getattr(leaf, "shape", None)
        dtype = getattr(leaf, "dtype", None)
        floating = dtype is not None and jnp.issubdtype(dtype, jnp.floating)
        if shape != want or not floating:
            why = "" if num_chains == 1 else " (chain axis first)"
            raise ValueError(
                _BAD_SHAPE.format(
                    init=label,
                    name=name,
                    path=jax.tree_util.keystr(path) or "(the position itself)",
                    got=shape,
                    dtype=dtype,
                    k=num_chains,
                    expected=want,
                    why=why,
                )
            )
        leaf = jnp.asarray(leaf, old.dtype)
        out_leaves.append(leaf[None] if num_chains == 1 else leaf)
    positions = jax.tree.unflatten(expected_def, out_leaves)
    dtype = jax.flatten_util.ravel_pytree(position)[0].dtype

    def as_array(value):
        value = jnp.asarray(value)
        floating = jnp.issubdtype(value.dtype, jnp.floating)
        return value.astype(dtype) if floating else value

    return positions, {str(k): as_array(v) for k, v in update.items()}
