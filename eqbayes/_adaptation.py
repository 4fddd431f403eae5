"""Stan's window adaptation, one solver step at a time.

Blackjax's `window_adaptation` runs the whole warmup in one `lax.scan`. eqbayes
needs it stepped: a group warms up inside the solver's step (so that several groups,
manual `Solver.step` loops and chunked runs all see the same sequence). This module
composes blackjax's own building blocks (dual averaging, Welford mass-matrix
estimation and Stan's schedule) into an `init / update` pair over a pytree state.

`window_update` takes the positions and acceptance rates of n chains: with n = K
(`adapt="pooled"`), the dual averaging sees the chains' mean acceptance rate and the
mass-matrix estimator sees every chain's position, the pooled estimate of one
adaptation sweep that the chains share; `adapt=True` runs one state per chain
(`window_update_per_chain`), as Stan and NumPyro do.
"""

from typing import Any

import equinox as eqx
import jax
import jax.flatten_util
import jax.numpy as jnp
from blackjax.adaptation.mass_matrix import mass_matrix_adaptation
from blackjax.adaptation.staged_adaptation import build_schedule
from blackjax.adaptation.step_size import dual_averaging_adaptation
from jaxtyping import Array, Float, Int

from ._custom_types import ArrayTree
from ._sharding import gathered, over_chains


TARGET_ACCEPTANCE_RATE = 0.8


class WindowAdaptationState(eqx.Module):
    """Step-size and mass-matrix adaptation of one group's chains (one state
    shared by the chains, or one per chain stacked on a leading chain axis)."""

    ss_state: Any  # blackjax DualAveragingAdaptationState
    imm_state: Any  # blackjax MassMatrixAdaptationState
    schedule: Int[Array, "warmup 2"]
    is_diagonal: bool = eqx.field(static=True)


def _blocks(is_diagonal: bool):
    return (
        mass_matrix_adaptation(is_diagonal),
        dual_averaging_adaptation(TARGET_ACCEPTANCE_RATE),
    )


def _as_arrays(tree, dtype):
    """Blackjax's adaptation states as arrays of the position's floating dtype.

    Their counters (the dual-averaging step, the Welford sample size) start as
    Python ints and only enter floating-point arithmetic, so they are stored as
    floats too: the state is then a pure, strongly typed array pytree (a loop
    carry, a checkpoint) without mixed integer/float arithmetic.
    """
    return jax.tree.map(lambda x: jnp.asarray(x, dtype), tree)


def window_init(
    position: ArrayTree,
    step_size: Float[Array, ""],
    inverse_mass_matrix: Float[Array, "..."],
    warmup: int,
    adapt_mass_matrix: bool = True,
) -> WindowAdaptationState:
    """Starts the adaptation from one chain's position (for its size).

    With `adapt_mass_matrix=False` the inverse mass matrix is kept as given and the
    whole warmup is one fast window: dual averaging of the step size only.
    """
    is_diagonal = inverse_mass_matrix.ndim == 1
    (mm_init, _, _), (da_init, _, _) = _blocks(is_diagonal)
    flat, _ = jax.flatten_util.ravel_pytree(position)
    imm_state = _as_arrays(mm_init(flat.size, inverse_mass_matrix), step_size.dtype)
    ss_state = _as_arrays(da_init(step_size), step_size.dtype)
    with jax.numpy_dtype_promotion("standard"):  # blackjax mixes bools and ints
        schedule = build_schedule(warmup)
    schedule = jnp.asarray(schedule, dtype=jnp.int32).reshape(warmup, 2)
    if not adapt_mass_matrix:  # no slow windows, no window ends
        schedule = jnp.zeros_like(schedule)
    return WindowAdaptationState(ss_state, imm_state, schedule, is_diagonal)


def window_update(
    state: WindowAdaptationState,
    step: Int[Array, ""],
    positions: ArrayTree,
    acceptance_rate: Float[Array, " chains"],
) -> tuple[WindowAdaptationState, Float[Array, ""], Float[Array, "..."]]:
    """Moves the shared adaptation one step after the chains have made a transition.

    **Arguments:**

    - `state`: the adaptation state.
    - `step`: the index of this warmup step (0-based).
    - `positions`: the chains' new positions, with a leading chain axis.
    - `acceptance_rate`: the chains' acceptance rates, shape `(K,)`.

    **Returns:**

    The new state, and the step size and inverse mass matrix for the next step.
    At the last warmup step these are the final, averaged values.
    """
    # With sharded chains: reduce them on every device in one device's order.
    positions, acceptance_rate = gathered((positions, acceptance_rate))
    return _update(state, step, positions, acceptance_rate)


def window_update_per_chain(
    state: WindowAdaptationState,
    step: Int[Array, ""],
    positions: ArrayTree,
    acceptance_rate: Float[Array, " chains"],
) -> tuple[WindowAdaptationState, Float[Array, " chains"], Float[Array, "chains ..."]]:
    """`window_update` of each chain's own state (every leaf of `state` has the
    chain axis first): K independent adaptations, each device its own chains."""

    def one(state_k, position_k, acceptance_rate_k):
        position_k = jax.tree.map(lambda x: x[None], position_k)
        return _update(state_k, step, position_k, acceptance_rate_k[None])

    return over_chains(one, state, positions, acceptance_rate)


def _update(state, step, positions, acceptance_rate):
    (_, mm_update, mm_final), (da_init, da_update, da_final) = _blocks(
        state.is_diagonal
    )
    stage, window_end = state.schedule[step, 0], state.schedule[step, 1]
    ss_state = da_update(state.ss_state, jnp.mean(acceptance_rate))

    def slow(imm_state):
        def one(i, s):
            return mm_update(s, jax.tree.map(lambda x: x[i], positions))

        num_chains = jax.tree.leaves(positions)[0].shape[0]
        return jax.lax.fori_loop(0, num_chains, one, imm_state)

    imm_state = jax.lax.cond(stage == 1, slow, lambda s: s, state.imm_state)

    def end_window(states):
        ss, imm = states
        dtype = ss.log_step_size.dtype
        return _as_arrays((da_init(da_final(ss)), mm_final(imm)), dtype)

    ss_state, imm_state = jax.lax.cond(
        window_end == 1, end_window, lambda s: s, (ss_state, imm_state)
    )
    state = eqx.tree_at(
        lambda s: (s.ss_state, s.imm_state), state, (ss_state, imm_state)
    )
    is_last = step == state.schedule.shape[0] - 1
    step_size = jnp.where(
        is_last, jnp.exp(ss_state.log_step_size_avg), jnp.exp(ss_state.log_step_size)
    )
    return state, step_size, imm_state.inverse_mass_matrix
