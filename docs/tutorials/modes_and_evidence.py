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
# # Several modes, and which model?
#
# A Markov chain explores the mode it falls into. When a posterior has several
# well-separated modes, each NUTS chain stays in one of them: the chains disagree
# (R-hat far above 1) or, worse, agree by chance on one mode, and nothing in the
# draws says how much mass each mode holds.
#
# Tempered sequential Monte Carlo (SMC) starts from many particles drawn from the
# prior and moves them through the tempered posteriors
#
# $$\pi_\lambda(\theta) \propto p(\theta)\, p(y \mid \theta)^\lambda,
#     \qquad \lambda: 0 \to 1,$$
#
# reweighting, resampling and moving them (by HMC) at each stage. The particles
# see every mode the prior reaches, each with its mass, and the stages' weights
# multiply up to the **evidence** $p(y)$, the quantity that compares models by
# Bayes factor. In eqbayes it is one more kind of group: `eb.smc`.
#
# This tutorial shows both uses: a posterior with two modes, then two forward
# models for the same data compared by their evidence and by LOO.

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
# ## Two modes
#
# Ten observations $y_j = \theta^2 + \varepsilon_j$, $\varepsilon_j \sim
# N(0, 0.5^2)$, near 4, with the prior $\theta \sim N(0, 3^2)$. Only $\theta^2$ is
# identified: the posterior has two modes, at $\theta \approx \pm 2$, of equal
# mass.
#
# For the evidence to mean $p(y)$, the densities must be normalised: the loss is
# the **full** negative log-likelihood, constants included, and the prior comes
# from `eb.priors` (normalised, and sampleable, which SMC needs for its first
# particles).

# %%
NOISE = 0.5
y = 4.0 + NOISE * jr.normal(jr.key(1), (10,))


class Square(eqx.Module):
    theta: jax.Array


def loss(model, y):
    r = (y - model.theta**2) / NOISE
    return 0.5 * jnp.sum(r**2) + y.shape[0] * (
        jnp.log(NOISE) + 0.5 * jnp.log(2 * jnp.pi)
    )


prior = eb.priors.normal(0.0, 3.0)
solver = eb.Solver(loss, progress=False)

# %% [markdown]
# ### NUTS, four chains
#
# Four chains started at $\theta_0 + N(0, 1)$, with the same key twice: one run
# where one chain disagrees, one where all four agree.

# %%
nuts_model = eb.bayesian(
    Square(jnp.array(0.0)),
    blackjax.nuts,
    where=lambda m: m.theta,
    prior=prior,
    num_chains=4,
    init_jitter=1.0,
    warmup=300,
    keep=500,
)
for key in (2, 0):
    nuts = solver.run(nuts_model, key=jr.key(key), args=(y,))
    theta = np.asarray(nuts.posterior.samples.theta)
    print(
        f"key {key}: chain means {theta.mean(axis=1).round(2)}, "
        f"share of draws with theta > 0: {(theta > 0).mean():.2f}, "
        f"R-hat {float(eb.rhat(nuts.posterior.samples.theta)):.2f}"
    )

# %% [markdown]
# Each chain sits in one mode. With key 2 the R-hat warns, but the pooled draws
# give the positive mode a mass of 1/4, the share of chains that happened to fall
# into it; with key 0 the chains agree, R-hat is 1.00, and the positive mode is
# missing altogether. However many chains run, the share of them in a mode is set
# by where they started, not by the mode's posterior mass.
#
# ### Tempered SMC
#
# `eb.smc` marks the same leaf. The solve runs the tempering stages until
# $\lambda = 1$ (their number adapts to the data: each stage keeps half the
# particles' effective sample size, `target_ess=0.5`); the progress bar shows
# $\lambda$.

# %%
smc_model = eb.smc(
    Square(jnp.array(0.0)), where=lambda m: m.theta, prior=prior, num_particles=2000
)
result = solver.run(smc_model, key=jr.key(0), args=(y,))
theta = np.asarray(result.posterior.samples.theta)
print("samples:", theta.shape)
print(f"mass of theta > 0: {(theta > 0).mean():.3f}")
print(f"log evidence: {float(result.posterior.log_evidence):.3f}")

# %% [markdown]
# `posterior.samples` holds the particles, equally weighted, as one "chain" of
# 2000 draws, so `summary`, `predict`, `to_arviz` and the plots work as they do for
# chains. The diagnostics hold, per stage, $\lambda$, the effective sample size
# before resampling, and the moves' acceptance rate and step size:

# %%
d = result.posterior.diagnostics["theta"]
print("lambda:    ", np.asarray(d.tempering).round(4))
print("ESS:       ", np.asarray(d.ess).round(0))
print("acceptance:", np.asarray(d.acceptance_rate).round(2))

# %% [markdown]
# The problem is one-dimensional, so quadrature gives the answer to compare with:

# %%
grid = np.linspace(-12, 12, 240_001)
yn = np.asarray(y, np.float64)
log_joint = (
    -0.5 * (grid / 3.0) ** 2
    - np.log(3.0 * np.sqrt(2 * np.pi))
    - 0.5 * np.sum(((yn[None] - grid[:, None] ** 2) / NOISE) ** 2, axis=1)
    - yn.size * (np.log(NOISE) + 0.5 * np.log(2 * np.pi))
)
weights = np.exp(log_joint - log_joint.max())
log_z = log_joint.max() + np.log(weights.sum() * (grid[1] - grid[0]))
density = weights / (weights.sum() * (grid[1] - grid[0]))
print(f"quadrature: log evidence {log_z:.3f}, mass of theta > 0 0.500")

