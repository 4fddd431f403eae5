"""Hand-written blackjax baselines: window adaptation, then a `lax.scan` of the kernel.

This is what a careful blackjax user writes by hand, and what eqbayes is measured
against. Everything (adaptation and sampling, all chains) is one `jax.jit` program.
The log density takes the data as arguments, `logdensity_fn(position, *args)`, so the
data are runtime inputs of the compiled program (as they are for `Solver.run(args=)`).
"""

import functools
from collections.abc import Callable
from typing import Any

import blackjax
import jax
import jax.numpy as jnp
from blackjax.adaptation.base import get_filter_adapt_info_fn


#: The kernel diagnostics kept per draw (eqbayes keeps the same ones for NUTS/HMC).
INFO_FIELDS = ("is_divergent", "acceptance_rate", "energy", "num_integration_steps")


def _keep_info(info: Any) -> dict[str, jax.Array]:
    return {f: getattr(info, f) for f in INFO_FIELDS if hasattr(info, f)}


def _adapt(kernel, logdensity_fn, key, position, warmup, kernel_kwargs, diagonal):
    adaptation = blackjax.window_adaptation(
        kernel,
        logdensity_fn,
        is_mass_matrix_diagonal=diagonal,
        adaptation_info_fn=get_filter_adapt_info_fn(),  # keep no warmup trace
        **kernel_kwargs,
    )
    (state, parameters), _ = adaptation.run(key, position, num_steps=warmup)
    # Only the arrays: static kwargs (`num_integration_steps`) stay Python values.
    return state, parameters["step_size"], parameters["inverse_mass_matrix"]


def make_single_chain(
    kernel: Any,
    logdensity_fn: Callable[..., jax.Array],
    *,
    warmup: int,
    keep: int,
    diagonal: bool = True,
    **kernel_kwargs: Any,
) -> Callable[..., tuple[Any, dict[str, jax.Array]]]:
    """`run(key, position, *args) -> (positions (keep, ...), info (keep,))`, one chain.

    `blackjax.window_adaptation(kernel, logdensity_fn).run(key, position, warmup)`,
    then a `lax.scan` of `kernel(logdensity_fn, step_size, imm).step` over `keep`
    steps, stacking the positions and the kept info fields. `diagonal=False` adapts
    a dense inverse mass matrix.
    """

    def run(key, position, *args):
        logdensity = lambda p: logdensity_fn(p, *args)
        warmup_key, sample_key = jax.random.split(key)
        state, step_size, imm = _adapt(
            kernel, logdensity, warmup_key, position, warmup, kernel_kwargs, diagonal
        )
        step = kernel(logdensity, step_size, imm, **kernel_kwargs).step

        def one_step(state, step_key):
            state, info = step(step_key, state)
            return state, (state.position, _keep_info(info))

        _, (positions, info) = jax.lax.scan(
            one_step, state, jax.random.split(sample_key, keep)
        )
        return positions, info

    return jax.jit(run)


def make_multi_chain(
    kernel: Any,
    logdensity_fn: Callable[..., jax.Array],
    *,
    num_chains: int,
    warmup: int,
    keep: int,
    diagonal: bool = True,
    **kernel_kwargs: Any,
) -> Callable[..., tuple[Any, dict[str, jax.Array]]]:
    """`run(key, positions, *args) -> (positions (K, keep, ...), info (K, keep))`.

    `positions` carries a leading chain axis `K`. The window adaptation is `jax.vmap`-ed
    over the K chains (each chain adapts its own step size and mass matrix), then a
    `lax.scan` of the `jax.vmap`-ed kernel step samples all chains.
    """

    def run(key, positions, *args):
        logdensity = lambda p: logdensity_fn(p, *args)
        warmup_key, sample_key = jax.random.split(key)
        adapt = functools.partial(
            _adapt,
            kernel,
            logdensity,
            warmup=warmup,
            kernel_kwargs=kernel_kwargs,
            diagonal=diagonal,
        )
        states, step_sizes, imms = jax.vmap(adapt)(
            jax.random.split(warmup_key, num_chains), positions
        )

        def step_one(step_key, state, step_size, imm):
            algorithm = kernel(logdensity, step_size, imm, **kernel_kwargs)
            return algorithm.step(step_key, state)

        def one_step(states, step_key):
            keys = jax.random.split(step_key, num_chains)
            states, info = jax.vmap(step_one)(keys, states, step_sizes, imms)
            return states, (states.position, _keep_info(info))

        _, (positions, info) = jax.lax.scan(
            one_step, states, jax.random.split(sample_key, keep)
        )
        # (keep, K, ...) -> (K, keep, ...), the ArviZ (chain, draw) layout.
        swap = lambda x: jnp.swapaxes(x, 0, 1)
        return jax.tree.map(swap, positions), jax.tree.map(swap, info)

    return jax.jit(run)
