"""The Bayesian PINN tutorial's posterior is useful: its predictive mean is close to
the exact solution and its 90 % band covers it. The tutorial is run as written, so
the test and the page share one configuration."""

import pathlib
import runpy

import jax
import matplotlib
import matplotlib.pyplot as plt
import pytest


TUTORIAL = (
    pathlib.Path(__file__).parent.parent / "docs" / "tutorials" / "bayesian_pinn.py"
)


@pytest.mark.slow  # about 30 s of CPU: Adam, then 4 SGLD chains
def test_bayesian_pinn_tutorial_meets_its_targets(monkeypatch):
    matplotlib.use("Agg")
    monkeypatch.setattr(plt, "show", lambda: None)
    # The page runs as user code does, under JAX's default promotion rules (optax's
    # schedules mix int and float step counts, which the suite's strict mode rejects).
    with jax.numpy_dtype_promotion("standard"), jax.numpy_rank_promotion("allow"):
        out = runpy.run_path(str(TUTORIAL))
    plt.close("all")
    # The targets: relative L2 error of the predictive mean below 5 %, and
    # the 90 % band covering sin(pi x) at >= 85 % of the evaluation points.
    assert out["rel_error"] < 0.05, out["rel_error"]
    assert out["coverage"] >= 0.85, out["coverage"]
    # The band is useful, not merely wide: a few percent of the unit amplitude.
    assert out["half_width"] < 0.05, out["half_width"]
    # The page's check of the band's width: the Laplace approximation at the Adam fit
    # (`eb.laplace`, Gauss-Newton) agrees with the SGLD band.
    ratio = out["laplace_half_width"] / out["half_width"]
    assert abs(ratio - 1) < 0.2, ratio
