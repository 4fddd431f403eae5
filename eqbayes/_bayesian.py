"""MCMC groups: `eb.bayesian` and the `BayesianLeaf` it puts in the model."""

import dataclasses
import logging
import math
from collections.abc import Callable
from typing import Any, ClassVar

import equinox as eqx
import jax
import jax.flatten_util
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from blackjax.mcmc.metrics import LowRankInverseMassMatrix
from jaxtyping import Array, PyTree

from . import _mcmc
from ._adaptation import metric_kind
from ._checks import check_float, check_int, check_likelihood_scale
from ._groups import AbstractChainGroup, chain_flags, Context, GroupResult, Solve
from ._kernels import (
    check_kernel_kwargs,
    DIAGNOSTIC_FIELDS,
    kernel_spec,
    position_of,
    split_kernel_kwargs,
)
from ._marking import mark
from ._mcmc import KernelDiagnostics, MCMCConfig, MCMCState
from .initializers import check_initializer, run_initializer


logger = logging.getLogger("eqbayes")

# The default step-size jitter of kernels with a fixed number of integration steps.
DEFAULT_STEP_SIZE_JITTER = 0.2

_INIT_IMM_SHAPE = (
    "The initializer `{init}` of group '{name}' returned an inverse mass matrix of "
    "shape {shape}; the group has {d} sampled components, so it must have shape "
    "({d},) (diagonal) or ({d}, {d}) (dense)."
)
_IMM_SHAPE = (
    "`eb.bayesian(..., inverse_mass_matrix=...)` for group '{name}': the group has "
    "{d} sampled components, so the inverse mass matrix must have shape ({d},) "
    "(diagonal) or ({d}, {d}) (dense); got shape {shape}."
)
_IMM_LOW_RANK_SHAPE = (
    "`eb.bayesian(..., inverse_mass_matrix=LowRankInverseMassMatrix(sigma, U, lam))` "
    "for group '{name}': with {d} sampled components and `max_rank={r}` the shapes "
    "must be ({d},), ({d}, {r}) and ({r},); got {shapes}."
)
_SUBSTEP_INIT = (
    "`Solver(..., substeps=...)`: group '{name}' has an initializer "
    "(`eb.bayesian(..., init=...)`), but an initializer runs once on the full loss "
    "while within substeps the group's kernel sees only its substep's loss. Drop "
    "`init=` (start the group from values set in the model), or drop `substeps=`."
)
_SUBSTEP_ADAPT = (
    "`Solver(..., substeps=...)`: group '{name}' adapts its step size "
    "(`adapt={adapt!r}`), but within substeps its kernel sees only its substep's loss "
    "while the other parts still train. Pass `adapt=False` and a hand-set "
    "`step_size=` to `eb.bayesian(...)`."
)
_ADAPT_MIXED = (
    "Group '{name}': window adaptation tunes the step size while the optimised parts "
    "of the model are still near their initial values, so it may not suit the "
    "trained model. With optimised parts, `adapt=False` and a hand-set `step_size=` "
    "are usually the better choice."
)
_SAME_START = (
    "Group '{name}': its {k} chains all start at the model's values "
    "(`init_jitter=0`), so R-hat cannot tell whether they would agree from "
    "different starts. Pass e.g. `init_jitter=0.1` to `eb.bayesian(...)` (or an "
    "initializer such as `init=eb.initializers.pathfinder()`)."
)


@dataclasses.dataclass(frozen=True)
class WarmStart:
    """What a group's initializer set (static, for the adaptation and the log)."""

    used: tuple[str, ...]  # kernel keyword arguments taken from the initializer
    dropped: tuple[str, ...]  # ... and those the kernel does not take


