"""Constrained parameters: exact conjugate posteriors sampled in unconstrained
space, per-part priors, and the errors of bad priors / constraints."""

import re
from typing import Any

import blackjax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import jax.scipy.stats as jss
import numpy as np
import optax
import pytest
import scipy.stats

import eqbayes as eb


def _check_moments(draws, mean, sd):
    """Mean within 4 MCSE of the truth; sd within 10 %."""
    ess = float(eb.ess(draws))
    got_mean = float(jnp.mean(draws))
    got_sd = float(jnp.std(draws))
    mcse = sd / np.sqrt(ess)
    assert abs(got_mean - mean) < 4 * mcse, (got_mean, mean, mcse, ess)
    assert abs(got_sd / sd - 1) < 0.10, (got_sd, sd)


class Rate(eqx.Module):
    rate: jax.Array


class Probability(eqx.Module):
    p: jax.Array


class Mixture(eqx.Module):
    weights: jax.Array


COUNTS = jnp.array([3.0, 5.0, 2.0, 4.0, 6.0, 1.0, 3.0, 4.0])


def poisson_loss(model):
    return -jnp.sum(jss.poisson.logpmf(COUNTS, model.rate))


def _run(model, loss, key=0, **kwargs):
    marked = eb.bayesian(
        model,
        blackjax.nuts,
        num_chains=4,
        warmup=400,
        keep=1000,
        init_jitter=0.5,
        **kwargs,
    )
    return eb.Solver(loss, progress=False).run(marked, key=jr.key(key))


def test_gamma_poisson():
    a, b = 2.0, 0.5
    result = _run(Rate(jnp.array(1.0)), poisson_loss, prior=eb.priors.gamma(a, b))
    posterior = scipy.stats.gamma(a + float(COUNTS.sum()), scale=1 / (b + 8))
    draws = result.posterior.samples.rate
    assert draws.shape == (4, 1000) and bool(jnp.all(draws > 0))
    _check_moments(draws, posterior.mean(), posterior.std())
    np.testing.assert_allclose(
        jnp.exp(result.posterior.unconstrained.rate), draws, rtol=1e-5
    )
    assert float(result.model.rate) > 0


def test_beta_binomial():
    k, n, a, b = 7.0, 20.0, 2.0, 3.0

    def loss(model):
        return -jss.binom.logpmf(k, n, model.p)

    result = _run(Probability(jnp.array(0.5)), loss, prior=eb.priors.beta(a, b))
    posterior = scipy.stats.beta(a + k, b + n - k)
    draws = result.posterior.samples.p
    assert bool(jnp.all((draws > 0) & (draws < 1)))
    _check_moments(draws, posterior.mean(), posterior.std())


def test_dirichlet_multinomial():
    counts = jnp.array([12.0, 3.0, 7.0])
    alpha = np.array([1.0, 2.0, 1.5])

    def loss(model):
        return -jnp.sum(counts * jnp.log(model.weights))

    result = _run(
        Mixture(jnp.full(3, 1 / 3)), loss, prior=eb.priors.dirichlet(alpha), key=1
    )
    draws = result.posterior.samples.weights
    assert draws.shape == (4, 1000, 3)
    assert result.posterior.unconstrained.weights.shape == (4, 1000, 2)
    np.testing.assert_allclose(draws.sum(-1), 1.0, rtol=1e-5)
    posterior = scipy.stats.dirichlet(alpha + np.asarray(counts))
    for i in range(3):
        _check_moments(
            draws[..., i], posterior.mean()[i], float(np.sqrt(posterior.var()[i]))
        )


class Hierarchy(eqx.Module):
    mu: jax.Array
    tau: jax.Array
    theta: jax.Array


def test_prefix_priors_dict_and_module():
    model = {"loc": jnp.array(0.5), "scale": jnp.array(2.0)}
    marked = eb.bayesian(
        model,
        blackjax.nuts,
        prior={"loc": eb.priors.normal(0.0, 1.0), "scale": eb.priors.half_normal(3)},
    )
    group = marked
    assert isinstance(group, eb.BayesianLeaf)
    position = group.initial_position()
    np.testing.assert_allclose(position["scale"].unconstrained, jnp.log(2.0))
    want = (
        jss.norm.logpdf(0.5, 0.0, 1.0)
        + jss.norm.logpdf(2.0, 0.0, 3.0)
        + jnp.log(2.0)  # half-normal
        + jnp.log(2.0)  # log |d exp(z) / dz| at z = log 2
    )
    np.testing.assert_allclose(group.config.prior(position), want, rtol=1e-5)
    h = Hierarchy(jnp.array(0.0), jnp.array(1.0), jnp.zeros(3))
    prior = Hierarchy(eb.priors.normal(0, 5), eb.priors.half_cauchy(5), None)  # pyright: ignore
    marked = eb.bayesian(h, blackjax.nuts, prior=prior)
    assert eqx.tree_equal(eb.unwrap(marked), h)


