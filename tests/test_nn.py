"""`eqbayes.nn`: LoRA adapters on pretrained Equinox networks."""

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
import eqbayes.nn


def _pretrained():
    return eqx.nn.MLP(2, 1, 8, 2, activation=jnp.tanh, key=jr.key(0))


def _data(shift=0.5):
    x = jr.uniform(jr.key(1), (32, 2), minval=-1.0, maxval=1.0)
    y = jnp.sin(2 * x[:, :1]) + shift * x[:, 1:]
    return x, y


def _mse(model, x, y):
    return jnp.mean((jax.vmap(model)(x) - y) ** 2)


def _frozen(model):
    """The frozen bits of every LoRA layer."""
    return [
        (layer.base.weight, layer.base.bias)
        for layer in jax.tree.leaves(
            model, is_leaf=lambda x: isinstance(x, eqbayes.nn.LoRALinear)
        )
        if isinstance(layer, eqbayes.nn.LoRALinear)
    ]


def test_lora_starts_as_the_pretrained_network():
    model = _pretrained()
    adapted = eqbayes.nn.lora(model, 2, key=jr.key(2))
    assert all(isinstance(l, eqbayes.nn.LoRALinear) for l in adapted.layers)
    layer = adapted.layers[1]
    assert layer.A.shape == (2, 8) and layer.B.shape == (8, 2)
    assert not np.any(layer.B)
    # The frozen weights are no parameters.
    params = jax.tree.leaves(eqx.filter(adapted, eqx.is_inexact_array))
    assert len(params) == 2 * len(model.layers)
    merged = eqbayes.nn.merge(adapted)
    assert jax.tree.structure(merged) == jax.tree.structure(model)
    arrays = [jax.tree.leaves(eqx.filter(m, eqx.is_array)) for m in (merged, model)]
    for a, b in zip(*arrays, strict=True):
        np.testing.assert_array_equal(
            np.asarray(a).view(np.uint32), np.asarray(b).view(np.uint32)
        )
    x, _ = _data()
    np.testing.assert_array_equal(jax.vmap(adapted)(x), jax.vmap(model)(x))
    # `weight` and `bias` read the frozen values back.
    np.testing.assert_array_equal(layer.weight, model.layers[1].weight)
    np.testing.assert_array_equal(layer.bias, model.layers[1].bias)


def test_lora_where_scalar_and_merge():
    model = eqx.nn.MLP(
        "scalar", "scalar", 4, 1, use_bias=False, use_final_bias=False, key=jr.key(0)
    )
    adapted = eqbayes.nn.lora(model, 1, where=lambda m: m.layers[-1], key=jr.key(1))
    assert isinstance(adapted.layers[0], eqx.nn.Linear)
    assert isinstance(adapted.layers[1], eqbayes.nn.LoRALinear)
    assert adapted.layers[1].bias is None
    moved = eqx.tree_at(
        lambda m: m.layers[1].B, adapted, jnp.ones_like(adapted.layers[1].B)
    )
    layer = moved.layers[1]
    merged = eqbayes.nn.merge(moved)
    np.testing.assert_allclose(
        merged.layers[1].weight, layer.weight + layer.B @ layer.A, rtol=1e-6
    )
    x = jnp.linspace(-1, 1, 5)
    np.testing.assert_allclose(
        jax.vmap(moved)(x), jax.vmap(merged)(x), rtol=1e-5, atol=1e-6
    )
    assert jax.vmap(moved)(x).shape == (5,)


def test_bayesian_adapters_only():
    """Sampling the adapters: they move, the base weights stay bitwise, and the
    chain stores the adapters and nothing else."""
    adapted = eqbayes.nn.lora(_pretrained(), 2, key=jr.key(2))
    marked = eb.bayesian(
        adapted,
        blackjax.hmc,
        num_integration_steps=5,
        where=eqbayes.nn.adapters,
        name="adapters",
        warmup=60,
        keep=40,
        num_chains=2,
        init_jitter=0.05,
        likelihood_scale=32 / (2 * 0.1**2),
        prior=eb.priors.gaussian(1.0),
    )
    x, y = _data()
    result = eb.Solver(_mse, progress=False).run(marked, key=jr.key(3), args=(x, y))
    for before, after in zip(_frozen(adapted), _frozen(result.model)):
        np.testing.assert_array_equal(before[0], after[0])
        np.testing.assert_array_equal(before[1], after[1])
    samples = result.posterior.samples
    stored = jax.tree_util.tree_flatten_with_path(samples)[0]
    names = sorted(jax.tree_util.keystr(path) for path, _ in stored)
    assert names == sorted(f".layers[{i}].{ab}" for i in range(3) for ab in ("A", "B"))
    b_draws = np.asarray(samples.layers[1].B)
    assert b_draws.shape == (2, 40, 8, 2)
    assert np.all(np.std(b_draws, axis=1) > 0)
    assert set(result.posterior.diagnostics) == {"adapters"}
    labels = result.posterior.summary().names
    assert labels[0].startswith("layers[0].A[")
    # The adapted fit beats the pretrained network on the shifted data.
    preds = result.posterior.predict(lambda m, x: jax.vmap(m)(x), x)
    assert float(jnp.mean((jnp.mean(preds, axis=(0, 1)) - y) ** 2)) < _mse(
        adapted, x, y
    )


