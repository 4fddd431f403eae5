"""eqbayes against hand-written blackjax (and NumPyro, for context).

Runs each case with eqbayes (`eb.bayesian` + `eb.Solver.run`) and with the hand-written
blackjax program of `benchmarks/_handwritten.py` (window adaptation, then a `lax.scan`
of the kernel, all in one `jax.jit`) on the same data, model and settings, and prints
the time ratio eqbayes / blackjax:

- steady state: second and later calls in this process, the two sides interleaved
  (alternating which goes first), `jax.block_until_ready` on the whole result, a new
  key each repetition; the ratio of the total times over the repetitions;
- first call (tracing + compilation + run, plus building the sampler): each
  measurement in a fresh subprocess, the two sides interleaved; the median ratio.

Cases: (a) the sin/cos inverse problem with NUTS, 1 chain; (b) the same with 4 chains;
(c) a Bayesian MLP with HMC (16 integration steps), 1 chain. NumPyro NUTS on (a) is
timed too, for context. Targets: steady ratio <= 1.05, first-call ratio <= 1.5.

    python benchmarks/overhead.py            # full run (several minutes on 2 cores)
    python benchmarks/overhead.py --quick    # reduced sizes and repetitions
"""

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import blackjax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np


sys.path.insert(0, str(Path(__file__).resolve().parent))
from _handwritten import make_multi_chain, make_single_chain  # noqa: E402

import eqbayes as eb  # noqa: E402


STEADY_TARGET = 1.05
FIRST_CALL_TARGET = 1.5
NOISE_SD = 0.1
CASES = ("sincos_nuts_1chain", "sincos_nuts_4chains", "mlp_hmc_1chain")


@dataclasses.dataclass(frozen=True)
class Settings:
    sincos_warmup: int = 500
    sincos_keep: int = 5000
    mlp_warmup: int = 500
    mlp_keep: int = 1000
    reps: int = 10
    first_reps: int = 3


FULL = Settings()
QUICK = Settings(
    sincos_warmup=200,
    sincos_keep=1000,
    mlp_warmup=200,
    mlp_keep=200,
    reps=3,
    first_reps=1,
)


# --------------------------------------------------------------------------------------
# Problems
# --------------------------------------------------------------------------------------


class Coefficients(eqx.Module):
    a: jax.Array
    b: jax.Array


def sincos_data():
    x = jnp.linspace(0.0, 1.0, 101)
    noise = NOISE_SD * jax.random.normal(jax.random.key(0), x.shape)
    y = 3.14 * jnp.sin(jnp.pi * x) - 2.71 * jnp.cos(jnp.pi * x) + noise
    return x, y


def sincos_loss(model: Coefficients, x, y):
    pred = model.a * jnp.sin(jnp.pi * x) + model.b * jnp.cos(jnp.pi * x)
    return jnp.mean((pred - y) ** 2)


def mlp_data():
    x = jnp.linspace(-1.0, 1.0, 200)[:, None]
    y = jnp.sin(3.0 * x) + NOISE_SD * jax.random.normal(jax.random.key(1), x.shape)
    return x, y


def mlp_model():
    return eqx.nn.MLP(1, 1, 32, 2, activation=jnp.tanh, key=jax.random.key(2))


def mlp_loss(model, x, y):
    return jnp.mean((jax.vmap(model)(x) - y) ** 2)


# --------------------------------------------------------------------------------------
# The two (three) sides of each case: `build(case, side, settings)` returns `run(key)`
# --------------------------------------------------------------------------------------


def _case_config(case: str, s: Settings):
    if case.startswith("sincos"):
        x, y = sincos_data()
        model = Coefficients(a=jnp.zeros(()), b=jnp.zeros(()))
        return dict(
            x=x,
            y=y,
            model=model,
            loss=sincos_loss,
            kernel=blackjax.nuts,
            kernel_kwargs={},
            metric="dense",  # what eqbayes's metric="auto" picks for 2 components
            prior_sigma=10.0,
            warmup=s.sincos_warmup,
            keep=s.sincos_keep,
            num_chains=4 if case.endswith("4chains") else 1,
        )
    if case == "mlp_hmc_1chain":
        x, y = mlp_data()
        return dict(
            x=x,
            y=y,
            model=mlp_model(),
            loss=mlp_loss,
            kernel=blackjax.hmc,
            kernel_kwargs={"num_integration_steps": 16},
            # eqbayes's "auto" would pick its low-rank metric for the 1153 weights;
            # blackjax's own low-rank warmup is another algorithm, so both sides
            # adapt a diagonal one here.
            metric="diag",
            prior_sigma=1.0,
            warmup=s.mlp_warmup,
            keep=s.mlp_keep,
            num_chains=1,
        )
    raise ValueError(f"unknown case {case!r}")


