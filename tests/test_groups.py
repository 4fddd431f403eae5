"""The group interface: a group written outside eqbayes, `Result.state`, keys, and
what a user is told about a solve that cannot work as meant."""

import logging
import pathlib
import re
import runpy

import blackjax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import optax
import pytest
from conftest import tree_equal
from problems import Coefficients, LIKELIHOOD_SCALE, mse, sincos_data

import eqbayes as eb
from eqbayes._loop import group_keys, split_key


DATA = sincos_data()
MODEL = Coefficients(jnp.array(3.0), jnp.array(-2.5))
TUTORIAL = (
    pathlib.Path(__file__).parent.parent / "docs" / "tutorials" / "custom_groups.py"
)


def _marked(**kwargs):
    config = dict(
        num_chains=2,
        warmup=20,
        keep=15,
        init_jitter=0.1,
        likelihood_scale=LIKELIHOOD_SCALE,
    )
    config.update(kwargs)
    return eb.bayesian(MODEL, blackjax.nuts, **config)


def test_custom_gibbs_group_is_exact(monkeypatch):
    """The guide's Gibbs group, written outside eqbayes, beside a NUTS group: the
    joint draws match the Normal-Gamma posterior."""
    matplotlib.use("Agg")
    monkeypatch.setattr(plt, "show", lambda: None)
    with jax.numpy_dtype_promotion("standard"), jax.numpy_rank_promotion("allow"):
        out = runpy.run_path(str(TUTORIAL))
    samples, exact = out["samples"], out["exact"]
    for field in ("w", "tau"):
        draws = np.asarray(getattr(samples, field))
        assert draws.shape[:2] == (out["K"], out["KEEP"])
        mean = draws.mean(axis=(0, 1))
        sd = draws.std(axis=(0, 1))
        mcse = sd / np.sqrt(np.asarray(eb.ess(draws)))
        truth_mean, truth_sd = exact[field]
        assert np.all(np.abs(mean - truth_mean) / mcse < 4), (field, mean, truth_mean)
        np.testing.assert_allclose(sd, truth_sd, rtol=0.1)
    assert float(np.max(np.asarray(eb.rhat(samples.tau)))) < 1.01


def test_result_state_continues_the_solve():
    solver = eb.Solver(mse, progress=False)
    model = _marked()
    whole = solver.run(model, steps=80, key=jr.key(2), args=DATA)
    first = solver.run(model, steps=50, key=jr.key(2), args=DATA)
    assert isinstance(first.state, eb.SolverState) and int(first.state.step) == 50
    rest = solver.run(model, steps=30, key=jr.key(2), args=DATA, state=first.state)
    assert tree_equal(whole.posterior.samples, rest.posterior.samples)
    # The key may be left out: the state carries it.
    again = solver.run(None, steps=30, args=DATA, state=first.state)
    assert tree_equal(whole.posterior.samples, again.posterior.samples)


def test_state_disagreements_are_errors():
    solver = eb.Solver(mse, progress=False)
    model = _marked()
    state = solver.run(model, steps=50, key=jr.key(2), args=DATA).state
    with pytest.raises(ValueError, match=re.escape("was started with another key")):
        solver.run(model, steps=10, key=jr.key(3), args=DATA, state=state)
    other = _marked(name="coefficients")
    with pytest.raises(ValueError, match=re.escape("does not match the model")):
        solver.run(other, steps=10, key=jr.key(2), args=DATA, state=state)
    with pytest.raises(ValueError, match=re.escape("does not match the model")):
        solver.run(MODEL, steps=10, key=jr.key(2), args=DATA, state=state)
    with pytest.raises(
        ValueError, match=re.escape("was started with `batch_size=None`")
    ):
        solver.run(model, steps=10, args=DATA, state=state, batch_size=4)
    with pytest.raises(TypeError, match=re.escape("pass `key=`")):
        solver.run(model, args=DATA)


def test_keys_are_independent():
    """Start, initializer and kernel keys of every group, and the run key, are all
    different (a start key split per leaf must not reproduce an init key)."""
    key = jr.key(0)
    init_key, run_key = split_key(key)
    keys = [run_key, init_key]
    for j in range(3):
        start, init = group_keys(init_key, j)
        keys += [start, init, *jr.split(start, 4), *jr.split(init, 2)]
        warm, kernel = jr.split(init)
        keys += list(jr.split(kernel, 4))
    data = {tuple(np.asarray(jr.key_data(k)).tolist()) for k in keys}
    assert len(data) == len(keys)


