"""eqbayes's NUTS defaults against NumPyro's: effective samples per gradient and per
second on posteriordb posteriors, and the mass matrices on a Bayesian network.

For each posteriordb posterior whose data is in the posteriordb data directory
(`tests/posteriordb_models.py` for the three with reference draws,
`benchmarks/_posteriordb_more.py` for the four others), in float64, 4 chains, 1000
warmup + 1000 draws, both samplers started at 0 + 0.1·N(0, I) in unconstrained
space, for each key:

- eqbayes: `eb.bayesian(model, blackjax.nuts, ...)` with its defaults (per-chain
  window adaptation, `metric="auto"`), or the metrics given with `--metrics`;
- NumPyro: `numpyro.infer.NUTS(potential_fn=...)` with its defaults (diagonal metric,
  each chain adapted on its own), `chain_method="vectorized"`.

It reports the minimum over the coordinates of the bulk ESS (`eb.ess`, for both
sides) per 1000 gradient evaluations *while sampling* (the sum of the draws'
`num_integration_steps`; NumPyro's `num_steps`), the same ESS per second of wall time
of the whole solve (warmup included; the second of two identical runs, so that
compilation is not counted), and the ratios eqbayes / NumPyro. Timings on a shared
machine are noisy; the gradient counts are deterministic for a key.

Each run is checked: against the reference means where there is one (the posteriordb
tolerance |mean − ref| < 4·sd·sqrt(1/ESS + 1/ESS_ref)), else eqbayes's means against
NumPyro's (|Δmean| < 4·sqrt(MCSE₁² + MCSE₂²)); a failing coordinate is printed.

`--bnn` adds a Bayesian network (the data of `docs/tutorials/bnn_sgld.py`, an
`eqx.nn.MLP` 1 → 16 → 16 → 1 with 321 weights, N(0, 1) prior, float32): the bulk
ESS of the predictive mean f(x) at 5 inputs (min over them) per 1000 gradient
evaluations while sampling, for `metric="diag"`, `"low_rank"` and `"dense"`.

    python benchmarks/metric_numpyro.py
    python benchmarks/metric_numpyro.py --quick
    python benchmarks/metric_numpyro.py --models kidiq-kidscore_momiq --keys 0
    python benchmarks/metric_numpyro.py --metrics auto diag dense low_rank
    python benchmarks/metric_numpyro.py --only-bnn
"""

import argparse
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

import blackjax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np


sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import _posteriordb_more as more  # noqa: E402
import posteriordb_models as pdb  # noqa: E402

import eqbayes as eb  # noqa: E402


SETTINGS = dict(num_chains=4, warmup=1000, keep=1000, init_jitter=0.1)
MODELS = [*pdb.POSTERIOR_NAMES, *more.MORE]


class Problem(NamedTuple):
    model: Any  # the Module at the unconstrained origin
    log_density: Any  # (model, data) -> log density
    flatten: Any  # Module with leading batch axes -> (..., d)
    data: Any
    reference: Any  # pdb.Reference or None


def problem(name: str) -> Problem:
    if name in pdb.POSTERIORS:
        post = pdb.POSTERIORS[name]
        data = pdb.load_data(name)
        return Problem(
            post.init(data),
            post.log_density,
            post.flatten,
            data,
            pdb.load_reference(name),
        )
    dim, log_density = more.MORE[name]
    data = more.load_data(name)
    return Problem(
        more.Flat(jnp.zeros(dim(data), jnp.float64)),
        lambda m, d: log_density(m.theta, d),
        lambda m: m.theta,
        data,
        None,
    )


class Run(NamedTuple):
    draws: Any  # (K, N, d)
    gradients: float  # while sampling
    seconds: float  # the whole solve, compiled
    kind: str  # the metric used


def _timed(fn):
    """`fn()` twice; the result and the time of the second call."""
    jax.block_until_ready(fn())
    start = time.perf_counter()
    out = jax.block_until_ready(fn())
    return out, time.perf_counter() - start


def run_eqbayes(p: Problem, key: int, metric: str, settings: dict) -> Run:
    options = {} if metric == "auto" else {"metric": metric}
    model = eb.bayesian(
        p.model,
        blackjax.nuts,
        prior=lambda position: jnp.zeros((), jnp.float64),
        name="posterior",
        **settings,
        **options,
    )
    solver = eb.Solver(lambda m, d: -p.log_density(m, d), progress=False)
    result, seconds = _timed(lambda: solver.run(model, key=jr.key(key), args=(p.data,)))
    diagnostics = result.posterior.diagnostics["posterior"]
    imm = diagnostics.inverse_mass_matrix
    kind = (
        "low_rank"
        if isinstance(imm, tuple)
        else ("dense" if jnp.ndim(imm) == 3 else "diag")
    )
    return Run(
        p.flatten(result.posterior.samples),
        float(jnp.sum(diagnostics.num_integration_steps)),
        seconds,
        kind,
    )


