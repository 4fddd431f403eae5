"""ChEES-HMC adaptation (Hoffman, Radul & Sountsov 2021), one solver step at a time.

Blackjax's `chees_adaptation` runs the whole warmup in one `lax.scan` over an
ensemble of chains. eqbayes steps it, like the window adaptation: blackjax's own
`base(...)` update runs after every warmup transition on all K chains at once (one
state shared by the chains, gathered across devices in a sharded solve). It tunes
the step size (dual averaging of the chains' harmonic-mean acceptance rate towards
0.651) and the trajectory length T (Adam on the ChEES criterion). Each transition,
in warmup and after it, is fixed-length HMC with `ceil(u · T / step_size)`
integration steps, u from a Halton sequence shared by the chains (blackjax's
jittered "dynamic HMC"). Unless one is given, a diagonal inverse mass matrix is
estimated from every chain's positions over the second half of the warmup and used
once it has 64 draws (blackjax's `mass_matrix_estimation="diagonal"`).
"""

from typing import Any

import equinox as eqx
import jax
import jax.flatten_util
import jax.numpy as jnp
import optax
from blackjax.adaptation.chees_adaptation import (
    _diagonal_mass_matrix_or_fallback,
    _mass_matrix_engagement_threshold,
    base,
    OPTIMAL_TARGET_ACCEPTANCE_RATE,
)
from blackjax.adaptation.mass_matrix import welford_algorithm
from blackjax.mcmc.dynamic_hmc import halton_sequence
from jaxtyping import Array, Bool, Float, Int

from ._custom_types import ArrayTree
from ._sharding import gathered


LEARNING_RATE = 0.025
DECAY_RATE = 0.5
MAX_LEAPFROG_STEPS = 1000
_MAX_BITS = 30  # the Halton sequence's resolution (int32 counter)


class CheesState(eqx.Module):
    """blackjax's `ChEESAdaptationState` (arrays), shared by a group's chains, and
    the pooled Welford estimate of the diagonal inverse mass matrix (None when
    the matrix is given)."""

    inner: Any
    welford: Any
    window_start: int = eqx.field(static=True)


def _jitter(counter: Int[Array, ""]) -> Float[Array, ""]:
    with jax.numpy_dtype_promotion("standard"):  # blackjax mixes ints and floats
        return halton_sequence(counter, _MAX_BITS)


def _update_fn():
    optim = optax.adam(LEARNING_RATE)
    return base(
        _jitter,
        lambda i: i + 1,
        optim,
        OPTIMAL_TARGET_ACCEPTANCE_RATE,
        DECAY_RATE,
        MAX_LEAPFROG_STEPS,
    )


def chees_init(
    step_size: Float[Array, ""], num_dim: int, warmup: int, estimate: bool
) -> CheesState:
    init, _ = _update_fn()
    dtype = step_size.dtype
    with jax.numpy_dtype_promotion("standard"):
        inner = init(jnp.zeros((), jnp.int32), step_size)
    # Python numbers in blackjax's state become arrays (a loop carry, a checkpoint).
    inner = inner._replace(
        log_step_size_moving_average=jnp.zeros((), dtype),
        log_trajectory_length_moving_average=jnp.zeros((), dtype),
        da_state=jax.tree.map(lambda x: jnp.asarray(x, dtype), inner.da_state),
        step=jnp.ones((), dtype),
    )
    welford = None
    if estimate:
        wc_init, _, _ = welford_algorithm(is_diagonal_matrix=True)
        welford = jax.tree.map(lambda x: jnp.asarray(x, dtype), wc_init(num_dim))
    return CheesState(inner, welford, warmup // 2)


def num_steps(state: CheesState, step_size: Float[Array, ""]) -> Int[Array, ""]:
    """The integration steps of this transition: `ceil(u · T / step_size)`."""
    inner = state.inner
    u = _jitter(inner.random_generator_arg).astype(step_size.dtype)
    n = jnp.ceil(u * inner.trajectory_length / step_size)
    return jnp.clip(n, 1, MAX_LEAPFROG_STEPS).astype(jnp.int32)


def chees_update(
    state: CheesState,
    step: Int[Array, ""],
    is_last: Bool[Array, ""],
    proposed: tuple[ArrayTree, ArrayTree],
    initial_positions: ArrayTree,
    positions: ArrayTree,
    acceptance_rate: Float[Array, " chains"],
    is_divergent: Bool[Array, " chains"],
    inverse_mass_matrix: Float[Array, " d"],
) -> tuple[CheesState, Float[Array, ""], Float[Array, " d"]]:
    """One ChEES update from every chain's transition (`positions` are the chains'
    new positions); returns the new state and the step size and inverse mass
    matrix of the next transition. At the last warmup step, the step size and the
    trajectory length become their moving averages (kept from then on)."""
    _, update = _update_fn()
    (position, momentum), initial, positions, acceptance_rate, is_divergent = gathered(
        (proposed, initial_positions, positions, acceptance_rate, is_divergent)
    )
    dtype = acceptance_rate.dtype
    # blackjax's per-leaf weighted mean expects `(chains, d)` leaves: hand it each
    # chain's raveled position (the criterion ravels them anyway).
    flatten = jax.vmap(lambda p: jax.flatten_util.ravel_pytree(p)[0])
    position, momentum, initial = flatten(position), flatten(momentum), flatten(initial)
    # blackjax mixes ints and floats, and broadcasts ranks.
    with jax.numpy_dtype_promotion("standard"), jax.numpy_rank_promotion("allow"):
        inner = update(
            state.inner,
            position,
            momentum,
            initial,
            acceptance_rate,
            is_divergent,
            inverse_mass_matrix,
        )
    inner = jax.tree.map(
        lambda new, old: jnp.asarray(new, old.dtype), inner, state.inner
    )
    final_step_size = jnp.exp(inner.log_step_size_moving_average)
    final_length = jnp.exp(inner.log_trajectory_length_moving_average)
    inner = inner._replace(
        step_size=jnp.where(is_last, final_step_size, inner.step_size).astype(dtype),
        trajectory_length=jnp.where(
            is_last, final_length, inner.trajectory_length
        ).astype(dtype),
    )
    welford = state.welford
    if welford is not None:
        _, wc_update, _ = welford_algorithm(is_diagonal_matrix=True)
        flat = jax.vmap(lambda p: jax.flatten_util.ravel_pytree(p)[0])(positions)

        def fold(w):
            return jax.lax.fori_loop(
                0, flat.shape[0], lambda i, w: wc_update(w, flat[i]), w
            )

        welford = jax.lax.cond(step >= state.window_start, fold, lambda w: w, welford)
        num_dim = flat.shape[1]
        with jax.numpy_dtype_promotion("standard"):
            estimate = _diagonal_mass_matrix_or_fallback(
                welford, _mass_matrix_engagement_threshold(num_dim), num_dim
            )
        inverse_mass_matrix = estimate.astype(inverse_mass_matrix.dtype)
    new = CheesState(inner, welford, state.window_start)
    return new, inner.step_size, inverse_mass_matrix


def advance(state: CheesState) -> CheesState:
    """After warmup: the next Halton point for the next transition."""
    inner = state.inner
    inner = inner._replace(random_generator_arg=inner.random_generator_arg + 1)
    return CheesState(inner, state.welford, state.window_start)
