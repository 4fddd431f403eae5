"""Stan's window adaptation, one solver step at a time.

Blackjax's `window_adaptation` runs the whole warmup in one `lax.scan`. eqbayes
needs it stepped: a group warms up inside the solver's step (so that several groups,
manual `Solver.step` loops and chunked runs all see the same sequence). This module
composes blackjax's own building blocks (dual averaging, Welford mass-matrix
estimation and Stan's schedule) into an `init / update` pair over a pytree state.

Three kinds of inverse mass matrix are estimated in the slow windows: `"diag"` and
`"dense"` (blackjax's Welford estimators of the draws' variances / covariance, with
Stan's regularisation) and `"low_rank"`, the Fisher-divergence estimate of Seyboldt,
Carlson & Carpenter (2026), as in nutpie: a diagonal `sigma` plus `max_rank`
directions `U` with scales `lam`, read from the draws *and* their log-density
gradients of each window. Unlike blackjax's `window_adaptation_low_rank`, the chains
are not moved to the estimated mean mu* = x̄ + σ²⊙ᾱ after warmup (see the guide
"Choosing and tuning a kernel", section "Which mass matrix", for why).

`window_update` takes the positions and acceptance rates of n chains: with n = K
(`adapt="pooled"`), the dual averaging sees the chains' mean acceptance rate and the
mass-matrix estimator sees every chain's position, the pooled estimate of one
adaptation sweep that the chains share; `adapt=True` runs one state per chain
(`window_update_per_chain`), as Stan and NumPyro do.
"""

import functools
from typing import Any

import equinox as eqx
import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
from blackjax.adaptation.mass_matrix import mass_matrix_adaptation
from blackjax.adaptation.metric_estimators import _compute_low_rank_metric
from blackjax.adaptation.staged_adaptation import build_schedule
from blackjax.adaptation.step_size import dual_averaging_adaptation
from blackjax.mcmc.metrics import LowRankInverseMassMatrix
from jaxtyping import Array, Float, Int

from ._custom_types import ArrayTree
from ._sharding import gathered, over_chains


TARGET_ACCEPTANCE_RATE = 0.8
# nutpie's settings of the low-rank estimate: the regularisation of the projected
# covariances and the band [1/cutoff, cutoff] of scales left at 1.
LOW_RANK_GAMMA = 1e-5
LOW_RANK_CUTOFF = 2.0


def metric_kind(inverse_mass_matrix) -> str:
    """`"diag"`, `"dense"` or `"low_rank"`: the kind of an inverse mass matrix."""
    if isinstance(inverse_mass_matrix, LowRankInverseMassMatrix):
        return "low_rank"
    return "diag" if jnp.ndim(inverse_mass_matrix) == 1 else "dense"


def low_rank_identity(d: int, max_rank: int, dtype) -> LowRankInverseMassMatrix:
    """The identity as a low-rank inverse mass matrix (sigma = 1, lam = 1)."""
    return LowRankInverseMassMatrix(
        sigma=jnp.ones(d, dtype),
        U=jnp.zeros((d, max_rank), dtype),
        lam=jnp.ones(max_rank, dtype),
    )


class LowRankWindowState(eqx.Module):
    """The low-rank estimate's window: the draws and gradients seen so far in the
    current slow window (rows `[0, count)` are valid), and the current metric."""

    draws: Float[Array, "buffer d"]
    grads: Float[Array, "buffer d"]
    count: Int[Array, ""]
    inverse_mass_matrix: LowRankInverseMassMatrix


class WindowAdaptationState(eqx.Module):
    """Step-size and mass-matrix adaptation of one group's chains (one state
    shared by the chains, or one per chain stacked on a leading chain axis)."""

    ss_state: Any  # blackjax DualAveragingAdaptationState
    imm_state: Any  # blackjax MassMatrixAdaptationState, or a LowRankWindowState
    schedule: Int[Array, "warmup 2"]
    kind: str = eqx.field(static=True)  # "diag", "dense" or "low_rank"


