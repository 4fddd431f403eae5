r"""Log-prior densities over parameter pytrees.

A prior is any callable `pytree -> scalar` returning a log density: the factories here
build common ones, but a plain function works just as well. Each factory returns a
small, hashable Equinox Module whose hyper-parameters are Python floats and bools, so
two equal constructions compare (and hash) equal and can be used as static settings.

The built-in priors are sums of independent, properly normalised per-component log
densities (constants included) over the floating-point array leaves of their input.
Non-floating leaves (integer or boolean arrays, Python scalars, `None`) are skipped.
The result is in the dtype of the leaves (float32 leaves give a float32 log density;
leaves of mixed precision give the widest); an input without floating leaves gives
`0.0` in the default floating dtype.

With eqbayes, the prior of a group sees only the *position* of that group: the
sampled floating leaves of the selected sub-tree of the model, not the whole model.
`prior=None` means `gaussian(10.0)`.

!!! Example

    ```python
    import equinox as eqx
    import jax.random as jr
    import eqbayes.priors as ebp

    mlp = eqx.nn.MLP(2, 1, width_size=8, depth=2, key=jr.key(0))
    params, _ = eqx.partition(mlp, eqx.is_inexact_array)
    ebp.gaussian(1.0)(params)  # a scalar log density
    ebp.layerwise_gaussian()(params)  # weights scaled by 1 / sqrt(fan_in)

    def my_prior(params):  # any function works as a prior
        return ebp.laplace(0.1)(params.layers[0]) + ebp.gaussian(1.0)(params)
    ```
"""

import abc
import math
import numbers
from collections.abc import Callable
from typing import Any, final

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jax.scipy.special import betaln, gammaln

from . import constraints as _constraints
from ._custom_types import Array, ArrayLike, ArrayTree, Float, PRNGKeyArray
from .constraints import AbstractConstraint, Constant, numpy_of


__all__ = [
    "AbstractDistribution",
    "AbstractPrior",
    "Beta",
    "Dirichlet",
    "Exponential",
    "Gamma",
    "GaussianPrior",
    "HalfCauchy",
    "HalfNormal",
    "LogNormal",
    "Normal",
    "Uniform",
    "LaplacePrior",
    "LayerwiseGaussianPrior",
    "StudentTPrior",
    "beta",
    "dirichlet",
    "exponential",
    "gamma",
    "gaussian",
    "half_cauchy",
    "half_normal",
    "laplace",
    "layerwise_gaussian",
    "log_normal",
    "normal",
    "student_t",
    "uniform",
]

_LOG_2PI = math.log(2 * math.pi)

_POSITIVE_MSG = (
    "`eqbayes.priors.{function}({argument}={value!r})`: `{argument}` must be a "
    "finite number > 0, got {value!r} ({type}). Pass a positive {what}, e.g. "
    "`{argument}={example}`."
)
_DF_MSG = (
    "`eqbayes.priors.student_t(df={value!r})`: `df` must be > 2 for a finite "
    "variance, got {value!r} ({type}). Pass e.g. `df=4.0` (heavier tails as `df` "
    "approaches 2), or use `eqbayes.priors.gaussian` for the limit `df -> inf`."
)


def _check_positive(
    value: float | int, function: str, argument: str, what: str, example: float
) -> float:
    if not (isinstance(value, numbers.Real) and 0 < value < math.inf):
        raise ValueError(
            _POSITIVE_MSG.format(
                function=function,
                argument=argument,
                value=value,
                type=type(value).__name__,
                what=what,
                example=example,
            )
        )
    return float(value)


def _fan_in(leaf: Array) -> int:
    """Inputs per output unit for a weight of shape `(out, in, *kernel)`."""
    return math.prod(leaf.shape[1:])


def _sum_leaves(params: ArrayTree, leaf_logpdf: Callable[[Array], Array]) -> Array:
    """Sums `leaf_logpdf` over the non-empty floating array leaves of `params`."""
    leaves = [
        jnp.asarray(leaf)
        for leaf in jax.tree.leaves(params)
        if eqx.is_inexact_array(leaf)
    ]
    if not leaves:
        return jnp.zeros((), jax.dtypes.canonicalize_dtype(float))
    # Mixed precisions sum in the widest one (an explicit, not an implicit, promotion).
    with jax.numpy_dtype_promotion("standard"):
        dtype = jnp.result_type(*(leaf.dtype for leaf in leaves))
    total = jnp.zeros((), dtype)
    for leaf in leaves:
        if leaf.size > 0:
            total = total + leaf_logpdf(leaf).astype(dtype)
    return total


def _gaussian_logpdf(leaf: Array, sigma: float) -> Array:
    """Sum of `log N(leaf_i | 0, sigma^2)`, in the dtype of `leaf`."""
    const = leaf.size * (math.log(sigma) + 0.5 * _LOG_2PI)
    return -0.5 * jnp.sum(jnp.square(leaf)) / sigma**2 - const


