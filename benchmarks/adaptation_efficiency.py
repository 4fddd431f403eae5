"""Effective samples per gradient evaluation, warmup included: eqbayes NUTS with
per-chain, pooled and dense adaptation and ChEES-HMC against NumPyro NUTS.

On the posteriordb posteriors of `tests/posteriordb_models.py` (float64, 4 chains,
1000 warmup + 1000 draws, chains started at 0 + 0.1·N(0, I)), for each key it
counts every gradient evaluation of every chain, warmup included (the sum of the
kernels' `num_integration_steps`), and reports

    min over coordinates of bulk ESS  /  gradient evaluations  × 1000

(deterministic for a key: no timing). Rows:

- `eqbayes per-chain`: `eb.bayesian(..., blackjax.nuts, metric="diag")` (each chain
  adapted on its own, `adapt=True`, the default);
- `eqbayes pooled`: `adapt="pooled"`, `metric="diag"`;
- `eqbayes dense`: `metric="dense"` (per chain);
- `eqbayes ChEES-HMC`: `blackjax.hmc` with `adapt="chees"` (step size, jittered
  trajectory length and a diagonal mass matrix shared by the 4 chains);
- `numpyro`: `numpyro.infer.NUTS(potential_fn=...)` on the same log density, its
  defaults (diagonal metric, each chain adapted on its own), `chain_method=
  "vectorized"`.

eqbayes's warmup work is counted by a kernel wrapper that adds each transition's
`num_integration_steps` to a counter carried in the kernel state.

One more row is the Bayesian neural network of `docs/tutorials/bnn_sgld.py` (its
data, `eqx.nn.MLP` with 1153 weights, N(0, 1) prior and likelihood scale N/(2σ²)),
sampled on the full data in float32. Its weights are not identifiable (hidden units
can be permuted and their signs flipped), so this row measures the bulk ESS of the
predictive mean f(x) at the 5 inputs of `BNN_X` across the data range, min over the
inputs, per 1000 gradient evaluations, warmup included. NUTS takes about 950
integration steps per transition here, near its maximum of 1023 (10 doublings, the
default on both sides), so the row uses 4 chains and `--bnn-sizes` warmup + draws
(default 200 + 200: about 10 minutes per key on 2 CPU cores), and has no dense row
(O(d²) per integration step for d = 1153).
It also prints the max R-hat of f(x) and the divergences after warmup.

    python benchmarks/adaptation_efficiency.py
    python benchmarks/adaptation_efficiency.py --keys 0 --rows numpyro
    python benchmarks/adaptation_efficiency.py --only bnn --keys 0
"""

import argparse
import sys
from pathlib import Path
from typing import Any, NamedTuple

import blackjax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jax.flatten_util import ravel_pytree


sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import posteriordb_models as pdb  # noqa: E402

import eqbayes as eb  # noqa: E402


class CountedState(NamedTuple):
    position: Any
    inner: Any
    gradients: Any  # integration steps so far, warmup included


def _counted(algorithm):
    """`algorithm` whose state counts its integration steps."""

    def init(position):
        inner = algorithm.init(position)
        return CountedState(inner.position, inner, jnp.zeros((), int))

    def step(key, state):
        inner, info = algorithm.step(key, state.inner)
        count = state.gradients + info.num_integration_steps
        return CountedState(inner.position, inner, count), info

    return blackjax.base.SamplingAlgorithm(init, step)


def counted_nuts(logdensity_fn, step_size, inverse_mass_matrix):
    """`blackjax.nuts`, counting its integration steps."""
    return _counted(blackjax.nuts(logdensity_fn, step_size, inverse_mass_matrix))


def counted_hmc(logdensity_fn, step_size, inverse_mass_matrix, num_integration_steps):
    """`blackjax.hmc`, counting its integration steps."""
    return _counted(
        blackjax.hmc(
            logdensity_fn, step_size, inverse_mass_matrix, num_integration_steps
        )
    )


SETTINGS = dict(num_chains=4, warmup=1000, keep=1000, init_jitter=0.1)
VARIANTS = {
    "eqbayes per-chain": {"metric": "diag"},
    "eqbayes pooled": {"adapt": "pooled", "metric": "diag"},
    "eqbayes dense": {"metric": "dense"},
    "eqbayes ChEES-HMC": {"adapt": "chees", "kernel": counted_hmc},
}


def run_eqbayes(name: str, key: int, options: dict) -> tuple[float, float]:
    """`(min bulk ESS, gradient evaluations)`."""
    post = pdb.POSTERIORS[name]
    with jax.enable_x64(True):
        data = pdb.load_data(name)
        options = dict(options)
        model = eb.bayesian(
            post.init(data),
            options.pop("kernel", counted_nuts),
            prior=lambda position: jnp.zeros((), jnp.float64),
            name="posterior",
            **SETTINGS,
            **options,
        )
        solver = eb.Solver(lambda m, d: -post.log_density(m, d), progress=False)
        result = solver.run(model, key=jax.random.key(key), args=(data,))
        draws = post.flatten(result.posterior.samples)
        (group,) = [
            g
            for g in jax.tree.leaves(
                result.state.model, is_leaf=lambda x: isinstance(x, eb.BayesianLeaf)
            )
        ]
        gradients = float(jnp.sum(group.state.kernel_state.gradients))
        return float(jnp.min(eb.ess(draws))), gradients


