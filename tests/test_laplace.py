"""Laplace groups: exact on linear-Gaussian models, the evidence, beside other
groups, and the errors."""

import logging
import pathlib
import re
import runpy

import blackjax
import equinox as eqx
import jax
import jax.flatten_util
import jax.numpy as jnp
import jax.random as jr
import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import optax
import pytest
from problems import (
    Coefficients,
    exact_posterior,
    LIKELIHOOD_SCALE,
    log_evidence,
    mse,
    NOISE,
    PRIOR_SIGMA,
    sincos_data,
)

import eqbayes as eb
from eqbayes import _laplace


PRIOR = eb.priors.gaussian(PRIOR_SIGMA)
OUTPUTS = (
    lambda m, f1, f2, y: m(f1, f2),
    lambda out, f1, f2, y: jnp.mean((out - y) ** 2),
)


def _x64(fn):
    def wrapped(*args, **kwargs):
        with jax.enable_x64(True):
            return fn(*args, **kwargs)

    wrapped.__name__ = fn.__name__
    return wrapped


def _solve(model, data, steps=0, key=0, **solver):
    return eb.Solver(mse, progress=False, **solver).run(
        model, steps=steps, key=jr.key(key), args=data
    )


def _at(theta, dtype=jnp.float64):
    return Coefficients(jnp.asarray(theta[0], dtype), jnp.asarray(theta[1], dtype))


def _kwargs(hessian):
    return {} if hessian == "full" else {"outputs": OUTPUTS}


def _flat(tree):
    return np.asarray(jax.flatten_util.ravel_pytree(tree)[0])


@pytest.mark.parametrize("hessian", ["full", "ggn", "diag"])
def test_linear_gaussian_is_exact(hessian):
    """At the posterior mode of a linear-Gaussian model the Laplace approximation is
    the posterior: mean, covariance (its diagonal for "diag") and evidence."""
    with jax.enable_x64(True):
        data = sincos_data(correlated=True, dtype=jnp.float64)
        mean, cov = exact_posterior(*data)
        model = eb.laplace(
            _at(mean),
            hessian=hessian,
            prior=PRIOR,
            likelihood_scale=LIKELIHOOD_SCALE,
            num_draws=4000,
            **_kwargs(hessian),
        )
        result = _solve(model, data)
        fit = result.variational["Coefficients"]
        assert isinstance(fit, eb.LaplaceGaussian)
        np.testing.assert_allclose(_flat(fit.mean), mean, rtol=0, atol=1e-12)
        precision = np.linalg.inv(cov)
        if hessian == "diag":
            np.testing.assert_allclose(fit.precision, np.diag(precision), rtol=1e-10)
            np.testing.assert_allclose(
                np.diag(fit.covariance()), 1 / np.diag(precision), rtol=1e-10
            )
        else:
            np.testing.assert_allclose(fit.covariance(), cov, rtol=1e-5, atol=1e-12)
            np.testing.assert_allclose(fit.variance(), np.diag(cov), rtol=1e-5)
            # Exact evidence: the loss is the Gaussian log-likelihood up to its
            # constant, which `log_evidence` leaves out too.
            np.testing.assert_allclose(
                fit.log_marginal_likelihood, log_evidence(*data), rtol=1e-10
            )
        # The draws: (1, num_draws) i.i.d. from the fit; z-scores of their means
        # (ESS = num_draws).
        draws = result.posterior.samples
        assert draws.a.shape == (1, 4000) and draws.a.dtype == jnp.float64
        stacked = np.stack([np.asarray(draws.a[0]), np.asarray(draws.b[0])], axis=1)
        sd = np.sqrt(np.diag(np.asarray(fit.covariance())))
        z = (stacked.mean(axis=0) - mean) / (sd / np.sqrt(4000))
        assert np.all(np.abs(z) < 4), z
        np.testing.assert_allclose(stacked.std(axis=0), sd, rtol=0.05)