def _blocks(kind: str):
    return (
        mass_matrix_adaptation(kind == "diag"),
        dual_averaging_adaptation(TARGET_ACCEPTANCE_RATE),
    )


def _largest_slow_window(schedule) -> int:
    """The number of steps of the longest slow window of a Stan schedule."""
    longest = current = 0
    for stage, end in schedule:
        current = current + 1 if stage == 1 else 0
        longest = max(longest, current)
        if end:
            current = 0
    return max(longest, 1)


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
    inverse_mass_matrix: Float[Array, "..."] | LowRankInverseMassMatrix,
    warmup: int,
    adapt_mass_matrix: bool = True,
    rows_per_step: int = 1,
) -> WindowAdaptationState:
    """Starts the adaptation from one chain's position (for its size).

    With `adapt_mass_matrix=False` the inverse mass matrix is kept as given and the
    whole warmup is one fast window: dual averaging of the step size only.
    `rows_per_step` is the number of chains whose draws each update sees (K when
    pooled): the low-rank estimate keeps that many rows per step of a window.
    """
    kind = metric_kind(inverse_mass_matrix)
    (mm_init, _, _), (da_init, _, _) = _blocks(kind)
    flat, _ = jax.flatten_util.ravel_pytree(position)
    dtype = step_size.dtype
    with jax.numpy_dtype_promotion("standard"), jax.ensure_compile_time_eval():
        schedule = np.asarray(build_schedule(warmup))  # blackjax mixes bools and ints
    if isinstance(inverse_mass_matrix, LowRankInverseMassMatrix):
        rows = (
            rows_per_step * _largest_slow_window(schedule) if adapt_mass_matrix else 1
        )
        imm_state = LowRankWindowState(
            draws=jnp.zeros((rows, flat.size), dtype),
            grads=jnp.zeros((rows, flat.size), dtype),
            count=jnp.zeros((), jnp.int32),
            inverse_mass_matrix=inverse_mass_matrix,
        )
    else:
        imm_state = _as_arrays(mm_init(flat.size, inverse_mass_matrix), dtype)
    ss_state = _as_arrays(da_init(step_size), dtype)
    schedule = jnp.asarray(schedule, dtype=jnp.int32).reshape(warmup, 2)
    if not adapt_mass_matrix:  # no slow windows, no window ends
        schedule = jnp.zeros_like(schedule)
    return WindowAdaptationState(ss_state, imm_state, schedule, kind)


def window_update(
    state: WindowAdaptationState,
    step: Int[Array, ""],
    positions: ArrayTree,
    acceptance_rate: Float[Array, " chains"],
    gradients: ArrayTree | None = None,
) -> tuple[WindowAdaptationState, Float[Array, ""], Any]:
    """Moves the shared adaptation one step after the chains have made a transition.

    **Arguments:**

    - `state`: the adaptation state.
    - `step`: the index of this warmup step (0-based).
    - `positions`: the chains' new positions, with a leading chain axis.
    - `acceptance_rate`: the chains' acceptance rates, shape `(K,)`.
    - `gradients`: the log-density gradients at `positions` (the low-rank
        estimate reads them; None for the others).

    **Returns:**

    The new state, and the step size and inverse mass matrix for the next step.
    At the last warmup step these are the final, averaged values.
    """
    # With sharded chains: reduce them on every device in one device's order.
    positions, acceptance_rate, gradients = gathered(
        (positions, acceptance_rate, gradients)
    )
    return _update(state, step, positions, acceptance_rate, gradients)


