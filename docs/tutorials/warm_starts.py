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
# # Warm starts: pathfinder, Laplace and SVGD
#
# An MCMC chain started far from the posterior spends its first steps just getting
# there, and window adaptation tuned on those steps is tuned for the wrong place.
# A *log-density-aware initializer* runs once before sampling, on the group's log
# density, and hands the chains a better start — and, for two of them, an inverse
# mass matrix too. eqbayes ships three, passed as `eb.bayesian(..., init=...)`:
#
# - `eb.initializers.pathfinder()`: blackjax's Pathfinder — L-BFGS, then the best
#   normal approximation along the optimisation path;
# - `eb.initializers.laplace()`: the MAP by optax, then the Gaussian whose
#   covariance is the inverse Hessian there;
# - `eb.initializers.svgd()`: Stein variational gradient descent, one particle per
#   chain.
#
# This tutorial runs the three on one problem, compares them with no initializer,
# says when to use which, and writes a fourth one by hand.

# %%
import logging
import time

import blackjax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import matplotlib.pyplot as plt
import numpy as np
import optax
from jaxtyping import Array, Float

import eqbayes as eb


logging.basicConfig(level=logging.WARNING)

# %% [markdown]
# ## The problem, and a bad start
#
# An exponential decay $y(t) = A e^{-k t}$ observed at 50 times with noise of
# standard deviation 0.05; we sample $\log A$ and $\log k$. The mean squared error
# becomes the Gaussian log-likelihood with `likelihood_scale` $= N / (2\sigma^2)$.
# The model starts at $A = e^{3} \approx 20$, $k = e^{-4} \approx 0.02$: a flat line
# far above the data.


# %%
class Decay(eqx.Module):
    log_amplitude: Float[Array, ""]
    log_rate: Float[Array, ""]

    def __call__(self, t):
        return jnp.exp(self.log_amplitude - jnp.exp(self.log_rate) * t)


def loss(model, t, y):
    return jnp.mean((model(t) - y) ** 2)


N, SIGMA = 50, 0.05
t = jnp.linspace(0.0, 5.0, N)
truth = Decay(jnp.log(jnp.array(2.0)), jnp.log(jnp.array(0.7)))
y = truth(t) + SIGMA * jr.normal(jr.key(0), t.shape)
far = Decay(log_amplitude=jnp.array(3.0), log_rate=jnp.array(-4.0))
solver = eb.Solver(loss, progress=False)


def mark(init, **kwargs):
    settings = dict(
        num_chains=4,
        keep=300,
        likelihood_scale=N / (2 * SIGMA**2),
        prior=eb.priors.gaussian(10.0),
    )
    return eb.bayesian(far, blackjax.nuts, init=init, **(settings | kwargs))


# %% [markdown]
# First, a long, well-adapted run as the reference answer (500 warmup steps of
# window adaptation), and then what NUTS does from the bad start with no
# adaptation and no warmup, at a step size that suits the posterior.

# %%
reference = solver.run(mark(None, warmup=500, keep=1000), key=jr.key(1), args=(t, y))
ref = reference.posterior.samples
ref_mean = np.array([jnp.mean(ref.log_amplitude), jnp.mean(ref.log_rate)])
ref_sd = np.array([jnp.std(ref.log_amplitude), jnp.std(ref.log_rate)])
print("posterior mean", ref_mean.round(4), "sd", ref_sd.round(4))

cold = solver.run(
    mark(None, adapt=False, warmup=0, step_size=0.01), key=jr.key(2), args=(t, y)
)


def first_draws_in_sds(result):
    """Each chain's first draw, in posterior sds from the posterior mean."""
    s = result.posterior.samples
    first = np.stack([s.log_amplitude[:, 0], s.log_rate[:, 0]], axis=-1)
    return np.abs((first - ref_mean) / ref_sd).max(axis=-1).round(1)


print("no initializer, first draws (sds away):", first_draws_in_sds(cold))

# %% [markdown]
# ## The three initializers
#
# Now the same bad start, still with `adapt=False` and `warmup=0`, with each
# initializer. Pathfinder and Laplace also set a diagonal inverse mass matrix
# (roughly the posterior variances), so the step size is in posterior standard
# deviations and 0.5 is a sensible value; SVGD sets only the positions, so it gets
# the same small step size as the cold start.
#
# The time is that of a whole `Solver.run` called for the first time: tracing and
# compilation, the initializer, and 300 draws of 4 chains.

