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

import math
import numbers
from collections.abc import Callable
from typing import final

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.scipy.special import gammaln

from ._custom_types import Array, ArrayTree, Float


__all__ = [
    "GaussianPrior",
    "LaplacePrior",
    "LayerwiseGaussianPrior",
    "StudentTPrior",
    "gaussian",
    "laplace",
    "layerwise_gaussian",
    "student_t",
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


@final
class GaussianPrior(eqx.Module):
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


@final
class LaplacePrior(eqx.Module):
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


@final
class StudentTPrior(eqx.Module):
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


@final
class LayerwiseGaussianPrior(eqx.Module):
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