class AbstractPrior(eqx.Module):
    """A log density over a pytree of parameters, with the set it lives on.

    Every built-in prior is one. Calling it on a pytree gives the log density (a
    scalar, summed over the floating array leaves); `support` is the
    [`eqbayes.constraints`][] object of the values it puts mass on (a group
    samples a leaf whose prior has a constrained support in unconstrained
    space); `sample(key, shape)` draws one leaf of that shape. A plain function
    is a prior too (support `real`, no `sample`).
    """

    @abc.abstractmethod
    def __call__(self, params: ArrayTree) -> Float[Array, ""]:
        """The log density of `params` (any pytree; its floating leaves)."""

    @property
    @abc.abstractmethod
    def support(self) -> AbstractConstraint:
        """The set the prior puts its mass on."""

    @abc.abstractmethod
    def sample(
        self, key: PRNGKeyArray, shape: tuple[int, ...] = (), dtype: Any = None
    ) -> Float[Array, "..."]:
        """A draw of one leaf of shape `shape` (default dtype: JAX's default
        float)."""


def _dtype(dtype: Any) -> Any:
    return jax.dtypes.canonicalize_dtype(float if dtype is None else dtype)


@final
class GaussianPrior(AbstractPrior):
    r"""Independent zero-mean Gaussian prior on every component.

    $$\log p(\theta) = \sum_i \left[-\frac{\theta_i^2}{2\sigma_i^2}
        - \log \sigma_i - \tfrac{1}{2}\log(2\pi)\right],$$

    with $\sigma_i = \sigma$, or, when `fan_in_aware`, $\sigma_i = \sigma /
    \sqrt{\text{fan\_in}}$ for components of leaves with `ndim >= 2`
    ($\text{fan\_in}$ = the product of `leaf.shape[1:]`, as for an Equinox
    `Linear.weight` of shape `(out, in)`). Build it with
    [`eqbayes.priors.gaussian`][].
    """

    sigma: float = eqx.field(static=True)
    fan_in_aware: bool = eqx.field(static=True)

    def __init__(self, sigma: float | int = 10.0, fan_in_aware: bool = False):
        """**Arguments:**

        - `sigma`: the prior standard deviation, `> 0`.
        - `fan_in_aware`: scale `sigma` by `1 / sqrt(fan_in)` for leaves with
            `ndim >= 2`.
        """
        self.sigma = _check_positive(
            sigma, "gaussian", "sigma", "standard deviation", 1.0
        )
        self.fan_in_aware = bool(fan_in_aware)

    def __call__(self, params: ArrayTree) -> Float[Array, ""]:
        """**Arguments:**

        - `params`: any pytree; its floating array leaves are the parameters.

        **Returns:**

        The log density, a scalar.
        """

        def leaf_logpdf(leaf):
            sigma = self.sigma
            if self.fan_in_aware and leaf.ndim >= 2:
                sigma = sigma / math.sqrt(_fan_in(leaf))
            return _gaussian_logpdf(leaf, sigma)

        return _sum_leaves(params, leaf_logpdf)

    @property
    def support(self) -> AbstractConstraint:
        return _constraints.real

    def sample(self, key, shape=(), dtype=None):
        sigma = self.sigma
        if self.fan_in_aware and len(shape) >= 2:
            sigma = sigma / math.sqrt(math.prod(shape[1:]))
        return sigma * jr.normal(key, shape, _dtype(dtype))


@final
class LaplacePrior(AbstractPrior):
    r"""Independent zero-mean Laplace prior on every component.

    $$\log p(\theta) = \sum_i \left[-\frac{|\theta_i|}{b} - \log(2b)\right]$$

    with scale $b$ (standard deviation $\sqrt{2}\,b$). Its mode favours exact zeros
    (the Bayesian lasso). Build it with [`eqbayes.priors.laplace`][].
    """

    scale: float = eqx.field(static=True)

    def __init__(self, scale: float | int = 1.0):
        """**Arguments:**

        - `scale`: the scale $b$, `> 0`.
        """
        self.scale = _check_positive(scale, "laplace", "scale", "scale", 1.0)

    def __call__(self, params: ArrayTree) -> Float[Array, ""]:
        """**Arguments:**

        - `params`: any pytree; its floating array leaves are the parameters.

        **Returns:**

        The log density, a scalar.
        """
        scale = self.scale

        def leaf_logpdf(leaf):
            const = leaf.size * math.log(2 * scale)
            return -jnp.sum(jnp.abs(leaf)) / scale - const

        return _sum_leaves(params, leaf_logpdf)

    @property
    def support(self) -> AbstractConstraint:
        return _constraints.real

    def sample(self, key, shape=(), dtype=None):
        return self.scale * jr.laplace(key, shape, _dtype(dtype))