# %%
initializers = {
    "pathfinder": (eb.initializers.pathfinder(), 0.5),
    "laplace": (eb.initializers.laplace(), 0.5),
    "svgd": (eb.initializers.svgd(), 0.01),
}
results = {"none": cold}
for name, (init, step_size) in initializers.items():
    start = time.perf_counter()
    results[name] = solver.run(
        mark(init, adapt=False, warmup=0, step_size=step_size),
        key=jr.key(2),
        args=(t, y),
    )
    seconds = time.perf_counter() - start
    s = results[name].posterior.samples
    print(
        f"{name:10s} first draws (sds away): {first_draws_in_sds(results[name])}, "
        f"R-hat {float(eb.rhat(s.log_rate)):.3f}, "
        f"ESS {float(eb.ess(s.log_rate)):.0f}, {seconds:.1f} s"
    )

# %% [markdown]
# The traces of $\log k$: without an initializer the chains need tens of draws to
# come down from $-4$ (and those draws pollute every summary); with one, they
# start in the bulk.

# %%
fig, axes = plt.subplots(1, 4, figsize=(12, 2.6), sharey=True)
for ax, (name, result) in zip(axes, results.items()):
    chain = result.posterior.samples.log_rate
    for k in range(chain.shape[0]):
        ax.plot(chain[k, :100], lw=0.7)
    ax.axhline(ref_mean[1], color="k", lw=0.8, ls="--")
    ax.set_title(name)
    ax.set_xlabel("draw")
axes[0].set_ylabel("log_rate")
axes[0].set_ylim(ref_mean[1] - 15 * ref_sd[1], ref_mean[1] + 15 * ref_sd[1])
fig.tight_layout()
plt.show()

# %% [markdown]
# An initializer is a plain callable, `init(key, logdensity_fn, position,
# num_chains)`, so it can be tried on its own. Here are the inverse mass matrices
# that Pathfinder and Laplace choose, against the reference posterior variances.
# This posterior is correlated, so the diagonal Laplace approximation
# (`1 / diag(H)`: *conditional* variances) is too narrow; `laplace("full")` gives
# the whole covariance $H^{-1}$, whose diagonal matches.

# %%
prior = eb.priors.gaussian(10.0)


def logdensity(position):
    return -N / (2 * SIGMA**2) * loss(position, t, y) + prior(position)


for name, init in [
    ("pathfinder", eb.initializers.pathfinder()),
    ("laplace", eb.initializers.laplace()),
    ("laplace full", eb.initializers.laplace("full")),
]:
    _, update = jax.jit(lambda key: init(key, logdensity, far, 1))(jr.key(4))
    imm = np.asarray(update["inverse_mass_matrix"])
    print(f"{name:12s}", (np.diag(imm) if imm.ndim == 2 else imm).round(6))
print("reference   ", (ref_sd**2).round(6))

# %% [markdown]
# ## With window adaptation
#
# Initializers compose with `adapt=True`: window adaptation then runs from the
# warm start and tunes the step size, keeping the initializer's inverse mass matrix
# if it set one. With `adapt_mass_matrix=True` (e.g.
# `eb.initializers.pathfinder(adapt_mass_matrix=True)`) its slow windows re-estimate
# that matrix from there instead, as Stan does with a given initial metric: better
# when the initializer's variances are rough. No `step_size` is needed.
#
# | initializer | `adapt` | what runs |
# |---|---|---|
# | none | `True` | window adaptation from the model's values |
# | none | `False` | the model's values, your `step_size` and mass matrix |
# | set | `True` | the initializer, then the window tunes the step size only |
# | set | `False` | the initializer: its positions and mass matrix, your `step_size` |
#
# `init_jitter` is ignored when an initializer is set (it spreads the chains
# itself), and a setting the kernel does not take — an inverse mass matrix for
# MALA — is dropped; both are said in `Solver.init`'s log line.

# %%
warm = solver.run(
    mark(eb.initializers.pathfinder(), warmup=100), key=jr.key(3), args=(t, y)
)
s = warm.posterior.samples
print(
    "pathfinder + 100 adaptation steps: R-hat",
    float(eb.rhat(s.log_rate)).__round__(3),
    "mean",
    np.array([jnp.mean(s.log_amplitude), jnp.mean(s.log_rate)]).round(4),
)

