"""`Posterior.summary()` and `Posterior.to_arviz()`."""

import re

import arviz as az
import blackjax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pandas as pd
import pytest
from problems import Coefficients, LIKELIHOOD_SCALE, mse, sincos_data

import eqbayes as eb
from eqbayes._summary import group_labels


DATA = sincos_data()


def _ar1(key, shape, rho=0.7):
    """Autocorrelated draws `(K, N, *p)` with chain-dependent offsets."""
    noise = jr.normal(key, shape)

    def body(x, e):
        x = rho * x + e
        return x, x

    _, out = jax.lax.scan(body, noise[:, 0], jnp.moveaxis(noise, 1, 0))
    offsets = 0.05 * jnp.arange(shape[0], dtype=noise.dtype)
    offsets = offsets.reshape(-1, *(1,) * (len(shape) - 1))
    return jnp.moveaxis(out, 0, 1) + offsets


class _Two(eqx.Module):
    a: jax.Array
    w: jax.Array


def _posterior(samples, diagnostics, model, labels=()):
    return eb.Posterior(samples, diagnostics, model, labels)


def test_columns_match_arviz():
    with jax.enable_x64(True):
        samples = _Two(
            _ar1(jr.key(0), (4, 300)), jnp.exp(_ar1(jr.key(1), (4, 300, 2, 3)))
        )
        posterior = _posterior(samples, {}, _Two(jnp.zeros(()), jnp.zeros((2, 3))))
        summary = posterior.summary()
        table = summary.to_dict()
        idata = az.from_dict(
            posterior={"a": np.asarray(samples.a), "w": np.asarray(samples.w)}
        )
        reference = az.summary(idata, round_to="none")
        tail = np.concatenate(
            [np.ravel(az.ess(idata, method="tail")[name].values) for name in ("a", "w")]
        )
    names = ["a"] + [f"w[{i}, {j}]" for i in range(2) for j in range(3)]
    assert list(table["name"]) == names
    assert list(reference.index) == names
    for column in ("mean", "sd", "mcse_mean", "ess_bulk", "ess_tail", "r_hat"):
        np.testing.assert_allclose(
            table[column], reference[column].to_numpy(), rtol=1e-8, err_msg=column
        )
    np.testing.assert_allclose(table["ess_tail"], tail, rtol=1e-8)
    pooled = np.concatenate(
        [np.asarray(samples.a).reshape(-1, 1), np.asarray(samples.w).reshape(1200, 6)],
        axis=1,
    )
    for q, column in ((0.05, "5%"), (0.5, "50%"), (0.95, "95%")):
        np.testing.assert_allclose(table[column], np.quantile(pooled, q, axis=0))


def test_one_chain_and_quantiles():
    samples = _Two(None, _ar1(jr.key(2), (1, 50, 2)))
    posterior = _posterior(samples, {}, _Two(jnp.zeros(()), jnp.zeros(2)))
    table = posterior.summary(quantiles=(0.25, 0.75)).to_dict()
    assert list(table) == [
        "name",
        "mean",
        "sd",
        "25%",
        "75%",
        "mcse_mean",
        "ess_bulk",
        "ess_tail",
        "r_hat",
    ]
    np.testing.assert_allclose(table["r_hat"], eb.rhat(samples.w), rtol=1e-6)
    np.testing.assert_allclose(table["ess_bulk"], eb.ess(samples.w), rtol=1e-6)


def test_labels_from_a_solve():
    """Rows are named by the model's structure, or by the group's `name=`."""
    mlp = eqx.nn.MLP(1, 1, 2, 1, key=jr.key(0))
    marked = eb.bayesian(
        mlp,
        blackjax.mala,
        where=lambda m: m.layers[-1],
        step_size=1e-3,
        warmup=0,
        keep=6,
        num_chains=2,
    )
    marked = eb.bayesian(
        marked,
        blackjax.mala,
        where=lambda m: m.layers[0].bias,
        step_size=1e-3,
        warmup=0,
        keep=6,
        num_chains=2,
        name="first_bias",
    )

    def loss(model):
        x = jnp.linspace(-1, 1, 5)[:, None]
        return jnp.mean(jax.vmap(model)(x) ** 2)

    result = eb.Solver(loss, progress=False).run(marked, key=jr.key(1))
    summary = result.posterior.summary()
    assert summary.names == (
        "first_bias[0]",
        "first_bias[1]",
        "layers[1].weight[0, 0]",
        "layers[1].weight[0, 1]",
        "layers[1].bias[0]",
    )
    text = str(summary)
    assert "layers[1].weight[0, 1]" in text
    assert "Group 'layers[1]': " in text and "Group 'first_bias': " in text
    frame = summary.to_pandas()
    assert isinstance(frame, pd.DataFrame)
    assert list(frame.index) == list(summary.names)
    idata = result.posterior.to_arviz()
    assert set(idata.posterior.data_vars) == {
        "first_bias",
        "layers[1].weight",
        "layers[1].bias",
    }
    # Two groups report acceptance: suffixed by group name.
    assert set(idata.sample_stats.data_vars) == {
        "acceptance_rate[layers[1]]",
        "acceptance_rate[first_bias]",
    }


def test_whole_model_nuts_to_arviz():
    model = eb.bayesian(
        Coefficients(jnp.array(3.0), jnp.array(-2.5)),
        blackjax.nuts,
        num_chains=2,
        warmup=20,
        keep=30,
        likelihood_scale=LIKELIHOOD_SCALE,
    )
    result = eb.Solver(mse, progress=False).run(model, key=jr.key(0), args=DATA)
    posterior = result.posterior
    summary = posterior.summary()
    assert summary.names == ("a", "b")
    assert "Group 'Coefficients': " in str(summary)
    assert "divergent" in summary.groups["Coefficients"]
    idata = posterior.to_arviz()
    stats = idata.sample_stats
    assert set(stats.data_vars) == {"diverging", "acceptance_rate", "energy"}
    np.testing.assert_array_equal(
        stats["diverging"].values,
        np.asarray(posterior.diagnostics["Coefficients"].is_divergent),
    )
    np.testing.assert_array_equal(idata.posterior["a"].values, posterior.samples.a)
    table = az.summary(idata)
    assert list(table.index) == ["a", "b"]