@final
class StudentTPrior(AbstractPrior):
    r"""Independent zero-mean Student-t prior on every component.

    $$\log p(\theta) = \sum_i \left[\log\Gamma\!\left(\tfrac{\nu+1}{2}\right)
        - \log\Gamma\!\left(\tfrac{\nu}{2}\right) - \tfrac{1}{2}\log(\nu\pi)
        - \log s - \tfrac{\nu+1}{2}\log\!\left(1 + \frac{\theta_i^2}{\nu s^2}\right)
        \right]$$

    with `df` $\nu > 2$ and scale $s$ (standard deviation
    $s\sqrt{\nu / (\nu - 2)}$). Heavier tails than a Gaussian: large weights are
    penalised only logarithmically. Build it with [`eqbayes.priors.student_t`][].
    """

    df: float = eqx.field(static=True)
    scale: float = eqx.field(static=True)

    def __init__(self, df: float | int = 4.0, scale: float | int = 1.0):
        r"""**Arguments:**

        - `df`: the degrees of freedom $\nu$, `> 2`.
        - `scale`: the scale $s$, `> 0`.
        """
        if not (isinstance(df, numbers.Real) and 2 < df < math.inf):
            raise ValueError(_DF_MSG.format(value=df, type=type(df).__name__))
        self.df = float(df)
        self.scale = _check_positive(scale, "student_t", "scale", "scale", 1.0)

    def __call__(self, params: ArrayTree) -> Float[Array, ""]:
        """**Arguments:**

        - `params`: any pytree; its floating array leaves are the parameters.

        **Returns:**

        The log density, a scalar.
        """
        df, scale = self.df, self.scale

        def leaf_logpdf(leaf):
            half_df = jnp.asarray(0.5 * df, leaf.dtype)
            # Computed in the dtype of the leaf, so float32 stays float32.
            const = (
                gammaln(half_df + 0.5)
                - gammaln(half_df)
                - 0.5 * math.log(df * math.pi)
                - math.log(scale)
            )
            z2 = jnp.square(leaf / scale) / df
            return leaf.size * const - (0.5 * (df + 1)) * jnp.sum(jnp.log1p(z2))

        return _sum_leaves(params, leaf_logpdf)

    @property
    def support(self) -> AbstractConstraint:
        return _constraints.real

    def sample(self, key, shape=(), dtype=None):
        return self.scale * jr.t(key, self.df, shape, _dtype(dtype))


@final
class LayerwiseGaussianPrior(AbstractPrior):
    r"""Independent zero-mean Gaussian prior, with a standard deviation per leaf.

    Leaves with `ndim >= 2` (weights) get $\sigma = \sigma_\text{base} /
    \sqrt{\text{fan\_in}}$ when `fan_in_aware` (else $\sigma_\text{base}$), with
    $\text{fan\_in}$ the product of `leaf.shape[1:]`; leaves with `ndim < 2` (biases,
    scalars) get $\sigma_\text{default}$. With `fan_in_aware`, the prior variance of
    a pre-activation stays of order $\sigma_\text{base}^2$ whatever the layer width,
    as for the standard (LeCun) initialisation. Build it with
    [`eqbayes.priors.layerwise_gaussian`][].
    """

    base_sigma: float = eqx.field(static=True)
    default_sigma: float = eqx.field(static=True)
    fan_in_aware: bool = eqx.field(static=True)

    def __init__(
        self,
        base_sigma: float | int = 1.0,
        default_sigma: float | int = 1.0,
        fan_in_aware: bool = True,
    ):
        """**Arguments:**

        - `base_sigma`: the standard deviation of weights before fan-in scaling,
            `> 0`.
        - `default_sigma`: the standard deviation of leaves with `ndim < 2`, `> 0`.
        - `fan_in_aware`: divide `base_sigma` by `sqrt(fan_in)`.
        """
        self.base_sigma = _check_positive(
            base_sigma, "layerwise_gaussian", "base_sigma", "standard deviation", 1.0
        )
        self.default_sigma = _check_positive(
            default_sigma,
            "layerwise_gaussian",
            "default_sigma",
            "standard deviation",
            1.0,
        )
        self.fan_in_aware = bool(fan_in_aware)

    def __call__(self, params: ArrayTree) -> Float[Array, ""]:
        """**Arguments:**

        - `params`: any pytree; its floating array leaves are the parameters.

        **Returns:**

        The log density, a scalar.
        """

        def leaf_logpdf(leaf):
            if leaf.ndim < 2:
                sigma = self.default_sigma
            elif self.fan_in_aware:
                sigma = self.base_sigma / math.sqrt(_fan_in(leaf))
            else:
                sigma = self.base_sigma
            return _gaussian_logpdf(leaf, sigma)

        return _sum_leaves(params, leaf_logpdf)

    @property
    def support(self) -> AbstractConstraint:
        return _constraints.real

    def sample(self, key, shape=(), dtype=None):
        if len(shape) < 2:
            sigma = self.default_sigma
        elif self.fan_in_aware:
            sigma = self.base_sigma / math.sqrt(math.prod(shape[1:]))
        else:
            sigma = self.base_sigma
        return sigma * jr.normal(key, shape, _dtype(dtype))


