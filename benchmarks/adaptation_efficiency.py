"""Effective samples per gradient evaluation, warmup included: eqbayes NUTS with
per-chain, pooled and dense adaptation against NumPyro NUTS.

On the posteriordb posteriors of `tests/posteriordb_models.py` (float64, 4 chains,
1000 warmup + 1000 draws, chains started at 0 + 0.1·N(0, I)), for each key it
counts every gradient evaluation of every chain, warmup included (the sum of the
kernels' `num_integration_steps`), and reports

    min over coordinates of bulk ESS  /  gradient evaluations  × 1000

(deterministic for a key: no timing). Rows:

- `eqbayes per-chain`: `eb.bayesian(..., blackjax.nuts)` defaults (`adapt=True`,
  diagonal metric);
- `eqbayes pooled`: `adapt="pooled"`;
- `eqbayes dense`: `metric="dense"` (per chain);
- `eqbayes ChEES-HMC`: `blackjax.hmc` with `adapt="chees"` (step size, jittered
  trajectory length and a diagonal mass matrix shared by the 4 chains);
- `numpyro`: `numpyro.infer.NUTS(potential_fn=...)` on the same log density, its
  defaults (diagonal metric, each chain adapted on its own), `chain_method=
  "vectorized"`.

eqbayes's warmup work is counted by a kernel wrapper that adds each transition's
`num_integration_steps` to a counter carried in the kernel state.

    python benchmarks/adaptation_efficiency.py
    python benchmarks/adaptation_efficiency.py --keys 0 --rows numpyro
"""

import argparse
import sys
from pathlib import Path
from typing import Any, NamedTuple

import blackjax
import jax
import jax.numpy as jnp
import numpy as np


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
        return CountedState(inner.position, inner, jnp.zeros((), jnp.int64))

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
    "eqbayes per-chain": {},
    "eqbayes pooled": {"adapt": "pooled"},
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


def run_numpyro(name: str, key: int) -> tuple[float, float]:
    from numpyro.infer import MCMC, NUTS

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
        mcmc = MCMC(
            NUTS(potential_fn=lambda m: -post.log_density(m, data)),
            num_warmup=SETTINGS["warmup"],
            num_samples=SETTINGS["keep"],
            num_chains=k,
            chain_method="vectorized",
            progress_bar=False,
        )
        raw = jax.random.key_data(run_key)
        mcmc.warmup(
            raw, init_params=init, extra_fields=("num_steps",), collect_warmup=True
        )
        warm = float(np.sum(mcmc.get_extra_fields(group_by_chain=True)["num_steps"]))
        mcmc.run(mcmc.post_warmup_state.rng_key, extra_fields=("num_steps",))
        steps = float(np.sum(mcmc.get_extra_fields(group_by_chain=True)["num_steps"]))
        draws = post.flatten(mcmc.get_samples(group_by_chain=True))
        return float(jnp.min(eb.ess(draws))), warm + steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--posteriors", nargs="+", default=list(pdb.POSTERIOR_NAMES))
    parser.add_argument("--rows", nargs="+", default=[*VARIANTS, "numpyro"])
    args = parser.parse_args()
    rows = args.rows
    table = {}
    for name in args.posteriors:
        for row in rows:
            values = []
            for key in args.keys:
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
    keys = ", ".join(map(str, args.keys))
    print()
    print(f"min bulk ESS per 1000 gradient evaluations, warmup included (keys {keys})")
    print()
    print("| posterior | " + " | ".join(rows) + " |")
    print("|---" * (len(rows) + 1) + "|")
    for name in args.posteriors:
        cells = " | ".join(f"{table[name, r]:.1f}" for r in rows)
        print(f"| {name} | {cells} |")


if __name__ == "__main__":
    main()
