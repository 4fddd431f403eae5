"""Checks that a sampler is right: simulation-based calibration.

[`eqbayes.testing.sbc`][] runs simulation-based calibration (Talts, Betancourt,
Simpson, Vehtari & Gelman 2018): draw parameters from the prior, simulate data from
them, fit the posterior to that data, and record the rank of the true parameter
among the posterior draws. When the fit is exact, every rank 0..L is equally
likely, whatever the model; a sampler that is too narrow gives a U-shaped rank
histogram, one that is too wide a hump, a biased one a slope.

matplotlib (for [`eqbayes.testing.SBCResult.plot`][]) is imported only when a plot
is drawn.
"""

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, Float, Int, PRNGKeyArray, PyTree


__all__ = ["sbc", "SBCResult"]

_BINS = (
    "`eqbayes.testing.sbc(..., num_draws={L}, num_bins={B})`: the {n} possible ranks "
    "0..{L} must split evenly into the bins; pick `num_draws + 1` a multiple of "
    "`num_bins` (e.g. num_draws={suggest})."
)
_FEW_DRAWS = (
    "`eqbayes.testing.sbc(...)`: `fit` returned {n} draws per parameter, fewer than "
    "`num_draws={L}`. Run longer chains or lower `num_draws`."
)
_STRUCTURE = (
    "`eqbayes.testing.sbc(...)`: `fit` returned draws for {got} array leaves, but "
    "`prior_draw` returned {want}. `fit` must return the posterior draws with the "
    "structure of the parameters (e.g. `result.posterior.samples`, whose leaves "
    "that are not sampled are None)."
)
_NO_MATPLOTLIB = "`SBCResult.plot` needs matplotlib: `pip install 'eqbayes[plot]'`."


class SBCResult(eqx.Module):
    """The ranks of a simulation-based calibration and their uniformity test.

    **Fields:**

    - `ranks`: `(num_simulations, d)`, the rank of each true scalar parameter
        among its `num_draws` posterior draws (0..num_draws), per simulation.
    - `labels`: the d components' names (`"a"`, `"w[0, 1]"`, ...).
    - `num_draws`: L; the ranks take the values 0..L.
    - `num_bins`: the bins of the histograms and of the chi-square test.
    - `chi2`: `(d,)`, Pearson's chi-square statistic of each component's binned
        ranks against the uniform distribution (`num_bins - 1` degrees of freedom).
    - `p_values`: `(d,)`, their p-values.
    """

    ranks: Int[Array, "simulation component"]
    labels: tuple[str, ...] = eqx.field(static=True)
    num_draws: int = eqx.field(static=True)
    num_bins: int = eqx.field(static=True)
    chi2: Float[Array, " component"]
    p_values: Float[Array, " component"]

    def passed(self, alpha: float = 0.01) -> bool:
        """Whether no component's rank histogram is non-uniform at level `alpha`
        (Bonferroni-corrected over the d components: every p-value above
        `alpha / d`). A correct sampler fails with probability at most `alpha`."""
        d = self.p_values.shape[0]
        return bool(jnp.all(self.p_values > alpha / d))

    def histograms(self) -> Int[Array, "component bin"]:
        """The rank counts per bin, `(d, num_bins)`."""
        return _histograms(self.ranks, self.num_draws, self.num_bins)

    def plot(self, axes: Any = None) -> Any:
        """Rank histograms, one panel per component, with the band that 99 % of
        a uniform histogram's bins fall in (binomial quantiles). Returns the
        matplotlib figure."""
        try:
            import matplotlib.pyplot as plt
        except ImportError as err:
            raise ImportError(_NO_MATPLOTLIB) from err
        counts = np.asarray(self.histograms())
        d = counts.shape[0]
        if axes is None:
            _, axes = plt.subplots(1, d, figsize=(3 * d, 2.6), squeeze=False)
            axes = axes[0]
        n = self.ranks.shape[0]
        p = 1 / self.num_bins
        sd = np.sqrt(n * p * (1 - p))
        for ax, c, label, pv in zip(axes, counts, self.labels, self.p_values):
            ax.axhspan(n * p - 2.58 * sd, n * p + 2.58 * sd, color="0.85", lw=0)
            ax.axhline(n * p, color="0.5", lw=1)
            ax.bar(np.arange(self.num_bins), c, width=0.9, color="C0")
            ax.set_title(f"{label}  (p = {float(pv):.2g})")
            ax.set_xlabel("rank bin")
            ax.set_yticks([])
        return axes[0].figure


def _histograms(ranks, num_draws: int, num_bins: int) -> Array:
    width = (num_draws + 1) // num_bins
    bins = np.asarray(ranks) // width
    return jnp.asarray(np.stack([np.bincount(b, minlength=num_bins) for b in bins.T]))


def _labels(tree: PyTree) -> list[str]:
    labels = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        name = jax.tree_util.keystr(path).lstrip(".") or "theta"
        shape = np.shape(leaf)
        if shape == ():
            labels.append(name)
        else:
            labels += [f"{name}[{', '.join(map(str, i))}]" for i in np.ndindex(shape)]
    return labels