def gaussian(sigma: float | int = 10.0, fan_in_aware: bool = False) -> GaussianPrior:
    r"""Independent $\mathcal{N}(0, \sigma^2)$ prior on every component.

    $$\log p(\theta) = \sum_i \left[-\frac{\theta_i^2}{2\sigma_i^2}
        - \log \sigma_i - \tfrac{1}{2}\log(2\pi)\right]$$

    This is the default prior of eqbayes (`prior=None` means `gaussian(10.0)`): weak
    enough to let the likelihood speak, proper so that the posterior is too.

    **Arguments:**

    - `sigma`: the prior standard deviation $\sigma$, `> 0`.
    - `fan_in_aware`: if `True`, leaves with `ndim >= 2` use
        $\sigma_i = \sigma / \sqrt{\text{fan\_in}}$, with $\text{fan\_in}$ the
        product of `leaf.shape[1:]` (an Equinox `Linear.weight` has shape
        `(out, in)`); leaves with `ndim < 2` (biases, scalars) keep $\sigma$.

    **Returns:**

    A [`eqbayes.priors.GaussianPrior`][]: call it on a pytree to get its log density.

    **Raises:**

    `ValueError` if `sigma` is not a finite number `> 0`.

    !!! Example

        ```python
        import jax.numpy as jnp
        import eqbayes.priors as ebp

        prior = ebp.gaussian(1.0)
        prior({"w": jnp.zeros((2, 3)), "b": jnp.zeros(2)})  # -8 * log(2 pi) / 2
        ```
    """
    return GaussianPrior(sigma, fan_in_aware)


def laplace(scale: float | int = 1.0) -> LaplacePrior:
    r"""Independent Laplace$(0, b)$ prior on every component.

    $$\log p(\theta) = \sum_i \left[-\frac{|\theta_i|}{b} - \log(2b)\right]$$

    **Arguments:**

    - `scale`: the scale $b$, `> 0` (the standard deviation is $\sqrt{2}\,b$).

    **Returns:**

    A [`eqbayes.priors.LaplacePrior`][]: call it on a pytree to get its log density.

    **Raises:**

    `ValueError` if `scale` is not a finite number `> 0`.

    !!! Example

        ```python
        import jax.numpy as jnp
        import eqbayes.priors as ebp

        ebp.laplace(0.5)(jnp.array([1.0, -1.0]))  # -4.0 (= -2/0.5 - 2 log 1)
        ```
    """
    return LaplacePrior(scale)


def student_t(df: float | int = 4.0, scale: float | int = 1.0) -> StudentTPrior:
    r"""Independent Student-t prior with `df` degrees of freedom on every component.

    $$\log p(\theta) = \sum_i \left[\log\Gamma\!\left(\tfrac{\nu+1}{2}\right)
        - \log\Gamma\!\left(\tfrac{\nu}{2}\right) - \tfrac{1}{2}\log(\nu\pi)
        - \log s - \tfrac{\nu+1}{2}\log\!\left(1 + \frac{\theta_i^2}{\nu s^2}\right)
        \right]$$

    **Arguments:**

    - `df`: the degrees of freedom $\nu$; must be `> 2` so that the prior has a finite
        variance, $s^2 \nu / (\nu - 2)$.
    - `scale`: the scale $s$, `> 0`.

    **Returns:**

    A [`eqbayes.priors.StudentTPrior`][]: call it on a pytree to get its log density.

    **Raises:**

    `ValueError` if `df <= 2` or `scale` is not a finite number `> 0`.

    !!! Example

        ```python
        import equinox as eqx
        import jax.random as jr
        import eqbayes.priors as ebp

        linear = eqx.nn.Linear(3, 2, key=jr.key(0))
        ebp.student_t(df=4.0, scale=0.5)(linear)  # a scalar log density
        ```
    """
    return StudentTPrior(df, scale)