def build(case: str, side: str, s: Settings) -> Callable[[jax.Array], Any]:
    c = _case_config(case, s)
    x, y = c["x"], c["y"]
    scale = x.shape[0] / (2 * NOISE_SD**2)

    if side == "eqbayes":
        model = eb.bayesian(
            c["model"],
            c["kernel"],
            prior=eb.priors.gaussian(c["prior_sigma"]),
            warmup=c["warmup"],
            keep=c["keep"],
            num_chains=c["num_chains"],
            likelihood_scale=scale,
            name="group",
            # The same algorithm as the hand-written side: each chain adapted on
            # its own (eqbayes's default), and no step-size jitter (on by default
            # for fixed-length HMC, absent from the hand-written program).
            adapt=True,
            step_size_jitter=0.0,
            metric=c["metric"],
            **c["kernel_kwargs"],
        )
        solver = eb.Solver(c["loss"], progress=False)
        return lambda key: solver.run(model, key=key, args=(x, y))

    if side == "blackjax":
        params, static = eqx.partition(c["model"], eqx.is_inexact_array)
        # The same prior object as the eqbayes side: both sides then evaluate the
        # same log density, and the ratio measures eqbayes's machinery alone.
        log_prior = eb.priors.gaussian(c["prior_sigma"])
        loss = c["loss"]

        def logdensity(p, x, y):
            return -scale * loss(eqx.combine(p, static), x, y) + log_prior(p)

        common = dict(
            warmup=c["warmup"],
            keep=c["keep"],
            diagonal=c["metric"] == "diag",
            **c["kernel_kwargs"],
        )
        if c["num_chains"] == 1:
            run = make_single_chain(c["kernel"], logdensity, **common)
            return lambda key: run(key, params, x, y)
        k = c["num_chains"]
        run = make_multi_chain(c["kernel"], logdensity, num_chains=k, **common)
        positions = jax.tree.map(
            lambda leaf: jnp.broadcast_to(leaf, (k, *leaf.shape)), params
        )
        return lambda key: run(key, positions, x, y)

    if side == "numpyro" and case == "sincos_nuts_1chain":
        import numpyro
        import numpyro.distributions as dist
        from numpyro.infer import MCMC, NUTS

        def numpyro_model(x, y):
            a = numpyro.sample("a", dist.Normal(0.0, 10.0))
            b = numpyro.sample("b", dist.Normal(0.0, 10.0))
            mean = a * jnp.sin(jnp.pi * x) + b * jnp.cos(jnp.pi * x)
            numpyro.sample("y", dist.Normal(mean, NOISE_SD), obs=y)

        mcmc = MCMC(
            NUTS(numpyro_model),
            num_warmup=c["warmup"],
            num_samples=c["keep"],
            progress_bar=False,
            jit_model_args=True,
        )

        def run_numpyro(key):
            mcmc.run(key, x, y, extra_fields=("num_steps", "diverging", "accept_prob"))
            return mcmc.get_samples(), mcmc.get_extra_fields()

        return run_numpyro

    raise ValueError(f"unknown side {side!r} for case {case!r}")


@dataclasses.dataclass(frozen=True)
class Timing:
    """Wall-clock and process CPU seconds of one call.

    CPU time (all threads of this process) is far less sensitive than wall time to
    other processes competing for the cores, so both are reported.
    """

    wall: float
    cpu: float


def _time(run: Callable[[jax.Array], Any], key: jax.Array) -> tuple[Timing, Any]:
    wall, cpu = time.perf_counter(), time.process_time()
    out = jax.block_until_ready(run(key))
    return Timing(time.perf_counter() - wall, time.process_time() - cpu), out


# --------------------------------------------------------------------------------------
# Sanity: both sides sample the same posterior with comparable work per draw
# --------------------------------------------------------------------------------------


def summarise(side: str, out: Any) -> dict[str, Any]:
    """Shape and mean of the first sampled leaf, mean acceptance and steps per draw."""
    if side == "eqbayes":
        leaves = jax.tree.leaves(out.posterior.samples)
        info = out.posterior.diagnostics["group"]
        acceptance = info.acceptance_rate
        steps = getattr(info, "num_integration_steps", None)
    elif side == "blackjax":
        leaves = jax.tree.leaves(out[0])
        acceptance = out[1]["acceptance_rate"]
        steps = out[1].get("num_integration_steps")
    else:
        leaves = [out[0]["a"], out[0]["b"]]
        acceptance = out[1]["accept_prob"]
        steps = out[1]["num_steps"]
    first = np.asarray(leaves[0])
    return {
        "shape": tuple(first.shape),
        "mean": float(first.mean()),
        "acceptance": float(np.mean(acceptance)),
        "steps": float(np.mean(steps)) if steps is not None else float("nan"),
    }