class BayesianLeaf(AbstractChainGroup):
    """A sub-tree whose floating-point leaves are sampled by an MCMC kernel.

    Made by [`eqbayes.bayesian`][]; do not construct it directly. Its `value` is
    the sub-tree as marked; after `Solver.init` its `state` (an `MCMCState`) holds
    the kernel states of the K chains, the shared step size and inverse mass
    matrix, the adaptation state and the kept draws.
    """

    value: PyTree
    config: MCMCConfig = eqx.field(static=True)
    name: str = eqx.field(static=True)
    arrays: dict[str, Array | LowRankInverseMassMatrix]
    state: MCMCState | None = None
    warm: WarmStart | None = eqx.field(static=True, default=None)

    marked_with: ClassVar[str] = "eb.bayesian"

    @property
    def minibatched(self) -> bool:
        return self.config.kernel.is_stochastic_gradient

    @property
    def num_chains(self) -> int:
        return self.config.num_chains

    @property
    def schedule(self) -> tuple[int, int, int]:
        return self.config.warmup, self.config.keep, self.config.thin

    def start(self, key):
        return _mcmc.initial_positions(self.initial_position(), self.config, key)

    def positions(self):
        assert self.state is not None
        return position_of(self.state.kernel_state, self.config.kernel, self.name)

    def chain_axes(self):
        parts = [lambda g: g.state.kernel_state, lambda g: g.state.draws]
        if self.config.per_chain:  # each chain's own step size, metric, adaptation
            parts += [
                lambda g: g.state.step_size,
                lambda g: g.state.inverse_mass_matrix,
                lambda g: g.state.adaptation,
            ]
        return chain_flags(self, *parts)

    def _logdensity_for(self, ctx: Context, *, minibatch: bool):
        """`others_k -> (theta -> log density at chain k)`."""
        prior, scale = self.config.prior, self.config.likelihood_scale

        def for_chain(others_k):
            loss = ctx.loss_fn(others_k, minibatch=minibatch)

            def logdensity(theta):
                value = -scale * loss(theta) + prior(theta)
                # A non-finite log density is a rejected (divergent) transition.
                return jnp.where(jnp.isfinite(value), value, -jnp.inf)

            return logdensity

        return for_chain

    def init(self, ctx):
        assert ctx.key is not None and ctx.start is not None
        warm_key, kernel_key = jr.split(ctx.key)
        group, positions = self._warm_start(warm_key, ctx.start, ctx)
        # A given inverse mass matrix (the user's `inverse_mass_matrix=`, or an
        # initializer's) is kept by the window adaptation, which then tunes the
        # step size only, unless the initializer asks to re-estimate it.
        kept = group._keeps_given_metric()
        state = _mcmc.init_state(
            group.config,
            group.arrays,
            positions,
            group._logdensity_for(ctx, minibatch=group.minibatched),
            ctx,
            group.name,
            kernel_key,
            adapt_mass_matrix=not kept,
        )
        return eqx.tree_at(lambda g: g.state, group, state, is_leaf=lambda x: x is None)

    def _warm_start(self, key, positions, ctx: Context):
        """Runs the initializer, if any, on the full-data log density with the
        other chain groups at chain 0 of their starting positions."""
        init = self.config.init
        if init is None:
            return self, positions
        first = jax.tree.map(lambda x: x[0], positions)
        positions, update = run_initializer(
            init,
            key,
            self._logdensity_for(ctx, minibatch=False)(ctx.chain(0)),
            first,
            self.config.num_chains,
            self.name,
        )
        spec = self.config.kernel
        used: dict[str, Any] = {k: v for k, v in update.items() if spec.accepts(k)}
        imm = used.get("inverse_mass_matrix")
        if imm is not None:
            d = jax.flatten_util.ravel_pytree(first)[0].size
            if imm.shape not in ((d,), (d, d)):
                raise ValueError(
                    _INIT_IMM_SHAPE.format(
                        init=type(init).__name__, name=self.name, d=d, shape=imm.shape
                    )
                )
            if self.config.metric == "low_rank" and imm.ndim == 1:
                # A diagonal start of the low-rank metric: sigma² = the variances.
                used["inverse_mass_matrix"] = LowRankInverseMassMatrix(
                    jnp.sqrt(imm),
                    jnp.zeros((d, self.config.max_rank), imm.dtype),
                    jnp.ones(self.config.max_rank, imm.dtype),
                )
        warm = WarmStart(tuple(sorted(used)), tuple(sorted(set(update) - set(used))))
        group = BayesianLeaf(
            value=self.value,
            config=self.config,
            name=self.name,
            arrays={**self.arrays, **used},
            warm=warm,
        )
        return group, positions

    def step(self, ctx):
        assert self.state is not None
        state = _mcmc.step_state(
            self.config,
            self.arrays,
            self.state,
            self._logdensity_for(ctx, minibatch=self.minibatched),
            ctx,
            self.name,
        )
        return eqx.tree_at(lambda g: g.state, self, state)

    def monitor(self):
        return {}

    def result(self, ctx):
        assert self.state is not None
        samples, diagnostics = self.state.draws.kept(int(ctx.step))
        if not diagnostics:
            return GroupResult(samples, None)
        step_size, imm = self.state.tuning(self.config.num_chains)
        return GroupResult(
            samples,
            KernelDiagnostics(
                **diagnostics, step_size=step_size, inverse_mass_matrix=imm
            ),
        )

    def check(self, solve: Solve) -> None:
        config = self.config
        imm = self.arrays.get("inverse_mass_matrix")
        if imm is not None:
            flat, _ = jax.flatten_util.ravel_pytree(self.initial_position())
            d = flat.size
            if isinstance(imm, LowRankInverseMassMatrix):
                r = config.max_rank
                shapes = tuple(jnp.shape(x) for x in imm)
                if shapes != ((d,), (d, r), (r,)):
                    raise ValueError(
                        _IMM_LOW_RANK_SHAPE.format(
                            name=self.name, d=d, r=r, shapes=shapes
                        )
                    )
            elif imm.shape not in ((d,), (d, d)):
                raise ValueError(
                    _IMM_SHAPE.format(name=self.name, d=d, shape=imm.shape)
                )
        if solve.substeps and config.init is not None:
            raise ValueError(_SUBSTEP_INIT.format(name=self.name))
        if solve.substeps and (config.adapts or config.chees):
            raise ValueError(_SUBSTEP_ADAPT.format(name=self.name, adapt=config.adapt))
        if (config.adapts or config.chees) and solve.trains:
            logger.warning(_ADAPT_MIXED.format(name=self.name))
        if config.num_chains > 1 and config.init_jitter == 0 and config.init is None:
            logger.warning(_SAME_START.format(name=self.name, k=config.num_chains))

    def describe(self) -> str:
        config = self.config
        if self.state is None:  # the info's fields are known once the state is built
            fields = None
        else:
            _, diagnostics = self.state.draws.values
            fields = [f for f in DIAGNOSTIC_FIELDS if f in diagnostics]
        if config.chees:
            warm = (
                f"warmup {config.warmup} (ChEES-HMC over the {config.num_chains} "
                "chains: step size and jittered trajectory length, from step size "
                f"{self._initial_step_size()})"
            )
        elif config.adapts:
            how = "per chain" if config.per_chain else "pooled over the chains"
            kept = self._keeps_given_metric()
            warm = (
                f"warmup {config.warmup} (window adaptation {how}, "
                f"{self._metric_name()} metric"
                f"{' (given, kept)' if kept else ''}, "
                f"from step size {self._initial_step_size()})"
            )
        elif config.adapt and config.warmup > 0 and not config.kernel.is_hmc_family:
            warm = (
                f"warmup {config.warmup} (discarded; adapt={config.adapt!r} is "
                "ignored: only HMC-family kernels are adapted)"
            )
        else:
            warm = f"warmup {config.warmup} (discarded)"
            if config.kernel.takes_step_size:
                warm += f", step size {self._initial_step_size()}"
        if config.step_size_jitter > 0:
            warm += f", step size jittered by ±{config.step_size_jitter:.0%}"
        if config.kernel.is_stochastic_gradient:
            recorded = "none (stochastic-gradient kernels report no info)"
        elif fields is None:
            recorded = "known after `Solver.init`"
        elif fields:
            recorded = ", ".join(fields)
        else:
            recorded = "none (the kernel's info has none)"
        return (
            f"Group '{self.name}': Bayesian sampling with '{config.kernel.name}' "
            f"({config.kernel.family} MCMC), K={config.num_chains} chain(s), "
            f"{self._describe_init()}{warm}, keep {config.keep}, thin {config.thin}; "
            f"diagnostics: {recorded}"
        )

    def _keeps_given_metric(self) -> bool:
        """Whether the window adaptation keeps a given inverse mass matrix (the
        user's `inverse_mass_matrix=` or an initializer's) and tunes the step size
        only: always, unless the initializer asks to re-estimate it."""
        reestimate = (
            self.warm is not None
            and "inverse_mass_matrix" in self.warm.used
            and getattr(self.config.init, "adapt_mass_matrix", False)
        )
        return "inverse_mass_matrix" in self.arrays and not reestimate

    def _metric_name(self) -> str:
        """`"diagonal"`, `"dense"` or `"low-rank (rank r)"`: the kind of metric the
        group uses (of its state once built, since an initializer may set it)."""
        kind = self.config.metric
        if self.state is not None and self.state.inverse_mass_matrix is not None:
            kind = metric_kind(self.state.inverse_mass_matrix)
        if kind == "low_rank":
            return f"low-rank (diagonal + rank {self.config.max_rank})"
        return "dense" if kind == "dense" else "diagonal"

    def _initial_step_size(self) -> str:
        if self.state is not None and self.state.step_size is not None:
            return f"{float(jnp.ravel(self.state.step_size)[0]):.4g}"
        return "1" if self.config.step_size is None else f"{self.config.step_size:.4g}"

    def _describe_init(self) -> str:
        init = self.config.init
        if init is None:
            return ""
        parts = [f"started by the initializer {type(init).__name__}"]
        if self.warm is not None and self.warm.used:
            parts.append(f"which sets {', '.join(self.warm.used)}")
        if self.config.init_jitter > 0:
            parts.append(
                f"init_jitter={self.config.init_jitter} is ignored (the initializer "
                "sets the chains' starting points)"
            )
        if self.warm is not None and self.warm.dropped:
            parts.append(
                f"dropped {', '.join(self.warm.dropped)} (the kernel "
                f"'{self.config.kernel.name}' does not take it)"
            )
        return "; ".join(parts) + "; "