def layerwise_gaussian(
    base_sigma: float | int = 1.0,
    default_sigma: float | int = 1.0,
    fan_in_aware: bool = True,
) -> LayerwiseGaussianPrior:
    r"""Independent Gaussian prior with a standard deviation per leaf.

    $$\log p(\theta) = \sum_{\ell} \sum_i \left[-\frac{\theta_{\ell i}^2}
        {2\sigma_\ell^2} - \log \sigma_\ell - \tfrac{1}{2}\log(2\pi)\right],$$

    with $\sigma_\ell = \sigma_\text{base} / \sqrt{\text{fan\_in}_\ell}$ for leaves
    with `ndim >= 2` ($\sigma_\text{base}$ if not `fan_in_aware`), and
    $\sigma_\ell = \sigma_\text{default}$ for leaves with `ndim < 2`.
    $\text{fan\_in}_\ell$ is the product of `leaf.shape[1:]`: `in_features` for an
    Equinox `Linear.weight` of shape `(out, in)`, `in_channels * prod(kernel_size)`
    for a convolution.

    **Arguments:**

    - `base_sigma`: the standard deviation of weights before fan-in scaling, `> 0`.
    - `default_sigma`: the standard deviation of biases and scalars, `> 0`.
    - `fan_in_aware`: divide `base_sigma` by $\sqrt{\text{fan\_in}}$.

    **Returns:**

    A [`eqbayes.priors.LayerwiseGaussianPrior`][]: call it on a pytree to get its log
    density.

    **Raises:**

    `ValueError` if `base_sigma` or `default_sigma` is not a finite number `> 0`.

    !!! Example

        ```python
        import equinox as eqx
        import jax.random as jr
        import eqbayes.priors as ebp

        mlp = eqx.nn.MLP(784, 10, width_size=512, depth=2, key=jr.key(0))
        params, _ = eqx.partition(mlp, eqx.is_inexact_array)
        # Weights of the first layer get sigma = 1 / sqrt(784), of the others
        # 1 / sqrt(512); biases get sigma = 1.
        ebp.layerwise_gaussian()(params)
        ```
    """
    return LayerwiseGaussianPrior(base_sigma, default_sigma, fan_in_aware)


# -- distributions with location, scale and a support --------------------------------

_PARAM_MSG = (
    "`eqbayes.priors.{fn}({argument}={value!r})`: `{argument}` must be {what}, got "
    "{value!r}. Pass e.g. `{argument}={example}` (a number, or an array that "
    "broadcasts against the leaf)."
)
_ORDER_MSG = (
    "`eqbayes.priors.uniform(low={low!r}, high={high!r})`: `low` must be below "
    "`high` everywhere. Pass e.g. `uniform(0.0, 1.0)`."
)


def _param(
    value: Any, fn: str, argument: str, example: float, positive: bool = True
) -> "float | Constant":
    """A distribution parameter as a hashable constant, checked finite (and > 0)."""
    what = "finite and > 0" if positive else "finite"
    try:
        out = Constant.of(value)
        array = numpy_of(out)
        ok = bool(np.all(np.isfinite(array)) and (not positive or np.all(array > 0)))
    except (TypeError, ValueError):
        ok = False
    if isinstance(value, bool) or not ok:
        raise ValueError(
            _PARAM_MSG.format(
                fn=fn, argument=argument, value=value, what=what, example=example
            )
        )
    return out


def _on(param: "float | Constant", shape: tuple[int, ...], dtype: Any) -> Array:
    """A parameter broadcast to `shape` in `dtype`."""
    return jnp.broadcast_to(jnp.asarray(numpy_of(param), dtype), shape)


class AbstractDistribution(AbstractPrior):
    """A prior that is a product of one distribution over every component of every
    floating leaf (every vector along the last axis, for `Dirichlet`). Its
    parameters broadcast against each leaf."""

    @abc.abstractmethod
    def log_prob(self, leaf: Float[Array, "..."]) -> Float[Array, ""]:
        """The log density of one leaf, summed over its components; `-inf` outside
        the support."""

    def __call__(self, params: ArrayTree) -> Float[Array, ""]:
        """**Arguments:**

        - `params`: any pytree; its floating array leaves are the parameters.

        **Returns:**

        The log density, a scalar.
        """
        return _sum_leaves(params, self.log_prob)


def _inside(condition: Array, value: Array) -> Array:
    return jnp.sum(jnp.where(condition, value, -jnp.inf))


@final
class Normal(AbstractDistribution):
    r"""$\mathcal{N}(\mu, \sigma^2)$ on every component; support `real`. Made by
    [`eqbayes.priors.normal`][]."""

    loc: "float | Constant" = eqx.field(static=True)
    scale: "float | Constant" = eqx.field(static=True)

    @property
    def support(self) -> AbstractConstraint:
        return _constraints.real

    def log_prob(self, leaf):
        loc, scale = (
            _on(self.loc, leaf.shape, leaf.dtype),
            _on(self.scale, leaf.shape, leaf.dtype),
        )
        z = (leaf - loc) / scale
        return jnp.sum(-0.5 * jnp.square(z) - jnp.log(scale) - 0.5 * _LOG_2PI)

    def sample(self, key, shape=(), dtype=None):
        dtype = _dtype(dtype)
        loc, scale = _on(self.loc, shape, dtype), _on(self.scale, shape, dtype)
        return loc + scale * jr.normal(key, shape, dtype)