fig, ax = plt.subplots(figsize=(7, 3))
ax.hist(theta.ravel(), bins=120, density=True, alpha=0.5, label="SMC particles")
ax.hist(
    np.asarray(nuts.posterior.samples.theta).ravel(),
    bins=120,
    density=True,
    alpha=0.5,
    label="NUTS, 4 chains (key 0)",
)
inside = np.abs(grid) < 3
ax.plot(grid[inside], density[inside], "k", lw=1, label="exact")
ax.set_xlabel(r"$\theta$")
ax.legend()
plt.show()

# %% [markdown]
# ## Which model? Evidence and LOO
#
# Now two forward models for the same signal: 50 noisy samples of an oscillation.
# Is it damped, $f(t) = A e^{-\gamma t} \cos \omega t$, or undamped,
# $f(t) = A \cos \omega t$? The evidence of each model, $p(y \mid M)$, is what
# the Bayes factor compares. The likelihood has many local maxima in the
# frequency (a cosine matches part of the data at several frequencies); the SMC
# particles start spread over the prior's whole range of frequencies.

# %%
SIGMA = 0.1
t = jnp.linspace(0.0, 10.0, 50)
signal = 1.0 * jnp.exp(-0.15 * t) * jnp.cos(2.0 * t)
data = signal + SIGMA * jr.normal(jr.key(2), t.shape)


class Undamped(eqx.Module):
    amplitude: jax.Array
    frequency: jax.Array

    def __call__(self, t):
        return self.amplitude * jnp.cos(self.frequency * t)


class Damped(eqx.Module):
    amplitude: jax.Array
    frequency: jax.Array
    damping: jax.Array

    def __call__(self, t):
        return self.amplitude * jnp.exp(-self.damping * t) * jnp.cos(self.frequency * t)


def log_lik(model, row):
    """One observation's log-likelihood (for LOO): row = (t_i, y_i)."""
    t_i, y_i = row
    r = (y_i - model(t_i)) / SIGMA
    return -0.5 * r**2 - jnp.log(SIGMA) - 0.5 * jnp.log(2 * jnp.pi)


def oscillator_loss(model, t, y):
    """The full negative log-likelihood: minus the sum of `log_lik` over rows."""
    return -jnp.sum(jax.vmap(lambda row: log_lik(model, row))((t, y)))


# %% [markdown]
# The priors are proper and normalised: a positive amplitude and damping
# (half-normal, sampled in unconstrained space with the Jacobian, as for
# `eb.bayesian`), and a frequency uniform on (0.5, 4). The shared parameters have
# the same priors in both models.

# %%
priors = {
    "amplitude": eb.priors.half_normal(2.0),
    "frequency": eb.priors.uniform(0.5, 4.0),
    "damping": eb.priors.half_normal(0.5),
}
oscillator_solver = eb.Solver(oscillator_loss, progress=False)
models = {
    "undamped": eb.smc(
        Undamped(jnp.array(1.0), jnp.array(1.0)),
        where=lambda m: (m.amplitude, m.frequency),
        prior=(priors["amplitude"], priors["frequency"]),
        num_particles=1000,
        name="undamped",
    ),
    "damped": eb.smc(
        Damped(jnp.array(1.0), jnp.array(1.0), jnp.array(0.1)),
        where=lambda m: (m.amplitude, m.frequency, m.damping),
        prior=(priors["amplitude"], priors["frequency"], priors["damping"]),
        num_particles=1000,
        name="damped",
    ),
}
fits = {}
for name, marked in models.items():
    fits[name] = oscillator_solver.run(marked, key=jr.key(0), args=(t, data))
    posterior = fits[name].posterior
    stages = posterior.diagnostics[name].tempering.shape[0]
    print(
        f"{name:9s} log evidence {float(posterior.log_evidence):8.2f} ({stages} stages)"
    )

log_bf = float(fits["damped"].posterior.log_evidence) - float(
    fits["undamped"].posterior.log_evidence
)
print(f"log Bayes factor, damped vs undamped: {log_bf:.1f}")

# %% [markdown]
# The data favour damping overwhelmingly. The posterior of the damped model
# recovers the parameters the data were made with ($A = 1$, $\omega = 2$,
# $\gamma = 0.15$):

# %%
print(fits["damped"].posterior.summary())

# %% [markdown]
# LOO asks a different question: how well each model predicts a left-out
# observation, from its posterior draws (here the particles), via Pareto-smoothed
# importance sampling. `to_arviz(log_likelihood=..., data=...)` adds the pointwise
# log-likelihoods that `az.compare` needs.

# %%
idata = {
    name: fit.posterior.to_arviz(log_likelihood=log_lik, data=(t, data))
    for name, fit in fits.items()
}
comparison = az.compare(idata)
print(comparison[["elpd_loo", "p_loo", "elpd_diff", "dse", "weight"]])

# %% [markdown]
# Both criteria prefer the damped model here. They need not agree in general: the
# evidence averages the likelihood over the **prior**, so it penalises a needlessly
# wide prior on an extra parameter (and changes when that prior changes), while
# LOO judges the **posterior's** predictions and barely depends on the prior once
# the data dominate. Report the evidence only with priors you mean.
#
# ## What to remember
#
# - `eb.smc(model, where=..., prior=...)`, then `Solver.run` as usual: the number of
#   stages adapts; `posterior.samples` holds `(1, num_particles, ...)` equally
#   weighted particles; `posterior.log_evidence` is $\log p(y)$.
# - The evidence needs normalised densities: priors from `eb.priors` and the full
#   negative log-likelihood (constants included) as the loss, with
#   `likelihood_scale=1`.
# - One SMC group per solve, the rest of the model fixed. The moves are HMC whitened
#   by the particles' covariance, their step size tuned towards an acceptance rate
#   of 0.65; pass `kernel=` for another blackjax kernel.
