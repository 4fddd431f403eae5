"""Tempered SMC groups: two modes with their masses, the evidence against
quadrature and closed forms, constrained priors, and the errors."""

import logging
import math
import re

import blackjax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
import pytest

import eqbayes as eb
from eqbayes import _smc


# -- problems -------------------------------------------------------------------------


class Theta(eqx.Module):
    theta: jax.Array


class Linear(eqx.Module):
    beta: jax.Array


TWO_MODES_NOISE = 0.5
TWO_MODES_PRIOR = 3.0


def two_modes_data():
    """y_j = θ² + N(0, 0.5²), ten points near 4: modes at θ ≈ ±2."""
    return 4.0 + TWO_MODES_NOISE * jr.normal(jr.key(1), (10,))


def two_modes_loss(model, y):
    """The full negative log-likelihood, constants included."""
    r = (y - model.theta**2) / TWO_MODES_NOISE
    const = y.shape[0] * (math.log(TWO_MODES_NOISE) + 0.5 * math.log(2 * math.pi))
    return 0.5 * jnp.sum(r**2) + const


def two_modes_quadrature(y):
    """`(log Z, E[θ²])` on a fine grid (float64 NumPy)."""
    y = np.asarray(y, np.float64)
    grid = np.linspace(-12, 12, 240_001)
    s, p = TWO_MODES_NOISE, TWO_MODES_PRIOR
    log_prior = -0.5 * (grid / p) ** 2 - math.log(p * math.sqrt(2 * math.pi))
    r = (y[None, :] - grid[:, None] ** 2) / s
    log_lik = -0.5 * np.sum(r**2, axis=1) - y.size * (
        math.log(s) + 0.5 * math.log(2 * math.pi)
    )
    joint = log_prior + log_lik
    top = joint.max()
    w = np.exp(joint - top)
    log_z = top + math.log(w.sum() * (grid[1] - grid[0]))
    return log_z, float(np.sum(w * grid**2) / w.sum())


REG_NOISE, REG_PRIOR = 0.8, 2.0


def regression_data():
    """40 rows, 5 coefficients."""
    kx, kb, ke = jr.split(jr.key(42), 3)
    x = jr.normal(kx, (40, 5))
    y = x @ jr.normal(kb, (5,)) + REG_NOISE * jr.normal(ke, (40,))
    return x, y


def regression_loss(model, x, y):
    r = (y - x @ model.beta) / REG_NOISE
    const = y.shape[0] * (math.log(REG_NOISE) + 0.5 * math.log(2 * math.pi))
    return 0.5 * jnp.sum(r**2) + const


def regression_exact(x, y):
    """`(log Z, posterior mean, posterior sd)` in closed form."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    n, d = x.shape
    cov_y = REG_NOISE**2 * np.eye(n) + REG_PRIOR**2 * x @ x.T
    _, log_det = np.linalg.slogdet(cov_y)
    log_z = -0.5 * (y @ np.linalg.solve(cov_y, y) + log_det + n * math.log(2 * math.pi))
    cov = np.linalg.inv(x.T @ x / REG_NOISE**2 + np.eye(d) / REG_PRIOR**2)
    mean = cov @ x.T @ y / REG_NOISE**2
    return log_z, mean, np.sqrt(np.diag(cov))


def _two_modes_model(**kwargs):
    kwargs.setdefault("prior", eb.priors.normal(0.0, TWO_MODES_PRIOR))
    return eb.smc(Theta(jnp.array(0.0)), where=lambda m: m.theta, **kwargs)


@pytest.fixture(scope="module")
def two_modes_runs():
    """Four solves of the two-mode problem (one compiled program)."""
    y = two_modes_data()
    model = _two_modes_model(num_particles=1000)
    solver = eb.Solver(two_modes_loss, progress=False)
    return y, [solver.run(model, key=jr.key(seed), args=(y,)) for seed in range(4)]


# -- results --------------------------------------------------------------------------


def test_two_modes_masses_and_evidence(two_modes_runs):
    """Both modes, each with mass 1/2 ± 0.05 on average over seeds; E[θ²] within
    2 % of quadrature and log Z within 0.3 of it on every seed."""
    y, results = two_modes_runs
    log_z, second_moment = two_modes_quadrature(y)
    masses = []
    for result in results:
        theta = np.asarray(result.posterior.samples.theta)
        assert theta.shape == (1, 1000)
        masses.append(np.mean(theta > 0))
        assert abs(np.mean(theta**2) / second_moment - 1) < 0.02
        assert abs(float(result.posterior.log_evidence) - log_z) < 0.3
    assert abs(np.mean(masses) - 0.5) < 0.05
    assert min(masses) > 0.3  # every seed keeps both modes


def test_result_structure(two_modes_runs):
    """Diagnostics per stage, λ reaching 1, one solver step per stage, and the
    posterior's consumers working on the particles."""
    y, results = two_modes_runs
    result = results[0]
    d = result.posterior.diagnostics["theta"]
    assert isinstance(d, eb.SMCDiagnostics)
    stages = d.tempering.shape[0]
    assert stages >= 2 and int(result.state.step) == stages
    assert float(d.tempering[-1]) == 1.0
    assert np.all(np.diff(np.asarray(d.tempering)) > 0)
    # Every stage but the last keeps half the ESS (the last may keep more).
    np.testing.assert_allclose(np.asarray(d.ess[:-1]), 500, rtol=0.01)
    assert np.all(np.asarray(d.acceptance_rate) > 0.2)
    np.testing.assert_allclose(
        float(jnp.sum(d.log_evidence_increment)),
        float(result.posterior.log_evidence),
        rtol=1e-5,
    )
    assert result.history.monitor["theta"]["tempering"][-1] == 1.0
    summary = result.posterior.summary()
    assert "tempered SMC" in summary.groups["theta"]
    squares = result.posterior.predict(lambda m: m.theta**2)
    assert squares.shape == (1, 1000)
    idata = result.posterior.to_arviz()
    assert idata.posterior["theta"].shape == (1, 1000)
    # The model holds the particle of highest posterior density.
    assert abs(abs(float(result.model.theta)) - 2.0) < 0.3


