"""Plots for people who would rather look: predictive bands, traces and ranks.

Needs matplotlib (`pip install 'eqbayes[plot]'`), imported when a plot is drawn,
never at `import eqbayes`. Every function returns the matplotlib object it drew on,
so a figure can be adjusted and saved as usual. For headless use (scripts, CI),
select a non-interactive backend first: `matplotlib.use("Agg")`.
"""

from typing import Any

import numpy as np
from jaxtyping import ArrayLike

from ._posterior import Posterior
from ._summary import variables_by_group


__all__ = ["predictive", "trace"]

_NO_MATPLOTLIB = "`eqbayes.plot` needs matplotlib: `pip install 'eqbayes[plot]'`."
_INTERVAL = (
    "`eb.plot.predictive(..., interval={value!r})`: `interval` must be a number "
    "strictly between 0 and 1, e.g. `0.9` for the 5%-95% band."
)
_SHAPES = (
    "`eb.plot.predictive(x, predictions)`: `predictions` must have the draws first "
    "and `x`'s length last, `(chain, draw, n)` or `(draw, n)`; got `x` of shape "
    "{x} and `predictions` of shape {p}."
)
_GROUP = (
    "`eb.plot.trace(posterior, group={group!r})`: no sampled group of that name. "
    "The groups are: {names}."
)
_NO_CHAIN = (
    "`eb.plot.trace(posterior)`: the posterior has no sampled leaves, so there is "
    "no chain to plot. Mark a sub-tree with `eb.bayesian(...)`."
)


def _pyplot():
    try:
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise ImportError(_NO_MATPLOTLIB) from err
    return plt


def predictive(
    x: ArrayLike,
    predictions: ArrayLike,
    *,
    data: tuple[ArrayLike, ArrayLike] | None = None,
    interval: float = 0.9,
    ax: Any = None,
    color: str = "C0",
    label: str = "posterior",
) -> Any:
    """Plots a predictive band: the data, the posterior mean and a central interval.

    **Arguments:**

    - `x`: the inputs, shape `(n,)`.
    - `predictions`: predictions at `x` for every draw, `(chain, draw, n)` (as
        [`eqbayes.Posterior.predict`][] returns them) or `(draw, n)`.
    - `data`: optional observations `(x_obs, y_obs)`, drawn as points.
    - `interval`: the central probability of the band (`0.9`: from the 5% to the
        95% quantile over all chains and draws).
    - `ax`: the matplotlib axes to draw on; by default a new figure's.
    - `color`, `label`: of the mean line and the band.

    **Returns:**

    The matplotlib axes.

    !!! Example

        ```python
        preds = result.posterior.predict(lambda m, x: jax.vmap(m)(x), x_grid)
        ax = eb.plot.predictive(x_grid, preds[..., 0], data=(x, y))
        ax.figure.savefig("bands.png")
        ```
    """
    if isinstance(interval, bool) or not (
        isinstance(interval, (int, float)) and 0 < interval < 1
    ):
        raise ValueError(_INTERVAL.format(value=interval))
    xs = np.asarray(x)
    preds = np.asarray(predictions)
    if xs.ndim != 1 or preds.ndim not in (2, 3) or preds.shape[-1] != xs.shape[0]:
        raise ValueError(_SHAPES.format(x=xs.shape, p=preds.shape))
    preds = preds.reshape(-1, xs.shape[0])
    plt = _pyplot()
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 4))
    tail = (1 - interval) / 2
    lo, hi = np.quantile(preds, [tail, 1 - tail], axis=0)
    percent = f"{100 * interval:.3g}%"
    ax.fill_between(
        xs, lo, hi, color=color, alpha=0.3, lw=0, label=f"{label} {percent} band"
    )
    ax.plot(xs, preds.mean(axis=0), color=color, lw=1.5, label=f"{label} mean")
    if data is not None:
        ax.plot(
            np.asarray(data[0]), np.asarray(data[1]), ".", color="k", ms=3, label="data"
        )
    ax.legend()
    return ax


def _components(chains: dict[str, Any], limit: int):
    out = []
    for name, chain in chains.items():
        chain = np.asarray(chain)
        flat = chain.reshape(*chain.shape[:2], -1)
        for i, index in enumerate(np.ndindex(*chain.shape[2:])):
            label = name if not index else f"{name}[{', '.join(map(str, index))}]"
            out.append((label, flat[:, :, i]))
            if len(out) == limit:
                return out
    return out


def trace(
    posterior: Posterior,
    group: str | None = None,
    *,
    max_components: int = 6,
    bins: int = 20,
) -> Any:
    """Plots, per sampled component, the trace of every chain and its rank plot.

    Left: each chain's draws in order (well-mixed chains look like overlapping
    noise, with no trends). Right: the rank plot (Vehtari et al. 2021): the draws
    of all chains are ranked together and each chain's ranks are binned; for
    chains sampling the same distribution every histogram is flat, near the
    dashed line.

    **Arguments:**

    - `posterior`: a [`eqbayes.Posterior`][].
    - `group`: the group to plot (its name, as in `posterior.diagnostics`); by
        default every sampled leaf.
    - `max_components`: plot at most this many components (rows), in the
        model's order.
    - `bins`: bins of the rank histograms.

    **Returns:**

    The matplotlib figure.

    !!! Example

        ```python
        fig = eb.plot.trace(result.posterior)
        fig.savefig("trace.png")
        ```
    """
    groups = variables_by_group(posterior.samples, posterior.labels)
    if group is None:
        chains = {k: v for g in groups.values() for k, v in g.items()}
    elif group in groups:
        chains = groups[group]
    else:
        names = ", ".join(f"'{n}'" for n in groups) or "none"
        raise ValueError(_GROUP.format(group=group, names=names))
    rows = _components(chains, max(1, int(max_components)))
    if not rows:
        raise ValueError(_NO_CHAIN)
    plt = _pyplot()
    fig, axes = plt.subplots(
        len(rows),
        2,
        figsize=(9, 1.9 * len(rows)),
        squeeze=False,
        gridspec_kw={"width_ratios": (2, 1)},
    )
    for (label, draws), (left, right) in zip(rows, axes):
        num_chains, num_draws = draws.shape
        for k in range(num_chains):
            left.plot(draws[k], lw=0.6, alpha=0.8, color=f"C{k % 10}")
        left.set_ylabel(label)
        ranks = np.argsort(np.argsort(draws.ravel(), kind="stable"), kind="stable")
        ranks = ranks.reshape(draws.shape)
        edges = np.linspace(0, draws.size, bins + 1)
        for k in range(num_chains):
            counts, _ = np.histogram(ranks[k], bins=edges)
            right.stairs(counts, edges, color=f"C{k % 10}", lw=1)
        right.axhline(num_draws / bins, color="k", ls="--", lw=0.8)
        right.set_ylim(bottom=0)
        right.set_yticks([])
    axes[0, 0].set_title("trace (one colour per chain)")
    axes[0, 1].set_title("rank plot")
    axes[-1, 0].set_xlabel("draw")
    axes[-1, 1].set_xlabel("rank over all chains")
    fig.tight_layout()
    return fig
