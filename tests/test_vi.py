"""Variational groups: accuracy against exact posteriors, mechanics, beside MCMC."""

import logging

import blackjax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
import pytest
from conftest import tree_equal
from problems import (
    Coefficients,
    exact_posterior,
    LIKELIHOOD_SCALE,
    log_evidence,
    mse,
    nearly_collinear_data,
    sincos_data,
)

import eqbayes as eb


DATA = sincos_data()
ADAM = optax.adam(1e-2)


def _marked(algorithm=blackjax.meanfield_vi, **kwargs):
    config = dict(
        optimizer=ADAM,
        likelihood_scale=LIKELIHOOD_SCALE,
        prior=eb.priors.gaussian(10.0),
        posterior_draws=400,
    )
    config.update(kwargs)
    model = Coefficients(jnp.array(3.0), jnp.array(-2.5))
    return eb.vi(model, algorithm, **config)


def _exact(data):
    mean, cov = exact_posterior(*data)
    return mean, np.sqrt(np.diag(cov))


def _corr(cov):
    cov = np.asarray(cov)
    return cov[0, 1] / np.sqrt(cov[0, 0] * cov[1, 1])


@pytest.mark.parametrize("dtype_name", ["float32", "float64"])
def test_meanfield_quick_example(dtype_name):
    """The sin/cos problem: an exact Gaussian posterior with (almost) independent
    coefficients, which the mean-field family can represent."""
    with jax.enable_x64(dtype_name == "float64"):
        dtype = jnp.dtype(dtype_name)
        f1, f2, y = sincos_data(dtype=dtype)
        mean, cov = exact_posterior(f1, f2, y)
        sd = np.sqrt(np.diag(cov))
        model = eb.vi(
            Coefficients(jnp.array(3.0, dtype), jnp.array(-2.5, dtype)),
            blackjax.meanfield_vi,
            optimizer=ADAM,
            likelihood_scale=LIKELIHOOD_SCALE,
            prior=eb.priors.gaussian(10.0),
        )
        result = eb.Solver(mse, progress=False, print_every=100).run(
            model, steps=2000, key=jr.key(0), args=(f1, f2, y)
        )
        q = result.variational["Coefficients"]
        assert isinstance(q, eb.MeanFieldGaussian)
        got_mean = np.array([q.mean.a, q.mean.b])
        got_sd = np.array([q.std.a, q.std.b])
        assert np.all(np.abs(got_mean - mean) < 0.5 * sd), (got_mean, mean, sd)
        assert np.all(np.abs(got_sd / sd - 1) < 0.2), (got_sd, sd)
        # The draws from q: the chain layout with one "chain", in the model's dtype.
        samples = result.posterior.samples
        assert samples.a.shape == (1, 500) and samples.a.dtype == dtype
        draws = np.stack([np.ravel(samples.a), np.ravel(samples.b)])
        mcse = got_sd / np.sqrt(500)
        assert np.all(np.abs(draws.mean(axis=1) - got_mean) < 4 * mcse)
        assert np.all(np.abs(draws.std(axis=1) / got_sd - 1) < 0.15)
        # The plain model sits at the mean of q; no kernel diagnostics.
        assert result.model.a == q.mean.a and result.model.b == q.mean.b
        assert result.posterior.diagnostics == {"Coefficients": None}
        # The negative ELBO per chunk: it decreases to −log Z, which an exact q
        # attains (blackjax's `info.elbo` is already the negative ELBO).
        neg_elbo = result.history.neg_elbo["Coefficients"]
        assert neg_elbo.shape == (20,) and result.history.loss.shape == (20,)
        assert neg_elbo[0] > neg_elbo[-1]
        assert abs(float(neg_elbo[-1]) + log_evidence(f1, f2, y)) < 0.01
        # predict, rhat and ess work unchanged on the draws.
        preds = result.posterior.predict(lambda m, f1, f2: m(f1, f2), f1, f2)
        assert preds.shape == (1, 500, f1.shape[0])
        assert eb.rhat(samples.a).shape == () and eb.ess(samples.a).shape == ()