# -- eb.bayesian ------------------------------------------------------------------

_NEG_STEP_SIZE = (
    "`eb.bayesian(..., step_size={value!r})` for group '{name}': the step size must "
    "be a positive finite number, e.g. `step_size=1e-2`."
)
_ADAPT_CHOICE = (
    "`eb.bayesian(..., adapt={value!r})` for group '{name}': `adapt` is True (each "
    'chain adapts its own step size and mass matrix), "pooled" (one adaptation '
    'shared by the chains), "chees" (ChEES-HMC, for `blackjax.hmc`) or False '
    "(none)."
)
_CHEES = (
    "`eb.bayesian(..., kernel={kernel}, adapt=\"chees\")` for group '{name}': {why}"
)
_METRIC_CHOICE = (
    "`eb.bayesian(..., metric={value!r})` for group '{name}': `metric` is \"auto\", "
    '"diag", "dense" or "low_rank".'
)
_MAX_RANK_METRIC = (
    "`eb.bayesian(..., metric={value!r}, max_rank={rank!r})` for group '{name}': "
    '`max_rank=` sets the rank of a low-rank metric. Pass `metric="low_rank"` '
    "with it, or drop `max_rank=`."
)
_MAX_RANK_GIVEN = (
    "`eb.bayesian(..., max_rank={value!r}, inverse_mass_matrix=...)` for group "
    "'{name}': the given low-rank inverse mass matrix has rank {rank}. Drop "
    "`max_rank=` (the rank follows the matrix)."
)
_MAX_RANK = (
    "`eb.bayesian(..., max_rank={value!r})` for group '{name}': the rank of the "
    "low-rank metric is a positive integer, e.g. `max_rank=10`."
)
_METRIC_KERNEL = (
    "`eb.bayesian(..., kernel={kernel}, metric={value!r})` for group '{name}': this "
    "kernel takes no inverse mass matrix. Drop `metric=`."
)
_METRIC_IMM = (
    "`eb.bayesian(..., metric={value!r}, inverse_mass_matrix=...)` for group "
    "'{name}': the given inverse mass matrix is {given} (a 1-D array is diag, a "
    "2-D array dense, blackjax's `LowRankInverseMassMatrix` low_rank). Pass a "
    "matching matrix, or drop `metric=` (its kind then follows the matrix)."
)
_JITTER_RANGE = (
    "`eb.bayesian(..., step_size_jitter={value!r})` for group '{name}': the jitter "
    "is a fraction 0 <= j < 1 of the step size (each transition's step size is "
    "drawn from step_size·[1 - j, 1 + j]); `step_size_jitter=0.0` turns it off."
)
_JITTER_KERNEL = (
    "`eb.bayesian(..., kernel={kernel}, step_size_jitter={value!r})` for group "
    "'{name}': {why} Drop `step_size_jitter=`."
)
_NEED_STEP_SIZE = (
    "`eb.bayesian(..., kernel={kernel})` for group '{name}' needs `step_size=`: "
    "{why} Pass e.g. `step_size=1e-2`."
)


