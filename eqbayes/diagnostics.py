"""Convergence diagnostics for MCMC draws, in pure JAX.

Every function takes draws in the ArviZ layout, `(chain, draw, *p)`, and returns one
number per parameter component, shape `*p`. They follow Vehtari et al. (2021),
"Rank-normalization, folding, and localization: an improved R-hat for assessing
convergence of MCMC", and reproduce ArviZ 0.2x (`arviz.rhat(..., method="rank")`,
`arviz.ess(..., method="bulk")`, `arviz.ess(..., method="tail")`,
`arviz.mcse(..., method="mean")`) to floating-point precision, including ArviZ's
conventions:

- chains are split in halves; with an odd number of draws the middle draw is dropped;
- ranks are taken over all (split) chains together, ties get their average rank;
- an input containing a NaN, or fewer than 4 draws, gives NaN;
- a constant input has a bulk and tail ESS equal to the number of (split) draws. Its
  R-hat is NaN and its Monte Carlo standard error exactly 0 here; ArviZ returns NaN,
  or values dominated by rounding error, for these.

ArviZ computes in float64 whatever the input dtype; float64 input matches it to
rounding error, float32 input to float32 rounding error, except for the rare discrete
choices in the tail ESS described in [`eqbayes.diagnostics.ess_tail`][].

The functions are vectorised over `*p`, compile under `jax.jit` (pass `strategy`
statically) and compute in the input's floating dtype; integer and boolean inputs are
cast to the default floating dtype.
"""

import functools
import math

import jax
import jax.numpy as jnp
from jax.core import Tracer
from jax.scipy.special import ndtri
from jax.sharding import NamedSharding, PartitionSpec
from jaxtyping import Shaped

from ._custom_types import Array, ArrayLike, Float


__all__ = ["ess", "ess_tail", "mcse_mean", "rhat"]

_MIN_DRAWS = 4
# ArviZ's `np.finfo(float).resolution`, whatever the input dtype.
_CONSTANT_TOL = 1e-15
_STRATEGIES = ("auto", "split", "multichain")

_NDIM_MSG = (
    "`eqbayes.diagnostics.{name}(chain)` needs draws of shape `(chain, draw, *p)`, "
    "with at least two dimensions; got an array of shape {shape}. A single chain of "
    "draws `x` with shape `(draw, *p)` is passed as `x[None]`."
)
_STRATEGY_MSG = (
    "`eqbayes.diagnostics.rhat(chain, strategy={strategy!r})`: unknown strategy "
    "{strategy!r}. Valid strategies are 'auto', 'split' and 'multichain'."
)
_MULTICHAIN_MSG = (
    "`eqbayes.diagnostics.rhat(chain, strategy='multichain')` needs at least 2 "
    "chains, but `chain` has shape {shape}: one chain. Run several chains (e.g. "
    "vmap the sampler over initial keys), or pass `strategy='split'` (or 'auto') "
    "to compare the two halves of the single chain."
)


def _gathered(x: Array) -> Array:
    """Chains sharded over devices (a solve with `mesh=`), gathered onto every
    device of their mesh (not to the host). The statistics mix all chains (ranks,
    FFTs along the draws), and XLA's CPU FFT rejects the layout of a partitioned
    one; the chains of one parameter are small next to the solve."""
    if isinstance(x, Tracer):
        return x
    sharding = x.sharding
    if isinstance(sharding, NamedSharding) and not sharding.is_fully_replicated:
        return jax.device_put(x, NamedSharding(sharding.mesh, PartitionSpec()))
    return x


#
# Helpers. Past `_vectorise`, they operate on one parameter component: an array of
# shape (chain, draw).
#


def _as_float(chain: ArrayLike, name: str) -> Array:
    x = _gathered(jnp.asarray(chain))
    if x.ndim < 2:
        raise ValueError(_NDIM_MSG.format(name=name, shape=x.shape))
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jax.dtypes.canonicalize_dtype(float))
    return x


@functools.partial(jax.jit, static_argnums=0)
def _vectorise(fn, x: Array) -> Array:
    """Applies `fn: (chain, draw) -> ()` over the trailing dimensions of `x`.

    Compiled once per function, shape and dtype (eager dispatch of the many small
    operations would be far slower); inlined when called under an outer `jax.jit`.
    """
    k, n, *p = x.shape
    flat = x.reshape(k, n, math.prod(p))
    out = jax.vmap(fn, in_axes=2)(flat)
    return out.reshape(p)


