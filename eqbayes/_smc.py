r"""Tempered sequential Monte Carlo groups: `eb.smc`.

Particles drawn from the prior move through the tempered posteriors

$$\pi_\lambda(\theta) \propto p(\theta)\, p(y \mid \theta)^\lambda, \qquad
    0 = \lambda_0 < \lambda_1 < \dots < \lambda_T = 1,$$

one solver step per stage: each stage picks the next $\lambda$ so that the
effective sample size of the incremental weights $p(y \mid \theta)^{\Delta\lambda}$
is `target_ess` of the particles, reweights, resamples (systematic) and moves every
particle by `num_mcmc_steps` transitions of an MCMC kernel that leaves
$\pi_{\lambda_t}$ invariant. The mean incremental weight of each stage is a factor
of the evidence $p(y)$.
"""

import dataclasses
import logging
import math
from collections.abc import Callable
from typing import Any, ClassVar

import blackjax
import blackjax.smc.resampling
import equinox as eqx
import jax
import jax.flatten_util
import jax.numpy as jnp
import jax.random as jr
from jax.scipy.special import logsumexp
from jaxtyping import Array, Bool, Float, Int, PyTree

from ._checks import check_float, check_int, check_likelihood_scale
from ._constrained import Constrained, is_constrained, sample_priors, unsampleable
from ._custom_types import ArrayTree
from ._groups import AbstractStagedGroup, Context, GroupResult, Solve
from ._kernels import (
    check_kernel_kwargs,
    info_fields,
    kernel_spec,
    KernelSpec,
    position_of,
    split_kernel_kwargs,
)
from ._marking import mark
from ._sharding import over_particles


logger = logging.getLogger("eqbayes")

#: The acceptance rate the moves' step size is tuned towards, after each transition.
TARGET_ACCEPTANCE = 0.65
#: Integration steps per HMC move when the kernel takes them and none are given.
DEFAULT_INTEGRATION_STEPS = 10
#: The particles' covariance whitens the moves with a dense matrix up to this many
#: components, with its diagonal above.
MAX_DENSE = 100
# The next tempering increment: bisection until the log ESS is within this of its
# target (0.1 %), at most `_BISECTIONS` steps (2**-50 of the interval).
_ESS_TOLERANCE = 1e-3
_BISECTIONS = 50