def bayesian(
    model: PyTree,
    kernel: Callable[..., Any],
    *,
    where: Callable[[PyTree], Any] | None = None,
    mask: PyTree | None = None,
    prior: Any = None,
    constraint: Any = None,
    warmup: int = 500,
    keep: int = 1000,
    thin: int = 1,
    num_chains: int = 1,
    init_jitter: float = 0.0,
    adapt: bool | str = True,
    likelihood_scale: float = 1.0,
    init: Any = None,
    name: str | None = None,
    metric: str = "auto",
    max_rank: int | None = None,
    step_size_jitter: float | None = None,
    **kernel_kwargs: Any,
) -> PyTree:
    r"""Marks a sub-tree of `model` to be sampled by a blackjax MCMC kernel.

    The selected sub-tree (a leaf, a layer, the whole model) is replaced by a
    [`eqbayes.BayesianLeaf`][]; the model is otherwise unchanged, and
    [`eqbayes.unwrap`][] gives the plain model back. Its floating-point array
    leaves form the group's position $\theta$, sampled from

    $$\log p(\theta) = -s \cdot \text{loss}(\text{model}(\theta), \dots)
        + \log \text{prior}(\theta)$$

    where $s$ is `likelihood_scale` (for constrained leaves, in terms of the
    unconstrained $z$ with $\theta = T(z)$, plus $\log|\det J_T(z)|$),

    and every other part of the model is at its current value. Several groups in one
    model are stepped in a fixed cycle (Metropolis-within-Gibbs), one transition
    per group per solver step.

    **Arguments:**

    - `model`: any pytree, usually an `eqx.Module`; may already hold other groups.
    - `kernel`: a blackjax kernel factory. Full-data kernels (`blackjax.nuts`,
        `blackjax.hmc`, `blackjax.mala`, or any factory
        `(logdensity_fn, **kwargs) -> blackjax.SamplingAlgorithm`) get the log
        density above on all the data; stochastic-gradient kernels
        (`blackjax.sgld`, `blackjax.sghmc`, `blackjax.sgnht`, or any factory whose
        first parameter is `grad_estimator`) get its gradient on each step's
        minibatch (see `batch_size=` in [`eqbayes.Solver.run`][]). The family is
        read from the name of the factory's first parameter.
    - `where`: selects the sub-tree, like `eqx.tree_at`'s `where`
        (e.g. `lambda m: m.layers[-1]`); `None` means the whole model. It always
        sees the plain model, so groups can be added one call at a time. A tuple
        of disjoint sub-trees (`lambda m: (m.a, m.c)`, or
        [`eqbayes.nn.adapters`][]) forms one group.
    - `mask`: a pytree of bools over the selected sub-tree (or a prefix of it):
        only `True` floating-point leaves form the group; the others stay as they
        are (frozen, trained by `Solver(optimizer=...)`, or held by other masked
        groups: several groups with disjoint masks may share one sub-tree). The
        prior sees only the masked leaves, and only they are stored per draw.
    - `prior`: a prior from [`eqbayes.priors`][] or any callable
        `position -> log density` seeing only this group's position; or a pytree
        of priors that is a prefix of the selected sub-tree (a tuple with one
        entry per sub-tree for a tuple `where`, a dict, a Module of the same
        type), each applying to its part. `None` means
        `eb.priors.gaussian(10.0)`. A leaf whose prior has a constrained
        `support` (`half_cauchy`, `gamma`, `beta`, `dirichlet`, ...) is sampled
        in unconstrained space (see [Priors](../priors.md)).
    - `constraint`: an [`eqbayes.constraints`][] object (or a prefix pytree of
        them, like `prior`) for leaves whose prior does not declare its support,
        such as your own functions: the leaf is sampled as $z$ with
        $\theta = T(z)$ and $\log|\det J_T(z)|$ added to the log density. It
        must lie inside the prior's support; `None` uses the support.
    - `warmup`: solver steps spent warming up before any draw is kept. For
        HMC-family kernels (NUTS, HMC) with `adapt` on, Stan's window adaptation
        tunes the step size and the inverse mass matrix (see `metric`) during these
        steps; otherwise they are discarded.
    - `keep`: draws to keep per chain.
    - `thin`: keep one draw every `thin` post-warmup steps.
    - `num_chains`: independent chains K, run in parallel with `jax.vmap`. All
        groups of one solve must have the same K.
    - `init_jitter`: chain k starts at θ₀ + init_jitter·N(0, I) (at a
        constrained leaf, z₀ + init_jitter·N(0, I) in unconstrained space, so
        every start lies inside the support).
    - `adapt`: how HMC-family kernels are tuned during warmup (for other kernels
        there is nothing to adapt: the setting is ignored, with a log line).
        `True` (the default): each chain runs its own window adaptation (its own
        step size and mass matrix), as Stan and NumPyro do; the chains stay
        independent, which is what R-hat assumes, and one chain stuck in a bad
        region cannot spoil the others' tuning. `"pooled"`: one adaptation shared
        by all K chains (the mean acceptance rate drives the step size, every
        chain's draws feed the mass matrix); each window then sees K times the
        draws, which pays with many chains (on an accelerator), but a shared step
        size can lock every chain of fixed-length HMC into the same near-periodic
        orbit. `"chees"`: ChEES-HMC for `blackjax.hmc` (one step size and one
        jittered trajectory length for all chains, tuned from the whole
        ensemble, for many chains on an accelerator; eqbayes sets
        `num_integration_steps`, so do not pass it). `False`: no adaptation;
        pass `step_size=`. The adapted values are in
        `result.posterior.diagnostics[name].step_size` and
        `.inverse_mass_matrix`, one per chain. The guide "Choosing and tuning a
        kernel" says more.
    - `metric`: the inverse mass matrix that the adaptation estimates, for
        kernels that take one. `"diag"`: the posterior variances (Stan's and
        NumPyro's default). `"dense"`: the full covariance, much better on
        correlated posteriors; O(d²) per leapfrog step and O(d³) per adaptation
        window, so for up to a few hundred components. `"low_rank"`: a diagonal
        plus `max_rank` directions, estimated from the draws and their gradients
        by minimising the Fisher divergence (Seyboldt, Carlson & Carpenter 2026,
        as nutpie does); O(d·r) per step, meant for networks. `"auto"` (the
        default): the kind of a given `inverse_mass_matrix=`; else, when window
        adaptation runs, `"dense"` for up to 200 components, `"low_rank"` up to
        100,000 (its warmup holds a window of draws and gradients) and `"diag"`
        above; else (`adapt=False`, `warmup=0`, ChEES-HMC) `"diag"`. The guide
        "Choosing and tuning a kernel" (section "Which mass matrix") has the
        measurements behind this choice.
    - `max_rank`: the number of directions of a `metric="low_rank"` metric
        (default 10, at most the number of components). Only with
        `metric="low_rank"`.
    - `step_size_jitter`: each transition uses a step size drawn uniformly from
        `step_size · [1 - j, 1 + j]`, so that fixed-length HMC cannot lock into a
        periodic orbit (Neal 2011, section 5.4.2.2). `None` (the default) means
        `0.2` for kernels with a fixed number of integration steps
        (`blackjax.hmc`, any kernel taking `num_integration_steps`) and `0` for all
        others; pass `0.0` to turn it off, or any `0 ≤ j < 1` for another kernel
        that takes a step size.
    - `likelihood_scale`: the factor on the loss. The default 1 is exact for a
        loss that is the full negative log-likelihood (a sum over the data). For a
        mean-squared-error loss over N points with Gaussian noise σ, `N / (2 σ²)`
        makes the log density the exact Gaussian log-likelihood; a mean loss left
        at 1 gives a posterior far too wide.
    - `init`: a log-density-aware initializer from [`eqbayes.initializers`][]
        (`pathfinder()`, `laplace()`, `svgd()`, or your own
        [`eqbayes.initializers.AbstractInitializer`][]). It runs once in
        `Solver.init` on the group's log density (other groups at their starting
        values) and sets the chains' starting positions (`init_jitter` is then
        ignored) and possibly the inverse mass matrix. With `adapt=True` window
        adaptation follows from there: it tunes the step size and keeps the
        initializer's inverse mass matrix (or, for an initializer made with
        `adapt_mass_matrix=True`, starts from it and re-estimates it in its slow
        windows, as Stan does with a given metric); with `adapt=False` (or
        `warmup=0`) the initializer's settings and your `step_size` are used.
        With `mask=` it sees only the masked leaves; settings the kernel does not
        take (an inverse mass matrix for MALA or SGLD) are dropped, with a log
        line. Not available for groups inside `Solver(..., substeps=...)`.
    - `name`: the group's name in diagnostics and logs; defaults to the `where`
        path (`"layers[2]"`) or the model's class name.
    - `**kernel_kwargs`: forwarded to `kernel`, e.g. `step_size=1e-2`,
        `num_integration_steps=16`, `inverse_mass_matrix=...` (for
        stochastic-gradient kernels, also the keywords of their `step`, such as
        `temperature`). `step_size` is required except for HMC-family kernels
        with `adapt=True` and `warmup > 0`, where it is the initial step size of
        the adaptation (default 1.0). `inverse_mass_matrix` defaults to the
        identity; one you pass (an array `(d,)` or `(d, d)`, or blackjax's
        `LowRankInverseMassMatrix(sigma, U, lam)`) is used as given: the
        window adaptation then tunes the step size only.

    **Returns:**

    A new model with the sub-tree wrapped.

    !!! Example

        ```python
        model = eb.bayesian(model, blackjax.nuts, where=lambda m: m.layers[-1],
                            num_chains=4, warmup=500, keep=1000)
        result = eb.Solver(loss).run(model, key=jax.random.key(0), args=(x, y))
        ```
    """

    def make(subtree: PyTree, group_name: str, the_prior: Any) -> BayesianLeaf:
        the_init = None if init is None else check_initializer(init, group_name)
        spec = kernel_spec(kernel, group_name)
        w = check_int(warmup, "warmup", group_name, 0, "Use `warmup=0` for none.")
        k = check_int(keep, "keep", group_name, 1, "Keep at least one draw.")
        t = check_int(thin, "thin", group_name, 1, "`thin=1` keeps every draw.")
        c = check_int(
            num_chains, "num_chains", group_name, 1, "`num_chains=1` runs one chain."
        )
        jitter = check_float(
            init_jitter,
            "init_jitter",
            group_name,
            positive=False,
            fix="`init_jitter=0.0` starts every chain at the model's values.",
        )
        scale = check_likelihood_scale(likelihood_scale, group_name)
        kwargs = dict(kernel_kwargs)
        step_size = kwargs.pop("step_size", None)
        if step_size is not None:
            try:
                ok = math.isfinite(float(step_size)) and float(step_size) > 0
            except (TypeError, ValueError):
                ok = False
            if not ok:
                raise ValueError(
                    _NEG_STEP_SIZE.format(value=step_size, name=group_name)
                )
            step_size = float(step_size)
        if not (isinstance(adapt, bool) or adapt in ("pooled", "chees")):
            raise ValueError(_ADAPT_CHOICE.format(value=adapt, name=group_name))
        if adapt == "chees":
            _check_chees(spec, kernel_kwargs, metric, w, group_name)
        adapts = bool(adapt) and spec.is_hmc_family and w > 0
        if step_size is None and spec.takes_step_size and not adapts:
            if spec.is_stochastic_gradient:
                why = (
                    "stochastic-gradient kernels take a step size at every step and "
                    "are not adapted."
                )
            elif spec.is_hmc_family and not adapt:
                why = "with `adapt=False` nothing tunes the step size."
            elif spec.is_hmc_family:
                why = "with `warmup=0` there are no steps to adapt it in."
            else:
                why = (
                    f"`{spec.name}` has no step-size adaptation (only HMC-family "
                    "kernels are adapted)."
                )
            raise ValueError(
                _NEED_STEP_SIZE.format(kernel=spec.name, name=group_name, why=why)
            )
        if step_size is not None:
            kwargs["step_size"] = step_size
        # ChEES-HMC sets the number of integration steps of every transition.
        chees = ("num_integration_steps",) if adapt == "chees" else ()
        check_kernel_kwargs(spec, kwargs, group_name, supplied=chees)
        kwargs.pop("step_size", None)
        d = sum(
            x.size for x in jax.tree.leaves(eqx.filter(subtree, eqx.is_inexact_array))
        )
        the_metric, rank = _check_metric(
            metric,
            max_rank,
            spec,
            kwargs,
            group_name,
            d,
            adapts=adapts and adapt != "chees",
        )
        jitter_fraction = _check_jitter(
            step_size_jitter, spec, group_name, chees=adapt == "chees"
        )
        arrays, static = split_kernel_kwargs(kwargs, group_name)
        config = MCMCConfig(
            kernel=spec,
            prior=the_prior,
            warmup=w,
            keep=k,
            thin=t,
            num_chains=c,
            init_jitter=jitter,
            adapt=adapt if adapt in ("pooled", "chees") else bool(adapt),
            likelihood_scale=scale,
            step_size=step_size,
            static_kwargs=tuple(static),
            init=the_init,
            metric=the_metric,
            max_rank=rank,
            step_size_jitter=jitter_fraction,
        )
        return BayesianLeaf(
            value=subtree, config=config, name=group_name, arrays=arrays
        )

    return mark(
        model,
        make,
        where=where,
        mask=mask,
        name=name,
        call="eb.bayesian",
        prior=prior,
        constraint=constraint,
    )


