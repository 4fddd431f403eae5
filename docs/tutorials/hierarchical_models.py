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
# # Hierarchical models: eight schools, centred and non-centred
#
# Eight schools (Rubin, 1981) is the classic small hierarchical model: coaching
# effects $y_j$ measured in $J = 8$ schools with known standard errors $\sigma_j$,
#
# $$y_j \sim \mathcal{N}(\theta_j, \sigma_j^2), \qquad
#   \theta_j \sim \mathcal{N}(\mu, \tau^2), \qquad
#   \mu \sim \mathcal{N}(0, 5^2), \qquad \tau \sim \text{half-Cauchy}(0, 5).$$
#
# $\tau$ is a standard deviation: it must be positive. With
# `eb.priors.half_cauchy(5.0)` eqbayes knows that from the prior's support, samples
# $\log\tau$ underneath (adding the Jacobian), and shows you $\tau$ everywhere.
#
# The same model can be written two ways. The *centred* form samples $\theta$
# directly; the *non-centred* form samples standardised effects $\tilde\theta_j \sim
# \mathcal{N}(0, 1)$ and sets $\theta_j = \mu + \tau\tilde\theta_j$. They are the
# same posterior, but not the same geometry for a sampler, and this page shows
# why that matters.

# %%
import blackjax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import jax.scipy.stats as jss
import matplotlib.pyplot as plt
import numpy as np

import eqbayes as eb


Y = jnp.array([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0])
SIGMA = jnp.array([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0])


# %% [markdown]
# ## The two models
#
# Each is a plain `eqx.Module` holding its parameters. The loss is the negative
# log-likelihood of the data (`likelihood_scale=1`, the default); in the centred form
# it also carries $\theta$'s hierarchical prior, which depends on the other
# parameters $\mu$ and $\tau$ and so is part of the model rather than of a fixed
# prior.


# %%
class Centred(eqx.Module):
    mu: jax.Array
    tau: jax.Array
    theta: jax.Array

    def effects(self):
        return self.theta


class NonCentred(eqx.Module):
    mu: jax.Array
    tau: jax.Array
    theta_tilde: jax.Array

    def effects(self):
        return self.mu + self.tau * self.theta_tilde


def loss(model):
    nll = -jnp.sum(jss.norm.logpdf(Y, model.effects(), SIGMA))
    if isinstance(model, Centred):
        nll = nll - jnp.sum(jss.norm.logpdf(model.theta, model.mu, model.tau))
    return nll


# %% [markdown]
# `where` returns a tuple of the three fields: together they form one group, and
# `prior=` is a tuple with one prior per field. $\tau$ starts at 1 (a starting
# value must lie inside the support). In the centred form $\theta$'s prior is in
# the loss, so its own `prior=` is a very wide Gaussian.


# %%
def mark(model, third_prior):
    return eb.bayesian(
        model,
        blackjax.nuts,
        where=lambda m: (m.mu, m.tau, jax.tree.leaves(m)[-1]),
        prior=(eb.priors.normal(0.0, 5.0), eb.priors.half_cauchy(5.0), third_prior),
        num_chains=4,
        warmup=500,
        keep=500,
        init_jitter=0.5,
    )


zero = jnp.zeros(())
centred = mark(Centred(zero, zero + 1.0, jnp.zeros(8)), eb.priors.gaussian(1e3))
non_centred = mark(NonCentred(zero, zero + 1.0, jnp.zeros(8)), eb.priors.normal())
solver = eb.Solver(loss, progress=False)
result_c = solver.run(centred, key=jr.key(0))
result_n = solver.run(non_centred, key=jr.key(0))

# %% [markdown]
# ## What the sampler reports
#
# The summaries are in $\tau$, not $\log\tau$. Look at the last line of each:
# the number of divergent transitions.

# %%
print(result_c.posterior.summary())

# %%
print(result_n.posterior.summary())


# %%
def divergences(result):
    (diagnostics,) = result.posterior.diagnostics.values()
    return int(diagnostics.is_divergent.sum())


print("centred:     divergent transitions", divergences(result_c))
print("non-centred: divergent transitions", divergences(result_n))

# %% [markdown]
# ## Why: the funnel
#
# In the centred form, when $\tau$ is small every $\theta_j$ must be within a few
# $\tau$ of $\mu$: the posterior is a funnel, wide at the top and arbitrarily narrow
# at the bottom. One step size cannot fit both ends. Tuned for the wide part, the
# leapfrog integrator overshoots in the neck and the trajectory diverges (the
# energy error explodes); NUTS flags it and rejects it. The neck is then
# under-explored, which biases $\tau$ upwards and shows up as divergences and a
# poor effective sample size for $\tau$. The draws of $\log\tau$ (where the
# sampler moves) make the funnel visible; `posterior.unconstrained` holds them.
#
# The non-centred form moves $\tilde\theta$, which is a priori independent of
# $\tau$: the funnel is gone from the sampler's coordinates, and so are the
# divergences. The data here are weak (large $\sigma_j$), which is exactly when
# the non-centred form is the better choice; with very informative data the
# centred form can sample better.

# %%
log_tau_c = np.asarray(result_c.posterior.unconstrained.tau).ravel()
theta0_c = np.asarray(result_c.posterior.samples.theta[..., 0]).ravel()
(diag_c,) = result_c.posterior.diagnostics.values()
bad = np.asarray(diag_c.is_divergent).ravel()
log_tau_n = np.asarray(result_n.posterior.unconstrained.tau).ravel()
theta0_n = np.asarray(result_n.posterior.predict(lambda m: m.effects()[0])).ravel()

fig, axes = plt.subplots(1, 2, figsize=(9, 3.5), sharey=True)
axes[0].scatter(theta0_c, log_tau_c, s=3, alpha=0.4, label="draws")
axes[0].scatter(theta0_c[bad], log_tau_c[bad], s=8, c="red", label="divergent")
axes[0].set(title="centred", xlabel=r"$\theta_1$", ylabel=r"$\log\tau$")
axes[0].legend()
axes[1].scatter(theta0_n, log_tau_n, s=3, alpha=0.4)
axes[1].set(title="non-centred", xlabel=r"$\theta_1$")
fig.tight_layout()

# %% [markdown]
# ## The two posteriors
#
# Both forms target the same posterior over $(\mu, \tau, \theta)$; the non-centred
# chain is the one to trust here. Its $\theta$ comes from `predict`, which pushes
# each draw through the model.

# %%
effects_n = result_n.posterior.predict(lambda m: m.effects())
for name, c, n in [
    ("mu", result_c.posterior.samples.mu, result_n.posterior.samples.mu),
    ("tau", result_c.posterior.samples.tau, result_n.posterior.samples.tau),
    ("theta[0]", result_c.posterior.samples.theta[..., 0], effects_n[..., 0]),
]:
    print(
        f"{name:9s} centred {float(c.mean()):6.2f} ± {float(c.std()):5.2f}   "
        f"non-centred {float(n.mean()):6.2f} ± {float(n.std()):5.2f}"
    )

# %% [markdown]
# ## Prior predictive check
#
# `eb.sample_prior` draws every marked group from its prior (here
# $\tilde\theta$, $\mu$ and $\tau$) and returns a `Posterior`, so `predict` gives
# the effects the priors alone allow, before seeing $y$.

# %%
prior = eb.sample_prior(non_centred, key=jr.key(1), num_draws=2000)
prior_effects = prior.predict(lambda m: m.effects())
print(
    "prior 5%-95% of theta[0]:",
    np.percentile(np.asarray(prior_effects[..., 0]), [5, 95]),
)