_PARTICLES = (
    "`eb.smc(..., num_particles={value!r})` for group '{name}': `num_particles` "
    "must be an integer >= 2 (the particles are reweighted and resampled against "
    "each other); got {value!r}. Use e.g. `num_particles=1000`."
)
_TARGET_ESS = (
    "`eb.smc(..., target_ess={value!r})` for group '{name}': `target_ess` is the "
    "fraction of the particles' effective sample size kept by each tempering "
    "stage, a number strictly between 0 and 1; got {value!r}. Use e.g. "
    "`target_ess=0.5` (closer to 1: more, smaller stages)."
)
_MCMC_STEPS = (
    "`eb.smc(..., num_mcmc_steps={value!r})` for group '{name}': `num_mcmc_steps` "
    "must be an integer >= 1 (the MCMC transitions that move every particle after "
    "each resampling); got {value!r}. Use e.g. `num_mcmc_steps=10`."
)
_NOT_SAMPLEABLE = (
    "`eb.smc(..., prior=...)` for group '{name}': the prior {prior!r} cannot be "
    "sampled, and tempered SMC draws its first particles from the prior. Use a "
    "prior from `eb.priors` (each has `.sample`), e.g. "
    "`prior=eb.priors.normal(0.0, 1.0)`, or pass `init=` with draws from your "
    "prior."
)
_INIT_SHAPE = (
    "`eb.smc(..., init=...)` for group '{name}': `init` must hold "
    "`num_particles={n}` draws from the prior in the structure of the selected "
    "sub-tree, each leaf of shape ({n}, *leaf); {detail}"
)
_SG_KERNEL = (
    "`eb.smc(model, kernel={kernel})` for group '{name}': the particles are moved "
    "by a full-data MCMC kernel (`blackjax.hmc`, `blackjax.nuts`, `blackjax.mala`, "
    "or any factory whose first parameter is `logdensity_fn`); stochastic-gradient "
    "kernels do not leave the tempered posterior invariant. Pass a full-data "
    "kernel, or `kernel=None` for HMC."
)
_BESIDE = (
    "`Solver.init(model, ...)`: group '{name}' (`eb.smc`) is in a solve with group "
    "'{other}' (`{other_fn}`). Tempered SMC moves its particles through the "
    "posterior of its own leaves with the rest of the model fixed, and its evidence "
    "is p(data) for that model; a group that moves beside it (an MCMC chain, a "
    "variational fit, an optimiser) would change the target under the particles. "
    "Keep one SMC group per solve with every other leaf frozen (fit the other "
    "parts first, then mark the SMC group on the fitted model); without "
    "`Solver(optimizer=...)`."
)
_ALL_NON_FINITE = (
    "Group '{name}' (`eb.smc`): the log density (the log prior plus the "
    "log-likelihood, -likelihood_scale * loss) is not finite at any of the initial "
    "particles drawn from the prior, so no particle can carry weight. Check the "
    "loss for NaNs or infinities over the prior's range (e.g. an ODE that blows "
    "up), the `args`/`data`, and that the prior covers plausible values."
)
_UNFINISHED = (
    "Group '{name}' (`eb.smc`): the solve stopped after {stages} stage(s) at "
    "tempering lambda = {lam:.4g} < 1, so the particles follow the tempered "
    "posterior p(theta) p(y | theta)^lambda, not the posterior, and "
    "`posterior.log_evidence` is NaN. Continue with `solver.run(None, "
    "state=result.state)`, or pass `steps=None` (at most `max_stages` stages)."
)


# -- results --------------------------------------------------------------------------


class SMCDiagnostics(eqx.Module):
    """Per-stage diagnostics of a tempered SMC group, each of shape `(stages,)`.

    **Fields:**

    - `tempering`: $\\lambda$ at the end of each stage (the last is 1).
    - `ess`: the effective sample size of the stage's incremental weights, just
        before the particles were resampled (about `target_ess * num_particles`,
        except at the last stage, where it may be higher).
    - `acceptance_rate`: the moves' mean acceptance rate in each stage (NaN for a
        kernel whose info has none).
    - `step_size`: the step size at the end of each stage's moves (NaN for a
        kernel that takes none).
    - `log_evidence_increment`: each stage's factor of the evidence,
        $\\log \\frac1N \\sum_i p(y \\mid \\theta_i)^{\\Delta\\lambda}$; their sum
        is `posterior.log_evidence`.
    """

    tempering: Float[Array, " stages"]
    ess: Float[Array, " stages"]
    acceptance_rate: Float[Array, " stages"]
    step_size: Float[Array, " stages"]
    log_evidence_increment: Float[Array, " stages"]


class SMCState(eqx.Module):
    """What a tempered SMC group carries between stages.

    **Fields:**

    - `particles`: the particles' positions (the group's position with a leading
        particle axis; unconstrained at constrained leaves), equally weighted.
    - `log_likelihood`, `log_prior`: at each particle, `(num_particles,)`.
    - `tempering`: the current $\\lambda$.
    - `log_evidence`: the sum of the stages' log evidence increments so far.
    - `step_size`: the moves' step size, tuned after every transition from the
        particles' mean acceptance rate and carried to the next stage.
    - `stage`: stages done.
    - `best`: the index of the particle of highest posterior density (what
        `eb.unwrap` shows).
    - `trace`: `(max_stages,)` buffers of the per-stage diagnostics (the first
        `stage` entries are filled).
    """

    particles: ArrayTree
    log_likelihood: Float[Array, " particles"]
    log_prior: Float[Array, " particles"]
    tempering: Float[Array, ""]
    log_evidence: Float[Array, ""]
    step_size: Float[Array, ""]
    stage: Int[Array, ""]
    best: Int[Array, ""]
    trace: SMCDiagnostics