def test_trained_to_the_mode_by_its_optimizer():
    """With `optimizer=` the group is trained to the posterior mode (loss and prior)
    during the solve; the fit there is the conjugate posterior to 1e-5."""
    with jax.enable_x64(True):
        data = sincos_data(correlated=True, dtype=jnp.float64)
        mean, cov = exact_posterior(*data)
        adam = optax.adam(optax.exponential_decay(0.05, 500, 0.5))
        model = eb.laplace(
            _at((0.0, 0.0)),
            prior=PRIOR,
            likelihood_scale=LIKELIHOOD_SCALE,
            optimizer=adam,
        )
        result = _solve(model, data, steps=4000)
        fit = result.variational["Coefficients"]
        np.testing.assert_allclose(_flat(fit.mean), mean, rtol=1e-5)
        np.testing.assert_allclose(fit.covariance(), cov, rtol=1e-5, atol=1e-12)
        # Everything else sees the optimum.
        np.testing.assert_allclose(
            [float(result.model.a), float(result.model.b)], mean, rtol=1e-5
        )


@_x64
def test_linearised_predictive_is_the_exact_predictive():
    """For a model linear in θ the linearised predictive is exact:
    var f(x) = x Σ xᵀ."""
    data = sincos_data(correlated=True, dtype=jnp.float64)
    mean, cov = exact_posterior(*data)
    model = eb.laplace(_at(mean), prior=PRIOR, likelihood_scale=LIKELIHOOD_SCALE)
    fit = _solve(model, data).variational["Coefficients"]
    f1, f2, _ = data
    mu, var = fit.predict_linearised(lambda m, a, b: {"f": m(a, b)}, f1, f2)
    features = np.stack([f1, f2], axis=1)
    np.testing.assert_allclose(mu["f"], features @ mean, rtol=1e-10)
    np.testing.assert_allclose(
        var["f"], np.einsum("ni,ij,nj->n", features, cov, features), rtol=1e-8
    )


@_x64
def test_optimize_prior_maximises_the_evidence():
    """The tuned prior precision gives a larger Laplace evidence than the same fit
    with the prior's sigma 10 % larger or smaller."""
    data = sincos_data(correlated=True, dtype=jnp.float64)
    mean, _ = exact_posterior(*data)

    def fit(sigma, tune):
        model = eb.laplace(
            _at(mean),
            prior=eb.priors.gaussian(sigma),
            likelihood_scale=LIKELIHOOD_SCALE,
            optimize_prior=tune,
        )
        return _solve(model, data).variational["Coefficients"]

    tuned = fit(PRIOR_SIGMA, True)
    precision = np.asarray(tuned.prior_precision)
    assert precision.shape == (2,) and precision[0] == precision[1]
    sigma = float(1 / np.sqrt(precision[0]))
    assert sigma < 0.5 * PRIOR_SIGMA  # |θ| ≈ 3: far less than the prior's 10
    best = float(tuned.log_marginal_likelihood)
    np.testing.assert_allclose(best, float(fit(sigma, False).log_marginal_likelihood))
    for factor in (0.9, 1.1):
        assert float(fit(sigma * factor, False).log_marginal_likelihood) < best


@_x64
def test_beside_an_optax_group_with_masks():
    """Laplace on `a` (a mask) while `eb.optimise` trains `b` (the other mask): the
    fit is the conditional posterior of `a` given the trained `b`."""
    data = sincos_data(correlated=False, dtype=jnp.float64)
    f1, f2, y = data
    model = _at((1.0, 0.0))
    model = eb.laplace(
        model,
        mask=Coefficients(True, False),
        prior=PRIOR,
        likelihood_scale=LIKELIHOOD_SCALE,
        optimizer=optax.adam(0.05),
        name="a",
    )
    model = eb.optimise(model, optax.adam(0.05), mask=Coefficients(False, True))
    result = _solve(model, data, steps=3000)
    b = float(result.model.b)
    fit = result.variational["a"]
    f1, f2, y = (np.asarray(v) for v in data)
    precision = f1 @ f1 / NOISE**2 + 1 / PRIOR_SIGMA**2
    cond_mean = f1 @ (y - b * f2) / NOISE**2 / precision
    np.testing.assert_allclose(fit.covariance(), [[1 / precision]], rtol=1e-8)
    np.testing.assert_allclose(float(fit.mean.a), cond_mean, rtol=1e-5)
    assert fit.mean.b is None
    assert result.posterior.samples.a.shape == (1, 1000)
    assert result.posterior.samples.b is None
    # predict combines the draws of `a` with the trained `b`.
    out = result.posterior.predict(lambda m: m.a * 0 + m.b)
    np.testing.assert_allclose(out, b)
    assert list(result.posterior.summary().to_dict()["name"]) == ["a"]