@final
class HalfNormal(AbstractDistribution):
    r"""$|\mathcal{N}(0, \sigma^2)|$ on every component; support `positive`. Made
    by [`eqbayes.priors.half_normal`][]."""

    scale: "float | Constant" = eqx.field(static=True)

    @property
    def support(self) -> AbstractConstraint:
        return _constraints.positive

    def log_prob(self, leaf):
        scale = _on(self.scale, leaf.shape, leaf.dtype)
        z = leaf / scale
        value = math.log(2) - 0.5 * jnp.square(z) - jnp.log(scale) - 0.5 * _LOG_2PI
        return _inside(leaf >= 0, value)

    def sample(self, key, shape=(), dtype=None):
        dtype = _dtype(dtype)
        return _on(self.scale, shape, dtype) * jnp.abs(jr.normal(key, shape, dtype))


@final
class HalfCauchy(AbstractDistribution):
    r"""$|\text{Cauchy}(0, s)|$ on every component; support `positive`. Made by
    [`eqbayes.priors.half_cauchy`][]."""

    scale: "float | Constant" = eqx.field(static=True)

    @property
    def support(self) -> AbstractConstraint:
        return _constraints.positive

    def log_prob(self, leaf):
        scale = _on(self.scale, leaf.shape, leaf.dtype)
        value = (
            math.log(2 / math.pi) - jnp.log(scale) - jnp.log1p(jnp.square(leaf / scale))
        )
        return _inside(leaf >= 0, value)

    def sample(self, key, shape=(), dtype=None):
        dtype = _dtype(dtype)
        return _on(self.scale, shape, dtype) * jnp.abs(jr.cauchy(key, shape, dtype))


@final
class LogNormal(AbstractDistribution):
    r"""$\log\theta \sim \mathcal{N}(\mu, \sigma^2)$ on every component; support
    `positive`. Made by [`eqbayes.priors.log_normal`][]."""

    loc: "float | Constant" = eqx.field(static=True)
    scale: "float | Constant" = eqx.field(static=True)

    @property
    def support(self) -> AbstractConstraint:
        return _constraints.positive

    def log_prob(self, leaf):
        loc, scale = (
            _on(self.loc, leaf.shape, leaf.dtype),
            _on(self.scale, leaf.shape, leaf.dtype),
        )
        log_x = jnp.log(leaf)
        z = (log_x - loc) / scale
        value = -0.5 * jnp.square(z) - jnp.log(scale) - 0.5 * _LOG_2PI - log_x
        return _inside(leaf > 0, value)

    def sample(self, key, shape=(), dtype=None):
        dtype = _dtype(dtype)
        loc, scale = _on(self.loc, shape, dtype), _on(self.scale, shape, dtype)
        return jnp.exp(loc + scale * jr.normal(key, shape, dtype))


@final
class Exponential(AbstractDistribution):
    r"""$\text{Exponential}(\lambda)$ (mean $1/\lambda$) on every component;
    support `positive`. Made by [`eqbayes.priors.exponential`][]."""

    rate: "float | Constant" = eqx.field(static=True)

    @property
    def support(self) -> AbstractConstraint:
        return _constraints.positive

    def log_prob(self, leaf):
        rate = _on(self.rate, leaf.shape, leaf.dtype)
        return _inside(leaf >= 0, jnp.log(rate) - rate * leaf)

    def sample(self, key, shape=(), dtype=None):
        dtype = _dtype(dtype)
        return jr.exponential(key, shape, dtype) / _on(self.rate, shape, dtype)


@final
class Gamma(AbstractDistribution):
    r"""$\text{Gamma}(\alpha, \beta)$ with concentration $\alpha$ and rate $\beta$
    (mean $\alpha/\beta$) on every component; support `positive`. Made by
    [`eqbayes.priors.gamma`][]."""

    concentration: "float | Constant" = eqx.field(static=True)
    rate: "float | Constant" = eqx.field(static=True)

    @property
    def support(self) -> AbstractConstraint:
        return _constraints.positive

    def log_prob(self, leaf):
        a = _on(self.concentration, leaf.shape, leaf.dtype)
        rate = _on(self.rate, leaf.shape, leaf.dtype)
        value = a * jnp.log(rate) - gammaln(a) + (a - 1) * jnp.log(leaf) - rate * leaf
        return _inside(leaf > 0, value)

    def sample(self, key, shape=(), dtype=None):
        dtype = _dtype(dtype)
        a = _on(self.concentration, shape, dtype)
        return jr.gamma(key, a, shape, dtype) / _on(self.rate, shape, dtype)


