"""Per-chain, pooled and no adaptation; dense metrics; step-size jitter; the tuning
on the result and in the log lines."""

import logging
import re

import blackjax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from problems import (
    check_moments,
    Coefficients,
    exact_posterior,
    LIKELIHOOD_SCALE,
    mse,
    sincos_data,
)

import eqbayes as eb


DATA = sincos_data()
CORRELATED = sincos_data(correlated=True)


def _marked(kernel=blackjax.nuts, **kwargs):
    settings = dict(
        num_chains=4,
        warmup=200,
        keep=200,
        init_jitter=0.05,
        likelihood_scale=LIKELIHOOD_SCALE,
    )
    settings.update(kwargs)
    return eb.bayesian(
        Coefficients(jnp.array(3.0), jnp.array(-2.5)), kernel, **settings
    )


def _run(model, data=DATA, key=0):
    return eb.Solver(mse, progress=False).run(model, key=jr.key(key), args=data)


def test_each_chain_adapts_its_own():
    """`adapt=True`: one step size and inverse mass matrix per chain, read off the
    result; the chains' own adaptations settle on different values."""
    diagnostics = _run(_marked(metric="diag")).posterior.diagnostics["Coefficients"]
    assert diagnostics.step_size.shape == (4,)
    assert diagnostics.inverse_mass_matrix.shape == (4, 2)
    assert len(np.unique(np.asarray(diagnostics.step_size))) == 4
    # Each chain's diagonal estimates the posterior variances (Stan's regularised
    # estimate from the last slow window: within a factor of 2).
    _, cov = exact_posterior(*DATA)
    ratio = np.asarray(diagnostics.inverse_mass_matrix) / np.diag(cov)
    assert np.all((ratio > 0.5) & (ratio < 2)), ratio


def test_pooled_and_no_adaptation():
    """`adapt="pooled"`: one step size and mass matrix for all chains; `adapt=False`:
    the given step size and the identity."""
    pooled = _run(_marked(adapt="pooled", metric="diag")).posterior.diagnostics[
        "Coefficients"
    ]
    assert pooled.step_size.shape == (4,)
    assert len(np.unique(np.asarray(pooled.step_size))) == 1
    imm = np.asarray(pooled.inverse_mass_matrix)
    assert np.all(imm == imm[0]) and not np.all(imm == 1.0)
    fixed = _marked(adapt=False, step_size=0.003)
    fixed = _run(fixed).posterior.diagnostics["Coefficients"]
    np.testing.assert_allclose(fixed.step_size, 0.003)
    np.testing.assert_array_equal(fixed.inverse_mass_matrix, np.ones((4, 2)))


@pytest.mark.parametrize(
    "adapt", [True, pytest.param("pooled", marks=pytest.mark.slow)]
)
def test_dense_metric_on_a_correlated_posterior(adapt):
    """`metric="dense"`: a full inverse mass matrix per chain whose off-diagonal
    estimates the posterior covariance (correlation ≈ −0.70; Stan's regularisation
    shrinks only the diagonal); the draws match the exact posterior."""
    mean, cov = exact_posterior(*CORRELATED)
    model = _marked(metric="dense", keep=1000, adapt=adapt)
    result = _run(model, CORRELATED)
    imm = np.asarray(result.posterior.diagnostics["Coefficients"].inverse_mass_matrix)
    assert imm.shape == (4, 2, 2)
    # An estimate from the last slow window's ~100 draws: ±12 % sd per chain.
    ratio = imm[:, 0, 1] / cov[0, 1]
    assert np.all((ratio > 0.6) & (ratio < 1.4)), ratio
    samples = result.posterior.samples
    sd = np.sqrt(np.diag(cov))
    check_moments(samples.a, float(mean[0]), float(sd[0]))
    check_moments(samples.b, float(mean[1]), float(sd[1]))


def test_metric_follows_a_given_matrix():
    """`metric="auto"` takes the kind of a given `inverse_mass_matrix`."""
    model = _marked(inverse_mass_matrix=jnp.eye(2), warmup=20, keep=5)
    diagnostics = _run(model).posterior.diagnostics["Coefficients"]
    assert diagnostics.inverse_mass_matrix.shape == (4, 2, 2)


