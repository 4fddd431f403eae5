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
# # Comparing models with LOO
#
# Two models fit the same data: which one predicts new data better? Leave-one-out
# cross-validation (LOO) answers without refitting: Pareto-smoothed importance
# sampling (PSIS-LOO) reweights the posterior draws to estimate, for every
# observation, how well the model would have predicted it had it been left out.
# ArviZ computes it from one thing eqbayes cannot guess: the log-likelihood of each
# observation at each draw.
#
# This tutorial fits a straight line and a quadratic to data with a curved trend,
# exports both posteriors with their pointwise log-likelihoods, compares them with
# `az.loo` and `az.compare`, and checks the better one with posterior predictive
# draws.

# %%
import arviz as az
import blackjax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import matplotlib.pyplot as plt
import numpy as np

import eqbayes as eb


# %% [markdown]
# ## Data and models
#
# Sixty points from a quadratic trend with Gaussian noise of unknown scale.
# A model is a polynomial with its coefficients and the log of the noise scale,
# all sampled.

# %%
N = 60
x = jnp.linspace(-1.0, 1.0, N)
y = 0.5 + x - 1.5 * x**2 + 0.3 * jr.normal(jr.key(0), (N,))


class Polynomial(eqx.Module):
    coef: jax.Array  # (degree + 1,): constant, linear, quadratic, ...
    log_sigma: jax.Array

    def __call__(self, x):
        powers = x ** jnp.arange(self.coef.shape[0], dtype=x.dtype)
        return powers @ self.coef


# %% [markdown]
# ## The loss and the per-observation log-likelihood
#
# A chain targets $-s \cdot \text{loss} + \log p(\theta)$, with $s$ the
# `likelihood_scale`. Written as the mean negative log-likelihood per observation
# (dropping the constant $\tfrac12 \log 2\pi$), the loss with $s = N$ is exactly
# the Gaussian likelihood, including the $\log\sigma$ term that lets $\sigma$ be
# sampled.
#
# For LOO, write the same likelihood for one observation, a row `(x_i, y_i)` of the
# data: then $\sum_i$ `log_lik(model, row_i)` $= -s\cdot$`loss(model, x, y)`
# $- \tfrac{N}{2}\log 2\pi$. (The constant does not change the posterior; keeping it
# makes the elpd a proper log predictive density, comparable across likelihoods.)


# %%
def loss(model, x, y):
    sigma = jnp.exp(model.log_sigma)
    residual = jax.vmap(model)(x) - y
    return jnp.mean(0.5 * (residual / sigma) ** 2 + model.log_sigma)


def log_lik(model, row):
    x_i, y_i = row
    return jax.scipy.stats.norm.logpdf(y_i, model(x_i), jnp.exp(model.log_sigma))


def fit(degree, key):
    model = Polynomial(jnp.zeros(degree + 1), jnp.zeros(()))
    marked = eb.bayesian(
        model,
        blackjax.nuts,
        warmup=500,
        keep=500,
        num_chains=4,
        init_jitter=0.1,
        likelihood_scale=N,
        prior=eb.priors.gaussian(5.0),
    )
    return eb.Solver(loss, progress=False).run(marked, key=key, args=(x, y))


line = fit(1, jr.key(1))
quadratic = fit(2, jr.key(2))
print(quadratic.posterior.summary())

# %% [markdown]
# The relation between the two, at one draw of the quadratic:

# %%
posterior = quadratic.posterior
ll = posterior.log_likelihood(log_lik, (x, y))  # (chains, draws, observations)
draw = eqx.combine(jax.tree.map(lambda s: s[0, 0], posterior.samples), posterior.model)
print(ll.shape)
print(jnp.sum(ll[0, 0]), -N * loss(draw, x, y) - N / 2 * jnp.log(2 * jnp.pi))

# %% [markdown]
# ## LOO and the comparison
#
# `to_arviz(log_likelihood=fn, data=data)` evaluates `fn` at every row and draw
# (batched over draws, like `predict`) and adds the `log_likelihood` and
# `observed_data` groups; the log-likelihoods reach ArviZ as float64, which PSIS
# needs. Naming the function `{"y": log_lik}` and the observations
# `observed_data={"y": y}` gives both the name `y`.
#
# New observations for a posterior predictive check come from `predict` with a
# key: `fn` then receives a fresh key for every draw, to add the noise.


# %%
def simulate(model, x, *, key):
    mean = jax.vmap(model)(x)
    return mean + jnp.exp(model.log_sigma) * jr.normal(key, mean.shape)


def to_arviz(result, key):
    y_rep = result.posterior.predict(simulate, x, key=key)
    return result.posterior.to_arviz(
        {"y": log_lik},
        (x, y),
        observed_data={"y": y},
        posterior_predictive={"y": y_rep},
    )


idata = {"line": to_arviz(line, jr.key(3)), "quadratic": to_arviz(quadratic, jr.key(4))}
print(az.loo(idata["quadratic"]))

# %% [markdown]
# `az.compare` ranks the models by expected log predictive density (elpd): the
# quadratic wins by many standard errors of the difference (`dse`), and all its
# Pareto $k$ values are small, so the estimate can be trusted.

# %%
comparison = az.compare(idata)
print(comparison[["elpd_diff", "dse"]])

# %% [markdown]
# ## Posterior predictive check
#
# Simulated data sets from the posterior should look like the real one. ArviZ's
# PPC plot overlays their densities on the data's (`az.plot_ppc` in ArviZ 0.2x,
# `az.plot_ppc_dist` in 1.x); beside it, the 90 % band of new observations along
# $x$ for each model: the line's band misses the curvature at both ends.

# %%
if hasattr(az, "plot_ppc_dist"):  # ArviZ 1.x
    az.plot_ppc_dist(idata["quadratic"])
else:
    az.plot_ppc(idata["quadratic"], num_pp_samples=100)
plt.show()

fig, axes = plt.subplots(1, 2, figsize=(10, 3.5), sharey=True)
for ax, name in zip(axes, ["line", "quadratic"]):
    y_rep = np.asarray(idata[name].posterior_predictive["y"]).reshape(-1, N)
    lo, hi = np.quantile(y_rep, [0.05, 0.95], axis=0)
    ax.fill_between(x, lo, hi, alpha=0.3, label="90% of new observations")
    ax.plot(x, y, "k.", label="data")
    ax.set_title(name)
    ax.set_xlabel("x")
axes[0].legend()
plt.show()