@final
class Beta(AbstractDistribution):
    r"""$\text{Beta}(a, b)$ on every component; support `unit_interval`. Made by
    [`eqbayes.priors.beta`][]."""

    a: "float | Constant" = eqx.field(static=True)
    b: "float | Constant" = eqx.field(static=True)

    @property
    def support(self) -> AbstractConstraint:
        return _constraints.unit_interval

    def log_prob(self, leaf):
        a, b = _on(self.a, leaf.shape, leaf.dtype), _on(self.b, leaf.shape, leaf.dtype)
        value = (a - 1) * jnp.log(leaf) + (b - 1) * jnp.log1p(-leaf) - betaln(a, b)
        return _inside((leaf > 0) & (leaf < 1), value)

    def sample(self, key, shape=(), dtype=None):
        dtype = _dtype(dtype)
        a, b = _on(self.a, shape, dtype), _on(self.b, shape, dtype)
        return jr.beta(key, a, b, shape, dtype)


@final
class Uniform(AbstractDistribution):
    r"""$\text{Uniform}(\text{low}, \text{high})$ on every component; support
    `interval(low, high)`. Made by [`eqbayes.priors.uniform`][]."""

    low: "float | Constant" = eqx.field(static=True)
    high: "float | Constant" = eqx.field(static=True)

    @property
    def support(self) -> AbstractConstraint:
        return _constraints.Interval(self.low, self.high)

    def log_prob(self, leaf):
        low = _on(self.low, leaf.shape, leaf.dtype)
        high = _on(self.high, leaf.shape, leaf.dtype)
        return _inside((leaf > low) & (leaf < high), -jnp.log(high - low))

    def sample(self, key, shape=(), dtype=None):
        dtype = _dtype(dtype)
        low, high = _on(self.low, shape, dtype), _on(self.high, shape, dtype)
        return jr.uniform(key, shape, dtype, low, high)


@final
class Dirichlet(AbstractDistribution):
    r"""$\text{Dirichlet}(\alpha)$ over the last axis of every leaf (each vector
    along it is one draw); support `simplex`. Made by
    [`eqbayes.priors.dirichlet`][]."""

    concentration: "float | Constant" = eqx.field(static=True)

    @property
    def support(self) -> AbstractConstraint:
        return _constraints.simplex

    def log_prob(self, leaf):
        alpha = _on(self.concentration, leaf.shape, leaf.dtype)
        value = (
            gammaln(jnp.sum(alpha, -1))
            - jnp.sum(gammaln(alpha), -1)
            + jnp.sum((alpha - 1) * jnp.log(leaf), -1)
        )
        return _inside(jnp.all(leaf > 0, -1), value)

    def sample(self, key, shape=(), dtype=None):
        dtype = _dtype(dtype)
        alpha = _on(self.concentration, shape, dtype)
        return jr.dirichlet(key, alpha, shape[:-1], dtype)


def normal(loc: float | ArrayLike = 0.0, scale: float | ArrayLike = 1.0) -> Normal:
    r"""$\mathcal{N}(\mu, \sigma^2)$ on every component, support `real`.

    $$\log p(\theta) = \sum_i \left[-\frac{(\theta_i - \mu_i)^2}{2\sigma_i^2}
        - \log\sigma_i - \tfrac12\log(2\pi)\right]$$

    **Arguments:**

    - `loc`: the mean $\mu$ (a number or an array broadcasting against the leaf).
    - `scale`: the standard deviation $\sigma > 0$.

    **Returns:**

    A [`eqbayes.priors.Normal`][].

    **Raises:**

    `ValueError` if a parameter is not finite or `scale <= 0`.

    !!! Example

        ```python
        eb.bayesian(model, blackjax.nuts, where=lambda m: m.mu,
                    prior=eb.priors.normal(3.0, 0.5))
        ```
    """
    return Normal(
        _param(loc, "normal", "loc", 0.0, positive=False),
        _param(scale, "normal", "scale", 1.0),
    )


def half_normal(scale: float | ArrayLike = 1.0) -> HalfNormal:
    r"""The half-normal $|\mathcal{N}(0, \sigma^2)|$, support `positive`.

    $$\log p(\theta) = \sum_i \left[\log 2 - \frac{\theta_i^2}{2\sigma_i^2}
        - \log\sigma_i - \tfrac12\log(2\pi)\right], \quad \theta_i \ge 0$$

    **Arguments:**

    - `scale`: $\sigma > 0$.

    **Returns:**

    A [`eqbayes.priors.HalfNormal`][].
    """
    return HalfNormal(_param(scale, "half_normal", "scale", 1.0))


