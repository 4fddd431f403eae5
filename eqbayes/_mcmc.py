"""The state and the mechanics of one MCMC group: init and one transition of its K
chains, and their adaptation."""

import dataclasses
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.flatten_util
import jax.numpy as jnp
import jax.random as jr
from blackjax.mcmc.metrics import LowRankInverseMassMatrix
from jaxtyping import Array, ArrayLike, Bool, Float, Int, PRNGKeyArray

from ._adaptation import (
    low_rank_identity,
    window_init,
    window_update,
    window_update_per_chain,
    WindowAdaptationState,
)
from ._chees import advance, chees_init, chees_update, CheesState, num_steps
from ._custom_types import ArrayTree
from ._groups import Context, Draws, Mode
from ._kernels import gradient_of, info_fields, KernelSpec, position_of


# `(position) -> log density` for one chain, given the other groups' positions.
LogDensity = Callable[[ArrayTree], Float[Array, ""]]


_NO_ACCEPTANCE = (
    "`eb.bayesian(..., kernel={kernel})` for group '{name}': window adaptation tunes "
    "the step size from the kernel's acceptance rate, but this kernel's info has no "
    "`acceptance_rate`. Pass `adapt=False` and a `step_size=`."
)


class KernelDiagnostics(eqx.Module):
    """Per-step kernel diagnostics of one group, each of shape `(K, N)`.

    A field is `None` when the group's kernel does not report it: NUTS and HMC
    record all four, MALA only `acceptance_rate`, a custom kernel whichever of these
    names its info carries.

    **Fields:**

    - `is_divergent`: whether the transition diverged (NUTS, HMC).
    - `acceptance_rate`: the Metropolis acceptance probability of the transition.
    - `energy`: the Hamiltonian energy after the transition (NUTS, HMC).
    - `num_integration_steps`: leapfrog steps taken, i.e. gradient evaluations
        (the work per draw).

    Two more fields hold the tuning the draws were made with, one value per chain
    (the same in every chain unless each chain adapted its own, `adapt=True`):

    - `step_size`: shape `(K,)`, the step size after warmup (the adapted one, or
        the one given). With step-size jitter each transition used a step size
        drawn around it.
    - `inverse_mass_matrix`: shape `(K, d)` (diagonal) or `(K, d, d)` (dense),
        over the group's d sampled components in the order of
        `jax.flatten_util.ravel_pytree` of its position; for `metric="low_rank"`
        blackjax's `LowRankInverseMassMatrix(sigma, U, lam)` with shapes `(K, d)`,
        `(K, d, r)` and `(K, r)` (r = `max_rank`), the inverse mass matrix
        being `diag(sigma) (I + U diag(lam - 1) Uᵀ) diag(sigma)` (see
        `dense_inverse_mass_matrix()` for the dense matrix). None for kernels
        that take no inverse mass matrix.
    """

    is_divergent: Bool[ArrayLike, "chain draw"] | None = None
    acceptance_rate: Float[ArrayLike, "chain draw"] | None = None
    energy: Float[ArrayLike, "chain draw"] | None = None
    num_integration_steps: Int[ArrayLike, "chain draw"] | None = None
    step_size: Float[ArrayLike, " chain"] | None = None
    inverse_mass_matrix: (
        Float[ArrayLike, " chain *metric"] | LowRankInverseMassMatrix | None
    ) = None

    def dense_inverse_mass_matrix(self) -> Float[Array, "chain d d"] | None:
        r"""Each chain's inverse mass matrix as a dense `(K, d, d)` matrix,
        whatever its kind: `diag(v)` for a diagonal one, a dense one as it is, and
        $\mathrm{diag}(\sigma)(I + U\,\mathrm{diag}(\lambda - 1)\,U^\top)
        \mathrm{diag}(\sigma)$ for low-rank factors. It estimates the posterior
        covariance of the group's components after warmup. O(d²) memory per
        chain: for a large network, read the factors instead. None for kernels
        that take no inverse mass matrix.

        !!! Example

            ```python
            diagnostics = result.posterior.diagnostics["Coefficients"]
            cov = diagnostics.dense_inverse_mass_matrix()[0]  # chain 0
            ```
        """
        imm = self.inverse_mass_matrix
        if imm is None:
            return None
        if isinstance(imm, LowRankInverseMassMatrix):
            sigma, u, lam = (jnp.asarray(x) for x in imm)
            inner = jnp.einsum("kir,kr,kjr->kij", u, lam - 1, u)
            inner = inner + jnp.eye(sigma.shape[-1], dtype=sigma.dtype)[None]
            return sigma[:, :, None] * inner * sigma[:, None, :]
        imm = jnp.asarray(imm)
        if imm.ndim == 3:
            return imm
        return imm[:, :, None] * jnp.eye(imm.shape[-1], dtype=imm.dtype)[None]


