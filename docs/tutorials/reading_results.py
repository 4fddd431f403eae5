# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Reading results
#
# A solve hands back thousands of numbers per parameter. This tutorial shows the
# three ways eqbayes gives you to read them:
#
# - `result.posterior.summary()`: one row per sampled number, with its mean,
#   spread, quantiles and convergence diagnostics, and the kernel's health beneath;
# - `result.posterior.to_arviz()`: the same chain as an `arviz.InferenceData`, for
#   everything ArviZ can do;
# - `eqbayes.plot`: a predictive band and trace/rank plots.
#
# The example is a small neural network whose last layer is Bayesian: a fixed random
# hidden layer of 8 tanh features, and a posterior over the output weights and bias.

# %%
import arviz as az
import blackjax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import matplotlib.pyplot as plt

import eqbayes as eb


# %% [markdown]
# ## The model and the solve
#
# Data: $y = \sin(3x) + \varepsilon$ at 40 points, with noise of standard deviation
# 0.1. `likelihood_scale` $= N / (2\sigma^2)$ turns the mean squared error into the
# Gaussian log-likelihood (see [Getting started](../getting_started/)).

# %%
NOISE = 0.1
x = jnp.linspace(-1.0, 1.0, 40)[:, None]
y = jnp.sin(3 * x) + NOISE * jr.normal(jr.key(0), x.shape)

net = eqx.nn.MLP(1, 1, width_size=8, depth=1, activation=jnp.tanh, key=jr.key(1))


def loss(model, x, y):
    return jnp.mean((jax.vmap(model)(x) - y) ** 2)


marked = eb.bayesian(
    net,
    blackjax.nuts,
    where=lambda m: m.layers[-1],
    prior=eb.priors.gaussian(1.0),
    num_chains=4,
    warmup=300,
    keep=500,
    init_jitter=0.1,
    # The tanh features overlap, so the output weights are strongly correlated: a
    # dense inverse mass matrix (adapted during warmup; what `metric="auto"` picks
    # for 9 weights) keeps NUTS's paths short.
    metric="dense",
    likelihood_scale=x.shape[0] / (2 * NOISE**2),
)
result = eb.Solver(loss, progress=False).run(marked, key=jr.key(2), args=(x, y))

# %% [markdown]
# ## The summary table
#
# Rows are named after where the numbers live in the model: `layers[1].weight[0, 3]`
# is entry `(0, 3)` of the weight of `layers[1]`. (A group marked with `name=` is
# labelled by that name instead.) The columns:
#
# - `mean`, `sd` and the 5 %, 50 % and 95 % quantiles over all chains and draws;
# - `mcse_mean`: the Monte Carlo standard error of the mean, how far the chain's
#   mean may be from the exact posterior mean;
# - `ess_bulk` and `ess_tail`: effective sample sizes for the centre of the
#   distribution and for its 5 % / 95 % tails (aim for a few hundred at least);
# - `r_hat`: rank-normalised split $\hat{R}$ (below 1.01 when the chains agree).
#
# Beneath the table, one line per group on its kernel: divergent transitions,
# acceptance rate, energy and the leapfrog steps per draw.

# %%
summary = result.posterior.summary()
print(summary)

# %% [markdown]
# The table is also data. `to_dict()` gives NumPy arrays (no pandas needed), so a
# check can be one line; `to_pandas()` gives a `DataFrame` when pandas is installed.
# `quantiles=` picks other quantiles.

# %%
table = summary.to_dict()
print(
    "worst R-hat:", table["r_hat"].max(), " smallest tail ESS:", table["ess_tail"].min()
)
result.posterior.summary(quantiles=(0.025, 0.975)).to_pandas().head(3)

# %% [markdown]
# ## ArviZ
#
# `to_arviz()` returns an `arviz.InferenceData`: one posterior variable per sampled
# leaf, with dimensions `(chain, draw, ...)`, and the kernel's `diverging`,
# `acceptance_rate` and `energy` in `sample_stats`. ArviZ's own summary agrees with
# eqbayes's (its default interval is the 94 % highest-density interval rather than
# quantiles).

# %%
idata = result.posterior.to_arviz()
az.summary(idata, var_names=["layers[1].bias"])

# %%
az.plot_energy(idata)
plt.show()

# %% [markdown]
# ## Plots
#
# `eb.plot.trace` draws every chain's trace (left) and the rank plot (right): the
# draws of all chains are ranked together and each chain's ranks binned; chains that
# sample the same distribution give flat histograms around the dashed line. Pass a
# group's name to plot only that group, and `max_components=` to plot more rows.

# %%
eb.plot.trace(result.posterior, max_components=3)
plt.show()

# %% [markdown]
# `eb.plot.predictive` draws a predictive band: the data, the posterior mean and a
# central interval of the predictions over all chains and draws — here the
# network's output on a grid, from `posterior.predict` (the mean of the
# predictions, not the prediction at the mean weights).

# %%
x_grid = jnp.linspace(-1.5, 1.5, 200)[:, None]
preds = result.posterior.predict(
    lambda m, x: jax.vmap(m)(x), x_grid
)  # (4, 500, 200, 1)
ax = eb.plot.predictive(x_grid[:, 0], preds[..., 0], data=(x[:, 0], y[:, 0]))
ax.set_xlabel("x")
ax.set_ylabel("y")
plt.show()

# %% [markdown]
# Outside the data ($|x| > 1$) the band widens: the posterior knows less there.
# Every plotting function returns its matplotlib axes or figure, so a plot can be
# adjusted and saved (`ax.figure.savefig(...)`); in a script without a display, call
# `matplotlib.use("Agg")` first.
