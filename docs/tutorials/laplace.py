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
# # Laplace approximations for a trained network
#
# Most networks are trained first and questioned later. The *Laplace
# approximation* (MacKay 1992; "Laplace Redux", Daxberger et al. 2021) turns a
# trained network into a Bayesian one after the fact: around the trained weights
# $\theta^*$ the log posterior is nearly quadratic, so the posterior is nearly the
# Gaussian
#
# $$q(\theta) = N\big(\theta^*, (H + P)^{-1}\big),$$
#
# with $H$ the curvature of the scaled loss at $\theta^*$ and $P$ the prior
# precision. It costs one curvature computation instead of a chain.
#
# `eb.laplace` marks a sub-tree of a model for it, like `eb.bayesian` marks one for a
# chain. (Not to be confused with the Laplace-*distribution* prior
# `eb.priors.laplace` or the warm-start initializer `eb.initializers.laplace`.) This
# page, on the regression data of [the SGLD tutorial](../bnn_sgld/):
#
# 1. trains a network with Adam inside a Laplace group (its mode);
# 2. fits the Gaussian three ways: the exact Hessian (`"full"`), the generalised
#    Gauss–Newton matrix (`"ggn"`) and its diagonal (`"diag"`);
# 3. tunes the prior precision by the Laplace evidence;
# 4. compares the 90 % bands for new data, their coverage on held-out points and the
#    time each method takes, with SGLD and NUTS.
#
# It runs in under a minute on a laptop CPU.

# %%
import time

import blackjax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import matplotlib.pyplot as plt
import optax

import eqbayes as eb


# %% [markdown]
# ## Data, network, loss
#
# 256 noisy observations of $f(x) = \sin(2x) + x/2$ on $[-3, 3]$ with noise
# $\sigma = 0.2$, and 1000 held-out ones; a `tanh` MLP with two hidden layers of 32
# units (1153 weights); the mean squared error, with $\lambda = N / (2\sigma^2)$ so
# that $\lambda \cdot \text{loss}$ is the Gaussian negative log-likelihood.

# %%
SIGMA, N = 0.2, 256


def f(x):
    return jnp.sin(2 * x) + 0.5 * x


x_key, y_key, x_test_key, y_test_key = jr.split(jr.key(0), 4)
x = jr.uniform(x_key, (N,), minval=-3.0, maxval=3.0)
y = f(x) + SIGMA * jr.normal(y_key, (N,))
x_test = jr.uniform(x_test_key, (1000,), minval=-3.0, maxval=3.0)
y_test = f(x_test) + SIGMA * jr.normal(y_test_key, (1000,))
data = {"x": x, "y": y}

net = eqx.nn.MLP("scalar", "scalar", 32, 2, activation=jnp.tanh, key=jr.key(1))


def loss(net, batch):
    return jnp.mean((jax.vmap(net)(batch["x"]) - batch["y"]) ** 2)


likelihood_scale = N / (2 * SIGMA**2)
prior = eb.priors.gaussian(1.0)

# %% [markdown]
# ## How the loss splits into outputs
#
# The Gauss–Newton matrix $J^\top \nabla^2_f \ell \, J$ needs the loss as a function
# $\ell$ of the network's outputs $f$ ($J$ is their Jacobian). We say how with
# `outputs=(output_fn, output_loss)`: `output_fn(model, data)` returns the outputs,
# `output_loss(outputs, data)` the loss from them. eqbayes checks at the optimum
# that together they give the loss.


# %%
def output_fn(net, batch):
    return jax.vmap(net)(batch["x"])


def output_loss(out, batch):
    return jnp.mean((out - batch["y"]) ** 2)


split = (output_fn, output_loss)

# %% [markdown]
# ## Train with Adam, then fit
#
# A Laplace group with `optimizer=` is trained during the solve, by that optimiser,
# to the posterior *mode*: it minimises $\lambda \cdot \text{loss} - \log
# \text{prior}$, the point around which the Gaussian is fitted. When the solve ends,
# the group fits its Gaussian there. We train for 3000 full-batch Adam steps and fit
# the Gauss–Newton approximation.