def _best(log_likelihood: Array, log_prior: Array) -> Array:
    """The index of the particle of highest posterior density."""
    return jnp.argmax(_finite(log_prior + log_likelihood)).astype(jnp.int32)


@dataclasses.dataclass(frozen=True)
class SMCConfig:
    """The static configuration of a tempered SMC group (hashable)."""

    kernel: KernelSpec
    prior: Callable[[ArrayTree], Any]
    num_particles: int
    target_ess: float
    num_mcmc_steps: int
    likelihood_scale: float
    max_stages: int
    step_size: float
    static_kwargs: tuple[tuple[str, Any], ...]

    @property
    def tunes_step_size(self) -> bool:
        return "step_size" in self.kernel.parameters

    @property
    def whitens(self) -> bool:
        return "inverse_mass_matrix" in self.kernel.parameters


# -- the group ------------------------------------------------------------------------


class SMCGroup(AbstractStagedGroup):
    """A sub-tree whose posterior is sampled by tempered sequential Monte Carlo.

    Made by [`eqbayes.smc`][]; do not construct it directly. The group has no
    chains: `eb.unwrap` and `result.model` see it at its particle of highest
    posterior density. Each solver step is one tempering stage; the group is
    finished when $\\lambda$ reaches 1.
    """

    value: PyTree
    config: SMCConfig = eqx.field(static=True)
    name: str = eqx.field(static=True)
    arrays: dict[str, Array]
    init_particles: ArrayTree | None = None
    state: SMCState | None = None

    marked_with: ClassVar[str] = "eb.smc"

    @property
    def minibatched(self) -> bool:
        return False

    @property
    def max_steps(self) -> int:
        return self.config.max_stages

    def finished(self) -> Bool[Array, ""]:
        if self.state is None:
            return jnp.asarray(False)
        return self.state.tempering >= 1

    def current(self) -> PyTree:
        if self.state is None:
            return self.materialise(self.initial_position())
        best = self.state.best
        return self.materialise(jax.tree.map(lambda x: x[best], self.state.particles))

    # -- densities ------------------------------------------------------------------

    def _densities(self, ctx: Context, *, finite: bool = True):
        """`position -> (log-likelihood, log prior)`, each `-inf` where not finite
        (as computed, with `finite=False`)."""
        scale, prior = self.config.likelihood_scale, self.config.prior
        loss = ctx.loss_fn(ctx.others)

        def densities(position):
            log_likelihood = -scale * loss(position)
            log_prior = jnp.asarray(prior(position), log_likelihood.dtype)
            if not finite:
                return log_likelihood, log_prior
            return _finite(log_likelihood), _finite(log_prior)

        return densities

    # -- init -> step -> result -----------------------------------------------------

    def init(self, ctx):
        assert ctx.key is not None
        config = self.config
        if self.init_particles is None:
            particles = sample_priors(
                self.initial_position(), config.prior, ctx.key, config.num_particles
            )
        else:
            particles = self.init_particles
        log_likelihood, log_prior = jax.vmap(self._densities(ctx))(particles)
        dtype = log_likelihood.dtype
        usable = jnp.any(jnp.isfinite(log_likelihood + log_prior))
        log_likelihood = eqx.error_if(
            log_likelihood, ~usable, _ALL_NON_FINITE.format(name=self.name)
        )
        zeros = jnp.zeros(config.max_stages, dtype)
        state = SMCState(
            particles=particles,
            log_likelihood=log_likelihood,
            log_prior=log_prior,
            tempering=jnp.zeros((), dtype),
            log_evidence=jnp.zeros((), dtype),
            step_size=jnp.asarray(config.step_size, dtype),
            stage=jnp.zeros((), jnp.int32),
            best=_best(log_likelihood, log_prior),
            trace=SMCDiagnostics(zeros, zeros, zeros, zeros, zeros),
        )
        return eqx.tree_at(lambda g: g.state, self, state, is_leaf=lambda x: x is None)

    def step(self, ctx):
        assert self.state is not None and ctx.key is not None
        state = jax.lax.cond(
            self.state.tempering >= 1,
            lambda s: s,
            lambda s: self._stage(s, ctx),
            self.state,
        )
        return eqx.tree_at(lambda g: g.state, self, state)

    def _stage(self, s: SMCState, ctx: Context) -> SMCState:
        """One tempering stage: the next λ, reweighting, resampling, moves."""
        assert ctx.key is not None
        config = self.config
        n = config.num_particles
        dtype = s.log_likelihood.dtype
        resample_key, move_key = jr.split(ctx.key)

        # The next λ: the incremental weights keep `target_ess` of the ESS.
        delta = _increment(s.log_likelihood, 1 - s.tempering, config.target_ess)
        tempering = jnp.where(delta >= 1 - s.tempering, 1.0, s.tempering + delta)
        delta = tempering - s.tempering
        log_weights = _log_weights(s.log_likelihood, delta)
        log_total = logsumexp(log_weights)
        increment = log_total - math.log(n)
        ess = jnp.exp(2 * log_total - logsumexp(2 * log_weights))
        weights = jnp.exp(log_weights - log_total)

        # Whiten the moves by the reweighted particles' covariance.
        flat = jax.vmap(lambda p: jax.flatten_util.ravel_pytree(p)[0])(s.particles)
        imm = _covariance(flat, weights, ess) if config.whitens else None

        index = blackjax.smc.resampling.systematic(resample_key, weights, n)
        particles = jax.tree.map(lambda x: x[index], s.particles)

        densities, raw = self._densities(ctx), self._densities(ctx, finite=False)

        def logdensity(position):
            # A non-finite log density (NaN included) is a rejected move.
            log_likelihood, log_prior = raw(position)
            return _finite(log_prior + tempering * log_likelihood)

        fixed: dict[str, Any] = {**dict(config.static_kwargs), **self.arrays}
        if imm is not None:
            fixed["inverse_mass_matrix"] = imm

        def kernel(step_size):
            extra = {"step_size": step_size} if config.tunes_step_size else {}
            return config.kernel.build(logdensity, **fixed, **extra)

        def transition(carry, key):
            states, step_size = carry
            step = kernel(step_size).step
            states, info = over_particles(step, jr.split(key, n), states)
            fields = info_fields(info)
            rate = jnp.mean(fields.get("acceptance_rate", jnp.full((), jnp.nan)))
            rate = rate.astype(dtype)
            return (states, _tuned(step_size, rate)), rate

        states = over_particles(kernel(s.step_size).init, particles)
        keys = jr.split(move_key, config.num_mcmc_steps)
        (states, step_size), rates = jax.lax.scan(
            transition, (states, s.step_size), keys
        )
        particles = position_of(states, config.kernel, self.name)
        acceptance = jnp.mean(rates)
        log_likelihood, log_prior = over_particles(densities, particles)
        used = step_size if config.tunes_step_size else jnp.full((), jnp.nan, dtype)
        values = (tempering, ess, acceptance, used, increment)
        trace = SMCDiagnostics(
            *(
                buffer.at[s.stage].set(jnp.asarray(value, dtype))
                for buffer, value in zip(jax.tree.leaves(s.trace), values)
            )
        )
        return SMCState(
            particles=particles,
            log_likelihood=log_likelihood,
            log_prior=log_prior,
            tempering=jnp.asarray(tempering, dtype),
            log_evidence=s.log_evidence + increment,
            step_size=step_size,
            stage=s.stage + 1,
            best=_best(log_likelihood, log_prior),
            trace=trace,
        )

    def monitor(self):
        assert self.state is not None
        return {"tempering": self.state.tempering}

    def result(self, ctx):
        assert self.state is not None
        s = self.state
        samples = jax.tree.map(lambda x: x[None], s.particles)
        stages, tempering, trace = jax.device_get((s.stage, s.tempering, s.trace))
        stages, done = int(stages), bool(tempering >= 1)
        diagnostics = jax.tree.map(lambda x: jnp.asarray(x[:stages]), trace)
        if ctx.loss is not None and not done:  # the end of a solve, not a record
            logger.warning(
                _UNFINISHED.format(name=self.name, stages=stages, lam=float(tempering))
            )
        evidence = s.log_evidence if done else jnp.full_like(s.log_evidence, jnp.nan)
        return GroupResult(samples, diagnostics, log_evidence=evidence)

    def check(self, solve: Solve) -> None:
        for other in solve.groups:
            if other is not self:
                raise ValueError(
                    _BESIDE.format(
                        name=self.name, other=other.name, other_fn=other.marked_with
                    )
                )

    def describe(self) -> str:
        config = self.config
        d = sum(x.size for x in jax.tree.leaves(self.initial_position()))
        tuned = []
        if config.tunes_step_size:
            tuned.append(f"step size tuned after each move from {config.step_size:.4g}")
        if config.whitens:
            kind = "dense" if d <= MAX_DENSE else "diagonal"
            tuned.append(f"{kind} metric from the particles' covariance")
        how = f" ({', '.join(tuned)})" if tuned else ""
        start = (
            "the given `init` particles"
            if self.init_particles is not None
            else ("the prior")
        )
        return (
            f"Group '{self.name}': tempered SMC over {d} components, "
            f"{config.num_particles} particles from {start}, target ESS "
            f"{config.target_ess:g}, {config.num_mcmc_steps} '{config.kernel.name}' "
            f"moves per stage{how}, at most {config.max_stages} stages"
        )