def test_fullrank_recovers_correlation_meanfield_does_not():
    """Nearly collinear features: a posterior correlation of −0.995. The full-rank
    family recovers it; the mean-field family cannot represent it."""
    f1, f2, y = nearly_collinear_data()
    mean, cov = exact_posterior(f1, f2, y)
    sd = np.sqrt(np.diag(cov))
    exact = _corr(cov)
    solver = eb.Solver(mse, progress=False, print_every=1000)
    fits = {}
    for name, algorithm in [
        ("full", blackjax.fullrank_vi),
        ("meanfield", blackjax.meanfield_vi),
    ]:
        model = _marked(algorithm, optimizer=optax.adam(5e-2))
        fits[name] = solver.run(model, steps=4000, key=jr.key(1), args=(f1, f2, y))

    full = fits["full"]
    q = full.variational["Coefficients"]
    assert isinstance(q, eb.FullRankGaussian)
    assert abs(_corr(q.covariance()) - exact) < 0.05, (_corr(q.covariance()), exact)
    samples = full.posterior.samples
    drawn = np.corrcoef(np.ravel(samples.a), np.ravel(samples.b))[0, 1]
    assert abs(drawn - exact) < 0.05, (drawn, exact)
    got_mean = np.array([q.mean.a, q.mean.b])
    assert np.all(np.abs(got_mean - mean) < 0.5 * sd), (got_mean, mean, sd)

    meanfield = fits["meanfield"]
    q = meanfield.variational["Coefficients"]
    assert _corr(q.covariance()) == 0.0
    samples = meanfield.posterior.samples
    drawn = np.corrcoef(np.ravel(samples.a), np.ravel(samples.b))[0, 1]
    assert abs(drawn - exact) > 0.5, (drawn, exact)
    # It also underestimates the marginal spread (the known mean-field failure).
    assert float(q.std.a) < 0.5 * sd[0]


def test_vi_beside_nuts():
    """`a` sampled by NUTS (2 chains), `b` fitted by VI, in one solve."""
    f1, f2, y = DATA
    mean, sd = _exact(DATA)
    model = Coefficients(jnp.array(3.0), jnp.array(-2.5))
    model = eb.bayesian(
        model,
        blackjax.nuts,
        where=lambda m: m.a,
        num_chains=2,
        warmup=300,
        keep=600,
        likelihood_scale=LIKELIHOOD_SCALE,
    )
    model = eb.vi(
        model,
        where=lambda m: m.b,
        optimizer=ADAM,
        posterior_draws=600,
        likelihood_scale=LIKELIHOOD_SCALE,
    )
    result = eb.Solver(mse, progress=False).run(model, key=jr.key(2), args=DATA)
    samples = result.posterior.samples
    # The VI draws take the chains' layout, so (chain, draw) is one joint draw.
    assert samples.a.shape == (2, 600) and samples.b.shape == (2, 600)
    draws_a = samples.a
    mcse = sd[0] / np.sqrt(float(eb.ess(draws_a)))
    assert abs(float(jnp.mean(draws_a)) - mean[0]) < 4 * mcse
    assert abs(float(jnp.std(draws_a)) / sd[0] - 1) < 0.1
    q = result.variational["b"]
    assert abs(float(q.mean) - mean[1]) < 0.5 * sd[1]
    assert abs(float(q.std) / sd[1] - 1) < 0.2
    assert result.posterior.diagnostics["b"] is None
    assert result.posterior.diagnostics["a"] is not None
    preds = result.posterior.predict(lambda m, f1, f2: m(f1, f2), f1, f2)
    assert preds.shape == (2, 600, f1.shape[0])
    assert set(result.history.neg_elbo) == {"b"}