@dataclasses.dataclass(frozen=True)
class MCMCConfig:
    """The static configuration of an MCMC group (hashable)."""

    kernel: KernelSpec
    prior: Callable[[ArrayTree], Any]
    warmup: int
    keep: int
    thin: int
    num_chains: int
    init_jitter: float
    adapt: bool | str  # True (per chain), "pooled", "chees" or False
    likelihood_scale: float
    step_size: float | None
    static_kwargs: tuple[tuple[str, Any], ...]
    # A log-density-aware initializer (`eqbayes.initializers`), or None.
    init: Any = None
    # The adapted inverse mass matrix: "diag", "dense" or "low_rank".
    metric: str = "diag"
    max_rank: int = 0  # the low-rank metric's number of directions
    # Each transition's step size is drawn uniformly from step_size·[1 - j, 1 + j].
    step_size_jitter: float = 0.0

    @property
    def adapts(self) -> bool:
        """Whether window adaptation runs during warmup."""
        return (
            bool(self.adapt)
            and self.adapt != "chees"
            and self.kernel.is_hmc_family
            and self.warmup > 0
        )

    @property
    def chees(self) -> bool:
        """Whether ChEES-HMC tunes the step size and trajectory length."""
        return self.adapt == "chees"

    @property
    def per_chain(self) -> bool:
        """Whether each chain has its own step size and inverse mass matrix (its
        own window adaptation): `adapt=True`."""
        return self.adapts and self.adapt is True


class MCMCState(eqx.Module):
    """Everything an MCMC group carries between solver steps.

    **Fields:**

    - `kernel_state`: blackjax's state of the K chains (chain axis first).
    - `step_size`, `inverse_mass_matrix`: one per chain (chain axis first) when
        each chain adapts its own (`adapt=True`), else shared by the chains (None
        for kernels that take none).
    - `adaptation`: the window adaptation's state (None without adaptation),
        chain axis first when per chain.
    - `draws`: the kept `(position, {diagnostic field: value})` of the K chains.
    """

    kernel_state: ArrayTree
    step_size: Float[Array, "*chains"] | None
    inverse_mass_matrix: Float[Array, "..."] | LowRankInverseMassMatrix | None
    adaptation: WindowAdaptationState | CheesState | None
    draws: Draws

    def tuning(
        self, num_chains: int
    ) -> tuple[ArrayLike | None, ArrayLike | LowRankInverseMassMatrix | None]:
        """The step size `(K,)` and inverse mass matrix `(K, ...)`, one per chain
        (shared values repeated)."""
        step_size, imm = self.step_size, self.inverse_mass_matrix
        if step_size is not None and step_size.ndim == 0:
            step_size = jnp.broadcast_to(step_size, (num_chains,))
            imm = jax.tree.map(
                lambda x: jnp.broadcast_to(x, (num_chains, *x.shape)), imm
            )
        return step_size, imm


def _kernel_kwargs(
    config: MCMCConfig, state_step_size, state_imm, arrays: dict[str, Any]
) -> dict[str, Any]:
    """The factory's keyword arguments: the group's settings, then the state's step
    size and inverse mass matrix (which replace a user-given initial one)."""
    kwargs = dict(config.static_kwargs)
    kwargs.update(arrays)
    if state_step_size is not None:
        kwargs["step_size"] = state_step_size
    if state_imm is not None:
        kwargs["inverse_mass_matrix"] = state_imm
    return kwargs