def _tuned(step_size: Array, acceptance: Array) -> Array:
    """The step size after a transition with mean acceptance rate `acceptance`:
    multiplied by `exp(2 (acceptance - TARGET_ACCEPTANCE))` (unchanged for a
    kernel whose info has no acceptance rate, and where it would leave the
    positive floating-point numbers)."""
    tuned = step_size * jnp.exp(2 * (acceptance - TARGET_ACCEPTANCE))
    return jnp.where(jnp.isfinite(tuned) & (tuned > 0), tuned, step_size)


def _finite(x: Array) -> Array:
    return jnp.where(jnp.isfinite(x), x, -jnp.inf)


def _log_weights(log_likelihood: Array, delta: Array) -> Array:
    """`delta * log_likelihood`, `-inf` at particles whose likelihood is zero (also
    for `delta = 0`)."""
    finite = jnp.isfinite(log_likelihood)
    return jnp.where(finite, delta * jnp.where(finite, log_likelihood, 0), -jnp.inf)


def _increment(log_likelihood: Array, max_delta: Array, target_ess: float) -> Array:
    """The tempering increment in `[0, max_delta]` at which the incremental weights'
    ESS is `target_ess` of the particles with a non-zero likelihood, to 0.1 %
    (`max_delta` when it stays above): bisection, the ESS falling as the
    increment grows."""
    finite = jnp.sum(jnp.isfinite(log_likelihood)).astype(log_likelihood.dtype)
    log_target = jnp.log(target_ess * finite)

    def log_ess(delta):
        w = _log_weights(log_likelihood, delta)
        return 2 * logsumexp(w) - logsumexp(2 * w)

    def go_on(carry):
        i, _, _, _, gap = carry
        return (i < _BISECTIONS) & (gap > _ESS_TOLERANCE)

    def bisect(carry):
        i, lo, hi, _, _ = carry
        mid = 0.5 * (lo + hi)
        miss = log_ess(mid) - log_target
        above = miss >= 0
        lo, hi = jnp.where(above, mid, lo), jnp.where(above, hi, mid)
        return i + 1, lo, hi, mid, jnp.abs(miss)

    zero = jnp.zeros_like(max_delta)
    start = (0, zero, max_delta, max_delta, jnp.full_like(max_delta, jnp.inf))
    _, _, _, found, _ = jax.lax.while_loop(go_on, bisect, start)
    # At least a sliver of progress, so that the stages cannot stall.
    found = jnp.maximum(found, jnp.finfo(max_delta.dtype).eps * max_delta)
    return jnp.where(log_ess(max_delta) >= log_target, max_delta, found)