def numpyro_nuts(potential, init, run_key, settings: dict):
    """NumPyro's NUTS with its defaults from `init` (a leading chain axis):
    `(draws by chain, gradient evaluations with the warmup's, divergences after
    warmup)`."""
    from numpyro.infer import MCMC, NUTS

    mcmc = MCMC(
        NUTS(potential_fn=potential),
        num_warmup=settings["warmup"],
        num_samples=settings["keep"],
        num_chains=settings["num_chains"],
        chain_method="vectorized",
        progress_bar=False,
    )
    raw = jax.random.key_data(run_key)
    mcmc.warmup(raw, init_params=init, extra_fields=("num_steps",), collect_warmup=True)
    warm = float(np.sum(mcmc.get_extra_fields(group_by_chain=True)["num_steps"]))
    mcmc.run(mcmc.post_warmup_state.rng_key, extra_fields=("num_steps", "diverging"))
    extra = mcmc.get_extra_fields(group_by_chain=True)
    steps = float(np.sum(extra["num_steps"]))
    samples = mcmc.get_samples(group_by_chain=True)
    return samples, warm + steps, int(np.sum(extra["diverging"]))


def run_numpyro(name: str, key: int) -> tuple[float, float]:
    post = pdb.POSTERIORS[name]
    with jax.enable_x64(True):
        data = pdb.load_data(name)
        init_key, run_key = jax.random.split(jax.random.key(key))
        model = post.init(data)
        leaves, treedef = jax.tree.flatten(model)
        keys = jax.random.split(init_key, len(leaves))
        k, jitter = SETTINGS["num_chains"], SETTINGS["init_jitter"]
        init = jax.tree.unflatten(
            treedef,
            [
                leaf + jitter * jax.random.normal(kk, (k, *leaf.shape))
                for leaf, kk in zip(leaves, keys)
            ],
        )
        samples, gradients, _ = numpyro_nuts(
            lambda m: -post.log_density(m, data), init, run_key, SETTINGS
        )
        draws = post.flatten(samples)
        return float(jnp.min(eb.ess(draws))), gradients


# The BNN of `docs/tutorials/bnn_sgld.py`: its data, network, loss, likelihood scale
# and prior, sampled here on the full data (no minibatches) in float32 as there.
BNN_SIGMA = 0.2
BNN_N = 256
BNN_X = jnp.linspace(-3.0, 3.0, 5)  # where the predictive mean f(x) is measured
BNN_SETTINGS = dict(num_chains=4, warmup=200, keep=200, init_jitter=0.1)
BNN_VARIANTS = {k: v for k, v in VARIANTS.items() if k != "eqbayes dense"}


class BnnRun(NamedTuple):
    ess: float  # min over BNN_X of the bulk ESS of f(x)
    gradients: float
    rhat: float  # max over BNN_X of the R-hat of f(x)
    divergences: int  # after warmup, all chains


def bnn_problem():
    """`(network, data, likelihood scale, prior)` of the SGLD tutorial."""
    x_key, y_key, _, _ = jr.split(jr.key(0), 4)
    x = jr.uniform(x_key, (BNN_N,), minval=-3.0, maxval=3.0)
    y = jnp.sin(2 * x) + 0.5 * x + BNN_SIGMA * jr.normal(y_key, (BNN_N,))
    net = eqx.nn.MLP("scalar", "scalar", 32, 2, activation=jnp.tanh, key=jr.key(1))
    scale = BNN_N / (2 * BNN_SIGMA**2)
    return net, {"x": x, "y": y}, scale, eb.priors.gaussian(1.0)


def bnn_loss(net, data):
    return jnp.mean((jax.vmap(net)(data["x"]) - data["y"]) ** 2)


def _bnn_summary(curves, gradients, divergences) -> BnnRun:
    """From `curves` of shape `(chains, draws, len(BNN_X))`."""
    return BnnRun(
        float(jnp.min(eb.ess(curves))),
        float(gradients),
        float(jnp.max(eb.rhat(curves))),
        int(divergences),
    )