def test_vi_chunk_records_report_its_draws():
    """A VI group's record says how many draws it holds, in the layout of the K
    chains beside it."""
    model = Coefficients(jnp.array(3.0), jnp.array(-2.5))
    model = eb.bayesian(
        model,
        blackjax.nuts,
        where=lambda m: m.a,
        num_chains=3,
        warmup=10,
        keep=20,
        init_jitter=0.1,
        likelihood_scale=LIKELIHOOD_SCALE,
    )
    model = eb.vi(
        model,
        optimizer=optax.adam(1e-2),
        where=lambda m: m.b,
        posterior_draws=20,
        likelihood_scale=LIKELIHOOD_SCALE,
    )
    records = []
    solver = eb.Solver(mse, progress=False, print_every=15, callbacks=[records.append])
    result = solver.run(model, key=jr.key(0), args=DATA)
    last = records[-1].groups
    assert (last["a"].n_chains, last["a"].n_samples) == (3, 20)
    assert (last["b"].n_chains, last["b"].n_samples) == (3, 20)
    np.testing.assert_allclose(
        last["b"].mean, float(jnp.mean(result.posterior.samples.b)), rtol=1e-5
    )
    # What the groups monitor reaches the records, the history and the metrics.
    assert records[-1].monitor == {"b": {"neg_elbo": records[-1].neg_elbo["b"]}}
    assert records[-1].metrics()["neg_elbo/b"] == records[-1].neg_elbo["b"]
    history = result.history
    assert list(history.monitor) == ["b"]
    assert np.array_equal(history.monitor["b"]["neg_elbo"], history.neg_elbo["b"])
    assert history.neg_elbo["b"].shape == (len(records),)


def test_tracer_error_keeps_jax_message():
    def loss(model, f1, f2, y):
        if model.a > 0:  # a Python `if` on a traced value
            return mse(model, f1, f2, y)
        return -mse(model, f1, f2, y)

    with pytest.raises(jax.errors.TracerBoolConversionError) as info:
        eb.Solver(loss, progress=False).init(_marked(), key=jr.key(0), args=DATA)
    notes = "\n".join(getattr(info.value, "__notes__", []))
    assert "calling `loss(model, *args)` on the unwrapped model" in notes


def test_non_finite_start_is_an_error():
    f1, f2, y = DATA
    bad_data = (f1, f2, y.at[3].set(jnp.nan))
    model = eb.bayesian(MODEL, blackjax.nuts, num_chains=2, init_jitter=0.1)
    with pytest.raises(ValueError, match=re.escape("(nan) for chain(s) [0, 1]")):
        eb.Solver(mse, progress=False).init(model, key=jr.key(0), args=bad_data)
    with pytest.raises(ValueError, match=re.escape("(nan) for chain(s) [0, 1]")):
        eb.Solver(mse, progress=False).run(model, key=jr.key(0), args=bad_data)

    bad = Coefficients(jnp.array(jnp.nan), jnp.array(-2.5))
    model = eb.bayesian(bad, blackjax.nuts, num_chains=2, init_jitter=0.1)
    with pytest.raises(
        ValueError, match=re.escape("group(s) ['Coefficients'] hold a NaN or an")
    ):
        eb.Solver(mse, progress=False).init(model, key=jr.key(0), args=DATA)


def test_integer_leaves_are_reported(caplog):
    class WithCount(eqx.Module):
        a: jax.Array
        n: jax.Array

    model = WithCount(jnp.zeros(2), jnp.array(3))
    with caplog.at_level(logging.WARNING, logger="eqbayes"):
        eb.bayesian(model, blackjax.nuts)
    assert "`n` (int32) is an integer array, never inferred" in caplog.text


def test_chains_at_one_point_are_reported(caplog):
    with caplog.at_level(logging.WARNING, logger="eqbayes"):
        eb.Solver(mse, progress=False).init(
            _marked(init_jitter=0.0), key=jr.key(0), args=DATA
        )
    assert "its 2 chains all start at the model's values" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="eqbayes"):
        eb.Solver(mse, progress=False).init(_marked(), key=jr.key(0), args=DATA)
    assert "all start at" not in caplog.text


def test_loss_shape_error_explains_the_scale():
    def loss(model, f1, f2, y):
        return (model(f1, f2) - y) ** 2

    with pytest.raises(ValueError, match=re.escape("pass `likelihood_scale=N`")):
        eb.Solver(loss, progress=False).init(_marked(), key=jr.key(0), args=DATA)


def test_group_interface_is_abstract_or_final():
    """Every concrete group overrides abstract members only."""
    for cls in (eb.BayesianLeaf, eb.VIGroup, eb.OptaxGroup):
        for klass in cls.__mro__[1:]:
            if klass in (eb.AbstractGroup, eb.AbstractChainGroup):
                concrete = {
                    name
                    for name, value in vars(klass).items()
                    if callable(value)
                    and not getattr(value, "__isabstractmethod__", 0)
                    and not name.startswith("__")
                }
                overridden = concrete & set(vars(cls))
                assert not overridden, (cls.__name__, overridden)