def _algorithm(spec: KernelSpec, logdensity: LogDensity, kwargs: dict[str, Any]):
    """The `SamplingAlgorithm` for one chain, and the keywords of each `step`.

    Full-data kernels get the log density; stochastic-gradient kernels a gradient
    estimator of it (the solver has already closed the minibatch into the log
    density, so the estimator ignores blackjax's `minibatch` argument), and take
    the step size (and e.g. `temperature`) at every step.
    """
    if not spec.is_stochastic_gradient:
        return spec.build(logdensity, **kwargs), {}

    def grad_estimator(position, minibatch):
        del minibatch
        return jax.grad(logdensity)(position)

    factory = {k: v for k, v in kwargs.items() if spec.accepts(k)}
    step = {k: v for k, v in kwargs.items() if not spec.accepts(k)}
    return spec.build(grad_estimator, **factory), step


def _init_kernel(spec: KernelSpec, algorithm, position, key):
    """`algorithm.init`, with a key for kernels whose state is random (SGNHT)."""
    if spec.is_stochastic_gradient:
        return algorithm.init(position, key)
    return algorithm.init(position)


def _jittered(kwargs: dict[str, Any], jitter: float, key: PRNGKeyArray):
    """`kwargs` with the step size drawn from `step_size·U(1 - jitter, 1 + jitter)`
    (one draw per transition and chain)."""
    step_size = kwargs["step_size"]
    u = jr.uniform(key, (), step_size.dtype, -1.0, 1.0)
    return {**kwargs, "step_size": step_size * (1 + jitter * u)}


def _step_kernel(spec: KernelSpec, algorithm, step_kwargs, key, state):
    """`(new_state, diagnostic fields)` of one transition."""
    if spec.is_stochastic_gradient:
        step_kwargs = dict(step_kwargs)
        step_size = step_kwargs.pop("step_size")
        return algorithm.step(key, state, (), step_size, **step_kwargs), {}
    new_state, info = algorithm.step(key, state)
    return new_state, info_fields(info)


def initial_positions(
    position: ArrayTree, config: MCMCConfig, key: PRNGKeyArray
) -> ArrayTree:
    """K copies of the position, jittered by `init_jitter` when it is positive
    (and no initializer replaces them)."""
    leaves, treedef = jax.tree.flatten(position)
    keys = jr.split(key, len(leaves))
    out = []
    for leaf, k in zip(leaves, keys):
        stacked = jnp.broadcast_to(leaf, (config.num_chains, *leaf.shape))
        if config.init_jitter > 0 and config.init is None:
            noise = jr.normal(k, stacked.shape, leaf.dtype)
            stacked = stacked + config.init_jitter * noise
        out.append(stacked)
    return jax.tree.unflatten(treedef, out)