def test_manual_steps_equal_run_and_keys():
    model = _marked(posterior_draws=50)
    solver = eb.Solver(mse, progress=False, print_every=7)
    run = solver.run(model, steps=30, key=jr.key(3), args=DATA)
    state = solver.init(model, key=jr.key(3), args=DATA)
    for _ in range(30):
        state = solver.step(state, args=DATA)
    manual = solver.result(state)
    assert tree_equal(run.posterior.samples, manual.posterior.samples)
    assert tree_equal(run.variational, manual.variational)
    assert tree_equal(run.model, manual.model)
    again = solver.run(model, steps=30, key=jr.key(3), args=DATA)
    assert tree_equal(run.posterior.samples, again.posterior.samples)
    other = solver.run(model, steps=30, key=jr.key(4), args=DATA)
    assert not np.array_equal(run.posterior.samples.a, other.posterior.samples.a)
    # Chunks of 7 steps: 5 chunks, the last one shorter.
    assert run.history.neg_elbo["Coefficients"].shape == (5,)


def test_compiles_once():
    traces = []

    def loss(model, f1, f2, y):
        traces.append(None)
        return mse(model, f1, f2, y)

    eb.Solver(loss, progress=False).run(_marked(), steps=20, key=jr.key(0), args=DATA)
    first = len(traces)
    f1, f2, y = DATA
    eb.Solver(loss, progress=False).run(
        _marked(), steps=20, key=jr.key(1), args=(f1, f2, y + 0.01)
    )
    assert len(traces) == first


@pytest.mark.parametrize("algorithm", [blackjax.meanfield_vi, blackjax.fullrank_vi])
def test_initial_q(algorithm):
    solver = eb.Solver(mse, progress=False)
    state = solver.init(_marked(algorithm, init_log_std=-1.5), key=jr.key(0), args=DATA)
    q = solver.result(state).variational["Coefficients"]
    assert float(q.mean.a) == 3.0 and float(q.mean.b) == -2.5
    expected = np.exp(-3.0) * np.eye(2)
    assert np.allclose(q.covariance(), expected, rtol=1e-5)
    state = solver.init(
        _marked(algorithm, init_mu_at_position=False), key=jr.key(0), args=DATA
    )
    q = solver.result(state).variational["Coefficients"]
    assert float(q.mean.a) == 0.0 and float(q.mean.b) == 0.0
    assert np.allclose(q.covariance(), np.exp(-6.0) * np.eye(2), rtol=1e-5)


def test_non_finite_steps_leave_q_unchanged():
    def nan_loss(model, f1, f2, y):
        # Finite at the starting mean only: every draw from q gives NaN.
        return jnp.where(model.a == 3.0, mse(model, f1, f2, y), jnp.nan)

    model = _marked()
    result = eb.Solver(nan_loss, progress=False).run(
        model, steps=5, key=jr.key(0), args=DATA
    )
    q = result.variational["Coefficients"]
    assert float(q.mean.a) == 3.0 and float(q.mean.b) == -2.5
    assert np.allclose(q.log_std.a, -3.0)


def test_vi_on_part_of_an_mlp_with_frozen_rest():
    """A layer of an `eqx.nn.MLP` (its activations are non-array leaves)."""
    x = jnp.linspace(-1, 1, 20)[:, None]
    y = jnp.sin(3 * x)
    mlp = eqx.nn.MLP(1, 1, 8, 1, activation=jnp.tanh, key=jr.key(0))

    def loss(model, x, y):
        return jnp.mean((jax.vmap(model)(x) - y) ** 2)

    marked = eb.vi(
        mlp,
        blackjax.meanfield_vi,
        where=lambda m: m.layers[-1],
        optimizer=ADAM,
        posterior_draws=16,
        likelihood_scale=100.0,
        prior=eb.priors.gaussian(1.0),
    )
    assert isinstance(marked.layers[-1], eb.VIGroup)
    assert tree_equal(eb.unwrap(marked), mlp)
    result = eb.Solver(loss, progress=False).run(
        marked, steps=50, key=jr.key(0), args=(x, y)
    )
    samples = result.posterior.samples
    assert samples.layers[-1].weight.shape == (1, 16, 1, 8)
    assert samples.layers[0] is None or samples.layers[0].weight is None
    assert np.array_equal(result.model.layers[0].weight, mlp.layers[0].weight)
    preds = result.posterior.predict(lambda m, x: jax.vmap(m)(x), x)
    assert preds.shape == (1, 16, 20, 1)