def _flat_draws(samples: PyTree) -> np.ndarray:
    """`(n, d)`: the draws of every chain pooled (chains concatenated)."""
    columns = []
    for leaf in jax.tree.leaves(samples):
        x = np.asarray(leaf)
        columns.append(x.reshape(x.shape[0] * x.shape[1], -1))
    return np.concatenate(columns, axis=1)


def sbc(
    prior_draw: Callable[[PRNGKeyArray], PyTree],
    simulate: Callable[[PRNGKeyArray, PyTree], Any],
    fit: Callable[[PRNGKeyArray, Any], PyTree],
    *,
    key: PRNGKeyArray,
    num_simulations: int = 200,
    num_draws: int = 99,
    num_bins: int = 10,
) -> SBCResult:
    """Simulation-based calibration of a posterior fit (Talts et al. 2018).

    For each of `num_simulations` rounds: `theta = prior_draw(k1)`,
    `data = simulate(k2, theta)`, `draws = fit(k3, data)`; then `num_draws` draws
    evenly spaced over the pooled chains, and the rank of each scalar component of
    `theta` among them (the number of draws below it). The ranks of an exact fit
    are uniform on 0..num_draws: Pearson's chi-square test over `num_bins` bins
    checks it per component.

    Ranks are uniform only if the L draws are close to independent: take
    `num_draws` at most the fit's effective sample size (the draws are thinned
    evenly, so a longer chain helps), or the histogram of even an exact sampler
    looks too narrow or too wide.

    **Arguments:**

    - `prior_draw`: `key -> theta`, a draw from the prior the fit uses (a pytree
        with the structure of the sampled parameters, e.g. the marked sub-tree).
    - `simulate`: `(key, theta) -> data`, a data set drawn from the model.
    - `fit`: `(key, data) -> draws`, the posterior draws for `data`, leaves
        `(K, N, *leaf)` with the structure of `theta` (None leaves are skipped):
        usually `eb.Solver(loss).run(model, key=key, args=data).posterior.samples`
        of a marked model. The fit may be any kernel, VI, or anything else.
    - `key`: a `jax.random.key`.
    - `num_simulations`: rounds. The test's power grows with it: on a
        two-parameter regression, 200 rounds flagged posterior draws whose sd was
        20 % off in about half of the trials and 30 % too wide in 4 of 5; smaller
        errors need more rounds.
    - `num_draws`: L, the draws each rank is taken among.
    - `num_bins`: histogram bins; `num_draws + 1` must be a multiple of it.

    **Returns:**

    An [`eqbayes.testing.SBCResult`][]: the ranks, the chi-square statistics and
    p-values, `.passed()` and `.plot()`.

    !!! Example

        ```python
        def fit(key, data):
            result = eb.Solver(loss, progress=False).run(model, key=key, args=data)
            return result.posterior.samples

        out = eqbayes.testing.sbc(prior_draw, simulate, fit, key=jax.random.key(0))
        assert out.passed()
        out.plot()
        ```
    """
    if (num_draws + 1) % num_bins:
        suggest = num_bins * max(1, round((num_draws + 1) / num_bins)) - 1
        raise ValueError(
            _BINS.format(L=num_draws, B=num_bins, n=num_draws + 1, suggest=suggest)
        )
    ranks, labels = [], None
    for k in jr.split(key, num_simulations):
        k_prior, k_data, k_fit = jr.split(k, 3)
        theta = prior_draw(k_prior)
        data = simulate(k_data, theta)
        draws = _flat_draws(fit(k_fit, data))
        truth = np.concatenate([np.ravel(x) for x in jax.tree.leaves(theta)])
        if labels is None:
            labels = tuple(_labels(theta))
        if draws.shape[1] != truth.size:
            raise ValueError(_STRUCTURE.format(got=draws.shape[1], want=truth.size))
        if draws.shape[0] < num_draws:
            raise ValueError(_FEW_DRAWS.format(n=draws.shape[0], L=num_draws))
        index = np.linspace(0, draws.shape[0] - 1, num_draws).round().astype(int)
        ranks.append(np.sum(draws[index] < truth, axis=0))
    ranks = jnp.asarray(np.stack(ranks))
    counts = np.asarray(_histograms(ranks, num_draws, num_bins))
    expected = num_simulations / num_bins
    chi2 = np.sum((counts - expected) ** 2, axis=1) / expected
    # The chi-square survival function with num_bins - 1 degrees of freedom.
    dof = np.full_like(chi2, (num_bins - 1) / 2)
    p_values = jax.scipy.special.gammaincc(jnp.asarray(dof), jnp.asarray(chi2 / 2))
    chi2 = jnp.asarray(chi2)
    assert labels is not None
    return SBCResult(ranks, labels, num_draws, num_bins, chi2, p_values)