def test_named_whole_model_labels():
    """A whole-model group given `name=` labels its leaves `name.attr[i]`."""
    model = eb.bayesian(
        Coefficients(a=jnp.zeros(1), b=jnp.zeros(1)),
        blackjax.nuts,
        name="curve",
        num_chains=2,
        warmup=50,
        keep=50,
        likelihood_scale=LIKELIHOOD_SCALE,
    )
    result = eb.Solver(mse, progress=False).run(model, key=jr.key(0), args=DATA)
    summary = result.posterior.summary()
    assert summary.names == ("curve.a[0]", "curve.b[0]")
    assert list(summary.groups) == ["curve"]
    idata = result.posterior.to_arviz()
    assert list(idata.posterior.data_vars) == ["curve.a", "curve.b"]


@pytest.mark.parametrize(
    "model, where, name, expected",
    [
        # The whole model, named: `name` + the path inside it.
        (
            Coefficients(jnp.zeros(()), jnp.zeros(2)),
            None,
            "curve",
            ["curve.a", "curve.b[0]", "curve.b[1]"],
        ),
        ([jnp.zeros(1), jnp.zeros(())], None, "curve", ["curve[0][0]", "curve[1]"]),
        (
            {"a": jnp.zeros(1), "b": jnp.zeros(())},
            None,
            "curve",
            ["curve['a'][0]", "curve['b']"],
        ),
        (jnp.zeros(2), None, "curve", ["curve[0]", "curve[1]"]),
        # The whole model, unnamed: the path in the model.
        (Coefficients(jnp.zeros(()), jnp.zeros(1)), None, None, ["a", "b[0]"]),
        # A single leaf, named: the name alone.
        (
            Coefficients(jnp.zeros(1), jnp.zeros(1)),
            lambda m: m.a,
            "alpha",
            ["alpha[0]"],
        ),
        (Coefficients(jnp.zeros(()), jnp.zeros(())), lambda m: m.a, "alpha", ["alpha"]),
        (
            {"a": jnp.zeros(2), "b": jnp.zeros(())},
            lambda m: m["a"],
            "alpha",
            ["alpha[0]", "alpha[1]"],
        ),
        # A sub-tree, named: `name` + the path inside it.
        (
            Coefficients(Coefficients(jnp.zeros(1), jnp.zeros(())), jnp.zeros(())),
            lambda m: m.a,
            "head",
            ["head.a[0]", "head.b"],
        ),
        (
            [jnp.zeros(()), [jnp.zeros(1), jnp.zeros(())]],
            lambda m: m[1],
            "head",
            ["head[0][0]", "head[1]"],
        ),
    ],
    ids=[
        "whole-module",
        "whole-list",
        "whole-dict",
        "whole-array",
        "whole-unnamed",
        "leaf",
        "scalar-leaf",
        "dict-leaf",
        "module-subtree",
        "list-subtree",
    ],
)
def test_named_group_labels(model, where, name, expected):
    """Row labels for named and unnamed groups of Module, list and dict models."""
    kwargs = {} if where is None else {"where": where}
    if name is not None:
        kwargs["name"] = name
    marked = eb.bayesian(model, blackjax.mala, step_size=1e-2, **kwargs)
    sampled = jax.tree.map(lambda _: where is None, model)
    if where is not None:
        sampled = eqx.tree_at(
            where, sampled, replace_fn=lambda s: jax.tree.map(lambda _: True, s)
        )
    samples = jax.tree.map(
        lambda x, s: jnp.zeros((1, 4, *x.shape)) if s else None, model, sampled
    )
    labels = group_labels(model, marked)
    posterior = _posterior(samples, {}, model, labels)
    assert list(posterior.summary().names) == expected


def test_printing_elides_long_tables():
    samples = _Two(None, _ar1(jr.key(3), (2, 20, 60)))
    posterior = _posterior(samples, {"w": None}, _Two(jnp.zeros(()), jnp.zeros(60)))
    summary = posterior.summary()
    assert len(summary) == 60
    text = str(summary)
    assert "w[0]" in text and "w[59]" in text and "w[30]" not in text
    assert "(20 more rows" in text
    assert "w[30]" in summary.to_string(max_rows=None)
    assert "Group 'w': no kernel diagnostics" in text


def test_bad_input():
    samples = {"w": jnp.zeros((2, 10))}
    posterior = _posterior(samples, {}, {"w": jnp.zeros(())})
    with pytest.raises(ValueError, match=re.escape("`quantiles` must be a sequence")):
        posterior.summary(quantiles=(0.5, 1.5))
    empty = _posterior({"w": None}, {}, {"w": jnp.zeros(())})
    with pytest.raises(ValueError, match=re.escape("no sampled leaves")):
        empty.summary()
    with pytest.raises(ValueError, match=re.escape("no sampled leaves")):
        empty.to_arviz()
    # (Samples of groups with different `keep=`; their diagnostics stand in.)
    other = eb.KernelDiagnostics(acceptance_rate=jnp.zeros((2, 12)))
    ragged = _posterior(samples, {"b": other}, {"w": jnp.zeros(())})
    with pytest.raises(ValueError, match=re.escape("different numbers of draws")):
        ragged.to_arviz()