def run_numpyro(p: Problem, key: int, settings: dict) -> Run:
    from numpyro.infer import MCMC, NUTS

    init_key, run_key = jr.split(jr.key(key))
    leaves, treedef = jax.tree.flatten(p.model)
    keys = jr.split(init_key, len(leaves))
    k, jitter = settings["num_chains"], settings["init_jitter"]
    init = jax.tree.unflatten(
        treedef,
        [
            leaf + jitter * jr.normal(kk, (k, *leaf.shape), leaf.dtype)
            for leaf, kk in zip(leaves, keys)
        ],
    )
    mcmc = MCMC(
        NUTS(potential_fn=lambda m: -p.log_density(m, p.data)),
        num_warmup=settings["warmup"],
        num_samples=settings["keep"],
        num_chains=k,
        chain_method="vectorized",
        progress_bar=False,
    )
    raw = jr.key_data(run_key)

    def solve():
        mcmc.run(raw, init_params=init, extra_fields=("num_steps",))
        return mcmc.get_samples(group_by_chain=True)

    samples, seconds = _timed(solve)
    steps = mcmc.get_extra_fields(group_by_chain=True)["num_steps"]
    return Run(p.flatten(samples), float(np.sum(steps)), seconds, "diag")


def _efficiency(run: Run) -> tuple[float, float, float]:
    """`(min bulk ESS, per 1000 gradients, per second)`."""
    ess = float(jnp.min(eb.ess(run.draws)))
    return ess, 1000 * ess / run.gradients, ess / run.seconds


def _check(p: Problem, run: Run, other: Run | None) -> list[str]:
    """The coordinates whose mean fails the check (empty when it holds)."""
    draws = np.asarray(run.draws)
    mean = draws.mean(axis=(0, 1))
    if p.reference is not None:
        tol = pdb.tolerance(p.reference, np.asarray(eb.ess(run.draws)))
        bad = np.abs(mean - p.reference.mean) >= tol
        names = p.reference.names
    else:
        assert other is not None
        se = np.sqrt(
            np.asarray(eb.diagnostics.mcse_mean(run.draws)) ** 2
            + np.asarray(eb.diagnostics.mcse_mean(other.draws)) ** 2
        )
        bad = np.abs(mean - np.asarray(other.draws).mean(axis=(0, 1))) >= 4 * se
        names = [f"theta[{i}]" for i in range(mean.size)]
    return [n for n, b in zip(names, bad) if b]


def posteriordb_table(names, keys, metrics, settings) -> None:
    rows = []
    for name in names:
        with jax.enable_x64(True):
            p = problem(name)
            d = jax.flatten_util.ravel_pytree(p.model)[0].size
            per = {m: [] for m in ["numpyro", *metrics]}
            kinds = {}
            for key in keys:
                np_run = run_numpyro(p, key, settings)
                runs = {"numpyro": np_run}
                for metric in metrics:
                    runs[metric] = run_eqbayes(p, key, metric, settings)
                    kinds[metric] = runs[metric].kind
                for label, run in runs.items():
                    ess, per_grad, per_s = _efficiency(run)
                    if label == "numpyro" and p.reference is None:
                        failed = []  # eqbayes's runs are checked against it
                    else:
                        failed = _check(p, run, np_run)
                    per[label].append((per_grad, per_s))
                    print(
                        f"{name} | key {key} | {label} ({run.kind}): min bulk ESS "
                        f"{ess:.0f}, {run.gradients:.0f} gradients while sampling, "
                        f"{run.seconds:.1f} s -> {per_grad:.2f} per 1000 gradients, "
                        f"{per_s:.0f} per s; means "
                        + ("ok" if not failed else f"FAIL at {', '.join(failed)}"),
                        flush=True,
                    )
        mean = {k: np.mean(np.asarray(v), axis=0) for k, v in per.items()}
        rows.append((name, d, mean, kinds))
    print()
    print(
        "min bulk ESS per 1000 gradient evaluations while sampling (ESS per second "
        f"of the whole solve in brackets), {settings['num_chains']} chains, "
        f"{settings['warmup']} + {settings['keep']}, float64, mean over keys "
        + ", ".join(map(str, keys))
    )
    print()
    header = ["posterior", "d", "NumPyro"]
    for m in metrics:
        header += [f"eqbayes {m}", "ratio / NumPyro (per grad, per s)"]
    print("| " + " | ".join(header) + " |")
    print("|---" * len(header) + "|")
    ratios = {m: [] for m in metrics}
    for name, d, mean, kinds in rows:
        ref = mean["numpyro"]
        cells = [name, str(d), f"{ref[0]:.1f} ({ref[1]:.0f}/s)"]
        for m in metrics:
            v = mean[m]
            r = v / ref
            ratios[m].append(r)
            cells += [
                f"{v[0]:.1f} ({v[1]:.0f}/s, {kinds[m]})",
                f"{r[0]:.2f}× ({r[1]:.2f}×)",
            ]
        print("| " + " | ".join(cells) + " |")
    for m in metrics:
        r = np.asarray(ratios[m])
        print(
            f"eqbayes {m} / NumPyro per gradient: median {np.median(r[:, 0]):.2f}×, "
            f"min {np.min(r[:, 0]):.2f}×; per second: median "
            f"{np.median(r[:, 1]):.2f}×, min {np.min(r[:, 1]):.2f}×"
        )


