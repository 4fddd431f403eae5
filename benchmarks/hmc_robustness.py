"""Fixed-length HMC on the quickstart problem over many keys: does it stay exact?

The two-coefficient Gaussian of `examples/quickstart.py` (y = a sin(πx) + b cos(πx)
+ N(0, 0.1²) at 101 points, prior N(0, 10²)), sampled with `blackjax.hmc` and
`num_integration_steps=10`, a diagonal metric (`metric="diag"`), 4 chains, 500
warmup + 1000 draws, `init_jitter=0.1`, float32. For each key it prints, per
coefficient, the R-hat and the ratio of the sample sd to the exact posterior sd; a
key passes when every R-hat < 1.05 and every
sd is within 10 % of exact.

A shared step size can put every chain of fixed-length HMC on the same
near-periodic orbit (the sd then comes out too small or too large); per-chain
adaptation and step-size jitter (the defaults) prevent it. Compare:

    python benchmarks/hmc_robustness.py                       # the defaults
    python benchmarks/hmc_robustness.py --adapt pooled --jitter 0
    python benchmarks/hmc_robustness.py --adapt pooled        # pooled, jittered
    python benchmarks/hmc_robustness.py --jitter 0            # per chain, no jitter
"""

import argparse
import sys
from pathlib import Path

import blackjax
import jax.numpy as jnp
import jax.random as jr
import numpy as np


sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from problems import (  # noqa: E402
    Coefficients,
    exact_posterior,
    LIKELIHOOD_SCALE,
    mse,
    sincos_data,
)

import eqbayes as eb  # noqa: E402


RHAT_MAX = 1.05
SD_TOLERANCE = 0.10


def run_key(key: int, *, adapt="default", jitter=None, steps=10, chains=4):
    """`(r_hat (2,), sd / exact sd (2,))` of (a, b) for one key."""
    f1, f2, y = sincos_data()
    _, cov = exact_posterior(f1, f2, y)
    options = {} if adapt == "default" else {"adapt": adapt}
    model = eb.bayesian(
        Coefficients(jnp.array(0.0), jnp.array(0.0)),
        blackjax.hmc,
        num_chains=chains,
        warmup=500,
        keep=1000,
        init_jitter=0.1,
        likelihood_scale=LIKELIHOOD_SCALE,
        prior=eb.priors.gaussian(10.0),
        num_integration_steps=steps,
        step_size_jitter=jitter,
        metric="diag",  # the failure mode below is that of a diagonal metric
        **options,
    )
    result = eb.Solver(mse, progress=False).run(
        model, key=jr.key(key), args=(f1, f2, y)
    )
    samples = result.posterior.samples
    draws = [np.asarray(samples.a), np.asarray(samples.b)]
    rhat = np.array([float(eb.rhat(x)) for x in draws])
    sd = np.array([x.std() for x in draws]) / np.sqrt(np.diag(cov))
    return rhat, sd


def passes(rhat, sd) -> bool:
    return bool(np.all(rhat < RHAT_MAX) and np.all(np.abs(sd - 1) <= SD_TOLERANCE))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=12, help="keys 0 .. keys-1")
    parser.add_argument(
        "--adapt", default="default", help="True, pooled or default (per chain)"
    )
    parser.add_argument("--jitter", type=float, default=None, help="default: eqbayes's")
    args = parser.parse_args()
    adapt = True if args.adapt == "True" else args.adapt
    failed = 0
    print("key  r_hat(a) r_hat(b)  sd(a)/exact sd(b)/exact  verdict")
    for key in range(args.keys):
        rhat, sd = run_key(key, adapt=adapt, jitter=args.jitter)
        ok = passes(rhat, sd)
        failed += not ok
        print(
            f"{key:3d}  {rhat[0]:8.3f} {rhat[1]:8.3f}  {sd[0]:11.3f} {sd[1]:11.3f}  "
            f"{'ok' if ok else 'FAIL'}"
        )
    print(f"{args.keys - failed} of {args.keys} keys pass")


if __name__ == "__main__":
    main()
