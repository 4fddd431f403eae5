"""The state and the mechanics of one MCMC group: init, one transition, recording."""

import dataclasses
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.flatten_util
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray

from ._adaptation import window_init, window_update, WindowAdaptationState
from ._custom_types import ArrayTree
from ._kernels import info_fields, KernelSpec, position_of
from ._sharding import chains_axis, over_devices


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
    """

    is_divergent: Bool[Array, "chain draw"] | None = None
    acceptance_rate: Float[Array, "chain draw"] | None = None
    energy: Float[Array, "chain draw"] | None = None
    num_integration_steps: Int[Array, "chain draw"] | None = None


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
    adapt: bool
    likelihood_scale: float
    step_size: float | None
    static_kwargs: tuple[tuple[str, Any], ...]
    # A log-density-aware initializer (`eqbayes.initializers`), or None.
    init: Any = None

    @property
    def adapts(self) -> bool:
        """Whether window adaptation runs during warmup."""
        return self.adapt and self.kernel.is_hmc_family and self.warmup > 0

    @property
    def steps(self) -> int:
        """Solver steps to warm up and collect `keep` draws."""
        return self.warmup + self.keep * self.thin


class MCMCState(eqx.Module):
    """Everything an MCMC group carries between solver steps.

    Every array has the chain axis first, except the shared `step_size`,
    `inverse_mass_matrix` and `adaptation`.
    """

    kernel_state: ArrayTree
    step_size: Float[Array, ""] | None
    inverse_mass_matrix: Float[Array, "..."] | None
    adaptation: WindowAdaptationState | None
    samples: ArrayTree
    diagnostics: KernelDiagnostics


def _kernel_kwargs(
    config: MCMCConfig, state_step_size, state_imm, arrays: dict[str, Array]
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


def over_chains(fn: Callable, *batched: Any) -> Any:
    """`jax.vmap(fn)` over the leading chain axis, or a plain call when there is one
    chain: a vmap of size one still costs NUTS's dynamic loops noticeably. In a
    solve placed on a mesh, each device vmaps its own chains."""
    if chains_axis():
        return over_devices(fn, *batched)
    size = jax.tree.leaves(batched)[0].shape[0]
    if size > 1:
        return jax.vmap(fn)(*batched)
    out = fn(*jax.tree.map(lambda x: x[0], batched))
    return jax.tree.map(lambda x: jnp.expand_dims(jnp.asarray(x), 0), out)


def init_state(
    config: MCMCConfig,
    arrays: dict[str, Array],
    positions: ArrayTree,
    logdensity_for: Callable[[ArrayTree], LogDensity],
    others: ArrayTree,
    name: str,
    key: PRNGKeyArray,
    adapt_mass_matrix: bool = True,
) -> MCMCState:
    """Builds the group's state from its K starting positions (chain axis first).

    `logdensity_for` and `others` are as in `step_state`; `key` seeds kernels
    whose initial state is random (SGNHT's momentum). A `step_size` in `arrays`
    (set by an initializer) replaces the configured one.
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
        imm = arrays.get("inverse_mass_matrix", jnp.ones(flat.size, dtype))
    kwargs = _kernel_kwargs(config, step_size, imm, arrays)

    def init_one(position, others_k, key_k):
        algorithm, _ = _algorithm(spec, logdensity_for(others_k), kwargs)
        return _init_kernel(spec, algorithm, position, key_k)

    keys = jr.split(key, config.num_chains)
    kernel_state = over_chains(init_one, positions, others, keys)
    position_of(kernel_state, spec, name)  # a clear error for an odd custom state
    adaptation = None
    if config.adapts:
        assert step_size is not None and imm is not None
        adaptation = window_init(one, step_size, imm, config.warmup, adapt_mass_matrix)

    # The info structure, without running anything.
    def probe(state, others_0):
        algorithm, step_kwargs = _algorithm(spec, logdensity_for(others_0), kwargs)
        return _step_kernel(spec, algorithm, step_kwargs, jr.key(0), state)[1]

    first = jax.tree.map(lambda x: x[0], (kernel_state, others))
    info_shapes = jax.eval_shape(probe, *first)
    if config.adapts and "acceptance_rate" not in info_shapes:
        raise ValueError(_NO_ACCEPTANCE.format(name=name, kernel=spec.name))
    shape = (config.num_chains, config.keep)
    diagnostics = KernelDiagnostics(
        **{f: jnp.zeros(shape, s.dtype) for f, s in info_shapes.items()}
    )
    samples = jax.tree.map(
        lambda x: jnp.zeros((x.shape[0], config.keep, *x.shape[1:]), x.dtype), positions
    )
    return MCMCState(kernel_state, step_size, imm, adaptation, samples, diagnostics)


def step_state(
    config: MCMCConfig,
    arrays: dict[str, Array],
    state: MCMCState,
    key: PRNGKeyArray,
    step: Int[Array, ""],
    logdensity_for: Callable[[ArrayTree], LogDensity],
    others: ArrayTree,
    *,
    refresh: bool,
    phase: str,
    name: str,
) -> tuple[MCMCState, dict[str, Array]]:
    """One transition of every chain of the group, then adaptation.

    **Arguments:**

    - `logdensity_for`: maps the other groups' positions at one chain to that
        chain's log density of this group.
    - `others`: the other groups' positions, chain axis first (vmapped).
    - `refresh`: re-initialise the kernel state at its position before stepping, so
        that its cached log density and gradient reflect the other groups' current
        values (exact Metropolis-within-Gibbs).
    - `phase`: `"warmup"` (statically warming up), `"sample"` (statically past
        warmup) or `"any"` (decided from `step`).

    **Returns:**

    The new state and the transition's diagnostic fields, each `(K,)`.
    """
    spec = config.kernel
    kwargs = _kernel_kwargs(config, state.step_size, state.inverse_mass_matrix, arrays)

    def one_chain(kernel_state, others_k, key_k):
        algorithm, step_kwargs = _algorithm(spec, logdensity_for(others_k), kwargs)
        # Stochastic-gradient states cache no log density: nothing to refresh.
        if refresh and not spec.is_stochastic_gradient:
            position = position_of(kernel_state, spec, name)
            kernel_state = algorithm.init(position)
        return _step_kernel(spec, algorithm, step_kwargs, key_k, kernel_state)

    # One chain uses the group's key as it is (a split costs a hash per step).
    keys = jr.split(key, config.num_chains) if config.num_chains > 1 else key[None]
    kernel_state, info = over_chains(one_chain, state.kernel_state, others, keys)
    state = eqx.tree_at(lambda s: s.kernel_state, state, kernel_state)

    if config.adapts and phase != "sample":

        def adapt(s):
            assert s.adaptation is not None
            positions = position_of(s.kernel_state, spec, name)
            adaptation, step_size, imm = window_update(
                s.adaptation, step, positions, info["acceptance_rate"]
            )
            return eqx.tree_at(
                lambda x: (x.adaptation, x.step_size, x.inverse_mass_matrix),
                s,
                (adaptation, step_size.astype(s.step_size.dtype), imm),
            )

        if phase == "warmup":
            state = adapt(state)
        else:
            state = jax.lax.cond(step < config.warmup, adapt, lambda s: s, state)
    return state, info


def record(
    config: MCMCConfig,
    state: MCMCState,
    step: Int[Array, ""],
    info: dict[str, Array],
    spec_name: str,
    *,
    always: bool,
) -> MCMCState:
    """Writes the draw of solver step `step` into the sample buffers.

    A draw is taken after every `thin`-th post-warmup step; buffers are rings of
    `keep` slots, so a longer solve keeps the last `keep` draws. With `always=True`
    the slot of `step`'s draw is written unconditionally: the caller runs whole
    draws past warmup, so the last write to each slot is its draw.
    """
    offset = step - config.warmup
    slot = (offset // config.thin) % config.keep
    take = (
        jnp.asarray(True)
        if always
        else (offset >= 0) & (offset % config.thin == config.thin - 1)
    )
    position = position_of(state.kernel_state, config.kernel, spec_name)

    # `lax.dynamic_update_*` rather than `.at[].set`: the latter lowers to a
    # scatter, several times slower per step on CPU.
    def write(buffer, value):
        value = value.astype(buffer.dtype)
        if not always:
            old = jax.lax.dynamic_index_in_dim(buffer, slot, axis=1, keepdims=False)
            value = jnp.where(take, value, old)
        return jax.lax.dynamic_update_index_in_dim(buffer, value, slot, axis=1)

    samples = jax.tree.map(write, state.samples, position)
    diagnostics = KernelDiagnostics(
        **{f: write(getattr(state.diagnostics, f), v) for f, v in info.items()}
    )
    return eqx.tree_at(
        lambda s: (s.samples, s.diagnostics), state, (samples, diagnostics)
    )


def num_recorded(config: MCMCConfig, steps_done: int) -> int:
    """How many draws a group has taken after `steps_done` solver steps."""
    return max(0, (steps_done - config.warmup) // config.thin)


def chronological(config: MCMCConfig, buffer: Any, steps_done: int) -> Any:
    """The draws of a ring buffer `(K, keep, ...)` in the order they were taken."""
    n = num_recorded(config, steps_done)
    if n < config.keep:
        return jax.tree.map(lambda b: b[:, :n], buffer)
    shift = n % config.keep
    if shift == 0:
        return buffer
    return jax.tree.map(lambda b: jnp.roll(b, -shift, axis=1), buffer)