def _hmc(key, **kwargs):
    """The quickstart problem with fixed-length HMC, 10 integration steps and a
    diagonal metric (the setting of `benchmarks/hmc_robustness.py`)."""
    mean, cov = exact_posterior(*DATA)
    model = eb.bayesian(
        Coefficients(jnp.array(0.0), jnp.array(0.0)),
        blackjax.hmc,
        num_chains=4,
        warmup=500,
        keep=1000,
        init_jitter=0.1,
        likelihood_scale=LIKELIHOOD_SCALE,
        prior=eb.priors.gaussian(10.0),
        num_integration_steps=10,
        metric="diag",
        **kwargs,
    )
    samples = _run(model, key=key).posterior.samples
    draws = [samples.a, samples.b]
    rhat = np.array([float(eb.rhat(x)) for x in draws])
    sd = np.array([float(jnp.std(x)) for x in draws]) / np.sqrt(np.diag(cov))
    return rhat, sd


def test_fixed_length_hmc_is_jittered_and_exact():
    """Key 0 of the HMC robustness benchmark (`benchmarks/hmc_robustness.py`):
    with one pooled step size and no jitter every chain of 10-step HMC runs a
    near-periodic orbit (R-hat of a ≈ 1.4, sd ≈ half the exact one); the defaults
    (per-chain adaptation, step size jittered by ±20 %) are exact."""
    rhat, sd = _hmc(0)
    assert np.all(rhat < 1.05), rhat
    assert np.all(np.abs(sd - 1) < 0.10), sd
    rhat, sd = _hmc(0, adapt="pooled", step_size_jitter=0.0)
    assert rhat[0] > 1.2 and sd[0] < 0.7, (rhat, sd)


@pytest.mark.slow
def test_fixed_length_hmc_over_twelve_keys():
    """The benchmark's target: keys 0–11, R-hat < 1.05 and sd within 10 % on all."""
    for key in range(12):
        rhat, sd = _hmc(key)
        assert np.all(rhat < 1.05), (key, rhat)
        assert np.all(np.abs(sd - 1) < 0.10), (key, sd)


def test_log_lines_show_the_tuning(caplog):
    model = _marked(warmup=30, keep=10, metric="dense")
    with caplog.at_level(logging.INFO, logger="eqbayes"):
        _run(model)
    text = caplog.text
    assert "window adaptation per chain, dense metric, from step size 1" in text
    assert re.search(r"step size [0-9.e-]+–[0-9.e-]+ over the chains", text)
    assert "dense inverse mass matrix, diagonal entries" in text
    caplog.clear()
    model = _marked(blackjax.hmc, warmup=30, keep=10, num_integration_steps=3)
    with caplog.at_level(logging.INFO, logger="eqbayes"):
        _run(model)
    assert "step size jittered by ±20%" in caplog.text


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(adapt="chains"), "`adapt` is True (each chain adapts its own"),
        (dict(metric="full"), '`metric` is "auto", "diag", "dense" or "low_rank".'),
        (
            dict(kernel=blackjax.mala, step_size=0.1, metric="dense"),
            "this kernel takes no inverse mass matrix. Drop `metric=`.",
        ),
        (
            dict(metric="diag", inverse_mass_matrix=jnp.eye(2)),
            "the given inverse mass matrix is dense (a 1-D array is diag",
        ),
        (dict(step_size_jitter=1.0), "is a fraction 0 <= j < 1 of the step size"),
        (dict(step_size_jitter=-0.1), "is a fraction 0 <= j < 1 of the step size"),
        (
            dict(kernel=blackjax.sgld, step_size=1e-3, step_size_jitter=0.1),
            "stochastic-gradient kernels take their step size at every step",
        ),
    ],
)
def test_bad_settings_are_named(kwargs, match):
    kernel = kwargs.pop("kernel", blackjax.nuts)
    with pytest.raises(ValueError, match=re.escape(match)):
        _marked(kernel, **kwargs)


def _chees(**kwargs):
    """ChEES-HMC on the quickstart problem, with the posterior's variances as the
    (fixed) inverse mass matrix."""
    _, cov = exact_posterior(*DATA)
    settings = dict(
        adapt="chees",
        num_chains=16,
        warmup=300,
        keep=300,
        inverse_mass_matrix=jnp.asarray(np.diag(cov), jnp.float32),
    )
    settings.update(kwargs)
    return _marked(blackjax.hmc, **settings)


