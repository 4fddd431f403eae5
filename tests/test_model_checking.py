"""Model checking: pointwise log-likelihoods, posterior predictive draws and the
ArviZ export (`log_likelihood`, `observed_data`, `posterior_predictive`) that
`az.loo`, `az.waic` (0.2x), `az.compare` and the PPC plots read.

Runs under ArviZ 0.2x (the default environment) and ArviZ 1.x (`.ci/run` runs this
file in a Python 3.12 environment with ArviZ 1.x).
"""

import math
import re
import warnings

import arviz as az
import blackjax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import matplotlib
import numpy as np
import pytest

import eqbayes as eb


matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


ARVIZ_1 = int(az.__version__.split(".")[0]) >= 1
SIGMA = 0.3
N_OBS = 40


class Line(eqx.Module):
    a: jax.Array
    b: jax.Array

    def __call__(self, x):
        return self.a + self.b * x


class Quadratic(eqx.Module):
    a: jax.Array
    b: jax.Array
    c: jax.Array

    def __call__(self, x):
        return self.a + self.b * x + self.c * x**2


def _elpd(loo):
    return float(loo.elpd if ARVIZ_1 else loo["elpd_loo"])


def _data():
    x = jnp.linspace(-1.0, 1.0, N_OBS)
    y = 0.5 - 1.2 * x + SIGMA * jr.normal(jr.key(0), (N_OBS,))
    return x, y


def _mse(model, x, y):
    return jnp.mean((jax.vmap(model)(x) - y) ** 2)


#: The Gaussian likelihood `-n/(2 sigma^2) * mse` up to a constant.
SCALE = N_OBS / (2 * SIGMA**2)


def _log_lik(model, row):
    x, y = row
    return -((model(x) - y) ** 2) / (2 * SIGMA**2) - math.log(
        SIGMA * math.sqrt(2 * math.pi)
    )


def _simulate(model, x, *, key):
    """New observations: the draw's line plus Gaussian noise."""
    mean = jax.vmap(model)(x)
    return mean + SIGMA * jr.normal(key, mean.shape)


def _exact_loo(x, y, prior_sd=5.0):
    """Exact elpd_loo of the linear model `a + b x` with `N(0, prior_sd^2)` priors
    and known noise `SIGMA`."""
    design = np.stack([np.ones_like(x), x], axis=1).astype(np.float64)
    y = np.asarray(y, np.float64)
    total = 0.0
    for i in range(len(y)):
        keep = np.arange(len(y)) != i
        precision = design[keep].T @ design[keep] / SIGMA**2 + np.eye(2) / prior_sd**2
        cov = np.linalg.inv(precision)
        mean = cov @ design[keep].T @ y[keep] / SIGMA**2
        var = SIGMA**2 + design[i] @ cov @ design[i]
        total += -0.5 * (y[i] - design[i] @ mean) ** 2 / var - 0.5 * np.log(
            2 * np.pi * var
        )
    return total


def _solve(model, *, keep=500, key=jr.key(1)):
    marked = eb.bayesian(
        model,
        blackjax.nuts,
        warmup=150,
        keep=keep,
        num_chains=4,
        init_jitter=0.1,
        likelihood_scale=SCALE,
        prior=eb.priors.gaussian(5.0),
    )
    return eb.Solver(_mse, progress=False).run(marked, key=key, args=_data())


@pytest.fixture(scope="module")
def line():
    return _solve(Line(jnp.zeros(()), jnp.zeros(())))


def test_log_likelihood_shape_and_loss(line):
    """`sum_i fn(row_i) == -likelihood_scale * loss + const` at every draw."""
    posterior = line.posterior
    x, y = _data()
    ll = posterior.log_likelihood(_log_lik, (x, y))
    assert ll.shape == (4, 500, N_OBS)
    assert ll.dtype == y.dtype
    loss = posterior.predict(_mse, x, y)
    constant = N_OBS * math.log(SIGMA * math.sqrt(2 * math.pi))
    np.testing.assert_allclose(
        np.sum(ll, axis=-1), -SCALE * np.asarray(loss) - constant, rtol=1e-5
    )
    # Draw (1, 7) by hand.
    draw = jax.tree.map(lambda s: s[1, 7], posterior.samples)
    model = eqx.combine(draw, posterior.model)
    by_hand = jax.vmap(lambda xi, yi: _log_lik(model, (xi, yi)))(x, y)
    np.testing.assert_allclose(ll[1, 7], by_hand, rtol=1e-5, atol=1e-5)


def test_log_likelihood_batching(line):
    posterior = line.posterior
    data = _data()
    default = posterior.log_likelihood(_log_lik, data)
    for batch_size in (1, 6, 1000):
        out = posterior.log_likelihood(_log_lik, data, batch_size=batch_size)
        np.testing.assert_allclose(out, default, rtol=1e-6)


def test_log_likelihood_args_and_dict_rows(line):
    def log_lik(model, row, sigma):
        return jax.scipy.stats.norm.logpdf(row["y"], model(row["x"]), sigma)

    x, y = _data()
    out = line.posterior.log_likelihood(log_lik, {"x": x, "y": y}, SIGMA)
    np.testing.assert_allclose(
        out, line.posterior.log_likelihood(_log_lik, (x, y)), rtol=1e-5, atol=1e-5
    )


