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
# # Chains and convergence
#
# An MCMC chain is only useful once it has forgotten where it started and explores
# the posterior freely. Nothing guarantees that after a fixed number of steps, so we
# *check*. This tutorial covers the checks eqbayes gives you:
#
# - running several chains from dispersed starting points (`num_chains`,
#   `init_jitter`);
# - $\hat{R}$ (`eb.rhat`) and its three strategies;
# - effective sample size (`eb.ess`, `eqbayes.diagnostics.ess_tail`) and the Monte
#   Carlo standard error (`eqbayes.diagnostics.mcse_mean`);
# - per-draw kernel diagnostics: divergences, acceptance rates, work per draw;
# - what a sick run looks like, and how window adaptation cures this one.
#
# The runs are kept short (a few hundred draws) so the page builds quickly.

# %%
import logging

import blackjax
import equinox as eqx
import jax.numpy as jnp
import jax.random as jr
import matplotlib.pyplot as plt
from jaxtyping import Array, Float

import eqbayes as eb


# eqbayes reports what it does on the standard `logging` logger "eqbayes".
logging.basicConfig(level=logging.INFO, format="%(levelname)s:%(name)s: %(message)s")

# %% [markdown]
# ## A small nonlinear problem
#
# An exponential decay $y(t) = A e^{-k t}$, observed at 50 times with Gaussian noise
# of standard deviation 0.05. Both parameters are positive, so we sample their
# logarithms. The loss is a mean squared error, turned into a log-likelihood with
# `likelihood_scale` $= N / (2\sigma^2)$ as explained in
# [Getting started](../getting_started/).


# %%
class Decay(eqx.Module):
    log_amplitude: Float[Array, ""]
    log_rate: Float[Array, ""]

    def __call__(self, t):
        return jnp.exp(self.log_amplitude - jnp.exp(self.log_rate) * t)


def loss(model, t, y):
    return jnp.mean((model(t) - y) ** 2)


N, SIGMA = 50, 0.05
data_key, key = jr.split(jr.key(42))
t = jnp.linspace(0.0, 5.0, N)
truth = Decay(jnp.log(jnp.array(2.0)), jnp.log(jnp.array(0.7)))
y = truth(t) + SIGMA * jr.normal(data_key, t.shape)

model = Decay(log_amplitude=jnp.array(0.0), log_rate=jnp.array(0.0))
solver = eb.Solver(loss, progress=False)

# %% [markdown]
# ## Several chains, dispersed starts
#
# `num_chains=K` runs K chains at once: eqbayes `jax.vmap`s the kernel over a leading
# chain axis, so four chains cost far less than four runs. Each chain starts at the
# model's current values plus `init_jitter` times a standard normal draw. Starting
# the chains apart is what gives the cross-chain comparison its teeth: if chains that
# began in different places end up describing the same distribution, they have most
# likely forgotten their starts.
#
# During warmup, Stan-style window adaptation (assembled from blackjax's components)
# tunes a step size and an inverse mass matrix (dense for this small model) for
# *each* chain from its own acceptance rates and positions, so the chains stay
# independent, as R-hat assumes
# (`adapt="pooled"` would share one adaptation among them; the guide "Choosing and
# tuning a kernel" says when that pays).

# %%
marked = eb.bayesian(
    model,
    blackjax.nuts,
    num_chains=4,
    init_jitter=0.5,
    warmup=300,
    keep=500,
    likelihood_scale=N / (2 * SIGMA**2),
    prior=eb.priors.gaussian(10.0),
)
key, run_key = jr.split(key)
result = solver.run(marked, key=run_key, args=(t, y))
samples = result.posterior.samples
print(samples.log_rate.shape)  # (chains, draws)

# %% [markdown]
# A trace plot shows each chain's draws in order. Healthy chains look like
# overlapping, stationary noise, with no trends and no chain off on its own.

# %%
fig, axes = plt.subplots(1, 2, figsize=(9, 3))
for ax, name in zip(axes, ("log_amplitude", "log_rate")):
    chain = getattr(samples, name)
    for k in range(chain.shape[0]):
        ax.plot(chain[k], lw=0.6, label=f"chain {k}")
    ax.set_title(name)
    ax.set_xlabel("draw")
axes[0].legend(fontsize=7)
fig.tight_layout()
plt.show()