@_x64
def test_laplace_head_beside_an_optax_body():
    """Laplace on the last layer (trained by its own optimiser) while the Solver's
    optimiser trains the body: the network is linear in the head, so the fit's
    precision is the conjugate one for the trained body's features."""
    x = jnp.linspace(-2.0, 2.0, 30)
    y = jnp.sin(x) + 0.1 * jr.normal(jr.key(0), x.shape)
    net = eqx.nn.MLP("scalar", "scalar", 8, 1, activation=jnp.tanh, key=jr.key(1))
    net = jax.tree.map(lambda v: v.astype(jnp.float64) if eqx.is_array(v) else v, net)

    def loss(net, x, y):
        return jnp.sum((jax.vmap(net)(x) - y) ** 2) / (2 * 0.1**2)

    model = eb.laplace(
        net,
        where=lambda m: m.layers[-1],
        prior=eb.priors.gaussian(2.0),
        optimizer=optax.adam(1e-2),
        name="head",
    )
    solver = eb.Solver(loss, optimizer=optax.adam(1e-2), progress=False)
    result = solver.run(model, steps=500, key=jr.key(2), args=(x, y))
    trained = result.model
    features = jax.vmap(lambda v: jnp.tanh(trained.layers[0](v)))(x)
    phi = np.concatenate([np.asarray(features), np.ones((x.size, 1))], axis=1)
    fit = result.variational["head"]
    precision = phi.T @ phi / 0.1**2 + np.eye(9) / 2.0**2
    np.testing.assert_allclose(fit.precision, precision, rtol=1e-8)
    assert eqx.tree_equal(fit.model_at(fit.mean), trained)
    assert result.posterior.samples.layers[0].weight is None
    assert result.posterior.samples.layers[1].weight.shape == (1, 1000, 1, 8)
    curves = result.posterior.predict(lambda m, x: jax.vmap(m)(x), x)
    assert curves.shape == (1, 1000, 30)


def test_beside_chains_pairs_the_draws():
    """Beside a NUTS group with K chains: draws (K, keep), and the fit is of the log
    density averaged over the chains; `num_draws` must equal `keep`."""
    data = sincos_data()
    model = eb.laplace(
        _at((3.14, -2.71), jnp.float32),
        where=lambda m: m.a,
        prior=PRIOR,
        likelihood_scale=LIKELIHOOD_SCALE,
        num_draws=50,
    )
    with pytest.raises(ValueError, match=re.escape("Pass `num_draws=40`")):
        eb.Solver(mse, progress=False).init(
            eb.bayesian(model, blackjax.nuts, where=lambda m: m.b, keep=40),
            key=jr.key(0),
            args=data,
        )
    model = eb.bayesian(
        model, blackjax.nuts, where=lambda m: m.b, warmup=50, keep=50, num_chains=2
    )
    result = eb.Solver(mse, progress=False).run(model, key=jr.key(0), args=data)
    assert result.posterior.samples.a.shape == (2, 50)
    assert result.posterior.samples.b.shape == (2, 50)
    fit = result.variational["a"]
    f1 = np.asarray(data[0], np.float64)
    precision = f1 @ f1 / NOISE**2 + 1 / PRIOR_SIGMA**2
    np.testing.assert_allclose(fit.covariance(), [[1 / precision]], rtol=1e-4)
    assert np.isfinite(np.asarray(result.posterior.to_arviz().posterior["a"])).all()


