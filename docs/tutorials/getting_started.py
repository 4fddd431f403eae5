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
# # Getting started
#
# This tutorial walks through `examples/quickstart.py` from the repository one step
# at a time. We have 101 noisy measurements of
#
# $$d(x) = a \sin(\pi x) + b \cos(\pi x), \qquad x \in [0, 1],$$
#
# and want the *posterior* over the two coefficients $(a, b)$: a best guess together
# with how sure we can be about it. Along the way we will
#
# 1. write the forward model as an ordinary `equinox.Module` and the loss as a plain
#    mean squared error;
# 2. turn the loss into a log-likelihood with `likelihood_scale`;
# 3. mark the model as Bayesian with `eb.bayesian` and run four NUTS chains with
#    `eb.Solver`;
# 4. check the chain against the exact answer (this posterior happens to be Gaussian);
# 5. push the posterior through the model to get a predictive band.
#
# The whole notebook runs in well under a minute on a laptop CPU.

# %%
import blackjax
import equinox as eqx
import jax.numpy as jnp
import jax.random as jr
import matplotlib.pyplot as plt
from jaxtyping import Array, Float

import eqbayes as eb


# %% [markdown]
# ## The data
#
# The true coefficients are $a = 3.14$ and $b = -2.71$; the measurements carry
# Gaussian noise with standard deviation $\sigma = 0.1$. The key is fixed so the page
# is reproducible.

# %%
A_TRUE, B_TRUE, SIGMA = 3.14, -2.71, 0.1
N = 101

data_key, run_key = jr.split(jr.key(0))
x = jnp.linspace(0.0, 1.0, N)
y = A_TRUE * jnp.sin(jnp.pi * x) + B_TRUE * jnp.cos(jnp.pi * x)
y = y + SIGMA * jr.normal(data_key, x.shape)

# %% [markdown]
# ## The model and the loss
#
# Nothing here knows about Bayesian inference: the model is a two-field Equinox
# module and the loss is what you would write to fit it with gradient descent.


# %%
class Coefficients(eqx.Module):
    a: Float[Array, ""]
    b: Float[Array, ""]

    def __call__(self, x: Float[Array, " n"]) -> Float[Array, " n"]:
        return self.a * jnp.sin(jnp.pi * x) + self.b * jnp.cos(jnp.pi * x)


def loss(model, x, y):
    return jnp.mean((model(x) - y) ** 2)


model = Coefficients(a=jnp.array(0.0), b=jnp.array(0.0))

# %% [markdown]
# ## From a loss to a likelihood
#
# eqbayes samples the log density
#
# $$\log p(\theta \mid y) = -\lambda \, \mathrm{loss}(\theta) + \log p(\theta)
# + \text{const},$$
#
# where $\lambda$ is `likelihood_scale`. For independent Gaussian noise the
# log-likelihood is a sum of squares, and the mean squared error is that sum divided
# by $N$, so the right scale follows in one line:
#
# $$\log p(y \mid \theta) = -\sum_{i=1}^{N} \frac{(y_i - d_\theta(x_i))^2}{2\sigma^2}
# + \text{const} = -\frac{N}{2\sigma^2}\,\mathrm{MSE}(\theta) + \text{const}
# \quad\Longrightarrow\quad \lambda = \frac{N}{2\sigma^2}.$$
#
# Here $\lambda = 101 / 0.02 = 5050$. Leaving it at its default of 1 would claim that
# the whole data set is worth about a hundredth of one observation: the posterior
# would come out far too wide. (A loss that already *is* a negative log-likelihood,
# such as a sum of squares divided by $2\sigma^2$, takes `likelihood_scale=1`.)

# %%
likelihood_scale = N / (2 * SIGMA**2)
print(f"{likelihood_scale:.1f}")

