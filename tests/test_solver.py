"""Mechanics of marking and solving: determinism, paths, compile-once, results."""

import logging

import blackjax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from conftest import tree_equal
from problems import Coefficients, LIKELIHOOD_SCALE, mse, sincos_data

import eqbayes as eb


DATA = sincos_data()


def _is_group(x):
    return isinstance(x, eb.AbstractGroup)


def _marked(kernel=blackjax.nuts, **kwargs):
    config = dict(
        num_chains=2, warmup=20, keep=15, thin=2, likelihood_scale=LIKELIHOOD_SCALE
    )
    config.update(kwargs)
    return eb.bayesian(Coefficients(jnp.array(3.0), jnp.array(-2.5)), kernel, **config)


def _two_groups(**kwargs):
    config = dict(num_chains=2, warmup=10, keep=8, likelihood_scale=LIKELIHOOD_SCALE)
    config.update(kwargs)
    model = Coefficients(jnp.array(3.0), jnp.array(-2.5))
    model = eb.bayesian(model, blackjax.nuts, where=lambda m: m.a, **config)
    return eb.bayesian(
        model, blackjax.mala, where=lambda m: m.b, step_size=1e-4, **config
    )


def test_same_key_same_chain():
    solver = eb.Solver(mse, progress=False)
    model = _marked(init_jitter=0.1)
    r1 = solver.run(model, key=jr.key(0), args=DATA)
    r2 = solver.run(model, key=jr.key(0), args=DATA)
    r3 = solver.run(model, key=jr.key(1), args=DATA)
    assert tree_equal(r1.posterior.samples, r2.posterior.samples)
    assert tree_equal(r1.posterior.diagnostics, r2.posterior.diagnostics)
    assert not np.array_equal(r1.posterior.samples.a, r3.posterior.samples.a)
    # Chains differ from each other.
    assert not np.array_equal(r1.posterior.samples.a[0], r1.posterior.samples.a[1])


@pytest.mark.parametrize("make", [_marked, _two_groups], ids=["one", "two_groups"])
def test_fast_general_and_manual_paths_agree(make, caplog):
    model = make()
    solver = eb.Solver(mse, progress=False)
    with caplog.at_level(logging.INFO, logger="eqbayes"):
        fast = solver.run(model, key=jr.key(3), args=DATA)
    assert "Fast path" in caplog.text and "General path" not in caplog.text
    state = solver.init(model, key=jr.key(3), args=DATA)
    steps = max(
        w + k * t
        for w, k, t in (
            g.schedule
            for g in jax.tree.leaves(state.model, is_leaf=_is_group)
            if isinstance(g, eb.AbstractChainGroup)
        )
    )
    # The general path: a solve resumed after one manual step.
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="eqbayes"):
        general = solver.run(
            model, key=jr.key(3), args=DATA, state=solver.step(state, args=DATA)
        )
    assert "General path" in caplog.text and "Fast path" not in caplog.text
    manual = state
    for _ in range(steps):
        manual = solver.step(manual, args=DATA)
    manual = solver.result(manual)
    assert tree_equal(fast.posterior.samples, general.posterior.samples)
    assert tree_equal(fast.posterior.diagnostics, general.posterior.diagnostics)
    assert tree_equal(fast.posterior.samples, manual.posterior.samples)
    assert tree_equal(fast.posterior.diagnostics, manual.posterior.diagnostics)
    assert tree_equal(fast.model, manual.model)
    assert tree_equal(fast.model, general.model)


def test_fast_path_is_logged(caplog):
    solver = eb.Solver(mse, progress=False)
    with caplog.at_level(logging.INFO, logger="eqbayes"):
        solver.run(_marked(), key=jr.key(0), args=DATA)
        solver.run(_marked(), steps=60, key=jr.key(0), args=DATA)
    text = caplog.text
    assert "Fast path" in text
    assert "General path" in text
    assert "Group 'Coefficients': Bayesian sampling with 'nuts'" in text
    assert "diagnostics: is_divergent, acceptance_rate, energy" in text
    assert "divergent (" in text and "mean accept" in text


def test_compiles_once():
    traces = []

    def loss(model, f1, f2, y):
        traces.append(None)
        return mse(model, f1, f2, y)

    model = _marked()
    eb.Solver(loss, progress=False).run(model, key=jr.key(0), args=DATA)
    first = len(traces)
    assert first > 0
    # Same configuration, a new Solver object, a new key, new data values.
    f1, f2, y = DATA
    eb.Solver(loss, progress=False).run(
        _marked(), key=jr.key(1), args=(f1, f2, y + 0.01)
    )
    assert len(traces) == first