def test_tuple_where_with_other_groups_and_summary():
    h = Hierarchy(jnp.array(0.0), jnp.array(1.0), jnp.zeros(3))
    marked = eb.bayesian(
        h,
        blackjax.nuts,
        where=lambda m: (m.tau, m.mu),
        prior=(eb.priors.half_normal(1.0), eb.priors.normal(0, 1)),
        warmup=50,
        keep=50,
    )
    marked = eb.optimise(marked, optax.adam(1e-2), where=lambda m: m.theta)
    assert eqx.tree_equal(eb.unwrap(marked), h)

    def loss(m):
        return jnp.sum(jnp.square(m.theta - m.mu)) + jnp.square(m.tau - 0.5)

    result = eb.Solver(loss, progress=False).run(marked, key=jr.key(0))
    assert bool(jnp.all(result.posterior.samples.tau > 0))
    assert result.posterior.samples.theta is None
    summary = result.posterior.summary()
    assert {"mu", "tau"} <= set(summary.names)


def test_optimise_with_constraint_stays_inside():
    model = Rate(jnp.array(1.0))
    marked = eb.optimise(model, optax.adam(0.1), constraint=eb.constraints.positive)
    result = eb.Solver(lambda m: jnp.square(m.rate + 1.0), progress=False).run(
        marked, 200, key=jr.key(0)
    )
    assert 0 < float(result.model.rate) < 0.1


def test_vi_in_unconstrained_space():
    k, n = 7.0, 20.0

    def loss(model):
        return -jss.binom.logpmf(k, n, model.p)

    marked = eb.vi(
        Probability(jnp.array(0.5)),
        optimizer=optax.adam(5e-2),
        prior=eb.priors.beta(2.0, 3.0),
        num_samples=16,
        posterior_draws=2000,
    )
    result = eb.Solver(loss, progress=False).run(marked, 1500, key=jr.key(0))
    draws = result.posterior.samples.p
    assert bool(jnp.all((draws > 0) & (draws < 1)))
    posterior = scipy.stats.beta(9.0, 16.0)
    # A Gaussian in logit space is close but not exact: 10 % of the sd.
    assert abs(float(draws.mean()) - posterior.mean()) < 0.1 * posterior.std()


def test_masked_group_with_constraint():
    model = {"a": jnp.array(2.0), "b": jnp.array(-1.0)}
    marked = eb.bayesian(
        model,
        blackjax.nuts,
        mask={"a": True, "b": False},
        prior={"a": eb.priors.exponential(1.0), "b": None},
        warmup=50,
        keep=100,
        init_jitter=1.0,
        num_chains=2,
    )
    result = eb.Solver(lambda m: jnp.square(m["a"] - 1.0), progress=False).run(
        marked, key=jr.key(0)
    )
    assert bool(jnp.all(result.posterior.samples["a"] > 0))
    assert result.posterior.samples["b"] is None


def test_custom_prior_with_constraint():
    def my_prior(position):
        return -jnp.sum(position.rate)  # exponential(1), unnormalised

    result = _run(
        Rate(jnp.array(1.0)),
        poisson_loss,
        prior=my_prior,
        constraint=eb.constraints.positive,
    )
    posterior = scipy.stats.gamma(1 + float(COUNTS.sum()), scale=1 / (1 + 8))
    _check_moments(result.posterior.samples.rate, posterior.mean(), posterior.std())


# -- errors -------------------------------------------------------------------------


def test_prior_not_a_prefix():
    h = Hierarchy(jnp.array(0.0), jnp.array(1.0), jnp.zeros(3))
    with pytest.raises(ValueError, match=re.escape("is a prefix of the selected")):
        eb.bayesian(
            h,
            blackjax.nuts,
            where=lambda m: (m.mu, m.tau),
            prior=(eb.priors.normal(0, 1),),
        )
    with pytest.raises(ValueError, match=re.escape("holds a `Hierarchy` but")):
        eb.bayesian(h, blackjax.nuts, prior={"mu": eb.priors.normal(0, 1)})
    with pytest.raises(TypeError, match=re.escape("is 3.0 of type `float`, not a")):
        eb.bayesian(h, blackjax.nuts, where=lambda m: m.mu, prior=3.0)


def test_starting_value_outside_support():
    h = Hierarchy(jnp.array(0.0), jnp.array(-1.0), jnp.zeros(3))
    message = (
        "the starting value of `tau` is outside the support `positive` of its prior"
    )
    with pytest.raises(ValueError, match=re.escape(message)):
        eb.bayesian(
            h,
            blackjax.nuts,
            where=lambda m: (m.mu, m.tau),
            prior=(None, eb.priors.half_cauchy(5)),
        )


def test_constraint_contradicts_support():
    message = (
        "has a prior with support `positive`, and the constraint `interval(-1.0, 1.0)`"
    )
    with pytest.raises(ValueError, match=re.escape(message)):
        eb.bayesian(
            Rate(jnp.array(0.5)),
            blackjax.nuts,
            prior=eb.priors.gamma(2.0, 1.0),
            constraint=eb.constraints.interval(-1.0, 1.0),
        )
    # A constraint inside the support (a truncation) is fine.
    eb.bayesian(
        Rate(jnp.array(0.5)),
        blackjax.nuts,
        prior=eb.priors.gamma(2.0, 1.0),
        constraint=eb.constraints.unit_interval,
    )


