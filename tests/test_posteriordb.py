"""eqbayes NUTS against posteriordb reference posteriors (slow).

Run with `python -m pytest -m slow tests/test_posteriordb.py`. The data live outside
the repository (see `tests/posteriordb_models.py`); a missing data directory fails the
test rather than skipping it.
"""

import jax
import numpy as np
import pytest
from posteriordb_models import (
    load_reference,
    POSTERIOR_NAMES,
    sample_eqbayes,
    tolerance,
)


NUM_CHAINS = 4
WARMUP = 1000
KEEP = 2000
INIT_JITTER = 1.0
RHAT_MAX = 1.01
ESS_MIN = 100.0


@pytest.mark.slow
@pytest.mark.parametrize("name", POSTERIOR_NAMES)
def test_posteriordb_nuts(name):
    try:
        ref = load_reference(name)
    except FileNotFoundError as e:
        pytest.fail(str(e))
    key = jax.random.fold_in(jax.random.key(20240607), POSTERIOR_NAMES.index(name))
    out = sample_eqbayes(
        name,
        key,
        num_chains=NUM_CHAINS,
        warmup=WARMUP,
        keep=KEEP,
        init_jitter=INIT_JITTER,
    )

    assert out.draws.shape == (NUM_CHAINS, KEEP, len(ref.names))
    assert out.draws.dtype == np.float64
    assert np.all(np.isfinite(out.draws))
    mean = out.draws.mean(axis=(0, 1))
    tol = tolerance(ref, out.ess)
    rows = "\n".join(
        f"  {n:16s} mean {m:+.5f} ref {r:+.5f} |diff|/tol {abs(m - r) / t:.2f} "
        f"ESS {e:7.1f} R-hat {h:.4f}"
        for n, m, r, t, e, h in zip(ref.names, mean, ref.mean, tol, out.ess, out.rhat)
    )
    summary = f"{name} ({out.num_divergent} divergent draws):\n{rows}"
    assert np.all(out.ess > ESS_MIN), summary
    assert np.all(np.abs(mean - ref.mean) < tol), summary
    assert np.all(out.rhat < RHAT_MAX), summary


# -- eight schools written with constrained priors ----------------------------------

import blackjax  # noqa: E402
import equinox as eqx  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import jax.scipy.stats as jss  # noqa: E402
from posteriordb_models import _read_json  # noqa: E402

import eqbayes as eb  # noqa: E402


class Centred(eqx.Module):
    mu: jax.Array
    tau: jax.Array
    theta: jax.Array

    def schools(self):
        return self.theta


class NonCentred(eqx.Module):
    mu: jax.Array
    tau: jax.Array
    theta_trans: jax.Array

    def schools(self):
        return self.mu + self.tau * self.theta_trans


def _eight_schools_loss(model, y, sigma):
    """The negative log-likelihood, with theta's hierarchical prior for the
    centred form (the priors on mu and tau are eqbayes priors)."""
    out = -jnp.sum(jss.norm.logpdf(y, model.schools(), sigma))
    if isinstance(model, Centred):
        out = out - jnp.sum(jss.norm.logpdf(model.theta, model.mu, model.tau))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("form", ["centred", "noncentred"])
def test_eight_schools_half_cauchy(form):
    """Eight schools with `tau ~ HalfCauchy(5)` sampled through its constraint.

    The non-centred form must match the reference posterior. The centred form has
    the same posterior but a funnel that NUTS cannot explore reliably (posteriordb
    has no reference for it): over keys 8-11, per-chain and pooled adaptation alike
    gave tau an ESS below 100 at some key (8.6 and 96 per chain, 55 pooled), with
    82-989 divergent transitions of 8000 with a diagonal metric (62 at key 8 with
    the dense metric that `metric="auto"` picks). For it the test asserts what a
    user must be told and what the constraint guarantees: divergences are reported
    and every tau draw is positive.
    """
    name = "eight_schools-eight_schools_noncentered"
    ref = _read_json(name, "reference")
    data = _read_json(name, "data")
    with jax.enable_x64(True):
        y = jnp.asarray(data["y"], jnp.float64)
        sigma = jnp.asarray(data["sigma"], jnp.float64)
        zero = jnp.zeros((), jnp.float64)
        if form == "centred":
            model = Centred(zero, zero + 1.0, jnp.zeros(8))
            third = eb.priors.gaussian(1e3)  # theta's prior is in the loss
        else:
            model = NonCentred(zero, zero + 1.0, jnp.zeros(8))
            third = eb.priors.normal(0.0, 1.0)
        marked = eb.bayesian(
            model,
            blackjax.nuts,
            where=lambda m: (m.mu, m.tau, jax.tree.leaves(m)[-1]),
            prior=(eb.priors.normal(0.0, 5.0), eb.priors.half_cauchy(5.0), third),
            num_chains=NUM_CHAINS,
            warmup=WARMUP,
            keep=KEEP,
            init_jitter=0.5,
        )
        result = eb.Solver(_eight_schools_loss, progress=False).run(
            marked, key=jax.random.key(8), args=(y, sigma)
        )
        schools = result.posterior.predict(lambda m: m.schools())
        draws = {
            "mu": result.posterior.samples.mu,
            "tau": result.posterior.samples.tau,
            **{f"theta[{j + 1}]": schools[..., j] for j in range(8)},
        }
        rows = []
        ok = True
        for key, value in draws.items():
            ess = float(eb.ess(value))
            tol = (
                4 * ref["ref_sd"][key] * np.sqrt(1 / ess + 1 / ref["ref_ess_bulk"][key])
            )
            diff = abs(float(value.mean()) - ref["ref_mean"][key])
            ok = ok and diff < tol and ess > ESS_MIN
            rows.append(f"{key:9s} diff/tol {diff / tol:.2f} ESS {ess:7.1f}")
        (diagnostics,) = result.posterior.diagnostics.values()
        divergent = int(diagnostics.is_divergent.sum())
        if form == "centred":
            assert bool(jnp.all(result.posterior.samples.tau > 0))
            assert divergent > 0, "the funnel's divergences must be reported"
        else:
            assert ok, f"{form} ({divergent} divergent):\n" + "\n".join(rows)
