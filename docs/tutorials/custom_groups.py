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
# # Writing your own group
#
# Every way eqbayes learns a part of a model — an MCMC kernel (`eb.bayesian`), a
# variational fit (`eb.vi`), an optax point estimate (`eb.optimise`) — is a *group*:
# an `eqx.Module` that replaces the sub-tree it governs inside your model and that
# the `Solver` talks to through one small interface, `eb.AbstractGroup`. A new kind
# of posterior is one new class, written in your own code: nothing in eqbayes
# changes.
#
# This page writes one: a group that draws a parameter **exactly from its
# conditional distribution** given the rest of the model — a Gibbs step. It sits
# beside a NUTS group in one solve, and the two together sample the joint
# posterior of a Bayesian linear regression with unknown noise, which we check
# against the closed form.
#
# ## The interface
#
# The `Solver` calls a group's methods in this order:
#
# - `check(solve)`, in `Solver.init` before anything is compiled: raise a clear
#   error (or log a warning) if the group cannot be part of `solve`;
# - `describe()`, in `Solver.init`: one log line;
# - `init(ctx)`, once, compiled: the group with its `state` built;
# - `step(ctx)`, every solver step, compiled: the group after one step;
# - `monitor()`, at the end of every compiled chunk: scalars for
#   `result.history` (`{}` for none);
# - `result(ctx)`, at the end: an `eb.GroupResult` with the draws, per-draw
#   diagnostics and any fitted distribution;
# - `current()`, whenever the plain model is needed: the plain sub-tree at the
#   group's value.
#
# A group that carries K chains — each seen by the other groups at its own
# position — subclasses `eb.AbstractChainGroup`, which adds `num_chains`,
# `schedule` (warmup, keep, thin), `start(key)` (the K starting positions),
# `positions()` and `chain_axes()` (which parts of the state have the chain axis
# first, for sharding), and implements `current()` for you (chain 0).
#
# Besides the methods, a group declares `value` (the sub-tree as marked), `name`,
# `state` (None until `init`), `minibatched` (whether it takes minibatches when the
# solve has a `batch_size`) and the class variable `marked_with` (how error
# messages name the call that makes it).
#
# The `eb.Context` handed to `init`, `step` and `result` is the rest of the model:
# `ctx.model_fn(others_k)(position)` is the plain model with this group at
# `position` and every other chain group at chain k (`others_k`, one chain's slice
# of `ctx.others`); `ctx.loss_fn(...)` is the user's loss on it, and
# `ctx.full_args` the arguments the loss takes after the model (`(data, *args)`
# with `data=`); `ctx.over_chains` maps a function over the K chains; `ctx.key`,
# `ctx.step` and `ctx.mode` say which step this is. `eb.Draws` keeps the last
# `keep` draws of K chains on the group's schedule.
#
# ## The model
#
# A linear regression $y = X w + \varepsilon$ with noise precision $\tau$
# ($\varepsilon \sim N(0, \tau^{-1})$), and the conjugate Normal–Gamma prior
# $w \mid \tau \sim N(0, (\kappa\tau)^{-1} I)$, $\tau \sim \text{Gamma}(a, b)$. The
# coefficients $w$ go to NUTS; the precision $\tau$ has an exact conditional,
#
# $$\tau \mid w, y \sim \text{Gamma}\Big(a + \tfrac{n + d}{2},\;
#   b + \tfrac{1}{2}\big(\lVert y - Xw\rVert^2 + \kappa \lVert w\rVert^2\big)\Big),$$
#
# so it gets a Gibbs group.

# %%
import logging
from collections.abc import Callable
from typing import ClassVar

import blackjax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray, PyTree

import eqbayes as eb


logging.getLogger("eqbayes").setLevel(logging.WARNING)


class Regression(eqx.Module):
    w: Float[Array, " d"]
    tau: Float[Array, ""]

    def __call__(self, x):
        return x @ self.w


A, B, KAPPA = 2.0, 1.0, 0.5  # the Normal-Gamma prior


def loss(model, x, y):
    """The negative log joint density of y and w given tau (up to a constant)."""
    n, d = x.shape
    tau = model.tau
    sse = jnp.sum((y - model(x)) ** 2)
    return 0.5 * tau * (sse + KAPPA * jnp.sum(model.w**2)) - 0.5 * (n + d) * jnp.log(
        tau
    )