class _Scaled(eqx.Module):
    net: eqx.nn.MLP | object
    scale: jax.Array

    def __call__(self, x):
        return self.scale * self.net(x)


@pytest.mark.parametrize("how", ["optimise", "solver-optimizer", "vi"])
def test_optimisers_cannot_move_base_weights(how):
    """With weight decay, an optimiser moves every parameter it holds: the base
    weights are none (neither in `eb.optimise(where=...)` nor among the Solver's
    unmarked leaves), and a variational fit of the adapters leaves them too."""
    adapted = _Scaled(eqbayes.nn.lora(_pretrained(), 2, key=jr.key(2)), jnp.ones(()))
    adamw = optax.adamw(1e-2, weight_decay=0.5)
    if how == "optimise":
        model = eb.optimise(adapted, adamw, where=eqbayes.nn.adapters)
        solver = eb.Solver(_mse, progress=False)
    elif how == "vi":
        model = eb.vi(
            adapted,
            optimizer=optax.adam(1e-2),
            where=eqbayes.nn.adapters,
            likelihood_scale=100.0,
        )
        solver = eb.Solver(_mse, optimizer=adamw, progress=False)
    else:
        model = eb.optimise(adapted, adamw, where=lambda m: m.scale)
        solver = eb.Solver(_mse, optimizer=adamw, progress=False)
    x, y = _data()
    result = solver.run(model, steps=50, key=jr.key(0), args=(x, y))
    for before, after in zip(_frozen(adapted), _frozen(result.model)):
        np.testing.assert_array_equal(before[0], after[0])
        np.testing.assert_array_equal(before[1], after[1])
    assert not np.array_equal(result.model.net.layers[0].B, adapted.net.layers[0].B)
    assert float(_mse(result.model, x, y)) < float(_mse(adapted, x, y))


class _Three(eqx.Module):
    a: jax.Array
    b: jax.Array
    c: jax.Array


def test_where_several_sub_trees():
    """`where` returning a tuple: the sub-trees form one group, the rest stays."""
    model = _Three(jnp.zeros(2), jnp.ones(()), jnp.zeros(()))
    marked = eb.bayesian(
        model, blackjax.nuts, where=lambda m: (m.a, m.c), warmup=20, keep=10
    )
    result = eb.Solver(lambda m: jnp.sum(m.a**2) + m.c**2 + m.b, progress=False).run(
        marked, key=jr.key(0)
    )
    assert result.posterior.samples.b is None
    assert result.posterior.samples.a.shape == (1, 10, 2)
    assert result.posterior.samples.c.shape == (1, 10)
    assert list(result.posterior.diagnostics) == ["(a, c)"]
    assert result.model.b == 1.0
    with pytest.raises(
        ValueError, match=re.escape("calling `where` on the (unwrapped) model failed")
    ):
        eb.bayesian(
            {"x": {"y": jnp.zeros(())}},
            blackjax.nuts,
            where=lambda m: (m["x"], m["x"]["y"]),
        )
    # The tuple selects the leaves itself: a mask on top of it is refused.
    with pytest.raises(ValueError, match=re.escape("`mask=` cannot be combined")):
        eb.bayesian(
            model, blackjax.nuts, where=lambda m: (m.a, m.c), mask=(True, False)
        )


def test_bad_input():
    model = _pretrained()
    with pytest.raises(ValueError, match=re.escape("`rank` must be a positive")):
        eqbayes.nn.lora(model, 0, key=jr.key(0))
    with pytest.raises(ValueError, match=re.escape("holds no `eqx.nn.Linear`")):
        eqbayes.nn.lora({"w": jnp.zeros(3)}, 2, key=jr.key(0))
    for select in (eqbayes.nn.adapters, eqbayes.nn.adapters_b):
        with pytest.raises(ValueError, match=re.escape("holds no LoRA layer")):
            select(model)


def test_adapters_b_selects_only_b():
    adapted = eqbayes.nn.lora(_pretrained(), 2, key=jr.key(2))
    marked = eb.optimise(adapted, optax.adam(1e-2), where=eqbayes.nn.adapters_b)
    x, y = _data()
    result = eb.Solver(_mse, progress=False).run(
        marked, steps=20, key=jr.key(0), args=(x, y)
    )
    for before, after in zip(adapted.layers, result.model.layers):
        np.testing.assert_array_equal(before.A, after.A)
        assert not np.array_equal(before.B, after.B)