def test_steps_zero_and_the_held_warning(caplog):
    """`steps=0` fits at the values as marked; with the Solver's optimiser a group
    without `optimizer=` is held, and a warning says so."""
    data = sincos_data()
    model = eb.laplace(_at((3.0, -2.0), jnp.float32), where=lambda m: m.a)
    with caplog.at_level(logging.WARNING, logger="eqbayes"):
        result = _solve(model, data, steps=5, optimizer=optax.adam(1e-2))
    assert "is held at its values" in caplog.text
    assert float(result.variational["a"].mean) == 3.0
    assert float(result.model.b) != -2.0  # the Solver's optimiser trained `b`
    assert result.posterior.samples.a.shape == (1, 1000)


def test_loss_arguments_that_are_not_arrays():
    """A loss argument that is a Python object (static in the compiled programs)
    reaches the fit too."""

    def powered(model, f1, f2, y, power):
        return jnp.sum(jnp.abs(model(f1, f2) - y) ** power)

    data = sincos_data()
    model = eb.laplace(_at((3.14, -2.71), jnp.float32))
    result = eb.Solver(powered, progress=False).run(
        model, steps=0, key=jr.key(0), args=(*data, 2)
    )
    f1, f2, _ = (np.asarray(v, np.float64) for v in data)
    features = np.stack([f1, f2], axis=1)
    expected = 2 * features.T @ features + np.eye(2) / PRIOR_SIGMA**2
    np.testing.assert_allclose(
        result.variational["Coefficients"].precision, expected, rtol=1e-4, atol=1e-3
    )


def test_non_positive_definite_is_a_clear_error():
    """At a maximum of the loss, H + P is negative definite."""

    def bump(model):
        return -LIKELIHOOD_SCALE * (model.a**2 + model.b**2)

    model = eb.laplace(_at((0.0, 0.0), jnp.float32), name="bumpy")
    with pytest.raises(ValueError) as info:
        eb.Solver(bump, progress=False).run(model, steps=0, key=jr.key(0))
    message = str(info.value)
    assert "Group 'bumpy'" in message and "not positive definite" in message
    smallest = float(re.search(r"smallest eigenvalue is (\S+)\)", message).group(1))
    np.testing.assert_allclose(smallest, -2 * LIKELIHOOD_SCALE + 0.01, rtol=1e-3)
    assert "add prior precision" in message


def test_marking_errors():
    model = _at((1.0, 1.0), jnp.float32)
    with pytest.raises(ValueError, match=re.escape("`hessian` must be 'full'")):
        eb.laplace(model, hessian="kfac")
    with pytest.raises(ValueError, match=re.escape("Pass `outputs=(output_fn, ")):
        eb.laplace(model, hessian="ggn")
    with pytest.raises(ValueError, match=re.escape("Drop `outputs=`")):
        eb.laplace(model, outputs=OUTPUTS)
    with pytest.raises(TypeError, match=re.escape("a pair of callables")):
        eb.laplace(model, hessian="diag", outputs=OUTPUTS[0])
    with pytest.raises(ValueError, match=re.escape("needs a zero-mean Gaussian")):
        eb.laplace(model, prior=eb.priors.laplace(1.0), optimize_prior=True)
    with pytest.raises(TypeError, match=re.escape("optax `GradientTransformation`")):
        eb.laplace(model, optimizer="adam")
    with pytest.raises(ValueError, match=re.escape("`num_draws` must be an integer")):
        eb.laplace(model, num_draws=0)
    big = jnp.zeros(_laplace.MAX_DENSE + 1)
    with pytest.raises(ValueError, match=re.escape("Pass `hessian='diag'`")):
        eb.laplace(big, hessian="ggn", outputs=OUTPUTS)
    with pytest.raises(ValueError, match=re.escape(f"limited to {_laplace.MAX_DENSE}")):
        eb.laplace(big)
    eb.laplace(big, hessian="diag", outputs=OUTPUTS)  # a diagonal fits
    with pytest.raises(ValueError, match=re.escape("dense 20001 x 20001 Hessian")):
        eb.laplace(big, hessian="diag", outputs=OUTPUTS, prior=eb.priors.student_t(4.0))
    # Constrained leaves: the same checks as for every kind of group, named for
    # `eb.laplace`.
    rates = _Rates(jnp.asarray(-1.0), jnp.asarray(0.0))
    with pytest.raises(
        ValueError, match=re.escape("`eb.laplace(...)` for group 'lam'")
    ):
        eb.laplace(rates, where=lambda m: m.lam, prior=eb.priors.gamma(2.0, 1.0))
    with pytest.raises(TypeError, match=re.escape("not an `eb.constraints` object")):
        eb.laplace(rates, where=lambda m: m.shift, constraint="positive")
    with pytest.raises(ValueError, match=re.escape("is not inside it")):
        eb.laplace(
            rates,
            where=lambda m: m.shift,
            prior=eb.priors.half_normal(1.0),
            constraint=eb.constraints.real,
        )