# -- the Bayesian network ----------------------------------------------------------

BNN_SIGMA = 0.2
BNN_N = 256
BNN_X = jnp.linspace(-3.0, 3.0, 5)


def bnn_problem():
    """The data of the SGLD tutorial, an MLP with 321 weights, N(0, 1) prior."""
    x_key, y_key = jr.split(jr.key(0))
    x = jr.uniform(x_key, (BNN_N,), minval=-3.0, maxval=3.0)
    y = jnp.sin(2 * x) + 0.5 * x + BNN_SIGMA * jr.normal(y_key, (BNN_N,))
    net = eqx.nn.MLP("scalar", "scalar", 16, 2, activation=jnp.tanh, key=jr.key(1))
    scale = BNN_N / (2 * BNN_SIGMA**2)
    return net, {"x": x, "y": y}, scale


def bnn_loss(net, data):
    return jnp.mean((jax.vmap(net)(data["x"]) - data["y"]) ** 2)


def bnn_table(keys, metrics, settings) -> None:
    net, data, scale = bnn_problem()
    d = jax.flatten_util.ravel_pytree(eqx.filter(net, eqx.is_inexact_array))[0].size
    values = {m: [] for m in metrics}
    for key in keys:
        for metric in metrics:
            model = eb.bayesian(
                net,
                blackjax.nuts,
                prior=eb.priors.gaussian(1.0),
                likelihood_scale=scale,
                name="bnn",
                metric=metric,
                **settings,
            )
            result = eb.Solver(bnn_loss, progress=False).run(
                model, key=jr.key(key), data=data
            )
            curves = result.posterior.predict(lambda m, x: jax.vmap(m)(x), BNN_X)
            diagnostics = result.posterior.diagnostics["bnn"]
            gradients = float(jnp.sum(diagnostics.num_integration_steps))
            ess = float(jnp.min(eb.ess(curves)))
            rhat = float(jnp.max(eb.rhat(curves)))
            values[metric].append(1000 * ess / gradients)
            print(
                f"bnn | key {key} | {metric}: min bulk ESS of f(x) {ess:.0f}, "
                f"{gradients:.0f} gradients while sampling, max R-hat of f(x) "
                f"{rhat:.3f}, {int(jnp.sum(diagnostics.is_divergent))} divergent",
                flush=True,
            )
    print()
    print(
        f"BNN ({d} weights, float32): min over x in {np.asarray(BNN_X).tolist()} of "
        "the bulk ESS of f(x) per 1000 gradient evaluations while sampling; "
        f"{settings['num_chains']} chains, {settings['warmup']} + {settings['keep']}, "
        "mean over keys " + ", ".join(map(str, keys))
    )
    print()
    print("| model | " + " | ".join(metrics) + " |")
    print("|---" * (len(metrics) + 1) + "|")
    print("| bnn | " + " | ".join(f"{np.mean(values[m]):.2f}" for m in metrics) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--models", nargs="+", default=MODELS, choices=MODELS)
    parser.add_argument(
        "--metrics",
        nargs="+",
        default=["auto"],
        choices=["auto", "diag", "dense", "low_rank"],
        help="eqbayes's metric settings to compare (default: its default, auto)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="key 0 only, 300 warmup + 300 draws (a smoke test, not the figures)",
    )
    parser.add_argument("--bnn", action="store_true", help="add the BNN row")
    parser.add_argument("--only-bnn", action="store_true", help="only the BNN row")
    parser.add_argument(
        "--bnn-sizes", type=int, nargs=2, default=[500, 500], metavar=("WARMUP", "KEEP")
    )
    args = parser.parse_args()
    settings = dict(SETTINGS)
    keys = args.keys
    bnn_settings = dict(SETTINGS, warmup=args.bnn_sizes[0], keep=args.bnn_sizes[1])
    if args.quick:
        keys = [0]
        settings.update(warmup=300, keep=300)
        bnn_settings.update(warmup=150, keep=150)
    if not args.only_bnn:
        posteriordb_table(args.models, keys, args.metrics, settings)
    if args.bnn or args.only_bnn:
        bnn_table(keys, ["diag", "low_rank", "dense"], bnn_settings)


if __name__ == "__main__":
    main()