def window_update_per_chain(
    state: WindowAdaptationState,
    step: Int[Array, ""],
    positions: ArrayTree,
    acceptance_rate: Float[Array, " chains"],
    gradients: ArrayTree | None = None,
) -> tuple[WindowAdaptationState, Float[Array, " chains"], Any]:
    """`window_update` of each chain's own state (every leaf of `state` has the
    chain axis first): K independent adaptations, each device its own chains."""

    # Every chain follows the same schedule: read outside the vmap, the window
    # flags stay unbatched, so that `lax.cond` runs the slow-window and window-end
    # branches only when they apply (batched, it would run both every step; for
    # the low-rank estimate that is an SVD per step).
    flags = state.schedule[0, step]

    def one(state_k, position_k, acceptance_rate_k, gradient_k):
        position_k, gradient_k = jax.tree.map(
            lambda x: x[None], (position_k, gradient_k)
        )
        return _update(
            state_k, step, position_k, acceptance_rate_k[None], gradient_k, flags
        )

    return over_chains(one, state, positions, acceptance_rate, gradients)


def _low_rank_blocks(max_rank: int):
    """`(update, final)` of the low-rank estimate over a `LowRankWindowState`."""

    def update(s: LowRankWindowState, positions, gradients) -> LowRankWindowState:
        flat = jax.vmap(lambda x: jax.flatten_util.ravel_pytree(x)[0])
        x, g = flat(positions), flat(gradients)
        draws = jax.lax.dynamic_update_slice(
            s.draws, x.astype(s.draws.dtype), (s.count, jnp.zeros((), s.count.dtype))
        )
        grads = jax.lax.dynamic_update_slice(
            s.grads, g.astype(s.grads.dtype), (s.count, jnp.zeros((), s.count.dtype))
        )
        return LowRankWindowState(
            draws,
            grads,
            s.count + jnp.asarray(x.shape[0], s.count.dtype),
            s.inverse_mass_matrix,
        )

    def final(s: LowRankWindowState) -> LowRankWindowState:
        sigma, _, u, lam = _compute_low_rank_metric(
            s.draws,
            s.grads,
            s.count,  # pyright: ignore[reportArgumentType]  (a traced count)
            max_rank,
            LOW_RANK_GAMMA,
            LOW_RANK_CUTOFF,
        )
        imm = LowRankInverseMassMatrix(sigma, u, lam)
        return LowRankWindowState(
            jnp.zeros_like(s.draws),
            jnp.zeros_like(s.grads),
            jnp.zeros_like(s.count),
            imm,
        )

    return update, final


def _welford_slow(mm_update, imm_state, *, positions):
    """blackjax's Welford update with each chain's position in turn."""

    def one(i, s):
        return mm_update(s, jax.tree.map(lambda x: x[i], positions))

    num_chains = jax.tree.leaves(positions)[0].shape[0]
    return jax.lax.fori_loop(0, num_chains, one, imm_state)


def _welford_final(mm_final, imm_state, *, dtype):
    return _as_arrays(mm_final(imm_state), dtype)


def _update(state, step, positions, acceptance_rate, gradients=None, flags=None):
    (_, mm_update, mm_final), (da_init, da_update, da_final) = _blocks(state.kind)
    stage, window_end = state.schedule[step] if flags is None else flags
    ss_state = da_update(state.ss_state, jnp.mean(acceptance_rate))

    if state.kind == "low_rank":
        max_rank = state.imm_state.inverse_mass_matrix.lam.shape[-1]
        lr_update, end_metric = _low_rank_blocks(max_rank)
        slow = functools.partial(lr_update, positions=positions, gradients=gradients)
    else:
        dtype = ss_state.log_step_size.dtype
        slow = functools.partial(_welford_slow, mm_update, positions=positions)
        end_metric = functools.partial(_welford_final, mm_final, dtype=dtype)

    imm_state = jax.lax.cond(stage == 1, slow, lambda s: s, state.imm_state)

    def end_window(states):
        ss, imm = states
        dtype = ss.log_step_size.dtype
        return _as_arrays(da_init(da_final(ss)), dtype), end_metric(imm)

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