# %% [markdown]
# ## $\hat{R}$
#
# `eb.rhat(chain)` takes draws of shape `(chains, draws, *p)` and returns one value per
# component, shape `*p`. It is the rank-normalised, folded, split $\hat{R}$ of
# Vehtari et al. (2021), the version ArviZ and Stan report: it compares the variance
# *between* chains with the variance *within* them, after splitting every chain in
# half (so a chain that drifts disagrees with itself). At convergence it is 1;
# the usual threshold is $\hat{R} < 1.01$.
#
# The `strategy` argument decides how chains are compared:
#
# | `strategy` | one chain (K = 1) | several chains (K ≥ 2) |
# |---|---|---|
# | `"auto"` (default) | the chain's two halves | standard multi-chain $\hat{R}$ |
# | `"multichain"` | `ValueError` | standard multi-chain $\hat{R}$ |
# | `"split"` | the chain's two halves | every chain cut in four (4K pieces) |
#
# With one chain, "the two halves" means the same rank-normalised, folded formula
# applied to the first and second half of the chain as if they were two chains.
# `"split"` with several chains cuts each chain once more than usual, which makes
# $\hat{R}$ more sensitive to a chain whose behaviour changes along the way.
#
# Use `"multichain"` in scripts that are meant to run several chains: if a
# configuration mistake leaves you with one, it fails loudly instead of quietly
# computing a weaker statistic.

# %%
chain = samples.log_rate
print("auto      ", eb.rhat(chain))
print("multichain", eb.rhat(chain, strategy="multichain"))
print("split     ", eb.rhat(chain, strategy="split"))

one = chain[:1]  # keep the chain axis: shape (1, draws)
print("one chain, auto", eb.rhat(one))
try:
    eb.rhat(one, strategy="multichain")
except ValueError as e:
    print("ValueError:", e)

# %% [markdown]
# ## Effective sample size and Monte Carlo error
#
# Successive MCMC draws are correlated, so $K \times N$ draws carry less information
# than $K \times N$ independent ones. The effective sample size says how many
# independent draws they are worth:
#
# - `eb.ess(chain)`: the *bulk* ESS, relevant for means and medians;
# - `eqbayes.diagnostics.ess_tail(chain)`: the *tail* ESS (from the 5% and 95%
#   quantiles), relevant for credible intervals.
#
# A few hundred of each is plenty for most summaries. The Monte Carlo standard error
# of the posterior mean, $\mathrm{sd}/\sqrt{\mathrm{ESS}}$, is
# `eqbayes.diagnostics.mcse_mean(chain)`: quote means to no more digits than it
# allows.

# %%
for name in ("log_amplitude", "log_rate"):
    chain = getattr(samples, name)
    print(
        f"{name:14} mean {jnp.mean(chain):.4f} ± {eb.diagnostics.mcse_mean(chain):.4f}"
        f"  sd {jnp.std(chain):.4f}  R-hat {eb.rhat(chain):.3f}"
        f"  ESS bulk {eb.ess(chain):.0f}"
        f"  tail {eb.diagnostics.ess_tail(chain):.0f}  (of {chain.size} draws)"
    )

# %% [markdown]
# ## Kernel diagnostics
#
# Every kernel transition returns an `info` record, and eqbayes keeps the fields that
# say something about the sampler's health. `result.posterior.diagnostics` maps each
# group's name (here the model's class name, `"Decay"`) to a `KernelDiagnostics`
# module whose fields are `(chains, draws)` arrays, or `None` when the kernel does not
# report them:
#
# | field | NUTS / HMC | MALA | meaning |
# |---|---|---|---|
# | `is_divergent` | ✓ | | the numerical trajectory blew up |
# | `acceptance_rate` | ✓ | ✓ | Metropolis acceptance probability |
# | `energy` | ✓ | | Hamiltonian energy after the transition |
# | `num_integration_steps` | ✓ | | leapfrog steps: gradient evaluations per draw |
#
# Two more fields hold the tuning the draws were made with, one entry per chain:
# `step_size` `(chains,)` and `inverse_mass_matrix` `(chains, d, d)` for a dense
# metric (`(chains, d)` for a diagonal one, low-rank factors for `metric="low_rank"`).

# %%
diag = result.posterior.diagnostics["Decay"]
print("divergent transitions:", int(diag.is_divergent.sum()))
print("acceptance rate per chain:", diag.acceptance_rate.mean(axis=1))
print("leapfrog steps per draw:", diag.num_integration_steps.mean())
print("adapted step size per chain:", diag.step_size)