# %%
adam = optax.adam(optax.cosine_decay_schedule(1e-2, 3000))
model = eb.laplace(
    net,
    hessian="ggn",
    outputs=split,
    likelihood_scale=likelihood_scale,
    prior=prior,
    optimizer=adam,
)
start = time.perf_counter()
ggn = eb.Solver(loss, progress=False).run(model, steps=3000, key=jr.key(2), data=data)
seconds = {"Adam + GGN": time.perf_counter() - start}
trained = ggn.model
print(f"training loss {float(loss(trained, data)):.4f} (sigma^2 = {SIGMA**2})")

# %% [markdown]
# The other curvatures are fitted at the same trained network: mark `trained` and
# run no steps (`steps=0`): a group without `optimizer=` is held at its values.


# %%
def fit(hessian, **kwargs):
    """A Laplace fit at the trained network (no steps)."""
    model = eb.laplace(
        trained,
        hessian=hessian,
        likelihood_scale=likelihood_scale,
        prior=prior,
        **kwargs,
    )
    start = time.perf_counter()
    result = eb.Solver(loss, progress=False).run(
        model, steps=0, key=jr.key(3), data=data
    )
    return result, time.perf_counter() - start


try:
    fit("full")
except ValueError as err:
    print(err)

# %% [markdown]
# The exact Hessian is not positive definite at the Adam fit: a network's loss has
# directions of negative curvature almost everywhere Adam stops (training longer
# shrinks the negative eigenvalue here without removing it), and eqbayes says so
# rather than return a Gaussian that does not exist. The Gauss–Newton matrix drops
# the term of the Hessian that carries that curvature (the residuals times the
# network's second derivatives) and is positive semi-definite wherever it is
# evaluated.
#
# The exact Hessian is well defined on the **last layer**, in which the network is
# linear (there it equals the Gauss–Newton matrix): a *last-layer Laplace*, a common
# choice for large networks. `where=` selects it, as for any group; the rest of the
# network stays at its trained values. The diagonal and a tuned prior (below) use
# the whole network.

# %%
last, seconds["full, last layer"] = fit(
    "full", where=lambda m: m.layers[-1], name="head"
)
diag, seconds["diag"] = fit("diag", outputs=split)
tuned, seconds["GGN, tuned prior"] = fit("ggn", outputs=split, optimize_prior=True)

# %% [markdown]
# Each result is like any other: `result.posterior.samples` holds 1000 draws from the
# Gaussian, `(1, 1000, ...)` at every weight of the group, so `predict`, `summary`
# and `to_arviz` work unchanged; the fitted Gaussian itself, an
# `eb.LaplaceGaussian`, is `result.variational[name]` (the group's name: the model's
# class name, `"MLP"`, for the whole network). Its `log_marginal_likelihood` is the
# Laplace estimate of the evidence.


# %%
def gaussian(result):
    (q,) = result.variational.values()
    return q


for name, result in [("GGN", ggn), ("diag", diag), ("full, last layer", last)]:
    q = gaussian(result)
    sd = float(jnp.mean(jnp.sqrt(q.variance())))
    print(
        f"{name:16s} {q.variance().size:5d} weights, log evidence "
        f"{float(q.log_marginal_likelihood):8.1f}, mean posterior sd {sd:.3f}"
    )
print(ggn.posterior.samples.layers[0].weight.shape)
print(last.posterior.samples.layers[0].weight)  # not in the group: None

# %% [markdown]
# ## Tuning the prior precision
#
# The prior's $\sigma = 1$ was a guess. With `optimize_prior=True` the group scales
# the prior precision by the factor that maximises the Laplace evidence
# $\log p(\text{data}) \approx -\lambda\,\text{loss}(\theta^*) + \log p(\theta^*) +
# \tfrac{d}{2}\log 2\pi - \tfrac12 \log\det(H + P)$ (as laplace-torch's
# `optimize_prior_precision`; $\theta^*$ stays where it is):

