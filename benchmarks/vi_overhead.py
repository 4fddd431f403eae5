"""eqbayes variational fits against a hand-written blackjax `meanfield_vi` loop.

For each case, the eqbayes side is `eb.vi(...)` + `eb.Solver(loss).run(steps=...)`
(which also draws `posterior_draws` from the fitted q and builds the `Result`); the
blackjax side is what a careful blackjax user writes: the same initial state
(mean at the model's values, log σ = −3), a `lax.scan` of
`blackjax.meanfield_vi.step` (the same optax optimiser, the same number of
Monte-Carlo samples) stacking the ELBO of every step, then the same number of draws
from q, all in one `jax.jit`. Both sides evaluate the same log density (the same
loss and the same `eb.priors.gaussian` object) in float32.

Steady state: after one warm-up call per side and length, `reps` calls of each, all
interleaved (the order rotated), each with a new key, timed to
`jax.block_until_ready`; every side solves at two lengths (a fifth of `steps`, and
`steps`). The step time is the marginal cost of the longer solve's extra steps
(difference of the mean times over the difference of the steps), which leaves out
what each solve costs once (eqbayes: `init`'s checks, the posterior draws, building
the `Result`, a few milliseconds of Python). Reported: µs per step per side and
their ratio eqbayes / blackjax (wall and process CPU; target ≤ 1.10), the ratio of
the whole `steps`-long solves, and each side's fixed cost per solve.

    python benchmarks/vi_overhead.py            # full run
    python benchmarks/vi_overhead.py --quick    # fewer steps and repetitions
"""

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import blackjax
import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from blackjax.vi.meanfield_vi import MFVIState


sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import interleaved, per_step  # noqa: E402

import eqbayes as eb  # noqa: E402


TARGET = 1.10
NOISE_SD = 0.1
NUM_SAMPLES = 8
POSTERIOR_DRAWS = 500
INIT_LOG_STD = -3.0


class Coefficients(eqx.Module):
    a: jax.Array
    b: jax.Array


def sincos_loss(model: Coefficients, x, y):
    pred = model.a * jnp.sin(jnp.pi * x) + model.b * jnp.cos(jnp.pi * x)
    return jnp.mean((pred - y) ** 2)


def mlp_loss(model, x, y):
    return jnp.mean((jax.vmap(model)(x) - y) ** 2)


def case_config(case: str) -> dict[str, Any]:
    if case == "sincos_meanfield":
        x = jnp.linspace(0.0, 1.0, 101)
        noise = NOISE_SD * jax.random.normal(jax.random.key(0), x.shape)
        y = 3.14 * jnp.sin(jnp.pi * x) - 2.71 * jnp.cos(jnp.pi * x) + noise
        model = Coefficients(jnp.array(3.0), jnp.array(-2.5))
        return dict(x=x, y=y, model=model, loss=sincos_loss, prior_sigma=10.0)
    if case == "mlp_meanfield":
        x = jnp.linspace(-1.0, 1.0, 200)[:, None]
        noise = NOISE_SD * jax.random.normal(jax.random.key(1), x.shape)
        y = jnp.sin(3 * x) + noise
        model = eqx.nn.MLP(1, 1, 32, 2, activation=jnp.tanh, key=jax.random.key(2))
        return dict(x=x, y=y, model=model, loss=mlp_loss, prior_sigma=1.0)
    raise ValueError(f"unknown case {case!r}")


def build(case: str, side: str, steps: int) -> Callable[[jax.Array], Any]:
    c = case_config(case)
    x, y, loss = c["x"], c["y"], c["loss"]
    scale = x.shape[0] / (2 * NOISE_SD**2)
    prior = eb.priors.gaussian(c["prior_sigma"])
    optimizer = optax.adam(1e-2)

    if side == "eqbayes":
        model = eb.vi(
            c["model"],
            blackjax.meanfield_vi,
            optimizer=optimizer,
            num_samples=NUM_SAMPLES,
            posterior_draws=POSTERIOR_DRAWS,
            init_log_std=INIT_LOG_STD,
            likelihood_scale=scale,
            prior=prior,
            name="group",
        )
        solver = eb.Solver(loss, progress=False)
        return lambda key: solver.run(model, steps=steps, key=key, args=(x, y))

    if side == "blackjax":
        params, static = eqx.partition(c["model"], eqx.is_inexact_array)

        @jax.jit
        def run(key, params, x, y):
            def logdensity(p):
                return -scale * loss(eqx.combine(p, static), x, y) + prior(p)

            rho = jax.tree.map(lambda p: jnp.full_like(p, INIT_LOG_STD), params)
            state = MFVIState(params, rho, optimizer.init((params, rho)))

            def one_step(state, step_key):
                state, info = blackjax.meanfield_vi.step(
                    step_key, state, logdensity, optimizer, NUM_SAMPLES
                )
                return state, info.elbo

            fit_key, draw_key = jax.random.split(key)
            state, neg_elbo = jax.lax.scan(
                one_step, state, jax.random.split(fit_key, steps)
            )
            draws = blackjax.meanfield_vi.sample(draw_key, state, POSTERIOR_DRAWS)
            return state, neg_elbo, draws

        return lambda key: run(key, params, x, y)

    raise ValueError(f"unknown side {side!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--cases", nargs="+", default=["sincos_meanfield", "mlp_meanfield"]
    )
    args = parser.parse_args()
    steps = 1000 if args.quick else 5000
    short = steps // 5
    reps = 3 if args.quick else 10
    print(
        f"jax {jax.__version__}, blackjax {blackjax.__version__}, solves of {short} "
        f"and {steps} steps"
    )
    print(
        f"load average: {', '.join(f'{x:.2f}' for x in __import__('os').getloadavg())}"
    )
    failed = False
    sides = ["eqbayes", "blackjax"]
    for case in args.cases:
        runs = {
            (side, n): build(case, side, n) for side in sides for n in (short, steps)
        }
        walls, cpus = interleaved(runs, reps)
        step = per_step(walls, sides, (short, steps))
        step_cpu = per_step(cpus, sides, (short, steps))
        total = {k: sum(v) / reps for k, v in walls.items()}
        fixed = {side: total[side, short] - short * step[side] for side in sides}
        ratio = step["eqbayes"] / step["blackjax"]
        cpu_ratio = step_cpu["eqbayes"] / step_cpu["blackjax"]
        solve = total["eqbayes", steps] / total["blackjax", steps]
        ok = ratio <= TARGET or cpu_ratio <= TARGET
        failed |= not ok
        print(
            f"[{case}] µs/step: eqbayes {1e6 * step['eqbayes']:.2f}, blackjax "
            f"{1e6 * step['blackjax']:.2f}; step-time ratio wall {ratio:.3f}, cpu "
            f"{cpu_ratio:.3f} (target <= {TARGET}) {'ok' if ok else 'MISSED'}\n"
            f"    whole {steps}-step solve: eqbayes / blackjax {solve:.3f}; fixed cost "
            f"per solve (init, draws, result): eqbayes {1e3 * fixed['eqbayes']:.2f} "
            f"ms, blackjax {1e3 * fixed['blackjax']:.2f} ms"
        )
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