def _nan_if_invalid(x: Array, value: Array) -> Array:
    """ArviZ's `_not_valid`: NaN when the input contains a NaN."""
    return jnp.where(jnp.any(jnp.isnan(x)), jnp.nan, value).astype(x.dtype)


def _split_chains(x: Array) -> Array:
    """`(K, N) -> (2K, N // 2)`; the middle draw is dropped when `N` is odd."""
    half = x.shape[1] // 2
    return jnp.concatenate([x[:, :half], x[:, x.shape[1] - half :]], axis=0)


def _z_scale(x: Array) -> Array:
    """Rank-normalises over all entries, as ArviZ's `_z_scale`.

    Ties get their average rank (`scipy.stats.rankdata(method="average")`), then
    Blom's offset maps ranks to normal quantiles.
    """
    flat = x.reshape(-1)
    size = flat.size
    sorted_ = jnp.sort(flat)
    # The entries equal to `v` hold the 1-based ranks left + 1, ..., right.
    left = jnp.searchsorted(sorted_, flat, side="left")
    right = jnp.searchsorted(sorted_, flat, side="right")
    rank = (left + right + 1).astype(x.dtype) * 0.5
    # `(rank - c) / (size - 2c + 1)` with c = 3/8, as ArviZ's `_backtransform_ranks`.
    z = ndtri((rank - 0.375) / (size + 0.25))
    return z.reshape(x.shape)