def _covariance(flat: Array, weights: Array, ess: Array) -> Array:
    """The particles' weighted covariance (dense up to `MAX_DENSE` components, else
    its diagonal), shrunk towards a small multiple of the identity as Stan
    regularises its adapted metric, with `ess` as the number of draws."""
    d = flat.shape[1]
    mean = weights @ flat
    centred = flat - mean[None, :]
    n = ess.astype(flat.dtype)
    shrink = 5.0 / (n + 5.0)
    if d <= MAX_DENSE:
        cov = (weights[:, None] * centred).T @ centred
        eye = jnp.eye(d, dtype=flat.dtype)
        return (1 - shrink) * cov + shrink * 1e-3 * eye
    var = weights @ (centred**2)
    return (1 - shrink) * var + shrink * 1e-3


def _check_init(particles: Any, value: PyTree, n: int, name: str) -> ArrayTree:
    """`init=` particles (constrained values, leading axis `n`) as the group's
    positions (unconstrained at constrained leaves)."""
    nodes, treedef = jax.tree.flatten(value, is_leaf=is_constrained)
    position_nodes = [
        node if is_constrained(node) or eqx.is_inexact_array(node) else None
        for node in nodes
    ]
    try:
        given = jax.tree.leaves(eqx.filter(particles, eqx.is_array_like))
        wanted = [x for x in position_nodes if x is not None]
        if len(given) != len(wanted):
            raise ValueError(
                f"got {len(given)} arrays for the group's {len(wanted)} leaves."
            )
        out = []
        it = iter(given)
        for node in position_nodes:
            if node is None:
                out.append(None)
                continue
            draws = jnp.asarray(next(it))
            leaf = node.constrained() if is_constrained(node) else node
            if draws.shape != (n, *leaf.shape):
                raise ValueError(
                    f"a leaf of shape {leaf.shape} got an array of shape {draws.shape}."
                )
            draws = draws.astype(leaf.dtype)
            if is_constrained(node):
                out.append(Constrained(node.constraint.inverse(draws), node.constraint))
            else:
                out.append(draws)
    except ValueError as err:
        raise ValueError(_INIT_SHAPE.format(name=name, n=n, detail=err)) from None
    return eqx.filter(jax.tree.unflatten(treedef, out), eqx.is_inexact_array)