def test_predict_with_key(line):
    """A fresh key per draw: `jr.split(key, (K, N))`, whatever the batch size."""
    posterior = line.posterior
    x, _ = _data()

    key = jr.key(3)
    y_rep = posterior.predict(_simulate, x, key=key)
    assert y_rep.shape == (4, 500, N_OBS)
    np.testing.assert_allclose(
        posterior.predict(_simulate, x, key=key, batch_size=3), y_rep, rtol=1e-6
    )
    keys = jr.split(key, (4, 500))
    draw = jax.tree.map(lambda s: s[1, 11], posterior.samples)
    by_hand = _simulate(eqx.combine(draw, posterior.model), x, key=keys[1, 11])
    np.testing.assert_allclose(y_rep[1, 11], by_hand, rtol=1e-6)
    # The noise is there: residuals about the draw's mean have sd sigma.
    mean = posterior.predict(lambda m, x: jax.vmap(m)(x), x)
    residual = np.asarray(y_rep - mean)
    assert abs(residual.std() / SIGMA - 1) < 0.05
    # Different draws, different noise.
    assert not np.allclose(residual[0, 0], residual[0, 1])
    # "point" passes the key itself.
    point = posterior.predict(_simulate, x, key=key, samples="point")
    np.testing.assert_allclose(point, _simulate(posterior.model, x, key=key))


def test_to_arviz_loo_waic_and_ppc(line):
    posterior = line.posterior
    x, y = _data()

    y_rep = posterior.predict(_simulate, x, key=jr.key(4))
    idata = posterior.to_arviz(
        _log_lik, (x, y), observed_data=y, posterior_predictive=y_rep
    )
    ll = idata.log_likelihood["obs"]
    assert ll.dtype == np.float64
    assert ll.shape == (4, 500, N_OBS)
    np.testing.assert_allclose(
        ll.values, np.asarray(posterior.log_likelihood(_log_lik, (x, y))), rtol=1e-7
    )
    np.testing.assert_array_equal(idata.observed_data["obs"].values, np.asarray(y))
    assert idata.posterior_predictive["obs"].dtype == np.float64
    loo = az.loo(idata)
    elpd = _elpd(loo)
    # The exact answer: with a Gaussian prior and likelihood, each leave-one-out
    # predictive is Gaussian. PSIS-LOO of 2000 NUTS draws agrees to Monte Carlo
    # error: over keys 1-3 the difference was 0.01, 0.16 and 0.15 (0.03 with
    # 2000 exact draws, which bounds what PSIS itself adds).
    assert abs(elpd - _exact_loo(x, y)) < 0.5
    # Two parameters, well identified: p_loo near 2, elpd near the exact
    # log-likelihood at the truth (within a few standard errors).
    p_loo = float(loo.p if ARVIZ_1 else loo["p_loo"])
    assert 1.0 < p_loo < 3.5
    if not ARVIZ_1:  # ArviZ 1.x has no WAIC (LOO supersedes it).
        assert abs(float(az.waic(idata)["elpd_waic"]) - elpd) < 0.5
    if ARVIZ_1:
        az.plot_ppc_dist(idata)
    else:
        az.plot_ppc(idata)
    plt.close("all")


def test_compare_two_models(line):
    """A linear trend beats (or ties with) a quadratic one on linear data, and
    the difference is small against its standard error."""
    quad = _solve(Quadratic(jnp.zeros(()), jnp.zeros(()), jnp.zeros(())))
    data = _data()
    models = {
        "line": line.posterior.to_arviz(_log_lik, data),
        "quadratic": quad.posterior.to_arviz(_log_lik, data),
    }
    # The data as a tuple: observed by path.
    assert set(models["line"].observed_data.data_vars) == {"obs[0]", "obs[1]"}
    table = az.compare(models)
    assert set(table.index) == {"line", "quadratic"}
    assert table.loc["quadratic", "elpd_diff"] < 4 * table.loc["quadratic", "dse"] + 1


def test_float32_log_likelihoods_reach_arviz_as_float64(line):
    with jax.enable_x64(False):
        x, y = _data()
        ll = line.posterior.log_likelihood(_log_lik, (x, y))
        assert ll.dtype == jnp.float32
        idata = line.posterior.to_arviz(_log_lik, (x, y))
    assert idata.log_likelihood["obs"].dtype == np.float64


def test_named_log_likelihoods(line):
    x, y = _data()

    def log_lik(model, row):
        return _log_lik(model, (row["x"], row["y"]))

    idata = line.posterior.to_arviz({"y": log_lik}, {"x": x, "y": y})
    assert list(idata.log_likelihood.data_vars) == ["y"]
    assert set(idata.observed_data.data_vars) == {"x", "y"}
    loo = az.loo(idata, var_name="y")
    assert math.isfinite(_elpd(loo))