def test_logging(caplog):
    assert "variational fit with 'meanfield_vi'" in _marked().describe()  # pre-init
    with caplog.at_level(logging.INFO, logger="eqbayes"):
        eb.Solver(mse, progress=False).run(
            _marked(), steps=10, key=jr.key(0), args=DATA
        )
    text = caplog.text
    assert "Group 'Coefficients': variational fit with 'meanfield_vi'" in text
    assert "General path" in text
    assert "final -ELBO estimate" in text


def test_pattern_e_vi_and_mcmc_on_masks_of_one_sub_tree():
    """MCMC on one mask, VI on another mask of the same sub-tree: the VI draws are
    spliced into the chain's layout."""
    f1, f2, y = DATA
    mean, sd = _exact(DATA)
    model = Coefficients(jnp.array(3.0), jnp.array(-2.5))
    model = eb.bayesian(
        model,
        blackjax.nuts,
        mask=Coefficients(True, False),
        warmup=300,
        keep=500,
        num_chains=2,
        likelihood_scale=LIKELIHOOD_SCALE,
    )
    model = eb.vi(
        model,
        mask=Coefficients(False, True),
        optimizer=ADAM,
        posterior_draws=500,
        likelihood_scale=LIKELIHOOD_SCALE,
        name="b_vi",
    )
    result = eb.Solver(mse, progress=False).run(model, key=jr.key(5), args=DATA)
    samples = result.posterior.samples
    assert samples.a.shape == (2, 500) and samples.b.shape == (2, 500)
    mcse = sd[0] / np.sqrt(float(eb.ess(samples.a)))
    assert abs(float(jnp.mean(samples.a)) - mean[0]) < 4 * mcse
    q = result.variational["b_vi"]
    assert q.mean.a is None
    assert abs(float(q.mean.b) - mean[1]) < 0.5 * sd[1]
    assert abs(float(q.std.b) / sd[1] - 1) < 0.2
    assert result.posterior.diagnostics["b_vi"] is None


def test_vi_beside_optax_and_with_minibatches():
    """`a` a point estimate by optax, `b` fitted by VI on minibatches of the data."""
    f1, f2, y = DATA
    mean, cov = exact_posterior(f1, f2, y)
    sd = np.sqrt(np.diag(cov))

    def batch_loss(model, batch):
        f1, f2, y = batch
        return jnp.mean((model(f1, f2) - y) ** 2)

    model = Coefficients(jnp.array(3.0), jnp.array(-2.5))
    model = eb.optimise(model, optax.adam(1e-2), where=lambda m: m.a)
    model = eb.vi(
        model, where=lambda m: m.b, optimizer=ADAM, likelihood_scale=LIKELIHOOD_SCALE
    )
    solver = eb.Solver(batch_loss, progress=False)
    full = solver.run(model, steps=2000, key=jr.key(6), data=DATA)
    # The optax part converges to the MAP (the exact posterior mean: b's posterior is
    # independent of a's), VI to b's marginal.
    assert abs(float(full.model.a) - mean[0]) < 0.1 * sd[0]
    q = full.variational["b"]
    assert abs(float(q.mean) - mean[1]) < 0.5 * sd[1]
    assert abs(float(q.std) / sd[1] - 1) < 0.2
    assert full.posterior.samples.a is None
    assert full.posterior.samples.b.shape == (1, 500)
    # Minibatches of 50 rows: unbiased but noisier gradients of the same ELBO.
    mini = solver.run(model, steps=2000, key=jr.key(6), data=DATA, batch_size=50)
    q = mini.variational["b"]
    assert abs(float(q.mean) - mean[1]) < 2 * sd[1]
    assert not np.array_equal(mini.posterior.samples.b, full.posterior.samples.b)