def test_longer_solve_keeps_last_draws():
    model = _marked(num_chains=1, warmup=5, keep=10, thin=1, init_jitter=0.0)
    solver = eb.Solver(mse, progress=False)
    result = solver.run(model, steps=20, key=jr.key(4), args=DATA)
    state = solver.init(model, key=jr.key(4), args=DATA)
    positions = []
    for _ in range(20):
        state = solver.step(state, args=DATA)
        positions.append(eb.unwrap(state.model).a)
    expected = jnp.stack(positions[-10:])
    assert np.array_equal(result.posterior.samples.a[0], expected)


def test_warmup_zero_first_draw_is_one_transition():
    model = _marked(kernel=blackjax.mala, step_size=1e-4, warmup=0, keep=3, thin=1)
    solver = eb.Solver(mse, progress=False)
    result = solver.run(model, key=jr.key(5), args=DATA)
    state = solver.step(solver.init(model, key=jr.key(5), args=DATA), args=DATA)
    first = state.model.state.kernel_state.position
    assert np.array_equal(result.posterior.samples.a[:, 0], first.a)


def test_result_model_is_chain_zero_last_draw():
    result = eb.Solver(mse, progress=False).run(
        _marked(num_chains=3), key=jr.key(0), args=DATA
    )
    assert isinstance(result.model, Coefficients)
    assert result.model.a.shape == ()
    assert result.model.a == result.posterior.samples.a[0, -1]
    assert result.model.b == result.posterior.samples.b[0, -1]


def test_unwrap_and_names():
    mlp = eqx.nn.MLP(2, 1, 4, 2, key=jr.key(0))
    marked = eb.bayesian(mlp, blackjax.nuts, where=lambda m: m.layers[-1])
    assert isinstance(marked.layers[-1], eb.BayesianLeaf)
    assert marked.layers[-1].name == "layers[2]"
    assert tree_equal(eb.unwrap(marked), mlp)
    marked = eb.bayesian(marked, blackjax.nuts, where=lambda m: m.layers[0].weight)
    assert marked.layers[0].weight.name == "layers[0].weight"
    whole = eb.bayesian(mlp, blackjax.nuts)
    assert isinstance(whole, eb.BayesianLeaf) and whole.name == "MLP"
    named = eb.bayesian(mlp, blackjax.nuts, where=lambda m: m.layers[1], name="hidden")
    assert named.layers[1].name == "hidden"
    # where= sees the plain model, looking through existing wrappers.
    two = eb.bayesian(named, blackjax.mala, where=lambda m: m.layers[0], step_size=0.1)
    groups = [
        x
        for x in jax.tree.leaves(two, is_leaf=lambda x: isinstance(x, eb.BayesianLeaf))
        if isinstance(x, eb.BayesianLeaf)
    ]
    assert [g.name for g in groups] == ["layers[0]", "hidden"]
    assert tree_equal(eb.unwrap(two), mlp)


def test_bayesian_mlp_with_predict():
    """A whole eqx.nn.MLP (its activations are non-array leaves) under HMC."""
    x = jnp.linspace(-1, 1, 20)[:, None]
    y = jnp.sin(3 * x)
    mlp = eqx.nn.MLP(1, 1, 8, 1, activation=jnp.tanh, key=jr.key(0))

    def loss(model, x, y):
        return jnp.mean((jax.vmap(model)(x) - y) ** 2)

    marked = eb.bayesian(
        mlp,
        blackjax.hmc,
        num_integration_steps=4,
        warmup=30,
        keep=12,
        num_chains=2,
        likelihood_scale=100.0,
        prior=eb.priors.gaussian(1.0),
    )
    result = eb.Solver(loss, progress=False).run(marked, key=jr.key(0), args=(x, y))
    samples = result.posterior.samples
    assert samples.layers[0].weight.shape == (2, 12, 8, 1)
    assert samples.activation is None
    preds = result.posterior.predict(lambda m, x: jax.vmap(m)(x), x)
    assert preds.shape == (2, 12, 20, 1)
    # Draw (1, 5) by hand.
    draw = jax.tree.map(lambda s: s[1, 5], samples)
    by_hand = jax.vmap(eqx.combine(draw, result.model))(x)
    assert np.allclose(preds[1, 5], by_hand, atol=1e-6)
    small = result.posterior.predict(lambda m, x: jax.vmap(m)(x), x, batch_size=5)
    assert np.allclose(small, preds, atol=1e-6)
    point = result.posterior.predict(lambda m, x: jax.vmap(m)(x), x, samples="point")
    assert point.shape == (20, 1)
    assert np.allclose(point, jax.vmap(result.model)(x))