def run_bnn_eqbayes(key: int, options: dict) -> BnnRun:
    net, data, scale, prior = bnn_problem()
    options = dict(options)
    model = eb.bayesian(
        net,
        options.pop("kernel", counted_nuts),
        prior=prior,
        likelihood_scale=scale,
        name="bnn",
        **BNN_SETTINGS,
        **options,
    )
    solver = eb.Solver(bnn_loss, progress=False)
    result = solver.run(model, key=jax.random.key(key), data=data)
    curves = result.posterior.predict(lambda m, x: jax.vmap(m)(x), BNN_X)
    (group,) = [
        g
        for g in jax.tree.leaves(
            result.state.model, is_leaf=lambda x: isinstance(x, eb.BayesianLeaf)
        )
    ]
    gradients = jnp.sum(group.state.kernel_state.gradients)
    divergences = jnp.sum(result.posterior.diagnostics["bnn"].is_divergent)
    return _bnn_summary(curves, gradients, divergences)


def run_bnn_numpyro(key: int) -> BnnRun:
    net, data, scale, prior = bnn_problem()
    params, static = eqx.partition(net, eqx.is_inexact_array)
    flat, unravel = ravel_pytree(params)

    def potential(theta):
        p = unravel(theta)
        return scale * bnn_loss(eqx.combine(p, static), data) - prior(p)

    def predictive(theta):
        return jax.vmap(eqx.combine(unravel(theta), static))(BNN_X)

    init_key, run_key = jax.random.split(jax.random.key(key))
    k, jitter = BNN_SETTINGS["num_chains"], BNN_SETTINGS["init_jitter"]
    init = flat + jitter * jax.random.normal(init_key, (k, flat.size))
    samples, gradients, divergences = numpyro_nuts(
        potential, init, run_key, BNN_SETTINGS
    )
    curves = jax.vmap(jax.vmap(predictive))(samples)
    return _bnn_summary(curves, gradients, divergences)


def bnn_table(keys: list[int], rows: list[str]) -> None:
    table = {}
    for row in rows:
        values = []
        for key in keys:
            if row == "numpyro":
                out = run_bnn_numpyro(key)
            else:
                out = run_bnn_eqbayes(key, BNN_VARIANTS[row])
            values.append(1000 * out.ess / out.gradients)
            print(
                f"bnn | {row} | key {key}: min bulk ESS of f(x) {out.ess:.0f}, "
                f"{out.gradients:.0f} gradients, max R-hat of f(x) {out.rhat:.3f}, "
                f"{out.divergences} divergences after warmup",
                flush=True,
            )
        table[row] = float(np.mean(values))
    print()
    print(
        "BNN of docs/tutorials/bnn_sgld.py (1153 weights, float32): min over "
        f"x in {np.asarray(BNN_X).tolist()} of the bulk ESS of f(x) per 1000 gradient "
        f"evaluations, warmup included; {BNN_SETTINGS['num_chains']} chains, "
        f"{BNN_SETTINGS['warmup']} warmup + {BNN_SETTINGS['keep']} draws, keys "
        + ", ".join(map(str, keys))
    )
    print()
    print("| model | " + " | ".join(rows) + " |")
    print("|---" * (len(rows) + 1) + "|")
    print("| bnn | " + " | ".join(f"{table[r]:.2f}" for r in rows) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--posteriors", nargs="+", default=list(pdb.POSTERIOR_NAMES))
    parser.add_argument("--rows", nargs="+", default=[*VARIANTS, "numpyro"])
    parser.add_argument(
        "--only",
        choices=["posteriordb", "bnn"],
        help="run only the posteriordb rows or only the BNN row (default: both)",
    )
    parser.add_argument(
        "--bnn-sizes",
        type=int,
        nargs=2,
        metavar=("WARMUP", "KEEP"),
        default=[BNN_SETTINGS["warmup"], BNN_SETTINGS["keep"]],
    )
    args = parser.parse_args()
    if args.only != "bnn":
        posteriordb_table(args.keys, args.posteriors, args.rows)
    if args.only != "posteriordb":
        BNN_SETTINGS["warmup"], BNN_SETTINGS["keep"] = args.bnn_sizes
        # No dense metric for the 1153 weights: O(d^2) per integration step.
        bnn_table(args.keys, [r for r in args.rows if r != "eqbayes dense"])


def posteriordb_table(keys: list[int], posteriors: list[str], rows: list[str]) -> None:
    table = {}
    for name in posteriors:
        for row in rows:
            values = []
            for key in keys:
                if row == "numpyro":
                    ess, grads = run_numpyro(name, key)
                else:
                    ess, grads = run_eqbayes(name, key, VARIANTS[row])
                values.append(1000 * ess / grads)
                print(
                    f"{name} | {row} | key {key}: min bulk ESS {ess:.0f}, "
                    f"{grads:.0f} gradients",
                    flush=True,
                )
            table[name, row] = float(np.mean(values))
    key_text = ", ".join(map(str, keys))
    print()
    print(
        f"min bulk ESS per 1000 gradient evaluations, warmup included (keys {key_text})"
    )
    print()
    print("| posterior | " + " | ".join(rows) + " |")
    print("|---" * (len(rows) + 1) + "|")
    for name in posteriors:
        cells = " | ".join(f"{table[name, r]:.1f}" for r in rows)
        print(f"| {name} | {cells} |")


if __name__ == "__main__":
    main()