def init_state(
    config: MCMCConfig,
    arrays: dict[str, Any],
    positions: ArrayTree,
    logdensity_for: Callable[[ArrayTree], LogDensity],
    ctx: Context,
    name: str,
    key: PRNGKeyArray,
    adapt_mass_matrix: bool = True,
) -> MCMCState:
    """Builds the group's state from its K starting positions (chain axis first).

    `logdensity_for` maps one chain's slice of `ctx.others` to that chain's log
    density; `key` seeds kernels whose initial state is random (SGNHT's momentum).
    A `step_size` in `arrays` (set by an initializer) replaces the configured one.
    """
    one = jax.tree.map(lambda x: x[0], positions)
    dtype = jax.tree.leaves(one)[0].dtype
    flat, _ = jax.flatten_util.ravel_pytree(one)
    spec = config.kernel
    step_size = None
    if spec.takes_step_size:
        initial = 1.0 if config.step_size is None else config.step_size
        step_size = jnp.asarray(arrays.get("step_size", initial), dtype)
    imm = None
    if "inverse_mass_matrix" in spec.parameters:
        if config.metric == "dense":
            identity = jnp.eye(flat.size, dtype=dtype)
        elif config.metric == "low_rank":
            identity = low_rank_identity(flat.size, config.max_rank, dtype)
        else:
            identity = jnp.ones(flat.size, dtype)
        imm = arrays.get("inverse_mass_matrix", identity)
    kwargs = _kernel_kwargs(config, step_size, imm, arrays)
    if config.chees:  # set per transition; any value builds the kernel
        kwargs["num_integration_steps"] = 1

    def init_one(others_k, position, key_k):
        algorithm, _ = _algorithm(spec, logdensity_for(others_k), kwargs)
        return _init_kernel(spec, algorithm, position, key_k)

    keys = jr.split(key, config.num_chains)
    kernel_state = ctx.over_chains(init_one, positions, keys)
    position_of(kernel_state, spec, name)  # a clear error for an odd custom state
    adaptation = None
    if config.adapts:
        assert step_size is not None and imm is not None
        rows = 1 if config.per_chain else config.num_chains
        adaptation = window_init(
            one, step_size, imm, config.warmup, adapt_mass_matrix, rows
        )
    if config.chees:
        assert step_size is not None
        # A given inverse mass matrix (the user's, an initializer's) is kept.
        estimate = adapt_mass_matrix and "inverse_mass_matrix" not in arrays
        adaptation = chees_init(step_size, flat.size, config.warmup, estimate)
    if config.per_chain:  # each chain starts its own adaptation from the same values
        assert step_size is not None and imm is not None
        k = config.num_chains
        step_size, imm, adaptation = jax.tree.map(
            lambda x: jnp.broadcast_to(x, (k, *x.shape)), (step_size, imm, adaptation)
        )

    # The info structure, without running anything.
    def probe(state, others_0):
        algorithm, step_kwargs = _algorithm(spec, logdensity_for(others_0), kwargs)
        return _step_kernel(spec, algorithm, step_kwargs, jr.key(0), state)[1]

    first = jax.tree.map(lambda x: x[0], kernel_state)
    info_shapes = jax.eval_shape(probe, first, ctx.chain(0))
    if config.adapts and "acceptance_rate" not in info_shapes:
        raise ValueError(_NO_ACCEPTANCE.format(name=name, kernel=spec.name))
    diagnostics = {
        f: jnp.zeros((config.num_chains,), s.dtype) for f, s in info_shapes.items()
    }
    draws = Draws.empty(
        (positions, diagnostics),
        warmup=config.warmup,
        keep=config.keep,
        thin=config.thin,
    )
    return MCMCState(kernel_state, step_size, imm, adaptation, draws)


def _chees_step(config, state, ctx, proposal, initial, info, name) -> MCMCState:
    """ChEES's update after a warmup transition; after warmup, the next jitter."""

    def adapt(s):
        adaptation, step_size, imm = chees_update(
            s.adaptation,
            ctx.step,
            ctx.step == config.warmup - 1,
            proposal,
            initial,
            position_of(s.kernel_state, config.kernel, name),
            info["acceptance_rate"],
            info["is_divergent"],
            s.inverse_mass_matrix,
        )
        return eqx.tree_at(
            lambda x: (x.adaptation, x.step_size, x.inverse_mass_matrix),
            s,
            (adaptation, step_size, imm),
        )

    def next_jitter(s):
        return eqx.tree_at(lambda x: x.adaptation, s, advance(s.adaptation))

    if ctx.mode is Mode.WARMUP:
        return adapt(state)
    if ctx.mode is Mode.DRAWS:
        return next_jitter(state)
    return jax.lax.cond(ctx.step < config.warmup, adapt, next_jitter, state)


