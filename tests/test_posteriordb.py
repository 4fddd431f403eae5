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