# %%
q = gaussian(tuned)
print(f"tuned prior sigma {float(1 / jnp.sqrt(q.prior_precision[0])):.3f}")
print(f"log evidence {float(q.log_marginal_likelihood):.1f}")

# %% [markdown]
# ## Two predictives
#
# A Laplace fit gives two predictive bands for new data $y = f_\theta(x) +
# \varepsilon$:
#
# - **sampled**: push the draws through the network (`posterior.predict`) and add
#   the noise;
# - **linearised** (the "GLM predictive", Immer et al. 2021): replace the network by
#   its first-order expansion in $\theta$ at $\theta^*$, whose predictive is Gaussian
#   with variance $J \Sigma J^\top$ (`LaplaceGaussian.predict_linearised`). For
#   networks this is usually the better one: the sampled predictive evaluates the
#   network at weights the Gaussian reaches but the network's curvature does not
#   support.
#
# We measure both for each fit, on the 1000 held-out points: how many new
# observations fall inside the 90 % band, and its mean width.

# %%
levels = jnp.array([0.05, 0.95])


def sampled_band(result, xs):
    curves = result.posterior.predict(lambda m, x: jax.vmap(m)(x), xs)
    curves = curves.reshape(-1, xs.size)
    observations = curves + SIGMA * jr.normal(jr.key(4), curves.shape)
    return jnp.quantile(observations, levels, axis=0)


def linearised_band(result, xs):
    mean, var = gaussian(result).predict_linearised(lambda m, x: jax.vmap(m)(x), xs)
    half = 1.645 * jnp.sqrt(var + SIGMA**2)
    return mean - half, mean + half


def report(name, band, secs):
    lo, hi = band
    coverage = float(jnp.mean((lo <= y_test) & (y_test <= hi)))
    width = float(jnp.mean(hi - lo))
    rows[name] = (coverage, width, secs)
    print(f"{name:36s} coverage {coverage:6.1%}, width {width:6.3f}, {secs:5.1f} s")


rows = {}
for name, result in [
    ("GGN", ggn),
    ("full, last layer", last),
    ("diag", diag),
    ("GGN, tuned prior", tuned),
]:
    secs = seconds["Adam + GGN" if name == "GGN" else name]
    report(f"Laplace {name}, linearised", linearised_band(result, x_test), secs)
    report(f"Laplace {name}, sampled", sampled_band(result, x_test), secs)

# %% [markdown]
# (The GGN's time includes the 3000 Adam steps; the others start from the trained
# network.)
#
# ## Against SGLD and NUTS
#
# The same posterior, sampled: SGLD on minibatches of 32 as in [the SGLD
# tutorial](../bnn_sgld/) (four chains of 1000 warmup steps and 500 draws), and NUTS
# on the full data (two chains of 200 warmup steps and 200 draws), both started
# next to the trained network. NUTS is the reference here, and the expensive one:
# each of its transitions takes up to $2^{10}$ gradient evaluations on this
# 1153-dimensional posterior, so we cap its trajectories at $2^7$ steps
# (`max_num_doublings=7`, blackjax's keyword; still an exact MCMC kernel, only a
# less efficient one) to keep this page short.

# %%
sgld = eb.bayesian(
    trained,
    blackjax.sgld,
    step_size=1e-5,
    likelihood_scale=likelihood_scale,
    prior=prior,
    warmup=1000,
    keep=500,
    thin=2,
    num_chains=4,
    init_jitter=0.01,
)
start = time.perf_counter()
sgld = eb.Solver(loss, progress=False).run(
    sgld, key=jr.key(5), data=data, batch_size=32
)
report("SGLD", sampled_band(sgld, x_test), time.perf_counter() - start)

