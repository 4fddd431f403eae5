"""Time to R-hat < 1.01 with and without each log-density-aware initializer.

For each case and each initializer (none, pathfinder, Laplace, SVGD) it runs an
eqbayes solve with 4 chains and window adaptation (`adapt=True`), and reports how
long it takes until the rank-normalised split R-hat (`eb.rhat`) of every monitored
quantity, computed on the draws kept so far, is below 1.01:

    time to target = t(init + initializer + warmup) + n* x (time per kept draw)

where n* is the smallest number of kept draws (on a grid of 25) at which the R-hat
target holds. `t(init + initializer + warmup)` is the steady-state time of a solve
with the same warmup and a single kept draw; the time per draw is the steady-state
time of the full solve minus that, divided by the remaining draws. Steady state:
each solve is compiled by a first call, then timed on a second call with a new key
(wall and process CPU time; the CPU time counts all threads and is less sensitive to
other processes). Chains start at the model's values plus `init_jitter` N(0, 1)
without an initializer (the jitter over-disperses them); an initializer replaces
both.

Cases:

- `bnn`: the Bayesian MLP of `benchmarks/overhead.py` (`eqx.nn.MLP(1, 1, 32, 2)`, tanh,
  200 points of y = sin(3x) + N(0, 0.1²), prior N(0, 1), HMC with 16 integration
  steps). Its weights are not identifiable (hidden units can be permuted), so R-hat
  is monitored on the posterior predictive mean at 20 inputs in [-1, 1].
- `kidiq`: posteriordb's `kidiq-kidscore_momiq` (NUTS, float64), a linear
  regression whose posterior (intercept ≈ 26, slope ≈ 0.6, sigma ≈ 18) is far from
  the starting point 0 and strongly correlated; R-hat on the three parameters.

    python benchmarks/initializers.py                 # both cases
    python benchmarks/initializers.py --cases kidiq   # one
"""

import argparse
import contextlib
import os
import sys
import time
from pathlib import Path

import blackjax
import jax
import jax.numpy as jnp
import numpy as np


_HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(_HERE))
sys.path.insert(0, str(_HERE.parent / "tests"))
import posteriordb_models as pdb  # noqa: E402
from overhead import mlp_data, mlp_loss, mlp_model, NOISE_SD  # noqa: E402

import eqbayes as eb  # noqa: E402


RHAT_TARGET = 1.01
GRID = 25
NUM_CHAINS = 4


def initializers():
    return {
        "none": None,
        "pathfinder": eb.initializers.pathfinder(),
        "laplace": eb.initializers.laplace(),
        "svgd": eb.initializers.svgd(),
    }


def bnn_case(warmup, keep):
    x, y = mlp_data()
    grid = jnp.linspace(-1.0, 1.0, 20)[:, None]

    def build(init, keep):
        return eb.bayesian(
            mlp_model(),
            blackjax.hmc,
            num_integration_steps=16,
            prior=eb.priors.gaussian(1.0),
            warmup=warmup,
            keep=keep,
            num_chains=NUM_CHAINS,
            init_jitter=0.1,
            likelihood_scale=x.shape[0] / (2 * NOISE_SD**2),
            init=init,
            name="mlp",
        )

    def monitored(result):
        # (K, N, 20): the predictive mean at the grid, per draw.
        return result.posterior.predict(lambda m: jax.vmap(m)(grid)[:, 0])

    return build, eb.Solver(mlp_loss, progress=False), (x, y), monitored


def kidiq_case(warmup, keep):
    name = "kidiq-kidscore_momiq"
    post = pdb.POSTERIORS[name]
    data = pdb.load_data(name)

    def flat_prior(position):
        return jnp.zeros((), jnp.float64)

    def build(init, keep):
        return eb.bayesian(
            post.init(data),
            blackjax.nuts,
            prior=flat_prior,
            warmup=warmup,
            keep=keep,
            num_chains=NUM_CHAINS,
            init_jitter=1.0,
            init=init,
            name="kidiq",
        )

    def loss(model, data):
        return -post.log_density(model, data)

    def monitored(result):
        return post.flatten(result.posterior.samples)

    return build, eb.Solver(loss, progress=False), (data,), monitored