def test_bad_input(line):
    posterior = line.posterior
    x, y = _data()
    with pytest.raises(ValueError, match=re.escape("must return the log-likelihood")):
        posterior.log_likelihood(lambda m, row: jnp.zeros(2), (x, y))
    with pytest.raises(ValueError, match=re.escape("shared leading axis")):
        posterior.log_likelihood(_log_lik, (x, y[:-1]))
    with pytest.raises(ValueError, match=re.escape("shared leading axis")):
        posterior.log_likelihood(_log_lik, (x, jnp.zeros(())))
    with pytest.raises(ValueError, match=re.escape("needs the observations too")):
        posterior.to_arviz(_log_lik)
    with pytest.raises(TypeError, match=re.escape("`args` must be a tuple")):
        posterior.to_arviz(_log_lik, (x, y), args=[1.0])  # pyright: ignore
    empty = eb.Posterior(Line(None, None), {}, Line(jnp.zeros(()), jnp.zeros(())))
    with pytest.raises(ValueError, match=re.escape("no sampled groups")):
        empty.log_likelihood(_log_lik, (x, y))


class Logistic(eqx.Module):
    w: jax.Array
    b: jax.Array

    def __call__(self, x):
        return x @ self.w + self.b


#: Features of the breast-cancer data used (5 of 30: the first five).
FEATURES = 5
PRIOR_SD = 2.5


def _breast_cancer():
    datasets = pytest.importorskip("sklearn.datasets")
    data = datasets.load_breast_cancer()
    x = data.data[:, :FEATURES]
    x = (x - x.mean(axis=0)) / x.std(axis=0)
    return jnp.asarray(x, jnp.float32), jnp.asarray(data.target, jnp.float32)


def _bernoulli_log_lik(model, row):
    x, y = row
    logit = model(x)
    return y * jax.nn.log_sigmoid(logit) + (1 - y) * jax.nn.log_sigmoid(-logit)


def _neg_log_lik(model, x, y):
    return -jnp.sum(jax.vmap(lambda xi, yi: _bernoulli_log_lik(model, (xi, yi)))(x, y))


def _loo_summary(idata):
    with warnings.catch_warnings():
        # ArviZ warns about high Pareto k: counting those is the point here.
        warnings.simplefilter("ignore", UserWarning)
        loo = az.loo(idata)
    k = np.asarray(loo.pareto_k)
    return _elpd(loo), int(np.sum(k > 1.0))


@pytest.mark.slow
def test_loo_matches_numpyro():
    """PSIS-LOO of a logistic regression on scikit-learn's breast-cancer data:
    eqbayes's export and NumPyro's (same priors, same likelihood) agree within 1
    elpd and on the number of observations with Pareto k > 1 (ArviZ's "very
    bad"), to one.

    The count above 0.7 is no reproducible figure here: several observations
    sit near 0.7, and four NumPyro runs of 4000 draws each gave 10, 4, 4 and 3
    (eqbayes: 5, 6, 5, 8). Above 1: NumPyro 2, 3, 2; eqbayes 3, 2, 3."""
    numpyro = pytest.importorskip("numpyro")
    dist = pytest.importorskip("numpyro.distributions")
    x, y = _breast_cancer()

    model = eb.bayesian(
        Logistic(jnp.zeros(FEATURES), jnp.zeros(())),
        blackjax.nuts,
        warmup=500,
        keep=1000,
        num_chains=4,
        init_jitter=0.1,
        prior=eb.priors.gaussian(PRIOR_SD),
    )
    result = eb.Solver(_neg_log_lik, progress=False).run(
        model, key=jr.key(0), args=(x, y)
    )
    ours = _loo_summary(result.posterior.to_arviz(_bernoulli_log_lik, (x, y)))

    def numpyro_model(x, y):
        w = numpyro.sample("w", dist.Normal(0.0, PRIOR_SD).expand([FEATURES]))
        b = numpyro.sample("b", dist.Normal(0.0, PRIOR_SD))
        numpyro.sample("obs", dist.Bernoulli(logits=x @ w + b), obs=y)

    mcmc = numpyro.infer.MCMC(
        numpyro.infer.NUTS(numpyro_model),
        num_warmup=500,
        num_samples=1000,
        num_chains=4,
        chain_method="vectorized",
        progress_bar=False,
    )
    with jax.numpy_dtype_promotion("standard"):  # NumPyro mixes bool and float
        mcmc.run(jr.key(1), x, y)
        draws = mcmc.get_samples(group_by_chain=True)
        ll = numpyro.infer.log_likelihood(numpyro_model, draws, x, y, batch_ndims=2)
    # Float64, as eqbayes hands ArviZ (NumPyro's float32 can give `nan`).
    groups = {
        "posterior": {k: np.asarray(v, np.float64) for k, v in draws.items()},
        "log_likelihood": {"obs": np.asarray(ll["obs"], np.float64)},
    }
    reference = _loo_summary(
        az.from_dict(groups) if ARVIZ_1 else az.from_dict(**groups)
    )
    assert abs(ours[0] - reference[0]) < 1.0, (ours, reference)
    assert abs(ours[1] - reference[1]) <= 1, (ours, reference)
    assert math.isfinite(ours[0])