# %% [markdown]
# ## When to use which
#
# - **Pathfinder**: the general-purpose choice. A few dozen L-BFGS iterations (tens
#   to hundreds of gradient evaluations), robust from poor starts, and K chains get
#   K over-dispersed draws from its approximation. Its mass matrix is rough; with
#   `adapt=True` the window then only fixes the step size, so consider
#   `pathfinder(adapt_mass_matrix=True)` (the window re-estimates it, starting from
#   pathfinder's) or `pathfinder(mass_matrix=False)` (the window estimates it).
# - **Laplace**: when the posterior is close to Gaussian around one mode and the
#   dimension is moderate. It gives the exact covariance of a Gaussian posterior
#   (the test suite checks 5 %), and `laplace("full")` gives a dense mass matrix for
#   correlated posteriors. The Hessian costs $d$ Hessian-vector products
#   (`jax.hessian` up to `dense_limit` components, then one product at a time).
# - **SVGD**: when you want K starting points that are spread like the posterior
#   rather than K draws of a Gaussian — e.g. to check for several modes. It costs
#   `num_steps` gradient evaluations per particle and returns no mass matrix. It is
#   plain gradient flow, so it is slow along narrow, correlated directions; its
#   default optimiser (RMSprop with a cosine-decayed learning rate) moves about
#   `learning_rate` per step at first; raise `num_steps` for distant starts.
#
# `benchmarks/initializers.py` measures the time to $\hat R < 1.01$ with and without
# each, on a Bayesian neural network and a posteriordb posterior.
#
# ## Writing your own
#
# An initializer is an `eqx.Module` subclass of
# `eb.initializers.AbstractInitializer` with a `__call__(key, logdensity_fn,
# position, num_chains)` that returns `(positions, kernel_kwargs_update)`:
#
# - `logdensity_fn` is the group's log density (minus `likelihood_scale` times the
#   loss, plus the log prior), with every other group at its starting value;
# - `position` is the group's starting position (a pytree, no chain axis);
# - with one chain return a position like it; with K > 1 add a leading axis of K;
# - `kernel_kwargs_update` is a dict such as `{"inverse_mass_matrix": ...}`, or `{}`.
#
# It runs once inside `Solver.init`'s compiled program, so it is traced JAX code;
# its fields must be hashable settings (numbers, strings) marked
# `eqx.field(static=True)`. eqbayes checks the returned position's structure and
# shapes and names the group if they are wrong.
#
# Here: the MAP by Adam (with a decaying learning rate), then every chain at the
# MAP plus a small jitter, and a
# diagonal inverse mass matrix from the curvature of the log density along each
# coordinate (the diagonal of the Hessian, by forward-over-reverse
# differentiation).


# %%
class AdamMAP(eb.initializers.AbstractInitializer):
    learning_rate: float = eqx.field(static=True, default=0.1)
    num_steps: int = eqx.field(static=True, default=1000)
    jitter: float = eqx.field(static=True, default=0.01)

    def __call__(self, key, logdensity_fn, position, num_chains):
        schedule = optax.cosine_decay_schedule(self.learning_rate, self.num_steps)
        optimizer = optax.adam(schedule)

        def step(_, carry):
            p, opt_state = carry
            grads = jax.grad(lambda q: -logdensity_fn(q))(p)
            updates, opt_state = optimizer.update(grads, opt_state)
            return optax.apply_updates(p, updates), opt_state

        mode, _ = jax.lax.fori_loop(
            0, self.num_steps, step, (position, optimizer.init(position))
        )
        flat, unravel = jax.flatten_util.ravel_pytree(mode)
        hessian = jax.hessian(lambda x: -logdensity_fn(unravel(x)))(flat)
        variances = 1 / jnp.clip(jnp.diag(hessian), 1e-8)
        noise = jr.normal(key, (num_chains, flat.size), flat.dtype)
        starts = jax.vmap(unravel)(flat[None] + self.jitter * noise)
        if num_chains == 1:
            starts = mode
        return starts, {"inverse_mass_matrix": variances}


mine = solver.run(
    mark(AdamMAP(), adapt=False, warmup=0, step_size=0.5), key=jr.key(2), args=(t, y)
)
s = mine.posterior.samples
print(
    "AdamMAP first draws (sds away):",
    first_draws_in_sds(mine),
    "R-hat",
    round(float(eb.rhat(s.log_rate)), 3),
)