# `metric="auto"` is dense up to AUTO_DENSE_MAX_DIM sampled components, low-rank up
# to AUTO_LOW_RANK_MAX_DIM (its warmup holds a window of draws and gradients, 2 x 500
# x d numbers per chain for a 1000-step warmup), diagonal above (see the guide
# "Choosing and tuning a kernel", section "Which mass matrix").
AUTO_DENSE_MAX_DIM = 200
AUTO_LOW_RANK_MAX_DIM = 100_000
DEFAULT_MAX_RANK = 10


def _check_metric(
    metric: Any,
    max_rank: Any,
    spec,
    kwargs: dict[str, Any],
    name: str,
    d: int,
    adapts: bool = True,
) -> tuple[str, int]:
    """The metric's kind, `"diag"`, `"dense"` or `"low_rank"` (`"auto"` resolved),
    and the low-rank metric's rank (0 for the others). `adapts`: whether window
    adaptation estimates the metric (without it, "auto" keeps the identity
    diagonal: the same metric at the lowest cost)."""
    if metric not in ("auto", "diag", "dense", "low_rank"):
        raise ValueError(_METRIC_CHOICE.format(value=metric, name=name))
    if max_rank is not None and metric != "low_rank":
        raise ValueError(
            _MAX_RANK_METRIC.format(value=metric, rank=max_rank, name=name)
        )
    if "inverse_mass_matrix" not in spec.parameters:
        if metric != "auto":
            raise ValueError(
                _METRIC_KERNEL.format(kernel=spec.name, value=metric, name=name)
            )
        return "diag", 0
    imm = kwargs.get("inverse_mass_matrix")
    given = None if imm is None else metric_kind(imm)
    if metric == "auto":
        if given is not None:
            kind = given
        elif not adapts:  # the identity (ChEES-HMC estimates a diagonal)
            kind = "diag"
        else:
            kind = (
                "dense"
                if d <= AUTO_DENSE_MAX_DIM
                else "low_rank"
                if d <= AUTO_LOW_RANK_MAX_DIM
                else "diag"
            )
    else:
        kind = metric
        if given is not None and given != kind:
            raise ValueError(_METRIC_IMM.format(value=metric, name=name, given=given))
    if kind != "low_rank":
        return kind, 0
    if isinstance(imm, LowRankInverseMassMatrix):  # the rank of the given factors
        rank = int(jnp.shape(imm.lam)[-1])
        if max_rank is not None and max_rank != rank:
            raise ValueError(
                _MAX_RANK_GIVEN.format(value=max_rank, name=name, rank=rank)
            )
        return kind, rank
    if max_rank is None:
        return kind, min(DEFAULT_MAX_RANK, d)
    if (
        isinstance(max_rank, bool)
        or not isinstance(max_rank, (int, np.integer))
        or max_rank < 1
    ):
        raise ValueError(_MAX_RANK.format(value=max_rank, name=name))
    # More directions than components add nothing.
    return kind, min(int(max_rank), d)