# -- eb.smc ---------------------------------------------------------------------------


def smc(
    model: PyTree,
    kernel: Callable[..., Any] | None = None,
    *,
    where: Callable[[PyTree], Any] | None = None,
    prior: Any,
    num_particles: int = 1000,
    target_ess: float = 0.5,
    num_mcmc_steps: int = 10,
    likelihood_scale: float = 1.0,
    name: str | None = None,
    constraint: Any = None,
    init: PyTree | None = None,
    max_stages: int = 500,
    **kernel_kwargs: Any,
) -> PyTree:
    r"""Marks a sub-tree of `model` to be sampled by tempered sequential Monte
    Carlo (SMC).

    The selected sub-tree is replaced by a [`eqbayes.SMCGroup`][]. Its
    floating-point leaves form the position $\theta$, with posterior

    $$p(\theta \mid y) \propto p(\theta)\, p(y \mid \theta), \qquad
        \log p(y \mid \theta) = -s \cdot \text{loss}(\text{model}(\theta), \dots)$$

    ($s$ is `likelihood_scale`). `num_particles` particles are drawn from the
    prior and moved through $p(\theta)\, p(y \mid \theta)^\lambda$ as $\lambda$
    goes from 0 to 1, one solver step per stage: each stage takes the largest
    step in $\lambda$ that keeps the effective sample size of the reweighted
    particles at `target_ess` of them (so the number of stages adapts to how much
    the data say), reweights, resamples (systematic resampling) and moves every
    particle by `num_mcmc_steps` transitions of `kernel` targeting the new
    tempered posterior. Unlike a chain, the particles see every mode the prior
    reaches, each with its mass.

    `Solver.run(model, key=...)` (with `steps=None`) runs the stages until
    $\lambda = 1$; its progress bar shows $\lambda$ (`tempering`). Then
    `result.posterior.samples` holds the particles, equally weighted, as one
    "chain" of `num_particles` draws, shape `(1, num_particles, *leaf)`, so
    `summary`, `predict`, `to_arviz` and the plots work as for a chain (R-hat
    and the ESS of a summary mean little for particles);
    `result.posterior.log_evidence` is the estimate of $\log p(y)$, the sum of
    the stages' log mean incremental weights; `result.posterior.diagnostics[name]`
    is an [`eqbayes.SMCDiagnostics`][] (per stage: $\lambda$, the ESS before
    resampling, the moves' acceptance rate and step size).

    **The evidence is only meaningful with normalised densities**: priors from
    [`eqbayes.priors`][] (normalised, and sampleable) and a loss that is the
    full negative log-likelihood of the data, with its constants
    ($\tfrac12\log 2\pi\sigma^2$ per Gaussian observation), times
    `likelihood_scale`. Leaves with a constrained prior (`half_normal`,
    `gamma`, ...) are drawn in constrained space and moved in unconstrained
    space with $\log|\det J|$ added, as for [`eqbayes.bayesian`][].

    The moves: by default `blackjax.hmc` with 10 integration steps. For kernels
    that take them, the inverse mass matrix is the reweighted particles'
    covariance at each stage (dense up to 100 components, diagonal above), and
    the step size, shared by the particles, is tuned after every transition
    from their mean acceptance rate towards 0.65 (multiplied by
    $e^{2(\bar a - 0.65)}$), and carried from stage to stage.
    Any full-data blackjax kernel (`blackjax.nuts`, `blackjax.mala`, your own
    factory `(logdensity_fn, **kwargs) -> SamplingAlgorithm`) may be passed.

    One SMC group per solve: every other leaf of the model is frozen (an SMC group
    beside an MCMC, variational or optimised group is an error at `Solver.init`).
    On a mesh (`Solver.run(..., mesh=...)`), the particles shard over its
    `"chains"` axis like chains do when `num_particles` is a multiple of its size
    (see [Scaling out](../scaling.md)); the answer then agrees with the unsharded
    solve statistically, not bit for bit.

    **Arguments:**

    - `model`: any pytree, usually an `eqx.Module`.
    - `kernel`: the MCMC kernel factory of the moves; `None` means `blackjax.hmc`.
    - `where`: selects the sub-tree, like `eqx.tree_at`'s `where` (a tuple of
        sub-trees forms one group); `None` means the whole model.
    - `prior`: a prior from [`eqbayes.priors`][] (or a prefix pytree of them, one
        per part of the selection, as in [`eqbayes.bayesian`][]). Each must be
        sampleable, unless `init=` is given.
    - `num_particles`: particles, at least 2.
    - `target_ess`: the fraction of the particles' effective sample size each
        stage keeps, strictly between 0 and 1 (higher: more, smaller stages).
    - `num_mcmc_steps`: MCMC transitions per particle and stage, at least 1.
    - `likelihood_scale`: the factor $s$ on the loss (1 for a loss that is the
        full negative log-likelihood).
    - `name`: the group's name; defaults to the `where` path or the model's class
        name.
    - `constraint`: as in [`eqbayes.bayesian`][], for priors that do not declare
        their support.
    - `init`: `num_particles` draws from the prior, in the structure of the
        selected sub-tree with a leading particle axis (constrained values), for
        priors eqbayes cannot draw from. They must be prior draws: the evidence
        and the tempering start from them.
    - `max_stages`: the most stages a solve with `steps=None` runs; a solve that
        ends before $\lambda = 1$ logs a warning and has a NaN evidence.
    - `**kernel_kwargs`: forwarded to `kernel` (e.g. `num_integration_steps=20`;
        `step_size=` is the initial step size, default 0.5 for kernels that take
        one).

    **Returns:**

    A new model with the sub-tree wrapped.

    !!! Example

        ```python
        model = eb.smc(model, where=lambda m: m.theta,
                       prior=eb.priors.normal(0.0, 3.0), num_particles=2000)
        result = eb.Solver(loss).run(model, key=jax.random.key(0), args=(y,))
        result.posterior.log_evidence          # log p(y)
        result.posterior.diagnostics["theta"].tempering
        ```
    """
    factory = blackjax.hmc if kernel is None else kernel

    def make(subtree: PyTree, group_name: str, the_prior: Any) -> SMCGroup:
        spec = kernel_spec(factory, group_name)
        if spec.is_stochastic_gradient:
            raise TypeError(_SG_KERNEL.format(kernel=spec.name, name=group_name))
        if isinstance(num_particles, bool) or not (
            isinstance(num_particles, int) and num_particles >= 2
        ):
            raise ValueError(_PARTICLES.format(value=num_particles, name=group_name))
        try:
            ess_ok = 0 < float(target_ess) < 1
        except (TypeError, ValueError):
            ess_ok = False
        if isinstance(target_ess, bool) or not ess_ok:
            raise ValueError(_TARGET_ESS.format(value=target_ess, name=group_name))
        if isinstance(num_mcmc_steps, bool) or not (
            isinstance(num_mcmc_steps, int) and num_mcmc_steps >= 1
        ):
            raise ValueError(_MCMC_STEPS.format(value=num_mcmc_steps, name=group_name))
        stages = check_int(
            max_stages,
            "max_stages",
            group_name,
            1,
            "Use e.g. `max_stages=500`.",
            fn="smc",
        )
        scale = check_likelihood_scale(likelihood_scale, group_name, fn="smc")
        kwargs = dict(kernel_kwargs)
        step_size = check_float(
            kwargs.pop("step_size", 0.5),
            "step_size",
            group_name,
            positive=True,
            fix="Use e.g. `step_size=0.5`.",
            fn="smc",
        )
        if "num_integration_steps" in spec.parameters:
            kwargs.setdefault("num_integration_steps", DEFAULT_INTEGRATION_STEPS)
        check_kernel_kwargs(spec, kwargs, group_name)
        arrays, static = split_kernel_kwargs(kwargs, group_name, fn="smc")
        particles = None
        if init is None:
            bad = unsampleable(subtree, the_prior)
            if bad is not None:
                raise TypeError(_NOT_SAMPLEABLE.format(prior=bad, name=group_name))
        else:
            particles = _check_init(init, subtree, num_particles, group_name)
        config = SMCConfig(
            kernel=spec,
            prior=the_prior,
            num_particles=num_particles,
            target_ess=float(target_ess),
            num_mcmc_steps=num_mcmc_steps,
            likelihood_scale=scale,
            max_stages=stages,
            step_size=step_size,
            static_kwargs=tuple(static),
        )
        return SMCGroup(
            value=subtree,
            config=config,
            name=group_name,
            arrays=arrays,
            init_particles=particles,
        )

    return mark(
        model,
        make,
        where=where,
        name=name,
        call="eb.smc",
        prior=prior,
        constraint=constraint,
    )


__all__ = ["smc", "SMCDiagnostics", "SMCGroup", "SMCState"]