def test_a_loss_that_does_not_split_is_a_clear_error():
    data = sincos_data()
    wrong = (OUTPUTS[0], lambda out, f1, f2, y: jnp.sum((out - y) ** 2))
    model = eb.laplace(_at((3.0, -2.0), jnp.float32), hessian="ggn", outputs=wrong)
    with pytest.raises(ValueError, match=re.escape("the loss is not `output_loss(")):
        _solve(model, data)


def test_result_without_args_says_what_to_pass():
    data = sincos_data()
    model = eb.laplace(_at((3.0, -2.0), jnp.float32))
    solver = eb.Solver(mse, progress=False)
    state = solver.init(model, key=jr.key(0), args=data)
    with pytest.raises(TypeError) as info:
        solver.result(state)
    assert "pass the solve's `args=`" in "".join(getattr(info.value, "__notes__", []))
    assert solver.result(state, args=data).posterior.samples.a.shape == (1, 1000)


def test_checkpoint_and_callbacks(tmp_path):
    """A solve with a Laplace group saves, resumes and reports chunks like any
    other."""
    data = sincos_data()
    records = []
    model = eb.laplace(
        _at((0.0, 0.0), jnp.float32),
        prior=PRIOR,
        likelihood_scale=LIKELIHOOD_SCALE,
        optimizer=optax.adam(0.05),
    )
    solver = eb.Solver(mse, progress=False, print_every=50, callbacks=[records.append])
    path = tmp_path / "state.eqx"
    first = solver.run(model, steps=100, key=jr.key(0), args=data, checkpoint=path)
    assert len(records) == 2
    state = eb.load(path, like=first.state)
    more = solver.run(None, steps=100, state=state, args=data)
    once = solver.run(model, steps=200, key=jr.key(0), args=data)
    assert eqx.tree_equal(more.variational, once.variational)


