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
# # Bayesian last layer
#
# Sampling every weight of a network is expensive and often unnecessary. A popular
# middle way is the *Bayesian last layer*: train the body of the network to a point
# estimate as usual, and put a posterior only on the last layer, the "head". The
# head maps the body's features linearly to the output, so its posterior is well
# behaved, and the head is small, so its chain is cheap to run and to store.
#
# In eqbayes both happen in **one solve**: each solver step makes one SGLD
# transition of the head and one Adam step of the body, on the same minibatch. This
# tutorial shows
#
# - `mask=`: marking only the last layer of an `eqx.nn.MLP`;
# - `eb.Solver(loss, optimizer=optax.adam(...))`: Adam on every leaf no group holds;
# - several head chains with one body, and what "chain 0 is the representative"
#   means;
# - sparse storage: the chain stores only the head.
#
# In the terms of the [mixed inference](../../mixed/) page this is *Pattern B*. It
# runs in well under a minute on a laptop CPU.

# %%
import logging

import blackjax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import matplotlib.pyplot as plt
import optax

import eqbayes as eb


# eqbayes reports its configuration and warnings on the logger "eqbayes".
logging.basicConfig(level=logging.WARNING, format="%(levelname)s:%(name)s: %(message)s")

# %% [markdown]
# ## Data and network
#
# 512 noisy observations of $f(x) = \sin(2x) + x/2$ on $[-3, 3]$ with noise
# $\sigma = 0.2$ (the function of the [Bayesian neural network](../bnn_sgld/)
# tutorial), and 1000 held-out points to test the band.
#
# The network is an ordinary Equinox module: a body (an `eqx.nn.MLP` with two hidden
# layers of 64 units) that maps $x$ to 8 features, and a linear head from the 8
# features to the output. The narrow head is a deliberate choice, explained below:
# the head's posterior is then well conditioned enough for SGLD.


# %%
SIGMA = 0.2
N = 512


def f(x):
    return jnp.sin(2 * x) + 0.5 * x


x_key, y_key, x_test_key, y_test_key = jr.split(jr.key(0), 4)
x = jr.uniform(x_key, (N,), minval=-3.0, maxval=3.0)
y = f(x) + SIGMA * jr.normal(y_key, (N,))
x_test = jr.uniform(x_test_key, (1000,), minval=-3.0, maxval=3.0)
y_test = f(x_test) + SIGMA * jr.normal(y_test_key, (1000,))
data = {"x": x, "y": y}


class Net(eqx.Module):
    body: eqx.nn.MLP
    head: eqx.nn.Linear

    def __init__(self, key):
        body_key, head_key = jr.split(key)
        self.body = eqx.nn.MLP(
            "scalar",
            8,
            64,
            2,
            activation=jnp.tanh,
            final_activation=jnp.tanh,
            key=body_key,
        )
        self.head = eqx.nn.Linear(8, "scalar", key=head_key)

    def __call__(self, x):
        return self.head(self.body(x))


net = Net(jr.key(1))


def num_weights(tree):
    return sum(w.size for w in jax.tree.leaves(eqx.filter(tree, eqx.is_array)))


print("network:", num_weights(net), "weights; head:", num_weights(net.head))


def loss(net, batch):
    return jnp.mean((jax.vmap(net)(batch["x"]) - batch["y"]) ** 2)


# %% [markdown]
# ## The mask
#
# A mask is a pytree of booleans with the structure of the model (or of the
# sub-tree that `where=` selects): `True` leaves belong to the group. Start from all
# `False` and set the head to `True` with `eqx.tree_at`. A mask may stop at any node
# of the tree, so `replace=True` marks the whole head.

# %%
all_false = jax.tree.map(lambda _: False, net)
head_mask = eqx.tree_at(lambda m: m.head, all_false, replace=True)
print(head_mask.head, head_mask.body.layers[0].weight)

# %% [markdown]
# ## Marking the head, training the body
#
# The head gets SGLD with a likelihood scale of $N/(2\sigma^2)$, a standard normal
# prior and four chains. Every leaf that no group holds (the body) is trained by the
# optimiser given to `eb.Solver`, on the same minibatches. Without an `optimizer=`
# the body would stay at its random initial value (*Pattern A*: a random-features
# model).
#
# The schedule needs a word. The head's draws are combined with the *final* body by
# `predict`, so draws kept while the body still moves would belong to bodies that no
# longer exist. We therefore let Adam's learning rate decay to zero over the 3000
# warmup steps (a cosine schedule): body and head are trained together during
# warmup, and the 500 kept draws (`thin=16`, 8000 steps) are draws of the head given
# the trained body. The solve has exactly `warmup + keep * thin` steps, the default.
#
# The step size: SGLD has no accept/reject step, so its step must be small against
# the stiffest direction of the head's log density (here a curvature of about
# $4 \times 10^4$, so $5 \times 10^{-6}$ keeps the discretisation error small).