nuts = eb.bayesian(
    trained,
    blackjax.nuts,
    likelihood_scale=likelihood_scale,
    prior=prior,
    warmup=200,
    keep=200,
    num_chains=2,
    init_jitter=0.01,
    max_num_doublings=7,
)
start = time.perf_counter()
nuts = eb.Solver(loss, progress=False).run(nuts, key=jr.key(6), data=data)
report("NUTS", sampled_band(nuts, x_test), time.perf_counter() - start)

# %% [markdown]
# The plot shows the bands of the curve $f_\theta$ itself (without the noise) on a
# grid reaching beyond the data.

# %%
x_grid = jnp.linspace(-4.0, 4.0, 200)
fig, ax = plt.subplots(figsize=(8, 4))
ax.axvspan(-4, -3, color="0.9", lw=0)
ax.axvspan(3, 4, color="0.9", lw=0, label="no data")
mean, var = ggn.variational["MLP"].predict_linearised(
    lambda m, x: jax.vmap(m)(x), x_grid
)
ax.fill_between(
    x_grid,
    mean - 1.645 * jnp.sqrt(var),
    mean + 1.645 * jnp.sqrt(var),
    color="C0",
    alpha=0.3,
    lw=0,
    label="Laplace GGN, linearised",
)
curves = nuts.posterior.predict(lambda m, x: jax.vmap(m)(x), x_grid)
lo, hi = jnp.quantile(curves.reshape(-1, x_grid.size), levels, axis=0)
ax.plot(x_grid, lo, color="C1", lw=1, label="NUTS")
ax.plot(x_grid, hi, color="C1", lw=1)
ax.plot(x_grid, f(x_grid), "k--", lw=1, label="true f")
ax.plot(x, y, ".", color="k", ms=2)
ax.set_xlabel("x")
ax.set_title("90% band of the curve")
ax.legend(loc="upper left", fontsize="small")
fig.tight_layout()
plt.show()

# %% [markdown]
# ## What to take from it
#
# On this problem (the figures are printed above; they change a little from run to
# run of the solvers, not from the Laplace fits):
#
# - **The Gauss–Newton fit with the linearised predictive** gives a band for new
#   data that holds about 91 % of the held-out points, as wide as the NUTS band
#   (about 0.68 against 0.68) and narrower than the SGLD one (about 0.73, whose
#   finite step size widens it), in a few seconds where NUTS takes tens.
# - **Its sampled predictive is useless here**: pushed through the network, draws
#   from the Gaussian over all 1153 weights produce curves far from the data (bands
#   about 17 wide). The Gaussian describes the *linearised* network; the weights'
#   posterior sd is about 1, and the network is far from linear over that range.
#   Use `predict_linearised` for a whole-network Laplace.
# - **The exact Hessian** is not positive definite at the Adam fit of the whole
#   network (the error above names the smallest eigenvalue and the fixes). On the
#   last layer it is, and the last-layer Laplace band is as good as the GGN's with
#   either predictive (there the network is linear in the group).
# - **The diagonal** ignores every correlation between weights: each weight's
#   variance is set by its own curvature alone, far larger than its variance given
#   the others, and the bands come out twice as wide as they should, covering
#   everything. It is for groups too large for a dense matrix (above 20,000
#   parameters); a last layer is often the better choice there.
# - **Tuning the prior precision** raised the evidence (the tuned prior sd is about
#   1.6) and left the linearised band almost unchanged: the data, not the prior,
#   set it inside $[-3, 3]$.
#
# ## Where next
#
# - [Bayesian neural network with SGLD](../bnn_sgld/): the chain for this problem.
# - [Bayesian PINN](../bayesian_pinn/): a Gauss–Newton Laplace band checks an SGLD
#   band.
# - [Bayesian last layer](../bayesian_last_layer/): a body trained by optax beside
#   a sampled head in one solve; a Laplace group on the head works the same way
#   (`eb.laplace(..., where=lambda m: m.layers[-1], optimizer=...)` with
#   `Solver(optimizer=...)` for the body).