# --------------------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------------------


def steady_state(case: str, sides: tuple[str, ...], s: Settings) -> dict[str, Any]:
    """Interleaved repeated calls in this process (after one warm-up call each).

    Returns per side the `Timing` of each timed call and the mean integration steps
    per kept draw of that call (the work, which depends on the adapted step size).
    """
    runs = {}
    summaries = {}
    for side in sides:
        try:
            runs[side] = build(case, side, s)
            _, out = _time(runs[side], jax.random.key(100))
        except Exception as e:
            raise RuntimeError(f"{side} side: {type(e).__name__}: {e}") from e
        summaries[side] = summarise(side, out)
        del out
    times: dict[str, list[Timing]] = {side: [] for side in sides}
    steps: dict[str, list[float]] = {side: [] for side in sides}
    for rep in range(s.reps):
        order = sides if rep % 2 == 0 else sides[::-1]
        for side in order:
            timing, out = _time(runs[side], jax.random.key(101 + rep))
            times[side].append(timing)
            steps[side].append(summarise(side, out)["steps"])
            del out
    return {"times": times, "steps": steps, "summaries": summaries}


def first_call_subprocess(case: str, side: str, quick: bool) -> Timing:
    """Builds and runs once in a fresh interpreter; returns that call's timing."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--first-call", case, side]
    if quick:
        cmd.append("--quick")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
    if proc.returncode != 0:
        raise RuntimeError(
            f"first-call subprocess `{' '.join(cmd)}` failed:\n{proc.stderr[-3000:]}"
        )
    return Timing(**json.loads(proc.stdout.strip().splitlines()[-1]))


def first_call(case: str, sides: tuple[str, ...], s: Settings, quick: bool):
    """`s.first_reps` fresh-subprocess first calls per side, sides interleaved."""
    times: dict[str, list[Timing]] = {side: [] for side in sides}
    for rep in range(s.first_reps):
        order = sides if rep % 2 == 0 else sides[::-1]
        for side in order:
            times[side].append(first_call_subprocess(case, side, quick))
    return times


def _first_call_child(case: str, side: str, s: Settings) -> None:
    key = jax.random.key(100)
    timing, _ = _time(lambda k: build(case, side, s)(k), key)
    print(json.dumps(dataclasses.asdict(timing)))


def _median_ratio(num: list[float], den: list[float]) -> float:
    return statistics.median(a / b for a, b in zip(num, den))


def _total_ratio(num: list[float], den: list[float]) -> float:
    """Total over the reps. Each rep uses a new key, and the step size that the
    adaptation finds (hence the work per draw) varies with the key independently on
    each side: summing over keys averages that out, a median of pairs does not."""
    return sum(num) / sum(den)


def _fmt(x: float | None, width: int, spec: str = ".3f") -> str:
    return format("n/a" if x is None else format(x, spec), f">{width}s")


# --------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------


def _show(timings: list[Timing]) -> str:
    return ", ".join(f"{t.wall:.3f} ({t.cpu:.3f})" for t in timings)


def run_case(case: str, args: argparse.Namespace, s: Settings) -> dict[str, Any]:
    sides: tuple[str, ...] = ("eqbayes", "blackjax")
    if case == "sincos_nuts_1chain" and not args.no_numpyro:
        sides = (*sides, "numpyro")
    print(f"[{case}] steady state ({s.reps} interleaved reps) ...", flush=True)
    steady = steady_state(case, sides, s)
    for side in sides:
        print(f"  {side:9s} steady s, wall (cpu): {_show(steady['times'][side])}")
        print(f"  {'':9s} warm-up call: {steady['summaries'][side]}")
    first = None
    if not args.no_first_call:
        print(
            f"[{case}] first call ({s.first_reps} interleaved subprocess reps) ...",
            flush=True,
        )
        first = first_call(case, sides, s, args.quick)
        for side in sides:
            print(f"  {side:9s} first-call s, wall (cpu): {_show(first[side])}")
    print(flush=True)

    t, w = steady["times"], steady["steps"]

    def ratios(side: str) -> dict[str, Any]:
        wall = [x.wall for x in t[side]]
        cpu = [x.cpu for x in t[side]]
        bj_wall = [x.wall for x in t["blackjax"]]
        bj_cpu = [x.cpu for x in t["blackjax"]]
        cpu_per_step = [c / n for c, n in zip(cpu, w[side])]
        bj_cpu_per_step = [c / n for c, n in zip(bj_cpu, w["blackjax"])]
        out = {
            "steady": statistics.median(wall),
            "ratio": _total_ratio(wall, bj_wall),
            "cpu_ratio": _total_ratio(cpu, bj_cpu),
            "work_ratio": _median_ratio(cpu_per_step, bj_cpu_per_step),
            "steps": statistics.median(w[side]),
            "first": None,
            "first_ratio": None,
            "first_cpu_ratio": None,
        }
        if first:
            f_wall = [x.wall for x in first[side]]
            f_cpu = [x.cpu for x in first[side]]
            out["first"] = statistics.median(f_wall)
            out["first_ratio"] = _median_ratio(
                f_wall, [x.wall for x in first["blackjax"]]
            )
            out["first_cpu_ratio"] = _median_ratio(
                f_cpu, [x.cpu for x in first["blackjax"]]
            )
        return out

    return {side: ratios(side) for side in sides}


def _verdict(ratio: float | None, target: float) -> str:
    return "n/a" if ratio is None else "ok" if ratio <= target else "MISS"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="reduced sizes and reps")
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    parser.add_argument("--no-numpyro", action="store_true", help="skip NumPyro")
    parser.add_argument("--no-first-call", action="store_true", help="steady only")
    parser.add_argument(
        "--first-call", nargs=2, metavar=("CASE", "SIDE"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    s = QUICK if args.quick else FULL

    if args.first_call:
        _first_call_child(*args.first_call, s)
        return

    print(f"eqbayes overhead benchmark ({'quick' if args.quick else 'full'})")
    print(
        f"jax {jax.__version__} on {jax.devices()[0].platform} "
        f"({os.cpu_count()} CPUs), blackjax {blackjax.__version__}, "
        f"eqbayes {eb.__version__}; load average {os.getloadavg()[0]:.2f}"
    )
    print(f"settings: {s}")
    print()

    results: dict[str, dict[str, Any] | str] = {}
    for case in args.cases:
        try:
            results[case] = run_case(case, args, s)
        except Exception as e:  # report and go on with the other cases
            lines = [line for line in str(e).splitlines() if line.strip()]
            message = " ".join(lines[:3])[:400]
            print(f"  FAILED: {message}\n", flush=True)
            results[case] = message

    print(
        f"Targets: steady ratio <= {STEADY_TARGET}, first-call ratio <= "
        f"{FIRST_CALL_TARGET}. ratio = eqbayes / hand-written blackjax, total over the "
        "interleaved reps (first call: median of pairs), on wall time and on "
        "process CPU time (less sensitive to other load); work-norm = CPU ratio "
        "per integration step of the kept draws."
    )
    header = (
        f"{'case':20s} {'eqbayes s':>9s} {'blackjax s':>10s} {'ratio':>6s} "
        f"{'cpu':>6s} {'work':>6s} {'steps/draw eq|bj':>16s} "
        f"{'1st eqbayes s':>13s} {'1st blackjax s':>14s} {'1st ratio':>9s} "
        f"{'1st cpu':>7s}  verdict wall; cpu"
    )
    print(header)
    print("-" * len(header))
    for case, r in results.items():
        if isinstance(r, str):
            print(f"{case:20s} FAILED: {r}")
            continue
        eq, bj = r["eqbayes"], r["blackjax"]
        verdict = (
            f"steady {_verdict(eq['ratio'], STEADY_TARGET)}, first "
            f"{_verdict(eq['first_ratio'], FIRST_CALL_TARGET)}; steady "
            f"{_verdict(eq['cpu_ratio'], STEADY_TARGET)}, first "
            f"{_verdict(eq['first_cpu_ratio'], FIRST_CALL_TARGET)}"
        )
        steps = f"{eq['steps']:.2f}|{bj['steps']:.2f}"
        print(
            f"{case:20s} {_fmt(eq['steady'], 9)} {_fmt(bj['steady'], 10)} "
            f"{_fmt(eq['ratio'], 6)} {_fmt(eq['cpu_ratio'], 6)} "
            f"{_fmt(eq['work_ratio'], 6)} {steps:>16s} {_fmt(eq['first'], 13)} "
            f"{_fmt(bj['first'], 14)} {_fmt(eq['first_ratio'], 9)} "
            f"{_fmt(eq['first_cpu_ratio'], 7)}  {verdict}"
        )
    for case, r in results.items():
        if isinstance(r, str) or "numpyro" not in r:
            continue
        n = r["numpyro"]
        print()
        print(
            f"Context, {case}: NumPyro NUTS steady {n['steady']:.3f} s (ratio to "
            f"blackjax {n['ratio']:.2f}, {n['steps']:.2f} steps/draw), first call "
            f"{_fmt(n['first'], 0)} s (ratio {_fmt(n['first_ratio'], 0, '.2f')}). "
            "NumPyro's `MCMC.run` re-traces and re-compiles its sampling loop on "
            "every call, so its steady figure includes a compilation."
        )


if __name__ == "__main__":
    main()