# %%
WARMUP, KEEP, THIN = 3000, 500, 16
model = eb.bayesian(
    net,
    blackjax.sgld,
    mask=head_mask,
    step_size=5e-6,
    likelihood_scale=N / (2 * SIGMA**2),
    prior=eb.priors.gaussian(1.0),
    warmup=WARMUP,
    keep=KEEP,
    thin=THIN,
    num_chains=4,
    name="head",
)
adam = optax.adam(optax.cosine_decay_schedule(3e-3, WARMUP))
solver = eb.Solver(loss, optimizer=adam, print_every=1000, progress=False)
result = solver.run(model, key=jr.key(2), data=data, batch_size=32)
print("final loss on all the data, mean over chains:", result.history.loss[-1])

# %% [markdown]
# ## One body, four head chains: the representative
#
# The warning above is deliberate. With $K = 4$ head chains and one body, which head
# should the body's gradient see? eqbayes takes it **at chain 0**: at every step, Adam
# updates the body as if the head were chain 0's current draw. The other three
# chains sample the head's posterior *given that body*. This is a stochastic
# approximation EM scheme: the body is a point estimate fitted jointly with one
# Markov chain of the head, and all $K$ chains explore the head's conditional
# posterior. It is not four independent body-plus-head fits.
#
# - `eb.Solver(..., optimizer_chains="mean")` averages the body's gradient over the
#   $K$ head chains instead (a Monte Carlo EM estimate of the expected gradient):
#   less noisy, but $K$ gradient evaluations of the body per step.
# - `num_chains=1` in separate solves gives independent fits, if that is what you
#   want.
#
# `result.model` is the plain network: the trained body and chain 0's last head draw.

# %%
print(type(result.model).__name__, result.model.head.weight)

# %% [markdown]
# ## Predictions
#
# `predict` combines each head draw with the trained body. The band for new data
# adds the noise $\sigma$ to each draw, and we check its coverage on the held-out
# points.

# %%
x_grid = jnp.linspace(-4.0, 4.0, 200)
curves = result.posterior.predict(lambda m, x: jax.vmap(m)(x), x_grid)
curves = curves.reshape(-1, x_grid.size)
levels = jnp.array([0.05, 0.95])
curve_lo, curve_hi = jnp.quantile(curves, levels, axis=0)
observations = curves + SIGMA * jr.normal(jr.key(3), curves.shape)
obs_lo, obs_hi = jnp.quantile(observations, levels, axis=0)

test_draws = result.posterior.predict(lambda m, x: jax.vmap(m)(x), x_test)
test_curves = test_draws.reshape(-1, x_test.size)
test_obs = test_curves + SIGMA * jr.normal(jr.key(4), test_curves.shape)
lo, hi = jnp.quantile(test_obs, levels, axis=0)
coverage = float(jnp.mean((lo <= y_test) & (y_test <= hi)))
print(f"empirical coverage of the 90% predictive band: {coverage:.1%} of 1000 points")

fig, ax = plt.subplots(figsize=(8, 4))
ax.axvspan(-4, -3, color="0.9", lw=0)
ax.axvspan(3, 4, color="0.9", lw=0, label="no data")
ax.fill_between(
    x_grid, obs_lo, obs_hi, color="C0", alpha=0.2, lw=0, label="90% new data"
)
ax.fill_between(
    x_grid, curve_lo, curve_hi, color="C1", alpha=0.6, lw=0, label="90% curve"
)
ax.plot(x_grid, f(x_grid), "k--", lw=1, label="true f")
ax.plot(x, y, ".", color="k", ms=2)
ax.set_xlabel("x")
ax.legend(loc="upper left", fontsize="small")
fig.tight_layout()
plt.show()

