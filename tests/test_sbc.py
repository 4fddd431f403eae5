"""Simulation-based calibration: the machinery on exact and wrong fits (fast), and
each kernel family on a small regression (slow)."""

import blackjax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
import pytest
from problems import Coefficients

import eqbayes as eb
from eqbayes.testing import sbc


NOISE = 0.5
X = jnp.linspace(0.0, 1.0, 20)


def _features(correlated: bool):
    f1 = jnp.sin(jnp.pi * X)
    f2 = jnp.cos(jnp.pi * X) + (2.0 * f1 if correlated else 0.0)
    return f1, f2


def prior_draw(key):
    """a, b ~ N(0, 1): the prior of every fit below."""
    a, b = jr.normal(key, (2,))
    return Coefficients(a, b)


def simulator(correlated=False):
    f1, f2 = _features(correlated)

    def simulate(key, theta):
        y = theta(f1, f2) + NOISE * jr.normal(key, X.shape)
        return f1, f2, y

    return simulate


def loss(model, f1, f2, y):
    """The negative log-likelihood (up to a constant): likelihood_scale=1."""
    return jnp.sum((model(f1, f2) - y) ** 2) / (2 * NOISE**2)


def _exact_fit(scale=1.0):
    """Independent draws from the exact posterior, its sd times `scale`."""

    def fit(key, data):
        f1, f2, y = (np.asarray(x, np.float64) for x in data)
        features = np.stack([f1, f2], axis=1)
        cov = np.linalg.inv(features.T @ features / NOISE**2 + np.eye(2))
        mean = cov @ features.T @ y / NOISE**2
        z = np.asarray(jr.normal(key, (1, 500, 2)))
        draws = mean + scale * z @ np.linalg.cholesky(cov).T
        return Coefficients(draws[..., 0], draws[..., 1])

    return fit


def test_exact_fit_passes_and_wrong_fits_fail():
    key = jr.key(0)
    exact = sbc(prior_draw, simulator(), _exact_fit(), key=key, num_simulations=200)
    assert exact.ranks.shape == (200, 2)
    assert exact.labels == ("a", "b")
    assert exact.passed(), exact.p_values
    assert int(exact.histograms().sum()) == 400
    narrow = sbc(prior_draw, simulator(), _exact_fit(0.7), key=key)
    assert not narrow.passed()
    # Too narrow: the truth falls outside the draws too often (a U shape).
    counts = np.asarray(narrow.histograms())
    assert np.all(counts[:, [0, -1]].sum(axis=1) > 2 * counts[:, 4:6].sum(axis=1))
    wide = sbc(prior_draw, simulator(), _exact_fit(1.4), key=key)
    assert not wide.passed()


def test_bins_must_divide_the_ranks():
    with pytest.raises(ValueError, match=r"pick `num_draws \+ 1` a multiple"):
        sbc(prior_draw, simulator(), _exact_fit(), key=jr.key(0), num_draws=100)


def test_plot_draws_one_panel_per_component():
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    out = sbc(prior_draw, simulator(), _exact_fit(), key=jr.key(1), num_simulations=50)
    figure = out.plot()
    assert len(figure.axes) == 2
    matplotlib.pyplot.close(figure)


def _mcmc_fit(kernel, **kwargs):
    model = eb.bayesian(
        Coefficients(jnp.array(0.0), jnp.array(0.0)),
        kernel,
        prior=eb.priors.gaussian(1.0),
        init_jitter=0.1,
        **kwargs,
    )
    solver = eb.Solver(loss, progress=False)

    def fit(key, data):
        return solver.run(model, key=key, args=data).posterior.samples

    return fit


# 100 simulations, ranks among 49 draws thinned from chains with an ESS above 49.
SLOW = dict(num_simulations=100, num_draws=49, num_bins=10)
KERNELS = {
    "nuts": (blackjax.nuts, dict(warmup=300, keep=500)),
    "hmc": (blackjax.hmc, dict(warmup=300, keep=500, num_integration_steps=8)),
    "mala": (blackjax.mala, dict(warmup=100, keep=3000, step_size=0.01)),
    "sgld": (blackjax.sgld, dict(warmup=500, keep=5000, step_size=2e-3)),
}


@pytest.mark.slow
@pytest.mark.parametrize("kernel", list(KERNELS))
def test_kernels_are_calibrated(kernel):
    factory, kwargs = KERNELS[kernel]
    out = sbc(
        prior_draw, simulator(), _mcmc_fit(factory, **kwargs), key=jr.key(2), **SLOW
    )
    assert out.passed(), out.p_values


@pytest.mark.slow
def test_mean_field_vi_is_not_calibrated():
    """Mean-field VI on a correlated posterior (correlation ≈ −0.9) fits each
    marginal too narrow: its ranks pile up at both ends and SBC rejects it. (On
    an uncorrelated posterior mean-field VI could pass.)"""
    model = eb.vi(
        Coefficients(jnp.array(0.0), jnp.array(0.0)),
        blackjax.meanfield_vi,
        optimizer=optax.adam(2e-2),
        prior=eb.priors.gaussian(1.0),
    )
    solver = eb.Solver(loss, progress=False)

    def fit(key, data):
        return solver.run(model, steps=1500, key=key, args=data).posterior.samples

    out = sbc(prior_draw, simulator(correlated=True), fit, key=jr.key(3), **SLOW)
    assert not out.passed()
    counts = np.asarray(out.histograms())
    assert np.all(counts[:, [0, -1]].sum(axis=1) > 2 * counts[:, 4:6].sum(axis=1))