# %% [markdown]
# ## The group
#
# The group holds a user function `draw(key, model, *args)` that returns a new
# value of its *position* drawn from its conditional. The position is the
# group's floating-point leaves (`initial_position()`): here one array, but a
# pytree when the group is a sub-module or is marked with `mask=`, so the code
# below maps over its leaves. Its state is the K chains' positions and their kept
# draws. Everything the `Solver` needs is below; nothing else is overridden.


# %%
class GibbsState(eqx.Module):
    position: PyTree[Float[Array, "chain ..."]]
    draws: eb.Draws


class Gibbs(eb.AbstractChainGroup):
    """A sub-tree drawn exactly from its conditional given the rest of the model."""

    value: PyTree
    draw: Callable = eqx.field(static=True)
    name: str = eqx.field(static=True)
    num_chains: int = eqx.field(static=True)
    warmup: int = eqx.field(static=True)
    keep: int = eqx.field(static=True)
    state: GibbsState | None = None

    minibatched: ClassVar[bool] = False
    marked_with: ClassVar[str] = "gibbs"

    @property
    def schedule(self):
        return self.warmup, self.keep, 1

    def start(self, key: PRNGKeyArray):
        del key  # every chain starts at the model's value
        return jax.tree.map(
            lambda x: jnp.broadcast_to(x, (self.num_chains, *x.shape)),
            self.initial_position(),
        )

    def positions(self):
        return self.state.position

    def chain_axes(self):
        # Every array of the state has the chain axis first.
        flags = jax.tree.map(lambda _: False, self)
        return eqx.tree_at(lambda g: g.state, flags, True)

    def init(self, ctx: eb.Context):
        draws = eb.Draws.empty(ctx.start, warmup=self.warmup, keep=self.keep, thin=1)
        return eqx.tree_at(
            lambda g: g.state,
            self,
            GibbsState(ctx.start, draws),
            is_leaf=lambda x: x is None,
        )

    def step(self, ctx: eb.Context):
        def one_chain(others_k, position, key):
            model = ctx.model_fn(others_k)(position)
            return self.draw(key, model, *ctx.full_args)

        keys = jr.split(ctx.key, self.num_chains)
        position = ctx.over_chains(one_chain, self.state.position, keys)
        draws = self.state.draws.record(ctx.step, position, ctx.mode)
        return eqx.tree_at(lambda g: g.state, self, GibbsState(position, draws))

    def monitor(self):
        return {}

    def result(self, ctx: eb.Context):
        return eb.GroupResult(samples=self.state.draws.kept(int(ctx.step)))

    def check(self, solve: eb.Solve):
        if solve.substeps:
            raise ValueError(f"Group '{self.name}': a Gibbs group takes no substeps.")

    def describe(self):
        return f"Group '{self.name}': exact Gibbs draws, K={self.num_chains} chain(s)"


def gibbs(
    model, draw, *, where=None, mask=None, num_chains=1, warmup=0, keep=1000, name=None
):
    """Marks `where` (and `mask`) to be drawn by `draw(key, model, *args)` at every
    step."""

    def make(subtree, group_name):
        return Gibbs(subtree, draw, group_name, num_chains, warmup, keep)

    return eb.mark(model, make, where=where, mask=mask, name=name, call="gibbs")


# %% [markdown]
# `eb.mark` is what `eb.bayesian` and `eb.vi` use too: it selects the sub-tree
# (looking through existing groups, so groups are added one call at a time) and
# makes every check of the selection. Now the conditional of $\tau$, and the data.


# %%
def draw_tau(key, model, x, y):
    n, d = x.shape
    sse = jnp.sum((y - model(x)) ** 2)
    rate = B + 0.5 * (sse + KAPPA * jnp.sum(model.w**2))
    return jr.gamma(key, A + 0.5 * (n + d), dtype=rate.dtype) / rate


n, d = 40, 2
x = jnp.stack([jnp.ones(n), jnp.linspace(-1.0, 1.0, n)], axis=1)
y = x @ jnp.array([0.5, -1.0]) + 0.3 * jr.normal(jr.key(0), (n,))