def test_tuple_group_around_an_earlier_group():
    h = Hierarchy(jnp.array(0.0), jnp.array(1.0), jnp.zeros(3))
    marked = eb.optimise(h, optax.adam(1e-2), where=lambda m: m.theta)
    with pytest.raises(ValueError, match=re.escape("mark it first, then 'theta'")):
        eb.bayesian(marked, blackjax.nuts, where=lambda m: (m.mu, m.tau))


def test_simplex_of_length_one():
    with pytest.raises(ValueError, match=re.escape("needs at least 2 components")):
        eb.bayesian(Mixture(jnp.ones(1)), blackjax.nuts, prior=eb.priors.dirichlet(1.0))


def test_sample_prior():
    h = Hierarchy(jnp.array(0.0), jnp.array(1.0), jnp.zeros(3))
    marked = eb.bayesian(
        h,
        blackjax.nuts,
        where=lambda m: (m.mu, m.tau),
        prior=(eb.priors.normal(3.0, 0.5), eb.priors.gamma(4.0, 2.0)),
    )
    prior = eb.sample_prior(marked, key=jr.key(0), num_draws=4000)
    assert prior.samples.mu.shape == (1, 4000)
    assert prior.samples.theta is None
    _check_moments(prior.samples.mu, 3.0, 0.5)
    _check_moments(prior.samples.tau, 2.0, 1.0)
    np.testing.assert_allclose(
        jnp.exp(prior.unconstrained.tau), prior.samples.tau, rtol=1e-5
    )
    predicted = prior.predict(lambda m: m.mu + m.tau + jnp.sum(m.theta))
    assert predicted.shape == (1, 4000)
    with pytest.raises(TypeError, match=re.escape("cannot be sampled")):
        eb.sample_prior(
            eb.bayesian(h, blackjax.nuts, where=lambda m: m.mu, prior=lambda p: 0.0),
            key=jr.key(0),
        )


def test_paramax_models():
    paramax = pytest.importorskip("paramax")

    class Scaled(eqx.Module):
        scale: Any
        offset: Any
        fixed: Any

    model = Scaled(
        paramax.Parameterize(jnp.exp, jnp.array(0.0)),
        jnp.array(0.0),
        paramax.NonTrainable(jnp.array(2.0)),
    )
    seen = []

    def loss(m):
        seen.append(type(m.scale))
        return jnp.square(m.scale * m.fixed - 3.0) + jnp.square(m.offset - 1.0)

    marked = eb.bayesian(
        model, blackjax.nuts, warmup=50, keep=50, prior=eb.priors.normal(0, 1)
    )
    result = eb.Solver(loss, progress=False).run(marked, key=jr.key(0))
    assert all(not isinstance(t, type) or not issubclass(t, eqx.Module) for t in seen)
    assert result.posterior.samples.fixed.tree is None
    assert result.posterior.samples.scale.args[0].shape == (1, 50)
    assert float(paramax.unwrap(result.model).fixed) == 2.0
    trained = eb.Solver(loss, optimizer=optax.adam(0.1), progress=False).run(
        eb.optimise(model, optax.adam(0.0), where=lambda m: m.offset), 50, key=jr.key(0)
    )
    assert float(paramax.unwrap(trained.model).fixed) == 2.0
    assert float(trained.model.scale.args[0]) != 0.0


def test_checkpoint_of_constrained_leaves(tmp_path):
    marked = eb.bayesian(
        Rate(jnp.array(1.0)),
        blackjax.nuts,
        prior=eb.priors.gamma(2.0, 0.5),
        warmup=5,
        keep=10,
        num_chains=2,
        init_jitter=0.5,
    )
    solver = eb.Solver(poisson_loss, progress=False)
    state = solver.init(marked, key=jr.key(0))
    like = solver.init(marked, key=jr.key(1))
    for _ in range(4):
        state = solver.step(state)
    eb.save(tmp_path / "state.eqx", state)
    full = solver.run(marked, key=jr.key(0))
    resumed = solver.run(
        marked, key=jr.key(0), state=eb.load(tmp_path / "state.eqx", like=like)
    )
    assert eqx.tree_equal(resumed.posterior.samples, full.posterior.samples)
    assert bool(jnp.all(resumed.posterior.samples.rate > 0))
    assert float(resumed.model.rate) > 0


def test_initializer_in_unconstrained_space():
    marked = eb.bayesian(
        Rate(jnp.array(1.0)),
        blackjax.nuts,
        prior=eb.priors.gamma(2.0, 0.5),
        warmup=100,
        keep=200,
        num_chains=2,
        init=eb.initializers.laplace(),
    )
    result = eb.Solver(poisson_loss, progress=False).run(marked, key=jr.key(0))
    draws = result.posterior.samples.rate
    assert bool(jnp.all(draws > 0))
    posterior = scipy.stats.gamma(2.0 + float(COUNTS.sum()), scale=1 / (0.5 + 8))
    mcse = posterior.std() / np.sqrt(float(eb.ess(draws)))
    assert abs(float(draws.mean()) - posterior.mean()) < 4 * mcse