# %% [markdown]
# The band for new data holds about what it promises on held-out points. The curve's
# own band is narrow, and outside $[-3, 3]$ it stays narrow while the true $f$ leaves
# it: only the head is uncertain, and the body's features, fixed at their trained
# values (saturated `tanh` units, flat beyond the data), decide how that uncertainty
# extrapolates. That is the price of a Bayesian last layer: uncertainty about the
# features themselves is not represented. Compare the full-network band of the
# [SGLD tutorial](../bnn_sgld/).
#
# ## Checking the head against the exact answer
#
# Given the body, the output is linear in the head's weights $w$ (with the bias as a
# ninth weight on a constant feature), so the head's posterior is Gaussian with
# precision $H = \frac{2\lambda}{N}\Phi^\top\Phi + I$, where $\Phi$ holds the body's
# features at the data and $\lambda = N/(2\sigma^2)$. The exact standard deviation
# of the curve at $x$ is $\sqrt{\phi(x)^\top H^{-1} \phi(x)}$, which we compare with
# the chains' spread.


# %%
def features(x):
    return jnp.concatenate([result.model.body(x), jnp.ones(1)])


phi = jax.vmap(features)(x)
H = (1 / SIGMA**2) * phi.T @ phi + jnp.eye(phi.shape[1])
phi_test = jax.vmap(features)(x_test)
exact_sd = jnp.sqrt(jnp.sum(phi_test * jnp.linalg.solve(H, phi_test.T).T, axis=1))
sgld_sd = jnp.std(test_curves, axis=0)
print(
    f"curve sd at the test points: exact {jnp.mean(exact_sd):.4f}, "
    f"SGLD {jnp.mean(sgld_sd):.4f}"
)
eigenvalues = jnp.linalg.eigvalsh(H)
print(
    f"curvature of the head's log density: {eigenvalues[0]:.0f} to "
    f"{eigenvalues[-1]:.0f}"
)

rhat = eb.rhat(test_draws)
print(
    f"R-hat of the predictions: median {jnp.median(rhat):.3f}, max {jnp.max(rhat):.3f}"
)

# %% [markdown]
# The chains' spread matches the exact conditional posterior to within about ten
# percent. $\hat{R}$ is above the usual 1.01 bar at many points: SGLD (with no
# mass matrix) relaxes a direction of curvature $c$ in about $1/(\epsilon c)$ steps,
# which for the flattest direction here is a few thousand steps, against 8000
# sampling steps: a longer run (larger `thin`) brings it down. This conditioning is
# why the head is narrow. In our trials with a 64-wide head (an `eqx.nn.MLP` with
# `layers[-1]` as the head), the curvatures spanned five orders of magnitude instead
# of three, and a few thousand SGLD steps gave either a band several times too wide
# (at a step size near the stability limit) or chains that disagreed (at a safe
# one). For a wide head, use many more steps, or a full-data kernel.
#
# ## Sparse storage
#
# `result.posterior.samples` has the structure of the network, but only the head's
# leaves hold draws; every other leaf is `None`. Trained and frozen leaves are stored
# once, in `result.model`, and `predict` combines the two.

# %%
print("head draws:", result.posterior.samples.head.weight.shape)
print("body in the chain:", result.posterior.samples.body.layers[0].weight)
stored = sum(a.nbytes for a in jax.tree.leaves(result.posterior.samples))
full = num_weights(net) * 4 * KEEP * 4  # float32 x 4 chains x 500 draws
print(f"posterior.samples: {stored / 1e3:.0f} kB")
print(f"a chain of the whole network would take {full / 1e6:.1f} MB")

# %% [markdown]
# Nine numbers per draw instead of 4817. For a head on a network with millions of
# weights this is the difference between a chain that fits in memory and one that
# does not.
#
# ## Variations
#
# - **Another kernel for the head.** Given the body, the head's log density is a
#   Gaussian quadratic, so a full-data kernel works well too:
#   `eb.bayesian(net, blackjax.hmc, mask=head_mask, adapt=False, step_size=...,
#   num_integration_steps=...)`. A full-data kernel sees all of `data` at each step
#   while Adam still sees minibatches. Prefer `adapt=False` with a hand-set step
#   size: window adaptation would tune the step size against the untrained body.
# - **A separate optimiser for one part:**
#   `eb.optimise(model, optax.sgd(1e-2), where=lambda m: m.body.layers[0])`, and the
#   Solver's `optimizer=` trains what is left.
# - **Several masked groups on one sub-tree** (Pattern D): call `eb.bayesian` twice
#   with disjoint masks, e.g. the head's weight with one kernel and its bias with
#   another; they are stepped in a fixed cycle.
#
# ## Where next
#
# - [Bayesian PINN](../bayesian_pinn/): a posterior over a whole network constrained
#   by a differential equation.
# - [Two-stage inverse problem](../two_stage_inverse/): substeps, an optax surrogate
#   and a sampled physical coefficient.
# - [Mixed inference](../../mixed/): every pattern on one page.