def test_predict_without_chain():
    posterior = eb.Posterior(
        samples=Coefficients(None, None), diagnostics={}, model=Coefficients(1.0, 2.0)
    )
    assert posterior.predict(lambda m: m.a + m.b) == 3.0
    with pytest.raises(ValueError, match="no sampled groups"):
        posterior.predict(lambda m: m.a, samples="chain")


def test_nan_loss_is_a_rejection():
    """A loss that is NaN on part of the space rejects moves there, never crashes."""
    f1, f2, y = DATA

    def loss(model, f1, f2, y):
        value = mse(model, f1, f2, y)
        return jnp.where(model.a > 3.145, jnp.nan, value)

    model = eb.bayesian(
        Coefficients(jnp.array(3.0), jnp.array(-2.5)),
        blackjax.nuts,
        warmup=100,
        keep=200,
        num_chains=2,
        likelihood_scale=LIKELIHOOD_SCALE,
    )
    result = eb.Solver(loss, progress=False).run(model, key=jr.key(0), args=DATA)
    a = result.posterior.samples.a
    assert bool(jnp.all(jnp.isfinite(a)))
    assert bool(jnp.all(a <= 3.145))
    diagnostics = result.posterior.diagnostics["Coefficients"]
    assert int(jnp.sum(diagnostics.is_divergent)) > 0


def test_progress_bar_with_chains(capsys):
    pytest.importorskip("tqdm")
    bar = eb.callbacks.ProgressBar(delay=0.0)
    solver = eb.Solver(mse, progress=False, callbacks=(bar,))
    solver.run(_marked(num_chains=4), key=jr.key(0), args=DATA)
    assert "eqbayes" in capsys.readouterr().err
    # The default bar appears after half a second: a solve of a few milliseconds
    # (compiled by the first call) writes nothing.
    solver = eb.Solver(mse, progress=True)
    solver.run(_marked(num_chains=4), key=jr.key(0), args=DATA)
    capsys.readouterr()
    solver.run(_marked(num_chains=4), key=jr.key(1), args=DATA)
    assert "eqbayes" not in capsys.readouterr().err


def test_legacy_key_accepted():
    model = _marked()
    solver = eb.Solver(mse, progress=False)
    r1 = solver.run(model, key=jr.PRNGKey(0), args=DATA)
    r2 = solver.run(model, key=jr.wrap_key_data(jr.PRNGKey(0)), args=DATA)
    assert tree_equal(r1.posterior.samples, r2.posterior.samples)


def test_custom_kernel_without_known_info_records_none():
    from problems import random_walk

    result = eb.Solver(mse, progress=False).run(
        _marked(kernel=random_walk, step_size=0.01), key=jr.key(0), args=DATA
    )
    assert result.posterior.diagnostics == {"Coefficients": None}
    assert result.posterior.samples.a.shape == (2, 15)


def test_mala_records_acceptance_only():
    result = eb.Solver(mse, progress=False).run(
        _marked(kernel=blackjax.mala, step_size=1e-4), key=jr.key(0), args=DATA
    )
    diagnostics = result.posterior.diagnostics["Coefficients"]
    assert diagnostics.acceptance_rate.shape == (2, 15)
    assert diagnostics.is_divergent is None and diagnostics.energy is None


def test_hmc_one_chain_diagnostics():
    result = eb.Solver(mse, progress=False).run(
        _marked(kernel=blackjax.hmc, num_integration_steps=5, num_chains=1),
        key=jr.key(0),
        args=DATA,
    )
    diagnostics = result.posterior.diagnostics["Coefficients"]
    assert diagnostics.num_integration_steps.shape == (1, 15)
    assert bool(jnp.all(diagnostics.num_integration_steps == 5))
    assert diagnostics.is_divergent.dtype == jnp.bool_


def test_history_loss_per_chunk():
    solver = eb.Solver(mse, progress=False, print_every=10)
    result = solver.run(_marked(), steps=60, key=jr.key(0), args=DATA)
    assert result.history.loss.shape == (6,)
    assert bool(jnp.all(jnp.isfinite(result.history.loss)))
    assert result.history.neg_elbo == {}


def test_data_argument():
    f1, f2, y = DATA

    def loss(model, data):
        return mse(model, *data)

    r1 = eb.Solver(loss, progress=False).run(_marked(), key=jr.key(0), data=DATA)
    r2 = eb.Solver(mse, progress=False).run(_marked(), key=jr.key(0), args=DATA)
    assert tree_equal(r1.posterior.samples, r2.posterior.samples)