def test_chees_hmc_is_exact():
    """`adapt="chees"`: one step size for all chains, a jittered number of
    integration steps per transition, exact moments."""
    mean, cov = exact_posterior(*DATA)
    result = _run(_chees())
    diagnostics = result.posterior.diagnostics["Coefficients"]
    assert len(np.unique(np.asarray(diagnostics.step_size))) == 1
    steps = np.asarray(diagnostics.num_integration_steps)
    assert len(np.unique(steps)) > 1 and np.all(steps == steps[:1])  # shared jitter
    samples = result.posterior.samples
    sd = np.sqrt(np.diag(cov))
    check_moments(samples.a, float(mean[0]), float(sd[0]))
    check_moments(samples.b, float(mean[1]), float(sd[1]))


def test_chees_resumes_bitwise(tmp_path):
    """The ChEES state is part of the saved state: a solve saved mid-warmup
    continues with the same bits."""
    from conftest import tree_equal

    model = _chees(num_chains=4, warmup=20, keep=10)
    solver = eb.Solver(mse, progress=False)
    state = solver.init(model, key=jr.key(1), args=DATA)
    like = solver.init(model, key=jr.key(2), args=DATA)
    for _ in range(7):
        state = solver.step(state, args=DATA)
    eb.save(tmp_path / "state.eqx", state)
    resumed = solver.run(
        model,
        key=jr.key(1),
        args=DATA,
        state=eb.load(tmp_path / "state.eqx", like=like),
    )
    full = solver.run(model, key=jr.key(1), args=DATA)
    assert tree_equal(resumed.posterior.samples, full.posterior.samples)
    assert tree_equal(resumed.posterior.diagnostics, full.posterior.diagnostics)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(kernel=blackjax.nuts), "NUTS chooses its own trajectory length"),
        (
            dict(num_integration_steps=10),
            "Drop `num_integration_steps=`.",
        ),
        (dict(metric="dense"), "works with a diagonal metric only"),
        (dict(warmup=0, step_size=0.01), "pass `warmup=` > 0"),
    ],
)
def test_bad_chees_settings_are_named(kwargs, match):
    kernel = kwargs.pop("kernel", blackjax.hmc)
    with pytest.raises(ValueError, match=re.escape(match)):
        _marked(kernel, adapt="chees", **kwargs)


def test_chees_estimates_a_diagonal_metric():
    """Without a given inverse mass matrix, ChEES-HMC estimates a diagonal one
    from every chain's draws in the second half of the warmup."""
    mean, cov = exact_posterior(*DATA)
    model = _marked(blackjax.hmc, adapt="chees", num_chains=16, warmup=400, keep=300)
    result = _run(model)
    imm = np.asarray(result.posterior.diagnostics["Coefficients"].inverse_mass_matrix)
    ratio = imm / np.diag(cov)
    assert np.all((ratio > 0.7) & (ratio < 1.4)), ratio  # 16 x 200 pooled draws
    samples = result.posterior.samples
    sd = np.sqrt(np.diag(cov))
    check_moments(samples.a, float(mean[0]), float(sd[0]))
    check_moments(samples.b, float(mean[1]), float(sd[1]))


def test_chees_on_matrix_shaped_parameters():
    """ChEES-HMC with a position whose leaves are not vectors (a weight matrix, as
    in a network layer): exact moments of a Gaussian with different scales."""
    mean = jnp.array([[1.0, -2.0, 0.5], [0.0, 3.0, -1.0]])
    sd = jnp.array([[1.0, 0.5, 2.0], [0.3, 1.0, 1.5]])
    model = eb.bayesian(
        jnp.zeros((2, 3)),
        blackjax.hmc,
        adapt="chees",
        prior=lambda w: jnp.zeros(()),
        num_chains=8,
        warmup=300,
        keep=300,
    )
    loss = lambda w: 0.5 * jnp.sum(((w - mean) / sd) ** 2)  # noqa: E731
    samples = eb.Solver(loss, progress=False).run(model, key=jr.key(0)).posterior
    draws = samples.samples
    assert draws.shape == (8, 300, 2, 3)
    for i in range(2):
        for j in range(3):
            check_moments(draws[:, :, i, j], float(mean[i, j]), float(sd[i, j]))