CASES = {"bnn": bnn_case, "kidiq": kidiq_case}


def _timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    out = jax.block_until_ready(fn())
    return out, time.perf_counter() - wall, time.process_time() - cpu


def draws_to_target(quantities) -> int | None:
    """The smallest n on the grid with max R-hat(first n draws) < the target."""
    quantities = np.asarray(quantities)
    k, n = quantities.shape[:2]
    flat = quantities.reshape(k, n, -1)
    for m in range(GRID, n + 1, GRID):
        if float(np.max(np.asarray(eb.rhat(flat[:, :m])))) < RHAT_TARGET:
            return m
    return None


def run_case(case, warmup, keep, seed):
    build, solver, args, monitored = CASES[case](warmup, keep)
    rows = []
    for label, init in initializers().items():
        full, prefix = build(init, keep), build(init, 1)
        keys = jax.random.split(jax.random.fold_in(jax.random.key(seed), 1), 2)

        def solve(model, key):
            return solver.run(model, key=key, args=args)

        solve(prefix, keys[0])  # compile
        _, t_prefix, c_prefix = _timed(lambda: solve(prefix, keys[1]))
        solve(full, keys[0])  # compile
        result, t_full, c_full = _timed(lambda: solve(full, keys[1]))
        per_draw, cpu_per_draw = (
            (t_full - t_prefix) / (keep - 1),
            (c_full - c_prefix) / (keep - 1),
        )
        n = draws_to_target(monitored(result))
        rhat_all = float(np.max(np.asarray(eb.rhat(np.asarray(monitored(result))))))
        if n is None:
            to_target = cpu_to_target = None
        else:
            to_target = t_prefix + n * per_draw
            cpu_to_target = c_prefix + n * cpu_per_draw
        rows.append(
            (
                label,
                t_prefix,
                c_prefix,
                per_draw * 1e3,
                n,
                to_target,
                cpu_to_target,
                rhat_all,
            )
        )
        print(
            f"  {case} {label}: warmup-part {t_prefix:.2f} s, {per_draw * 1e3:.2f} "
            f"ms/draw, n* = {n}, max R-hat over all {keep} draws {rhat_all:.4f}",
            flush=True,
        )
    return rows


def print_table(case, warmup, keep, rows):
    print()
    print(
        f"### {case}: {NUM_CHAINS} chains, adapt=True, warmup {warmup}, up to {keep} "
        f"draws; target max R-hat < {RHAT_TARGET}"
    )
    print()
    print(
        "| initializer | init + initializer + warmup (s, wall / cpu) | per draw (ms) "
        "| draws to target | time to target (s, wall / cpu) | max R-hat, all draws |"
    )
    print("|---|---|---|---|---|---|")
    for label, t_prefix, c_prefix, ms, n, to_target, cpu_to, rhat_all in rows:
        target = (
            f"not within {keep} draws"
            if to_target is None
            else f"{to_target:.2f} / {cpu_to:.2f}"
        )
        print(
            f"| {label} | {t_prefix:.2f} / {c_prefix:.2f} | {ms:.2f} | "
            f"{n if n is not None else '> ' + str(keep)} | {target} | "
            f"{rhat_all:.4f} |"
        )
    print(flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--keep", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(
        f"jax {jax.__version__} on {jax.devices()[0].platform}, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    for case in args.cases:
        x64 = case == "kidiq"
        precision = jax.enable_x64(True) if x64 else contextlib.nullcontext()
        with precision:
            rows = run_case(case, args.warmup, args.keep, args.seed)
        print_table(case, args.warmup, args.keep, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
