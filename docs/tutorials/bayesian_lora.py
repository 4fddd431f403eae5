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
# # Bayesian LoRA
#
# A pretrained network, new data that has drifted from what it was trained on, and
# too few new points to retrain it: low-rank adaptation (LoRA) keeps every pretrained
# weight $W$ frozen and learns a small update $B A$ per layer, so that a layer
# computes $(W + BA)x + b$ with $A$ of shape $(r, \text{in})$ and $B$ of shape
# $(\text{out}, r)$. With a posterior over the adapters instead of a point estimate,
# the fine-tuned network also says where the new data leave it unsure.
#
# `eqbayes.nn.lora` puts the adapters in place, `where=eqbayes.nn.adapters_b` (or
# `eqbayes.nn.adapters`) samples them and nothing else, and `eqbayes.nn.merge`
# gives back a plain network.

# %%
import blackjax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import matplotlib.pyplot as plt
import numpy as np
import optax

import eqbayes as eb
import eqbayes.nn


# %% [markdown]
# ## Pretraining
#
# A small MLP learns $\sin(3x)$ on $[-1, 1]$ from 200 points, with Adam
# (`eb.optimise` marks the whole network; 2000 steps).


# %%
def loss(model, x, y):
    return jnp.mean((jax.vmap(model)(x) - y) ** 2)


x_pre = jnp.linspace(-1.0, 1.0, 200)[:, None]
y_pre = jnp.sin(3 * x_pre)
net = eqx.nn.MLP(1, 1, width_size=32, depth=2, activation=jnp.tanh, key=jr.key(0))
pretrain = eb.Solver(loss, progress=False).run(
    eb.optimise(net, optax.adam(3e-3)), steps=2000, key=jr.key(1), args=(x_pre, y_pre)
)
pretrained = pretrain.model
print(f"pretraining loss: {float(loss(pretrained, x_pre, y_pre)):.2e}")

# %% [markdown]
# ## Shifted data
#
# The new data follow $\sin(3x) + 0.6x$, seen at only 16 points on $[-1, 0.5]$,
# with noise of standard deviation 0.05. The pretrained network misses the shift.

# %%
NOISE = 0.05
x_new = jr.uniform(jr.key(2), (16, 1), minval=-1.0, maxval=0.5)
y_new = jnp.sin(3 * x_new) + 0.6 * x_new + NOISE * jr.normal(jr.key(3), x_new.shape)
x_grid = jnp.linspace(-1.2, 1.2, 200)[:, None]
truth = jnp.sin(3 * x_grid) + 0.6 * x_grid

# %% [markdown]
# ## Adapters
#
# Rank-1 adapters on all three Linear layers. At the start $B = 0$, so the adapted
# network computes exactly what the pretrained one does; its only floating-point
# leaves are the adapters: 130 numbers against 1,153 in the network.

# %%
adapted = eqbayes.nn.lora(pretrained, rank=1, key=jr.key(4))
assert jnp.array_equal(jax.vmap(adapted)(x_grid), jax.vmap(pretrained)(x_grid))


def count(tree):
    return sum(x.size for x in jax.tree.leaves(eqx.filter(tree, eqx.is_inexact_array)))


print("adapter parameters:", count(adapted), " network parameters:", count(pretrained))

# %% [markdown]
# ## The posterior over the adapters
#
# `where=eqbayes.nn.adapters` would sample both factors. But $(A, B)$ and
# $(cA, B/c)$ give the same network, for every $c \neq 0$: the posterior over both
# is a set of curved ridges, mirror images of each other, and NUTS struggles on it
# (on this problem: 12 % divergent transitions, $\hat R = 1.26$). Holding each $A$
# at its random start and sampling the $B$s alone (`where=eqbayes.nn.adapters_b`,
# as LoRA-FA does for training) removes the symmetry; the update $BA$ still moves
# every layer.
#
# NUTS on the 65 entries of the $B$s, with the Gaussian likelihood
# (`likelihood_scale` $= N / 2\sigma^2$ turns the mean squared error into it) and a
# $\mathcal{N}(0, 1)$ prior on every entry. Each draw stores those 65 values, never
# the frozen weights.

# %%
marked = eb.bayesian(
    adapted,
    blackjax.nuts,
    where=eqbayes.nn.adapters_b,
    name="adapters",
    warmup=300,
    keep=300,
    num_chains=2,
    init_jitter=0.05,
    likelihood_scale=x_new.shape[0] / (2 * NOISE**2),
    prior=eb.priors.gaussian(1.0),
)
result = eb.Solver(loss, progress=False).run(marked, key=jr.key(5), args=(x_new, y_new))
summary = result.posterior.summary()
print(summary.to_string(max_rows=6))
print("largest R-hat:", float(summary.to_dict()["r_hat"].max()))

# %% [markdown]
# The frozen weights are bitwise what pretraining left, and `merge` turns the final
# state into a plain `eqx.nn.MLP` with $W + BA$ in each layer:

# %%
for before, after in zip(adapted.layers, result.model.layers):
    assert jnp.array_equal(before.weight, after.weight)
merged = eqbayes.nn.merge(result.model)
print(type(merged.layers[0]).__name__, merged.layers[0].weight.shape)

# %% [markdown]
# ## Predictive band, before and after
#
# Before: the pretrained network, one curve. After: the posterior predictive band
# of the adapted network, evaluated at every draw with `predict`. It follows the
# shifted data where they are, and widens beyond $x = 0.5$, where the new data say
# nothing.

# %%
before = jax.vmap(pretrained)(x_grid)
after = result.posterior.predict(lambda m, x: jax.vmap(m)(x), x_grid)
lo, mid, hi = np.quantile(np.asarray(after).reshape(-1, 200), [0.05, 0.5, 0.95], axis=0)

fig, axes = plt.subplots(1, 2, figsize=(10, 3.5), sharey=True)
for ax, title in zip(axes, ["before: pretrained", "after: Bayesian LoRA"]):
    ax.plot(x_grid, truth, "k--", lw=1, label="new truth")
    ax.plot(x_new, y_new, "ko", ms=4, label="new data")
    ax.set_title(title)
    ax.set_xlabel("x")
axes[0].plot(x_grid, before, "C0", label="pretrained")
axes[1].fill_between(x_grid[:, 0], lo, hi, color="C1", alpha=0.3, label="90% band")
axes[1].plot(x_grid, mid, "C1", label="median")
axes[0].legend()
axes[1].legend()
plt.show()