# %% [markdown]
# ## Marking the model
#
# `eb.bayesian` returns a *new* model in which the selected sub-tree (here the whole
# model, since `where=` is not given) is wrapped in a `BayesianLeaf` that carries
# the sampling configuration. The original `model` is untouched, and `eb.unwrap`
# gives the plain model back.
#
# - `blackjax.nuts` is the kernel. With `adapt=True` (the default), Stan-style window
#   adaptation picks the step size and an inverse mass matrix during warmup (dense
#   for a model this small; see the guide "Choosing and tuning a kernel"),
#   so no `step_size=` is needed.
# - `num_chains=4` runs four chains side by side (a `jax.vmap`), each started at
#   the initial position plus `init_jitter` times a standard normal draw.
# - `warmup=500` steps are spent adapting and discarded; then `keep=1000` draws are
#   recorded per chain.
# - `prior=eb.priors.gaussian(10.0)` is a wide $\mathcal{N}(0, 10^2)$ on each
#   coefficient.

# %%
marked = eb.bayesian(
    model,
    blackjax.nuts,
    num_chains=4,
    warmup=500,
    keep=1000,
    init_jitter=0.1,
    likelihood_scale=likelihood_scale,
    prior=eb.priors.gaussian(10.0),
)
print(type(marked).__name__)
print(eqx.tree_equal(eb.unwrap(marked), model))

# %% [markdown]
# ## Running the solver
#
# `eb.Solver` takes the loss; `run` takes the marked model, a key, and the loss's extra
# arguments. With `steps=None` it runs exactly `warmup + keep * thin` steps. By default
# a progress bar is shown; we switch it off to keep this page tidy.

# %%
solver = eb.Solver(loss, progress=False)
result = solver.run(marked, key=run_key, args=(x, y))

# %% [markdown]
# `result.posterior.samples` has the structure of the model. Every sampled leaf holds a
# `(chains, draws, *leaf_shape)` array; our coefficients are scalars, so each is
# `(4, 1000)`.

# %%
samples = result.posterior.samples
print(samples.a.shape, samples.b.shape)

for name in ("a", "b"):
    chain = getattr(samples, name)
    lo, hi = jnp.quantile(chain, jnp.array([0.05, 0.95]))
    print(f"{name}: mean {jnp.mean(chain):.4f}, 90% interval [{lo:.4f}, {hi:.4f}]")

# %% [markdown]
# ## Checking against the exact posterior
#
# The model is linear in $\theta = (a, b)$: $d_\theta(x) = \Phi\theta$ with the
# $N \times 2$ design matrix $\Phi = [\sin(\pi x), \cos(\pi x)]$. A Gaussian
# likelihood and a Gaussian $\mathcal{N}(0, s^2 I)$ prior give a Gaussian posterior
# with
#
# $$\Sigma_\text{post} = \Big(\frac{\Phi^\top\Phi}{\sigma^2} + \frac{I}{s^2}\Big)^{-1},
# \qquad \mu_\text{post} = \Sigma_\text{post} \, \frac{\Phi^\top y}{\sigma^2}.$$
#
# We compare the chain's mean with $\mu_\text{post}$ in units of the Monte Carlo
# standard error (`eqbayes.diagnostics.mcse_mean`), and the chain's standard
# deviations with $\sqrt{\operatorname{diag}\Sigma_\text{post}}$.

# %%
phi = jnp.stack([jnp.sin(jnp.pi * x), jnp.cos(jnp.pi * x)], axis=1)
precision = phi.T @ phi / SIGMA**2 + jnp.eye(2) / 10.0**2
cov = jnp.linalg.inv(precision)
mu = cov @ (phi.T @ y) / SIGMA**2

for i, name in enumerate(("a", "b")):
    chain = getattr(samples, name)
    z = (jnp.mean(chain) - mu[i]) / eb.diagnostics.mcse_mean(chain)
    print(
        f"{name}: exact mean {mu[i]:.4f}, chain mean {jnp.mean(chain):.4f} "
        f"(z = {z:+.2f}); exact sd {jnp.sqrt(cov[i, i]):.5f}, "
        f"chain sd {jnp.std(chain):.5f}"
    )