def test_continue_and_steps(caplog, tmp_path):
    """A solve cut short warns and has no evidence; continued (also from a
    checkpoint), it finishes exactly as one solve does. (The fixture's size: the
    compiled programs are reused.)"""
    y = two_modes_data()
    model = _two_modes_model(num_particles=1000)
    solver = eb.Solver(two_modes_loss, progress=False)
    key = jr.key(3)
    whole = solver.run(model, key=key, args=(y,))
    with caplog.at_level(logging.WARNING, logger="eqbayes"):
        part = solver.run(model, steps=1, key=key, args=(y,))
    assert "the solve stopped after 1 stage(s)" in caplog.text
    assert math.isnan(float(part.posterior.log_evidence))
    rest = solver.run(None, state=part.state, args=(y,))
    assert int(rest.state.step) == int(whole.state.step)
    np.testing.assert_array_equal(
        np.asarray(rest.posterior.samples.theta),
        np.asarray(whole.posterior.samples.theta),
    )
    np.testing.assert_allclose(
        float(rest.posterior.log_evidence), float(whole.posterior.log_evidence)
    )
    eb.save(tmp_path / "part.eqx", part.state)
    like = solver.init(model, key=key, args=(y,))
    loaded = eb.load(tmp_path / "part.eqx", like=like)
    resumed = solver.run(None, state=loaded, args=(y,))
    np.testing.assert_array_equal(
        np.asarray(resumed.posterior.samples.theta),
        np.asarray(whole.posterior.samples.theta),
    )


def test_sample_prior():
    """`eb.sample_prior` draws an SMC group from its prior."""
    prior = eb.sample_prior(_two_modes_model(), key=jr.key(0), num_draws=4000)
    theta = np.asarray(prior.samples.theta)
    assert theta.shape == (1, 4000)
    assert abs(theta.std() / TWO_MODES_PRIOR - 1) < 0.05


@pytest.mark.slow
def test_manual_steps_match_run():
    """`Solver.step` by hand runs one stage per call, the same stages as `run`,
    and leaves a finished group unchanged."""
    y = two_modes_data()
    model = _two_modes_model(num_particles=300)
    solver = eb.Solver(two_modes_loss, progress=False)
    whole = solver.run(model, key=jr.key(5), args=(y,))
    state = solver.init(model, key=jr.key(5), args=(y,))
    for _ in range(int(whole.state.step) + 2):  # two steps past the end
        state = solver.step(state, args=(y,))
    result = solver.result(state, args=(y,))
    np.testing.assert_array_equal(
        np.asarray(result.posterior.samples.theta),
        np.asarray(whole.posterior.samples.theta),
    )
    assert float(result.posterior.log_evidence) == float(whole.posterior.log_evidence)