def half_cauchy(scale: float | ArrayLike = 1.0) -> HalfCauchy:
    r"""The half-Cauchy $|\text{Cauchy}(0, s)|$, support `positive`: the usual
    weakly informative prior on a hierarchical standard deviation.

    $$\log p(\theta) = \sum_i \left[\log\frac{2}{\pi s_i}
        - \log\left(1 + \theta_i^2 / s_i^2\right)\right], \quad \theta_i \ge 0$$

    **Arguments:**

    - `scale`: $s > 0$.

    **Returns:**

    A [`eqbayes.priors.HalfCauchy`][].
    """
    return HalfCauchy(_param(scale, "half_cauchy", "scale", 5.0))


def log_normal(
    loc: float | ArrayLike = 0.0, scale: float | ArrayLike = 1.0
) -> LogNormal:
    r"""The log-normal: $\log\theta \sim \mathcal{N}(\mu, \sigma^2)$, support
    `positive` (median $e^\mu$).

    $$\log p(\theta) = \sum_i \left[-\frac{(\log\theta_i - \mu_i)^2}{2\sigma_i^2}
        - \log\sigma_i - \tfrac12\log(2\pi) - \log\theta_i\right]$$

    **Arguments:**

    - `loc`: $\mu$, the mean of $\log\theta$.
    - `scale`: $\sigma > 0$, the standard deviation of $\log\theta$.

    **Returns:**

    A [`eqbayes.priors.LogNormal`][].
    """
    return LogNormal(
        _param(loc, "log_normal", "loc", 0.0, positive=False),
        _param(scale, "log_normal", "scale", 1.0),
    )


def exponential(rate: float | ArrayLike = 1.0) -> Exponential:
    r"""The exponential distribution with rate $\lambda$ (mean $1/\lambda$),
    support `positive`: $\log p(\theta) = \sum_i [\log\lambda_i - \lambda_i
    \theta_i]$.

    **Arguments:**

    - `rate`: $\lambda > 0$.

    **Returns:**

    A [`eqbayes.priors.Exponential`][].
    """
    return Exponential(_param(rate, "exponential", "rate", 1.0))


def gamma(concentration: float | ArrayLike, rate: float | ArrayLike = 1.0) -> Gamma:
    r"""The gamma distribution with concentration $\alpha$ and rate $\beta$ (mean
    $\alpha/\beta$), support `positive`.

    $$\log p(\theta) = \sum_i \left[\alpha\log\beta - \log\Gamma(\alpha)
        + (\alpha - 1)\log\theta_i - \beta\theta_i\right]$$

    **Arguments:**

    - `concentration`: $\alpha > 0$.
    - `rate`: $\beta > 0$ (the inverse of SciPy's `scale`).

    **Returns:**

    A [`eqbayes.priors.Gamma`][].
    """
    return Gamma(
        _param(concentration, "gamma", "concentration", 2.0),
        _param(rate, "gamma", "rate", 1.0),
    )


def beta(a: float | ArrayLike, b: float | ArrayLike) -> Beta:
    r"""The beta distribution, support `unit_interval`.

    $$\log p(\theta) = \sum_i \left[(a - 1)\log\theta_i + (b - 1)\log(1 - \theta_i)
        - \log B(a, b)\right]$$

    **Arguments:**

    - `a`, `b`: the shapes, `> 0`.

    **Returns:**

    A [`eqbayes.priors.Beta`][].
    """
    return Beta(_param(a, "beta", "a", 1.0), _param(b, "beta", "b", 1.0))


def uniform(low: float | ArrayLike = 0.0, high: float | ArrayLike = 1.0) -> Uniform:
    r"""The uniform distribution on $(\text{low}, \text{high})$, support
    `interval(low, high)`.

    **Arguments:**

    - `low`, `high`: the bounds, finite, `low < high` everywhere.

    **Returns:**

    A [`eqbayes.priors.Uniform`][].

    **Raises:**

    `ValueError` if a bound is not finite or `low >= high`.
    """
    lo = _param(low, "uniform", "low", 0.0, positive=False)
    hi = _param(high, "uniform", "high", 1.0, positive=False)
    if not np.all(numpy_of(lo) < numpy_of(hi)):
        raise ValueError(_ORDER_MSG.format(low=low, high=high))
    return Uniform(lo, hi)


def dirichlet(concentration: float | ArrayLike) -> Dirichlet:
    r"""The Dirichlet distribution over the last axis of a leaf, support `simplex`.

    $$\log p(\theta) = \log\Gamma\Big(\sum_k \alpha_k\Big) - \sum_k
        \log\Gamma(\alpha_k) + \sum_k (\alpha_k - 1)\log\theta_k$$

    per vector along the last axis, summed over the others.

    **Arguments:**

    - `concentration`: $\alpha > 0$, a number (a symmetric Dirichlet) or an
        array broadcasting against the leaf (its last axis the components).

    **Returns:**

    A [`eqbayes.priors.Dirichlet`][].
    """
    return Dirichlet(_param(concentration, "dirichlet", "concentration", 1.0))