# %% [markdown]
# A $|z|$ of a few units at most is what Monte Carlo noise produces; the standard
# deviations agree to a few percent. Note how tight the posterior is: about
# $\pm 0.014$ on each coefficient, because 101 points with noise $0.1$ pin a smooth
# two-parameter curve down very well.
#
# ## Is the chain trustworthy?
#
# Three numbers to look at every time:
#
# - **R-hat** (`eb.rhat`) compares the chains with each other and with themselves;
#   values below 1.01 mean they agree.
# - **Effective sample size** (`eb.ess`) says how many independent draws the
#   correlated chain is worth; a few hundred is plenty for means and intervals.
#   On easy problems NUTS can produce slightly anti-correlated draws, and then the
#   ESS exceeds the number of draws.
# - **Divergent transitions** of NUTS, recorded per draw in
#   `result.posterior.diagnostics`. Any at all deserve a look.
#
# The diagnostics are keyed by group name. A group that marks the whole model is
# named after the model's class.

# %%
for name in ("a", "b"):
    chain = getattr(samples, name)
    print(
        f"{name}: R-hat {eb.rhat(chain):.4f}, ESS {eb.ess(chain):.0f} of {chain.size}"
    )

diag = result.posterior.diagnostics["Coefficients"]
print("divergent:", int(diag.is_divergent.sum()))
print("mean acceptance rate:", float(diag.acceptance_rate.mean()))
print("mean leapfrog steps per draw:", float(diag.num_integration_steps.mean()))

# %% [markdown]
# The [chains and convergence](../chains_and_convergence/) tutorial explains these
# numbers in depth and shows what an unhealthy run looks like.
#
# ## Predictions with uncertainty
#
# `result.posterior.predict(fn, *args)` evaluates `fn(model, *args)` once per draw,
# with the sampled leaves set to that draw, and stacks the results as
# `(chains, draws, ...)`. For a nonlinear model this is the only correct way to get
# predictive uncertainty: the prediction at the posterior mean is not the mean
# prediction.

# %%
x_grid = jnp.linspace(0.0, 1.0, 200)
preds = result.posterior.predict(lambda m, x: m(x), x_grid)
print(preds.shape)

mean = preds.mean(axis=(0, 1))
lo, hi = jnp.quantile(preds, jnp.array([0.05, 0.95]), axis=(0, 1))
# A new measurement adds the noise on top of the curve's own uncertainty.
new_data = preds + SIGMA * jr.normal(jr.key(1), preds.shape)
lo_new, hi_new = jnp.quantile(new_data, jnp.array([0.05, 0.95]), axis=(0, 1))

fig, (ax, zoom) = plt.subplots(1, 2, figsize=(10, 3.5))
ax.fill_between(x_grid, lo_new, hi_new, color="C0", alpha=0.25, lw=0, label="new data")
ax.fill_between(x_grid, lo, hi, color="C1", alpha=0.8, lw=0, label="mean curve")
ax.plot(x_grid, mean, color="C0", lw=1, label="posterior mean")
ax.plot(x, y, ".", color="k", ms=3, label="data")
ax.set_xlabel("x")
ax.set_title("data and 90% bands")
ax.legend()
# The curve's own uncertainty, relative to the posterior mean, with a few draws.
zoom.fill_between(x_grid, lo - mean, hi - mean, color="C1", alpha=0.4, lw=0)
zoom.plot(x_grid, (preds[0, :20] - mean).T, color="k", lw=0.5, alpha=0.5)
zoom.axhline(0.0, color="C0", lw=1)
zoom.set_xlabel("x")
zoom.set_title("curve minus posterior mean: 90% band, 20 draws")
fig.tight_layout()
plt.show()

# %% [markdown]
# On the left, the band of the curve itself hides under the line: with this much
# data the curve is known to within a few hundredths, as the right panel shows (each
# thin line there is the curve of one posterior draw). The wider band on the left is
# where a *new* measurement is expected to fall; it is dominated by the measurement
# noise.
#
# ## The plain model
#
# `result.model` is an ordinary `Coefficients` with no wrappers, ready to call. Its
# sampled leaves hold the last draw of chain 0, which is a perfectly good
# representative point, but summaries should use the chain.

# %%
print(result.model)
print(result.model(jnp.array([0.0, 0.5, 1.0])))

# %% [markdown]
# ## Where next
#
# - [Chains and convergence](../chains_and_convergence/): R-hat, ESS, divergences and
#   what to do about them.
# - [Priors](../../priors/): the built-in priors and how to write your own.
# - [How eqbayes works](../../concepts/): what `eb.bayesian` and `eb.Solver` do
#   under the hood.