K, WARMUP, KEEP = 4, 300, 1500
model = Regression(w=jnp.zeros(d), tau=jnp.array(1.0))
model = eb.bayesian(
    model,
    blackjax.nuts,
    where=lambda m: m.w,
    prior=lambda w: jnp.zeros((), w.dtype),  # w's prior is in the loss (it has tau)
    num_chains=K,
    warmup=WARMUP,
    keep=KEEP,
    init_jitter=0.1,
)
model = gibbs(
    model, draw_tau, where=lambda m: m.tau, num_chains=K, warmup=WARMUP, keep=KEEP
)
result = eb.Solver(loss, progress=False).run(model, key=jr.key(1), args=(x, y))
print(result.posterior.summary())

# %% [markdown]
# ## Against the exact posterior
#
# The Normal–Gamma posterior is $\tau \sim \text{Gamma}(a_n, b_n)$ and, marginally,
# $w$ is Student-t with $2a_n$ degrees of freedom around $\mu_n$:
# $\Lambda_n = X^\top X + \kappa I$, $\mu_n = \Lambda_n^{-1} X^\top y$,
# $a_n = a + n/2$, $b_n = b + \tfrac12 (y^\top y - \mu_n^\top \Lambda_n \mu_n)$,
# $\text{Cov}(w) = \tfrac{b_n}{a_n - 1} \Lambda_n^{-1}$.

# %%
precision = x.T @ x + KAPPA * jnp.eye(d)
mu_n = jnp.linalg.solve(precision, x.T @ y)
a_n = A + n / 2
b_n = B + 0.5 * (y @ y - mu_n @ precision @ mu_n)
exact = {
    "w": (
        np.asarray(mu_n),
        np.sqrt(np.diag(b_n / (a_n - 1) * jnp.linalg.inv(precision))),
    ),
    "tau": (np.array(a_n / b_n), np.array(np.sqrt(a_n) / b_n)),
}
samples = result.posterior.samples
for field in ("w", "tau"):
    draws = np.asarray(getattr(samples, field))
    mean, sd = draws.mean(axis=(0, 1)), draws.std(axis=(0, 1))
    z = (mean - exact[field][0]) / (sd / np.sqrt(np.asarray(eb.ess(draws))))
    show = lambda v: np.array2string(np.asarray(v), precision=4)  # noqa: E731
    print(
        f"{field}: mean {show(mean)} (exact {show(exact[field][0])}), "
        f"sd {show(sd)} (exact {show(exact[field][1])}), z-score {show(z)}"
    )

# %% [markdown]
# The Gibbs draws of $\tau$ and the NUTS draws of $w$ together recover the joint
# posterior: means within a few Monte Carlo standard errors of the exact ones,
# standard deviations within a few percent. Each solver step moves $w$ by one NUTS
# transition at the current $\tau$ and then draws $\tau$ at the new $w$
# (Metropolis-within-Gibbs, with an exact Gibbs step); `summary`, `predict`,
# `to_arviz` and checkpoints work for the new group as for any other.
#
# ## What to keep in mind
#
# - **Final classes.** Implement every abstract member and nothing else; state
#   that changes lives in `state` (a Module of arrays), configuration in static
#   fields (`eqx.field(static=True)`: hashable, never arrays).
# - **Traced code.** `init` and `step` run inside the compiled program: use
#   `jax.numpy`, `lax.cond`, and `ctx.key` for randomness; never Python `if` on an
#   array value.
# - **Positions are pytrees.** With `mask=` (several groups sharing one sub-tree,
#   e.g. NUTS on the coefficients `w` and `b` and this group on `tau` of one
#   module: `eb.bayesian(model, blackjax.nuts, mask=...)`, then
#   `eb.mark(model, make, mask=...)` with the complementary mask) the position is
#   the module with `None` outside the mask: write `start`, `draw` and priors with
#   `jax.tree.map`, or read the leaf you need (`position.tau`).
# - **Chains.** A chain group keeps everything per chain on a leading axis of size
#   `num_chains` and says so in `chain_axes`; a group without chains (a point
#   estimate, a fitted distribution) has one value that every chain sees: subclass
#   `eb.AbstractGroup` and implement `current()` yourself.
# - **Errors early.** `check(solve)` sees every group of the solve before anything
#   is compiled: say there what the group cannot do, naming it.
