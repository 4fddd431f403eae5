"""eqbayes NUTS against posteriordb reference posteriors, as a table.

The script version of `tests/test_posteriordb.py`: for each posterior, per unconstrained
coordinate, the eqbayes mean, the reference mean, the z-score
`(mean - ref) / (sd_ref * sqrt(1/ESS + 1/ESS_ref))` (passes when |z| < 4, the
posteriordb README's tolerance), the bulk ESS, the R-hat (passes when < 1.01) and the
verdict. `--backend blackjax` runs the hand-written blackjax program instead (same
model, same settings, per-chain window adaptation of a dense metric), to tell a model
problem from an eqbayes one.

    python benchmarks/posteriordb.py
    python benchmarks/posteriordb.py --backend blackjax --chains 4 --keep 2000
"""

import argparse
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np


_HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(_HERE))
sys.path.insert(0, str(_HERE.parent / "tests"))
import posteriordb_models as pdb  # noqa: E402


RHAT_MAX = 1.01
Z_MAX = 4.0


def sample_blackjax(name, key, *, num_chains, warmup, keep, init_jitter) -> pdb.Draws:
    import blackjax
    from _handwritten import make_multi_chain

    import eqbayes as eb

    post = pdb.POSTERIORS[name]
    with jax.enable_x64(True):
        data = pdb.load_data(name)
        init_key, run_key = jax.random.split(key)
        model = post.init(data)
        leaves, treedef = jax.tree.flatten(model)
        keys = jax.random.split(init_key, len(leaves))
        positions = jax.tree.unflatten(
            treedef,
            [
                leaf + init_jitter * jax.random.normal(k, (num_chains, *leaf.shape))
                for leaf, k in zip(leaves, keys)
            ],
        )
        run = make_multi_chain(
            blackjax.nuts,
            post.log_density,
            num_chains=num_chains,
            warmup=warmup,
            keep=keep,
            diagonal=False,  # the dense metric eqbayes's default picks here
        )
        start = time.perf_counter()
        samples, info = run(run_key, positions, data)
        draws = jax.block_until_ready(post.flatten(samples))
        seconds = time.perf_counter() - start
        return pdb.Draws(
            draws=np.asarray(draws),
            ess=np.asarray(eb.ess(draws)),
            rhat=np.asarray(eb.rhat(draws)),
            num_divergent=int(jnp.sum(info["is_divergent"])),
            mean_integration_steps=float(jnp.mean(info["num_integration_steps"])),
            seconds=seconds,
        )


def arviz_ess(draws: np.ndarray) -> np.ndarray | None:
    try:
        import arviz as az
    except ImportError:
        return None
    return np.array(
        [float(az.ess(draws[..., i], method="bulk")) for i in range(draws.shape[-1])]
    )


def report(name: str, out: pdb.Draws, ref: pdb.Reference) -> bool:
    mean = out.draws.mean(axis=(0, 1))
    z = (mean - ref.mean) / (ref.sd * np.sqrt(1.0 / out.ess + 1.0 / ref.ess_bulk))
    ok = (np.abs(z) < Z_MAX) & (out.rhat < RHAT_MAX)
    az_ess = arviz_ess(out.draws)
    k, n, _ = out.draws.shape
    print(
        f"== {name}: {k} chains x {n} draws, {out.seconds:.1f} s (incl. compile), "
        f"{out.num_divergent} divergent, {out.mean_integration_steps:.1f} "
        f"integration steps/draw"
    )
    header = (
        f"{'coordinate':16s} {'eqbayes mean':>13s} {'ref mean':>11s} {'z':>7s} "
        f"{'ESS':>8s} {'ESS arviz':>9s} {'R-hat':>7s}  pass"
    )
    print(header)
    print("-" * len(header))
    for i, coord in enumerate(ref.names):
        e_az = "n/a" if az_ess is None else f"{az_ess[i]:.1f}"
        print(
            f"{coord:16s} {mean[i]:13.5f} {ref.mean[i]:11.5f} {z[i]:7.2f} "
            f"{out.ess[i]:8.1f} {e_az:>9s} {out.rhat[i]:7.4f}  "
            f"{'yes' if ok[i] else 'NO'}"
        )
    print(f"-> {'PASS' if ok.all() else 'FAIL'}")
    print()
    return bool(ok.all())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=("eqbayes", "blackjax"), default="eqbayes")
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=1000)
    parser.add_argument("--keep", type=int, default=2000)
    parser.add_argument("--init-jitter", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=20240607)
    parser.add_argument(
        "--posteriors", nargs="+", choices=pdb.POSTERIOR_NAMES, default=None
    )
    args = parser.parse_args()

    sample = pdb.sample_eqbayes if args.backend == "eqbayes" else sample_blackjax
    names = args.posteriors or pdb.POSTERIOR_NAMES
    print(
        f"backend {args.backend}: NUTS, {args.chains} chains, warmup {args.warmup}, "
        f"keep {args.keep}, init jitter {args.init_jitter}, seed {args.seed}; "
        f"data from {pdb.data_dir()}"
    )
    print()
    results = {}
    for name in names:
        ref = pdb.load_reference(name)
        # Same keys as tests/test_posteriordb.py.
        key = jax.random.fold_in(
            jax.random.key(args.seed), pdb.POSTERIOR_NAMES.index(name)
        )
        out = sample(
            name,
            key,
            num_chains=args.chains,
            warmup=args.warmup,
            keep=args.keep,
            init_jitter=args.init_jitter,
        )
        results[name] = report(name, out, ref)
    for name, ok in results.items():
        print(f"{name:42s} {'PASS' if ok else 'FAIL'}")
    return 0 if all(results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