def test_reproduces_the_hand_written_pinn_band():
    """The Bayesian PINN tutorial's first Laplace band, written out by hand (Jacobian
    of the scaled residuals, Cholesky, triangular solves), equals `eb.laplace`'s
    Gauss-Newton fit with the linearised predictive to 1 % at every point."""
    # (The tutorial's network has two hidden layers of 16 units and N = 64: one
    # layer of 16 and N = 32 compile faster and test the same computation.)
    n, sigma = 32, 0.1
    net = eqx.nn.MLP("scalar", "scalar", 16, 1, activation=jnp.tanh, key=jr.key(0))
    x = jnp.linspace(0.0, 1.0, n + 2)[1:-1]
    x_eval = jnp.linspace(0.0, 1.0, 51)

    def outputs(net, x):
        def second(xi):
            return jax.grad(jax.grad(net))(xi)

        residual = jax.vmap(second)(x) + jnp.pi**2 * jnp.sin(jnp.pi * x)
        return residual, jnp.stack([net(jnp.array(0.0)), net(jnp.array(1.0))])

    def output_loss(out, x):
        residual, boundary = out
        return jnp.mean(residual**2) + jnp.sum(boundary**2)

    def loss(net, x):
        return output_loss(outputs(net, x), x)

    # By hand, as the tutorial had it.
    params, static = eqx.partition(net, eqx.is_inexact_array)
    theta, unravel = jax.flatten_util.ravel_pytree(params)

    def scaled_residuals(theta):
        residual, boundary = outputs(eqx.combine(unravel(theta), static), x)
        return jnp.concatenate([residual / sigma, boundary * jnp.sqrt(n) / sigma])

    def u_of(theta):
        return jax.vmap(eqx.combine(unravel(theta), static))(x_eval)

    @jax.jit
    def band(theta):
        J = jax.jacfwd(scaled_residuals)(theta)
        g = jax.jacfwd(u_of)(theta)
        cholesky = jnp.linalg.cholesky(J.T @ J + jnp.eye(theta.size))
        return jnp.linalg.norm(
            jax.scipy.linalg.solve_triangular(cholesky, g.T, lower=True), axis=0
        )

    by_hand = band(theta)

    model = eb.laplace(
        net,
        hessian="ggn",
        outputs=(outputs, output_loss),
        likelihood_scale=n / (2 * sigma**2),
        prior=eb.priors.gaussian(1.0),
    )
    result = eb.Solver(loss, progress=False).run(model, steps=0, key=jr.key(0), data=x)
    mean, variance = result.variational["MLP"].predict_linearised(
        lambda m, x: jax.vmap(m)(x), x_eval
    )
    np.testing.assert_allclose(mean, jax.vmap(net)(x_eval), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(jnp.sqrt(variance), by_hand, rtol=0.01)


def test_a_split_that_does_not_fit_the_arguments_fails_at_init():
    data = sincos_data()
    wrong = (lambda m, f1: m(f1, f1), OUTPUTS[1])
    model = eb.laplace(_at((3.0, -2.0), jnp.float32), hessian="diag", outputs=wrong)
    with pytest.raises(TypeError):
        eb.Solver(mse, progress=False).init(model, key=jr.key(0), args=data)


def test_a_diverged_point_is_a_clear_error():
    """Training that diverges leaves a NaN point: a clear error, not a Cholesky of
    NaNs."""
    data = sincos_data()
    model = eb.laplace(
        _at((3.0, -2.0), jnp.float32),
        likelihood_scale=LIKELIHOOD_SCALE,
        optimizer=optax.sgd(1e30),
        name="diverged",
    )
    with pytest.raises(ValueError, match=re.escape("the training diverged")):
        _solve(model, data, steps=5)


@pytest.mark.slow  # about a minute of CPU: Adam, four Laplace fits, SGLD and NUTS
def test_laplace_tutorial_claims(monkeypatch):
    """What the tutorial says of its table: the GGN fit's linearised band holds about
    90 % of new data and is as wide as NUTS's; the diagonal's and the sampled
    whole-network predictive are far too wide."""
    matplotlib.use("Agg")
    monkeypatch.setattr(plt, "show", lambda: None)
    page = pathlib.Path(__file__).parent.parent / "docs" / "tutorials" / "laplace.py"
    with jax.numpy_dtype_promotion("standard"), jax.numpy_rank_promotion("allow"):
        rows = runpy.run_path(str(page))["rows"]
    plt.close("all")
    coverage, width, _ = rows["Laplace GGN, linearised"]
    nuts_coverage, nuts_width, _ = rows["NUTS"]
    assert 0.85 <= coverage <= 0.95 and 0.85 <= nuts_coverage <= 0.95
    assert abs(width / nuts_width - 1) < 0.1
    assert rows["Laplace diag, linearised"][1] > 1.5 * nuts_width
    assert rows["Laplace GGN, sampled"][1] > 5 * nuts_width
    last_layer = rows["Laplace full, last layer, linearised"]
    assert abs(last_layer[1] / nuts_width - 1) < 0.1


class _Rates(eqx.Module):
    lam: jax.Array
    shift: jax.Array


_COUNTS = np.array([3.0, 5.0, 2.0, 4.0, 6.0, 1.0, 3.0])
_A, _B = 2.0, 0.5  # Gamma(concentration, rate) prior on lam


def _poisson_nll(model):
    return (
        -jnp.sum(jax.scipy.stats.poisson.logpmf(_COUNTS, model.lam))
        + 0.5 * (model.shift - 1.0) ** 2
    )


@_x64
def test_constrained_leaves_are_fitted_in_unconstrained_space():
    """A positive rate with a Gamma prior and Poisson counts, beside a real leaf:
    in z = log(lam) the posterior density (with the Jacobian) is
    exp((a + S) z - (b + n) e^z), so the fit is exact to second order: mode
    log((a + S) / (b + n)), variance 1 / (a + S). The draws are lam = e^z."""
    S, n = float(_COUNTS.sum()), _COUNTS.size
    mode = np.log((_A + S) / (_B + n))
    start = _Rates(jnp.asarray(np.exp(mode)), jnp.asarray(1.0))
    model = eb.laplace(
        start,
        where=lambda m: (m.lam, m.shift),
        prior=(eb.priors.gamma(_A, _B), eb.priors.normal(0.0, 1e3)),
        num_draws=4000,
    )
    result = eb.Solver(_poisson_nll, progress=False).run(model, steps=0, key=jr.key(0))
    fit = result.variational["(lam, shift)"]
    # The mean holds z inside its constrained node; `model_at` maps it back.
    assert float(fit.mean.lam.unconstrained) == pytest.approx(mode, rel=1e-12)
    cov = fit.covariance()
    assert float(cov[0, 0]) == pytest.approx(1.0 / (_A + S), rel=1e-6)
    assert float(fit.model_at(fit.mean).lam) == pytest.approx(np.exp(mode))
    lam = np.asarray(result.posterior.samples.lam).ravel()
    assert lam.min() > 0
    log_lam = np.log(lam)
    sd = np.sqrt(1.0 / (_A + S))
    assert abs(log_lam.mean() - mode) < 4 * sd / np.sqrt(lam.size)
    assert log_lam.std() == pytest.approx(sd, rel=0.05)
    # The linearised predictive of lam itself: mean e^mode, variance e^(2 mode) sd^2.
    mean, var = fit.predict_linearised(lambda m: m.lam)
    assert float(mean) == pytest.approx(np.exp(mode))
    assert float(var) == pytest.approx(np.exp(2 * mode) * sd**2, rel=1e-6)
    # The evidence in z (Jacobian included) approximates the exact Gamma-Poisson
    # log p(y) (plus the Gaussian term of `shift`) to the Laplace error.
    from scipy.special import gammaln

    exact = (
        _A * np.log(_B)
        - gammaln(_A)
        + gammaln(_A + S)
        - (_A + S) * np.log(_B + n)
        - float(np.sum(gammaln(np.asarray(_COUNTS) + 1)))
    )
    shift_prec = 1.0 + 1e-6
    shift_term = 0.5 * np.log(2 * np.pi / shift_prec) - np.log(1e3 * np.sqrt(2 * np.pi))
    shift_term += -0.5 * (1.0 / 1e6) / shift_prec  # prior mean 0, likelihood at 1
    assert float(fit.log_marginal_likelihood) == pytest.approx(
        exact + shift_term, abs=0.01
    )


@_x64
def test_constrained_leaf_trained_to_the_mode_in_z():
    """With `optimizer=` and a custom prior plus `constraint=`, the group is trained
    to the mode in z (the Jacobian in the log prior), from a start far from it."""
    S, n = float(_COUNTS.sum()), _COUNTS.size

    model = eb.laplace(
        _Rates(jnp.asarray(1.0), jnp.asarray(1.0)),
        where=lambda m: m.lam,
        prior=lambda lam: (_A - 1.0) * jnp.log(lam) - _B * lam,
        constraint=eb.constraints.positive,
        optimizer=optax.adam(0.05),
    )
    result = eb.Solver(_poisson_nll, progress=False).run(
        model, steps=2000, key=jr.key(1)
    )
    fit = result.variational["lam"]
    np.testing.assert_allclose(
        float(fit.model_at(fit.mean).lam), (_A + S) / (_B + n), rtol=1e-6
    )
    assert float(fit.covariance()[0, 0]) == pytest.approx(1.0 / (_A + S), rel=1e-5)
    assert float(result.model.lam) == pytest.approx((_A + S) / (_B + n), rel=1e-6)