def _check_chees(spec, kernel_kwargs, metric, warmup: int, name: str) -> None:
    why = None
    if not spec.is_hmc_family or "num_integration_steps" not in spec.parameters:
        why = (
            "ChEES-HMC tunes the trajectory length of fixed-length HMC, so it needs "
            "a kernel with `num_integration_steps` (`blackjax.hmc`); NUTS chooses "
            "its own trajectory length. Use `kernel=blackjax.hmc`, or another "
            "`adapt=`."
        )
    elif "num_integration_steps" in kernel_kwargs:
        why = (
            "ChEES-HMC sets each transition's number of integration steps from the "
            "trajectory length it adapts. Drop `num_integration_steps=`."
        )
    elif metric in ("dense", "low_rank") or (
        "inverse_mass_matrix" in kernel_kwargs
        and metric_kind(kernel_kwargs["inverse_mass_matrix"]) != "diag"
    ):
        why = (
            "ChEES-HMC works with a diagonal metric only. Drop `metric=` (or pass "
            '`metric="diag"`).'
        )
    elif warmup == 0:
        why = "ChEES-HMC adapts during warmup: pass `warmup=` > 0."
    if why is not None:
        raise ValueError(_CHEES.format(kernel=spec.name, name=name, why=why))


def _check_jitter(jitter: Any, spec, name: str, chees: bool = False) -> float:
    """The step-size jitter fraction (`None` resolved by the kernel)."""
    if jitter is None:
        # ChEES-HMC already jitters the trajectory length.
        static_length = "num_integration_steps" in spec.parameters and not chees
        return DEFAULT_STEP_SIZE_JITTER if static_length else 0.0
    try:
        j = float(jitter)
    except (TypeError, ValueError):
        j = math.nan
    if isinstance(jitter, bool) or not 0 <= j < 1:
        raise ValueError(_JITTER_RANGE.format(value=jitter, name=name))
    if j > 0 and (spec.is_stochastic_gradient or "step_size" not in spec.parameters):
        why = (
            "stochastic-gradient kernels take their step size at every step and "
            "are not jittered."
            if spec.is_stochastic_gradient
            else "this kernel takes no `step_size`."
        )
        raise ValueError(
            _JITTER_KERNEL.format(kernel=spec.name, value=jitter, name=name, why=why)
        )
    return j