# %% [markdown]
# Window adaptation aims at a mean acceptance rate of 0.8; after warmup the realised
# rate usually lands near it or a little above. The
# number of leapfrog steps per draw is the cost of a draw in gradient evaluations; a
# large value means the posterior is badly scaled or strongly correlated.
#
# ## What a sick run looks like
#
# A **divergence** means the leapfrog integrator left the region where it is
# accurate: the energy error exploded, the trajectory was cut short, and the region
# that caused it is under-explored. One common cause is a step size that is too
# large for the posterior's curvature. Let us provoke it: switch adaptation off
# (`adapt=False`), which leaves NUTS with the step size we give it and an identity
# inverse mass matrix, and pick `step_size=0.02`. That is about the posterior standard
# deviation of `log_rate`, which sounds harmless; but the two parameters are strongly
# correlated, so the posterior is much narrower along one diagonal direction, and the
# region where the chains start, far from the mode, is more sharply curved still.

# %%
sick = eb.bayesian(
    model,
    blackjax.nuts,
    num_chains=4,
    init_jitter=0.5,
    warmup=300,
    keep=500,
    likelihood_scale=N / (2 * SIGMA**2),
    prior=eb.priors.gaussian(10.0),
    adapt=False,
    step_size=0.02,
)
key, run_key = jr.split(key)
sick_result = solver.run(sick, key=run_key, args=(t, y))

sick_diag = sick_result.posterior.diagnostics["Decay"]
sick_chain = sick_result.posterior.samples.log_rate
print(
    "divergent:", int(sick_diag.is_divergent.sum()), "of", sick_diag.is_divergent.size
)
print("mean acceptance rate:", float(sick_diag.acceptance_rate.mean()))
print("R-hat:", eb.rhat(sick_chain), " ESS:", eb.ess(sick_chain))

# %% [markdown]
# Every warning sign fires at once: a large share of divergent transitions, an
# acceptance rate far below the 0.8 that adaptation aims for, $\hat{R}$ far above 1.01
# and an effective sample size of a handful of draws. The trace plot shows why. The
# chains stall for hundreds of steps at a time, they disagree with each other, and
# they hardly overlap the region (shaded) where the healthy run's draws lie. Note
# that a stalled chain has almost no spread: on its own, it could pass for a very
# confident posterior in the wrong place. Catching that is what several chains and
# $\hat{R}$ are for.

# %%
healthy = jnp.quantile(samples.log_rate, jnp.array([0.05, 0.95]))
fig, ax = plt.subplots(figsize=(9, 3))
ax.axhspan(*healthy, color="0.85", label="healthy run, 90% interval")
for k in range(sick_chain.shape[0]):
    ax.plot(sick_chain[k], lw=0.8, label=f"chain {k}")
ax.set_title("log_rate, step_size=0.02 without adaptation")
ax.set_xlabel("draw")
ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
fig.tight_layout()
plt.show()

# %% [markdown]
# ## What to do about divergences
#
# In roughly the order to try them:
#
# 1. **Let eqbayes adapt.** With `adapt=True` (the default) and `warmup > 0`, NUTS
#    and HMC get a step size tuned to an acceptance rate of 0.8 and an inverse mass
#    matrix estimated from the warmup draws (dense for a small model like this
#    one). That is the run at the top of this page: same model, same data, no
#    divergences.
# 2. **Warm up for longer.** If a few divergences remain, a longer `warmup` gives
#    the adaptation more draws to estimate the posterior's scales.
# 3. **Make a fixed step size smaller.** For kernels that are not adapted (MALA,
#    custom kernels, `adapt=False`), `step_size=` is yours to choose: shrink it until
#    divergences vanish and the acceptance rate is reasonable (around 0.6 to 0.9
#    for HMC-type kernels, around 0.5 to 0.6 for MALA).
# 4. **Change the parametrisation.** Divergences that survive all of the above point
#    at geometry no single step size can handle: parameters on wildly different
#    scales, or funnel shapes in hierarchical models. Sampling logarithms of positive
#    quantities (as we did here), standardising inputs, or a non-centred
#    parametrisation usually helps.
#
# ## Reading the log
#
# With `logging` at level `INFO`, eqbayes describes each run on the `"eqbayes"`
# logger: the groups it found and their kernels, whether the pure-Bayesian fast path
# was taken, and for each group a one-line summary of divergences and acceptance
# rates. Those lines are in the outputs of the two `solver.run` cells above. To see
# only eqbayes's lines and not other libraries', set the level on its logger alone:
#
# ```python
# logging.getLogger("eqbayes").setLevel(logging.INFO)
# ```
#
# ## Memory: `keep` and `thin`
#
# A group stores `num_chains × keep` draws of every sampled leaf, plus the
# `(chains, draws)` diagnostics. With `thin=m` eqbayes keeps one draw every `m`
# steps after warmup (a run of `steps=None` then lasts `warmup + keep × thin`
# steps). Thinning never improves the estimates you can make from the draws you
# kept, but it reduces memory when a model has many sampled parameters and the
# chain is strongly autocorrelated.