@pytest.mark.slow
def test_regression_evidence_mean_sd():
    """Conjugate linear-Gaussian regression (5 coefficients, 40 rows): log Z within
    0.2 of the closed form on average over seeds, and within 0.3 on every seed;
    posterior means within 5 % of the posterior sd (about 3 MCSE with 1000
    particles) and sds within 5 %, on average over seeds."""
    x, y = regression_data()
    log_z, mean, sd = regression_exact(x, y)
    model = eb.smc(
        Linear(jnp.zeros(5)),
        where=lambda m: m.beta,
        prior=eb.priors.normal(0.0, REG_PRIOR),
        num_particles=1000,
    )
    solver = eb.Solver(regression_loss, progress=False)
    errors, means, sds = [], [], []
    for seed in range(6):
        result = solver.run(model, key=jr.key(seed), args=(x, y))
        beta = np.asarray(result.posterior.samples.beta)[0]
        errors.append(float(result.posterior.log_evidence) - log_z)
        means.append(beta.mean(0))
        sds.append(beta.std(0))
    assert max(abs(e) for e in errors) < 0.3
    assert abs(np.mean(errors)) < 0.2
    np.testing.assert_array_less(np.abs(np.mean(means, 0) - mean) / sd, 0.05)
    np.testing.assert_array_less(np.abs(np.mean(sds, 0) / sd - 1), 0.05)


@pytest.mark.slow
def test_constrained_prior_evidence():
    """A half-normal scale, drawn in constrained space and moved in unconstrained
    space with the Jacobian: log Z and E[s] against quadrature."""
    y = 1.5 * jr.normal(jr.key(7), (20,))

    def loss(model, y):
        s = model.theta
        return 0.5 * jnp.sum((y / s) ** 2) + y.shape[0] * (
            jnp.log(s) + 0.5 * math.log(2 * math.pi)
        )

    grid = np.linspace(1e-4, 10, 400_001)
    yn = np.asarray(y, np.float64)
    joint = (
        math.log(2)
        - 0.5 * grid**2
        - 0.5 * math.log(2 * math.pi)
        - 0.5 * np.sum(yn**2) / grid**2
        - yn.size * (np.log(grid) + 0.5 * math.log(2 * math.pi))
    )
    top = joint.max()
    w = np.exp(joint - top)
    log_z = top + math.log(w.sum() * (grid[1] - grid[0]))
    mean = float(np.sum(w * grid) / w.sum())

    model = eb.smc(
        Theta(jnp.array(1.0)),
        where=lambda m: m.theta,
        prior=eb.priors.half_normal(1.0),
        num_particles=1000,
    )
    solver = eb.Solver(loss, progress=False)
    for seed in range(3):
        result = solver.run(model, key=jr.key(seed), args=(y,))
        s = np.asarray(result.posterior.samples.theta)
        assert np.all(s > 0)
        assert abs(float(result.posterior.log_evidence) - log_z) < 0.2
        assert abs(s.mean() / mean - 1) < 0.02


@pytest.mark.slow
def test_diagonal_metric_above_max_dense():
    """120 independent Gaussian components (more than `MAX_DENSE`: the moves are
    whitened by the particles' variances): log Z, means and sds in closed form."""
    d = 120
    assert d > _smc.MAX_DENSE

    def loss(model):  # y = 1 observed once per component with unit noise
        return 0.5 * jnp.sum((model.beta - 1.0) ** 2) + d * 0.5 * math.log(2 * math.pi)

    # beta_i ~ N(0, 2²): y_i ~ N(0, 5), posterior N(4/5, 4/5).
    log_z = d * (-0.5 * math.log(2 * math.pi * 5) - 0.5 / 5)
    model = eb.smc(
        Linear(jnp.zeros(d)),
        where=lambda m: m.beta,
        prior=eb.priors.normal(0.0, 2.0),
        num_particles=500,
    )
    result = eb.Solver(loss, progress=False).run(model, key=jr.key(0))
    beta = np.asarray(result.posterior.samples.beta)[0]
    assert abs(float(result.posterior.log_evidence) - log_z) < 1.0
    # Averaged over the 120 components the Monte Carlo error is under 1 %.
    assert abs(beta.mean() / 0.8 - 1) < 0.03
    assert abs(beta.std(axis=0).mean() / math.sqrt(0.8) - 1) < 0.03


@pytest.mark.slow
def test_init_particles_for_a_plain_prior():
    """A prior eqbayes cannot draw from runs from `init=` draws of it."""
    y = two_modes_data()
    log_z, second_moment = two_modes_quadrature(y)

    def prior(theta):  # Normal(0, 3) as a plain function
        return jnp.sum(
            -0.5 * (theta / TWO_MODES_PRIOR) ** 2
            - math.log(TWO_MODES_PRIOR * math.sqrt(2 * math.pi))
        )

    draws = TWO_MODES_PRIOR * jr.normal(jr.key(11), (1000,))
    model = _two_modes_model(prior=prior, init=draws, num_particles=1000)
    result = eb.Solver(two_modes_loss, progress=False).run(
        model, key=jr.key(0), args=(y,)
    )
    theta = np.asarray(result.posterior.samples.theta)
    assert abs(float(result.posterior.log_evidence) - log_z) < 0.3
    assert abs(np.mean(theta**2) / second_moment - 1) < 0.02