def step_state(
    config: MCMCConfig,
    arrays: dict[str, Any],
    state: MCMCState,
    logdensity_for: Callable[[ArrayTree], LogDensity],
    ctx: Context,
    name: str,
) -> MCMCState:
    """One transition of every chain of the group, then adaptation, then the draw.

    **Arguments:**

    - `logdensity_for`: maps one chain's slice of `ctx.others` (the other chain
        groups' positions) to that chain's log density of this group.
    - `ctx.refresh`: re-initialise the kernel state at its position before
        stepping, so that its cached log density and gradient reflect the other
        groups' current values (exact Metropolis-within-Gibbs).
    - `ctx.mode`: `WARMUP` (adapt, keep nothing), `DRAWS` (past warmup, write the
        draw's slot) or `GENERAL` (decided from `ctx.step`).
    """
    spec = config.kernel
    # Per-chain tuning travels with the chains; shared tuning is closed over.
    tuning = (state.step_size, state.inverse_mass_matrix)
    batched = tuning if config.per_chain else ()
    fixed = {}
    if config.chees:  # this transition's jittered number of integration steps
        assert isinstance(state.adaptation, CheesState)
        fixed["num_integration_steps"] = num_steps(state.adaptation, state.step_size)

    # The low-rank estimate reads the log-density gradient at each warmup draw.
    wants_gradient = (
        config.adapts and config.metric == "low_rank" and ctx.mode is not Mode.DRAWS
    )

    def one_chain(others_k, kernel_state, key_k, *tuning_k):
        kwargs = {**_kernel_kwargs(config, *(tuning_k or tuning), arrays), **fixed}
        if config.step_size_jitter > 0:
            jitter_key, key_k = jr.split(key_k)
            kwargs = _jittered(kwargs, config.step_size_jitter, jitter_key)
        logdensity = logdensity_for(others_k)
        algorithm, step_kwargs = _algorithm(spec, logdensity, kwargs)
        # Stochastic-gradient states cache no log density: nothing to refresh.
        if ctx.refresh and not spec.is_stochastic_gradient:
            position = position_of(kernel_state, spec, name)
            kernel_state = algorithm.init(position)
        if config.chees:  # ChEES reads the proposal (end of the trajectory)
            new_state, info = algorithm.step(key_k, kernel_state)
            proposal = (info.proposal.position, info.proposal.momentum)
            return (new_state, info_fields(info)), proposal
        out = _step_kernel(spec, algorithm, step_kwargs, key_k, kernel_state)
        if wants_gradient:
            gradient = gradient_of(out[0])
            if gradient is None:  # a custom state that caches none
                gradient = jax.grad(logdensity)(position_of(out[0], spec, name))
            return out, gradient
        return out, ()

    # One chain uses the group's key as it is (a split costs a hash per step).
    key = ctx.key
    assert key is not None
    keys = jr.split(key, config.num_chains) if config.num_chains > 1 else key[None]
    initial = position_of(state.kernel_state, spec, name)
    (kernel_state, info), extra = ctx.over_chains(
        one_chain, state.kernel_state, keys, *batched
    )
    proposal = extra if config.chees else None
    gradients = extra if wants_gradient else None
    state = eqx.tree_at(lambda s: s.kernel_state, state, kernel_state)
    if config.chees:
        state = _chees_step(config, state, ctx, proposal, initial, info, name)

    if config.adapts and ctx.mode is not Mode.DRAWS:

        def adapt(s):
            assert s.adaptation is not None
            positions = position_of(s.kernel_state, spec, name)
            update = window_update_per_chain if config.per_chain else window_update
            adaptation, step_size, imm = update(
                s.adaptation, ctx.step, positions, info["acceptance_rate"], gradients
            )
            return eqx.tree_at(
                lambda x: (x.adaptation, x.step_size, x.inverse_mass_matrix),
                s,
                (adaptation, step_size.astype(s.step_size.dtype), imm),
            )

        if ctx.mode is Mode.WARMUP:
            state = adapt(state)
        else:
            state = jax.lax.cond(ctx.step < config.warmup, adapt, lambda s: s, state)
    position = position_of(state.kernel_state, spec, name)
    draws = state.draws.record(ctx.step, (position, info), ctx.mode)
    return eqx.tree_at(lambda s: s.draws, state, draws)