def _median_of_sorted(sorted_: Array) -> Array:
    """`numpy.median` of the (sorted, flat) entries, with its rounding."""
    m = sorted_.size
    if m % 2 == 1:
        return sorted_[m // 2]
    return (sorted_[m // 2 - 1] + sorted_[m // 2]) / 2


def _rhat_basic(x: Array) -> Array:
    """Classic (non-split) potential scale reduction factor of `(K, N)` draws."""
    n = x.shape[1]
    chain_mean = jnp.mean(x, axis=1)
    chain_var = jnp.var(x, axis=1, ddof=1)
    between = n * jnp.var(chain_mean, ddof=1)
    within = jnp.mean(chain_var)
    return jnp.sqrt((between / within + n - 1) / n)


def _rhat_rank(x: Array) -> Array:
    """ArviZ's `_rhat_rank` on `(K, N)` draws (without the `K >= 2` check)."""
    if x.shape[1] < _MIN_DRAWS:
        return jnp.full((), jnp.nan, x.dtype)
    split = _split_chains(x)
    sorted_ = jnp.sort(split.reshape(-1))
    folded = jnp.abs(split - _median_of_sorted(sorted_))
    # Bulk and tail R-hat, batched (one copy of the computation to compile).
    bulk, tail = jax.vmap(lambda y: _rhat_basic(_z_scale(y)))(
        jnp.stack([split, folded])
    )
    # Python's `max(bulk, tail)`: keeps `bulk` unless `tail` is larger.
    value = jnp.where(tail > bulk, tail, bulk)
    # Constant draws: no within-chain variance (ArviZ: NaN or rounding noise).
    value = jnp.where(sorted_[0] == sorted_[-1], jnp.nan, value)
    return _nan_if_invalid(x, value)


def _rhat_rank_presplit(x: Array) -> Array:
    """ArviZ's `_rhat_rank` after splitting every chain in two: `4K` pieces."""
    return _rhat_rank(_split_chains(x))


def _autocov_chain_mean(x: Array) -> Array:
    """Autocovariance at every lag, averaged over chains: `(K, N) -> (N,)`."""
    n = x.shape[1]
    m = 1 << (2 * n - 1).bit_length()  # next power of two >= 2n
    centred = x - jnp.mean(x, axis=1, keepdims=True)
    f = jnp.fft.rfft(centred, n=m, axis=1)
    acov = jnp.fft.irfft(f * jnp.conj(f), n=m, axis=1)[:, :n] / n
    return jnp.mean(acov, axis=0).astype(x.dtype)


def _ess_basic(x: Array) -> Array:
    """ArviZ's `_ess`: Geyer's initial positive and monotone sequence estimators."""
    k, n = x.shape
    dtype = x.dtype
    acov = _autocov_chain_mean(x)
    mean_var = acov[0] * n / (n - 1.0)
    var_plus = mean_var * (n - 1.0) / n
    if k > 1:
        var_plus = var_plus + jnp.var(jnp.mean(x, axis=1), ddof=1)
    rho = 1.0 - (mean_var - acov) / var_plus
    rho = rho.at[0].set(1.0)

    # Pair sums S_j = rho[2j] + rho[2j + 1], for j = 0, ..., J with 2J + 1 <= n - 2.
    num_pairs = max(n - 3, 0) // 2 + 1
    even = rho[0 : 2 * num_pairs : 2]
    odd = rho[1 : 2 * num_pairs : 2]
    pair = even + odd
    # Pair j >= 1 is visited iff all pairs before it are positive: `last` is the index
    # of the last visited pair (0 when none is).
    stop = jnp.concatenate([pair[:-1] <= 0, jnp.ones((1,), dtype=bool)])
    last = jnp.argmax(stop)
    # Initial monotone sequence on the pairs before `last`: a running minimum.
    monotone = jax.lax.cummin(pair, axis=0)
    before_last = jnp.arange(num_pairs) < last
    pair_sum = jnp.sum(jnp.where(before_last, monotone, jnp.zeros((), dtype)))
    # The last visited pair's even term counts once when it is positive, or when the
    # pair was kept (its sum is non-negative).
    last_even = even[last]
    last_term = jnp.where(
        (last_even > 0) | (pair[last] >= 0), last_even, jnp.zeros((), dtype)
    )
    tau = -1.0 + 2.0 * pair_sum + last_term
    size = k * n
    floor = 1.0 / math.log10(size)
    tau = jnp.where(floor > tau, floor, tau)
    ess = size / tau
    # ArviZ gives NaN if a kept autocorrelation is NaN, and the number of draws when
    # the input is constant.
    ess = jnp.where(jnp.any(jnp.isnan(rho)), jnp.nan, ess)
    constant = (jnp.max(x) - jnp.min(x)) < _CONSTANT_TOL
    return jnp.where(constant, float(size), ess).astype(dtype)


def _ess_bulk(x: Array) -> Array:
    if x.shape[1] < _MIN_DRAWS:
        return jnp.full((), jnp.nan, x.dtype)
    return _nan_if_invalid(x, _ess_basic(_z_scale(_split_chains(x))))


def _quantile_threshold(x: Array, sorted_: Array, prob: float) -> Array:
    """The threshold `t` with `x <= q` iff `x <= t`, for ArviZ's quantile `q` at `prob`.

    ArviZ uses `scipy.stats.mstats.mquantiles(x, prob, alphap=1, betap=1)`, type 7:
    `q = (1 - gamma) * a + gamma * b` for neighbours `a <= b` in the sorted draws,
    computed in float64 whatever the input dtype, so whether the draws equal to `a` or
    `b` count as `<= q` is decided by float64 rounding. In float64 the formula is
    replicated operation by operation. In lower precision the decision that float64
    arithmetic takes on such data is taken directly: with `gamma < 1` the draws
    `<= q` are those `<= a`. This agrees with ArviZ except when float64 rounding is
    all that separates `q` from `a` or `b`: neighbours a few float64 ulps apart, or
    `n * prob + 1 - prob` an integer that float64 misses by an ulp (for `prob=0.05`:
    `n = 20 j + 1` pooled draws, e.g. one chain of 101 draws). There ArviZ's answer
    is rounding noise, and the tail ESS of float32 input can differ from it.
    """
    n = sorted_.size
    # Static: computed in Python floats exactly as scipy computes them in float64.
    aleph = n * prob + (1.0 - prob)
    k = math.floor(min(max(aleph, 1), n - 1))
    gamma = min(max(aleph - k, 0.0), 1.0)
    if x.dtype == jnp.float64:
        return (1.0 - gamma) * sorted_[k - 1] + gamma * sorted_[k]
    return sorted_[k] if gamma == 1.0 else sorted_[k - 1]


def _ess_tail(x: Array) -> Array:
    if x.shape[1] < _MIN_DRAWS:
        return jnp.full((), jnp.nan, x.dtype)
    sorted_ = jnp.sort(x.reshape(-1))
    low = _quantile_threshold(x, sorted_, 0.05)
    high = _quantile_threshold(x, sorted_, 0.95)
    indicators = jnp.stack([x <= low, x <= high]).astype(x.dtype)
    # Both ESS batched (one copy of the computation to compile).
    low_ess, high_ess = jax.vmap(lambda y: _ess_basic(_split_chains(y)))(indicators)
    # Python's `min(low_ess, high_ess)`.
    return _nan_if_invalid(x, jnp.where(high_ess < low_ess, high_ess, low_ess))


def _mcse_mean(x: Array) -> Array:
    if x.shape[1] < _MIN_DRAWS:
        return jnp.full((), jnp.nan, x.dtype)
    ess = _ess_basic(_split_chains(x))
    # Exactly zero for constant draws (ArviZ: rounding noise).
    sd = jnp.where(jnp.max(x) == jnp.min(x), 0.0, jnp.std(x, ddof=1))
    return _nan_if_invalid(x, sd / jnp.sqrt(ess))


#
# Public API.
#


def rhat(
    chain: Shaped[ArrayLike, "..."],
    strategy: str = "auto",
) -> Float[Array, "*p"]:
    r"""Rank-normalised split-$\hat{R}$ with folding (Vehtari et al. 2021).

    The maximum of the *bulk* $\hat{R}$, computed on the rank-normalised split
    chains, and the *tail* $\hat{R}$, computed on the rank-normalised folded draws
    $|x - \operatorname{median}(x)|$. Each is the classic

    $$\hat{R} = \sqrt{\frac{B / W + n - 1}{n}},$$

    with $n$ draws per split chain, $B$ the between-chain variance ($n$ times the
    variance of the split-chain means) and $W$ the mean within-chain variance. Values
    above about 1.01 indicate that the chains have not mixed.

    With two or more chains this equals `arviz.rhat(..., method="rank")` to
    floating-point precision; with one chain it is ArviZ's formula applied to that
    chain (ArviZ itself returns NaN).

    **Arguments:**

    - `chain`: draws of shape `(chain, draw, *p)`: `K` chains of `N` draws of a
        parameter of shape `*p`.
    - `strategy`: how to treat the chains:
        - `"multichain"`: ArviZ's rank $\hat{R}$: every chain is split in two halves
            (`2K` pieces; with `N` odd the middle draw is dropped). Needs `K >= 2`.
        - `"split"`: with `K >= 2`, every chain is first split in two (`K -> 2K`
            chains of `N // 2` draws) and then ArviZ's rank $\hat{R}$ is applied,
            which splits once more: `4K` pieces, sensitive to drift within a chain.
            With `K == 1`, the single chain is split in two halves (as ArviZ's
            formula does internally) and the halves are compared.
        - `"auto"` (default): `"multichain"` when `K >= 2`, `"split"` when `K == 1`.

        Must be known at trace time: under `jax.jit` pass it as a static argument.

    **Returns:**

    An array of shape `*p`, in the floating dtype of `chain`. NaN where the draws
    contain a NaN, where there are fewer than 4 draws per (pre-split) chain, or where
    a component is constant.

    **Raises:**

    `ValueError` if `chain.ndim < 2`, if `strategy` is unknown, or if
    `strategy="multichain"` and there is a single chain.

    !!! Example

        ```python
        import jax.random as jr
        import eqbayes.diagnostics as ebd

        draws = jr.normal(jr.key(0), (4, 1000, 3))  # 4 chains, 1000 draws, 3 params
        ebd.rhat(draws)  # shape (3,), all close to 1.0
        ebd.rhat(draws[:1])  # one chain: compares its two halves
        ```
    """
    x = _as_float(chain, "rhat")
    if strategy not in _STRATEGIES:
        raise ValueError(_STRATEGY_MSG.format(strategy=strategy))
    num_chains = x.shape[0]
    if strategy == "multichain" and num_chains < 2:
        raise ValueError(_MULTICHAIN_MSG.format(shape=x.shape))
    if strategy == "split" and num_chains >= 2:
        return _vectorise(_rhat_rank_presplit, x)
    return _vectorise(_rhat_rank, x)


def ess(chain: Shaped[ArrayLike, "..."]) -> Float[Array, "*p"]:
    r"""Bulk effective sample size (Vehtari et al. 2021).

    The draws are split in halves (the middle draw dropped when `N` is odd),
    rank-normalised over all chains together, and the autocorrelation time

    $$\hat{\tau} = -1 + 2 \sum_{t} \hat{\rho}_t$$

    is estimated with FFT autocovariances and Geyer's initial positive and initial
    monotone sequences; $\text{ESS} = K' N' / \hat{\tau}$ for $K'$ split chains of
    $N'$ draws (with $\hat\tau \geq 1 / \log_{10}(K' N')$). Equals
    `arviz.ess(..., method="bulk")` to floating-point precision, for one chain too.

    **Arguments:**

    - `chain`: draws of shape `(chain, draw, *p)`.

    **Returns:**

    An array of shape `*p`, in the floating dtype of `chain`. NaN where the draws
    contain a NaN or there are fewer than 4 draws; the number of (split) draws where a
    component is constant.

    **Raises:**

    `ValueError` if `chain.ndim < 2`.

    !!! Example

        ```python
        import jax.random as jr
        import eqbayes.diagnostics as ebd

        draws = jr.normal(jr.key(0), (4, 1000))
        ebd.ess(draws)  # about 4000 for independent draws
        ```
    """
    return _vectorise(_ess_bulk, _as_float(chain, "ess"))


def ess_tail(chain: Shaped[ArrayLike, "..."]) -> Float[Array, "*p"]:
    r"""Tail effective sample size (Vehtari et al. 2021).

    The minimum of the effective sample sizes of the indicators $x \leq q_{0.05}$
    and $x \leq q_{0.95}$ (quantiles of type 7, over all chains), each computed on
    split chains without rank normalisation. Use it to judge how well the draws
    estimate tail quantities such as 90% intervals. Equals
    `arviz.ess(..., method="tail")` to floating-point precision.

    ArviZ computes in float64. With float32 input, two discrete choices can come out
    differently from ArviZ's, since they hinge on rounding errors: (i) when
    `N_total * 0.05 + 0.95` is an integer (`N_total = 20 j + 1` pooled draws, such as
    a single chain of 101 draws), ArviZ's float64 quantile sits one rounding error
    away from a draw, and whether that draw counts is rounding noise; (ii) the sums of
    pairs of autocorrelations of 0/1 indicators are often exactly zero in exact
    arithmetic, and Geyer's truncation then depends on the sign of the rounding error
    (about one component in a thousand for chains of a hundred draws). The tail ESS
    then differs by up to a few percent. Float64 input reproduces ArviZ's arithmetic.

    **Arguments:**

    - `chain`: draws of shape `(chain, draw, *p)`.

    **Returns:**

    An array of shape `*p`, in the floating dtype of `chain`.

    **Raises:**

    `ValueError` if `chain.ndim < 2`.

    !!! Example

        ```python
        import jax.random as jr
        import eqbayes.diagnostics as ebd

        draws = jr.normal(jr.key(0), (4, 1000, 2))
        ebd.ess_tail(draws)  # shape (2,)
        ```
    """
    return _vectorise(_ess_tail, _as_float(chain, "ess_tail"))


def mcse_mean(chain: Shaped[ArrayLike, "..."]) -> Float[Array, "*p"]:
    r"""Monte Carlo standard error of the posterior mean.

    $\operatorname{sd}(x) / \sqrt{\text{ESS}_\text{mean}}$, with the standard
    deviation over all draws (`ddof=1`) and the effective sample size of the split
    chains *without* rank normalisation. Equals `arviz.mcse(..., method="mean")` to
    floating-point precision.

    **Arguments:**

    - `chain`: draws of shape `(chain, draw, *p)`.

    **Returns:**

    An array of shape `*p`, in the floating dtype of `chain`.

    **Raises:**

    `ValueError` if `chain.ndim < 2`.

    !!! Example

        ```python
        import jax.random as jr
        import eqbayes.diagnostics as ebd

        draws = jr.normal(jr.key(0), (4, 1000))
        ebd.mcse_mean(draws)  # about 1 / sqrt(4000)
        ```
    """
    return _vectorise(_mcse_mean, _as_float(chain, "mcse_mean"))