@pytest.mark.slow
def test_other_kernel():
    """Moves by MALA (step size tuned, no metric) reach the same answer."""
    y = two_modes_data()
    log_z, second_moment = two_modes_quadrature(y)
    model = _two_modes_model(kernel=blackjax.mala, num_particles=1000)
    result = eb.Solver(two_modes_loss, progress=False).run(
        model, key=jr.key(0), args=(y,)
    )
    theta = np.asarray(result.posterior.samples.theta)
    assert abs(float(result.posterior.log_evidence) - log_z) < 0.3
    assert abs(np.mean(theta**2) / second_moment - 1) < 0.02
    assert abs(np.mean(theta > 0) - 0.5) < 0.1


# -- errors ---------------------------------------------------------------------------


@pytest.mark.parametrize("value", [1, 0, -3, True])
def test_num_particles(value):
    with pytest.raises(
        ValueError,
        match=re.escape(_smc._PARTICLES.format(value=value, name="theta")),
    ):
        _two_modes_model(num_particles=value)


@pytest.mark.parametrize("value", [0.0, 1.0, -0.5, 1.5, float("nan")])
def test_target_ess(value):
    with pytest.raises(
        ValueError,
        match=re.escape(_smc._TARGET_ESS.format(value=value, name="theta")),
    ):
        _two_modes_model(target_ess=value)


@pytest.mark.parametrize("value", [0, -1])
def test_num_mcmc_steps(value):
    with pytest.raises(
        ValueError,
        match=re.escape(_smc._MCMC_STEPS.format(value=value, name="theta")),
    ):
        _two_modes_model(num_mcmc_steps=value)


def test_prior_that_cannot_be_sampled():
    def prior(theta):
        return -0.5 * jnp.sum(theta**2)

    with pytest.raises(
        TypeError,
        match=re.escape(_smc._NOT_SAMPLEABLE.format(prior=prior, name="theta")),
    ):
        _two_modes_model(prior=prior)


def test_init_shape():
    with pytest.raises(ValueError, match=re.escape("`init` must hold")):
        _two_modes_model(init=jnp.zeros((10,)), num_particles=20)


def test_stochastic_gradient_kernel():
    with pytest.raises(
        TypeError,
        match=re.escape(_smc._SG_KERNEL.format(kernel="sgld", name="theta")),
    ):
        _two_modes_model(kernel=blackjax.sgld)


class Two(eqx.Module):
    a: jax.Array
    b: jax.Array


def _two_loss(model):
    return jnp.sum(model.a**2) + jnp.sum(model.b**2)


@pytest.mark.parametrize(
    "other",
    [
        lambda m: eb.bayesian(m, blackjax.nuts, where=lambda t: t.b, keep=10),
        lambda m: eb.optimise(m, optax.adam(1e-2), where=lambda t: t.b),
        lambda m: eb.vi(
            m, blackjax.meanfield_vi, where=lambda t: t.b, optimizer=optax.adam(1e-2)
        ),
    ],
)
def test_beside_another_group(other):
    model = eb.smc(Two(jnp.zeros(()), jnp.zeros(())), where=lambda t: t.a, prior=None)
    model = other(model)
    with pytest.raises(ValueError, match=re.escape("Tempered SMC moves its particles")):
        eb.Solver(_two_loss, progress=False).init(model, key=jr.key(0))


def test_beside_the_solvers_optimiser():
    model = eb.smc(Two(jnp.zeros(()), jnp.zeros(())), where=lambda t: t.a, prior=None)
    with pytest.raises(
        ValueError,
        match=re.escape(
            _smc._BESIDE.format(
                name="a", other="unmarked leaves", other_fn="eb.optimise"
            )
        ),
    ):
        eb.Solver(_two_loss, optimizer=optax.adam(1e-2), progress=False).init(
            model, key=jr.key(0)
        )


def test_non_finite_everywhere():
    def loss(model, y):
        return jnp.nan * two_modes_loss(model, y)

    model = _two_modes_model(num_particles=10)
    with pytest.raises(
        eqx.EquinoxRuntimeError,
        match=re.escape(_smc._ALL_NON_FINITE.format(name="theta")),
    ):
        eb.Solver(loss, progress=False).init(
            model, key=jr.key(0), args=(two_modes_data(),)
        )


def test_progress_bar_shows_tempering():
    bar = eb.callbacks.ProgressBar(delay=0.0)
    bar.start(0, 500)
    try:
        record = eb.callbacks.ChunkRecord(
            step=3,
            steps=3,
            end=500,
            loss=1.0,
            neg_elbo={},
            state=None,
            monitor={"theta": {"tempering": 0.25}},
        )
        bar(record)
        assert "tempering[theta]=0.25" in bar._bar.postfix
    finally:
        bar.end()
