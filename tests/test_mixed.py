"""Mixed inference: optax parts, stochastic-gradient kernels, minibatches, masks,
substeps and sparse sample storage."""

import logging

import blackjax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
import pytest
from problems import (
    Coefficients,
    exact_posterior,
    LIKELIHOOD_SCALE,
    mse,
    sincos_data,
)

import eqbayes as eb
from eqbayes._loop import next_batch


F1, F2, Y = sincos_data()
DATA = {"f1": F1, "f2": F2, "y": Y}
MODEL = Coefficients(jnp.asarray(3.0), jnp.asarray(-2.5))
MEAN, COV = exact_posterior(F1, F2, Y)
SD = np.sqrt(np.diag(COV))


def data_mse(model, batch):
    return jnp.mean((model(batch["f1"], batch["f2"]) - batch["y"]) ** 2)


def _mcse(chain):
    """Monte Carlo standard error of the mean of a `(K, N)` chain."""
    return float(jnp.std(chain) / jnp.sqrt(eb.ess(chain)))


@pytest.mark.parametrize("kernel", [blackjax.sgld, blackjax.sghmc])
def test_sg_mcmc_recovers_the_conjugate_posterior_mean(kernel):
    # Minibatch SGLD/SGHMC on the exact Gaussian posterior. With a small step the
    # discretisation bias is small: the tolerance is 4 MCSE plus 0.25 posterior
    # sd for that bias.
    step_size = 2e-5 if kernel is blackjax.sgld else 1e-3
    model = eb.bayesian(
        MODEL,
        kernel,
        step_size=step_size,
        likelihood_scale=LIKELIHOOD_SCALE,
        warmup=500,
        keep=3000,
        num_chains=2,
    )
    result = eb.Solver(data_mse, progress=False).run(
        model, key=jr.key(0), data=DATA, batch_size=32
    )
    assert result.posterior.diagnostics["Coefficients"] is None
    for chain, mean, sd in zip(
        (result.posterior.samples.a, result.posterior.samples.b), MEAN, SD
    ):
        assert chain.shape == (2, 3000)
        error = abs(float(jnp.mean(chain)) - mean)
        assert error < 4 * _mcse(chain) + 0.25 * sd, (error, _mcse(chain), sd)
        assert 0.7 * sd < float(jnp.std(chain)) < 1.4 * sd


def test_sgnht_runs_with_a_random_initial_state():
    model = eb.bayesian(
        MODEL,
        blackjax.sgnht,
        step_size=1e-6,
        likelihood_scale=LIKELIHOOD_SCALE,
        warmup=100,
        keep=200,
        num_chains=2,
    )
    result = eb.Solver(data_mse, progress=False).run(
        model, key=jr.key(0), data=DATA, batch_size=32
    )
    chain = result.posterior.samples.a
    assert bool(jnp.all(jnp.isfinite(chain)))
    assert float(jnp.std(chain)) > 0


def test_minibatches_cover_each_epoch_once():
    state = eb.SolverState(
        MODEL,
        jnp.asarray(0, jnp.int32),
        jr.key(3),
        None,
        jnp.zeros(10, jnp.int32),
        batch_size=3,
    )
    data = jnp.arange(10)
    seen = []
    for step in range(6):  # two epochs of 3 batches; one row dropped per epoch
        state = eqx.tree_at(lambda s: s.step, state, jnp.asarray(step, jnp.int32))
        batch, order = next_batch(state, data)
        state = eqx.tree_at(lambda s: s.data_order, state, order)
        seen.append(np.asarray(batch))
    first, second = np.concatenate(seen[:3]), np.concatenate(seen[3:])
    assert len(set(first)) == 9 and len(set(second)) == 9
    assert not np.array_equal(first, second)  # reshuffled


def _mlp(key):
    return eqx.nn.MLP(1, 1, 16, 2, activation=jnp.tanh, key=key)


def _regression():
    x = jnp.linspace(-1, 1, 64)[:, None]
    y = jnp.sin(3 * x) + 0.05 * jr.normal(jr.key(7), x.shape)
    return {"x": x, "y": y}


def mlp_loss(model, batch):
    return jnp.mean((jax.vmap(model)(batch["x"]) - batch["y"]) ** 2)


def _head_mask(model):
    falses = jax.tree.map(lambda _: False, model)
    return eqx.tree_at(
        lambda m: m.layers[-1],
        falses,
        replace=jax.tree.map(lambda _: True, model.layers[-1]),
    )


def test_pattern_a_leaves_outside_the_mask_are_bitwise_constant():
    net = _mlp(jr.key(0))
    model = eb.bayesian(
        net,
        blackjax.sgld,
        mask=_head_mask(net),
        step_size=1e-4,
        warmup=50,
        keep=100,
        likelihood_scale=64.0,
    )
    data = _regression()
    result = eb.Solver(mlp_loss, progress=False).run(
        model, key=jr.key(1), data=data, batch_size=16
    )
    samples = result.posterior.samples
    assert samples.layers[0].weight is None and samples.layers[1].bias is None
    assert samples.layers[-1].weight.shape == (1, 100, 1, 16)
    assert float(jnp.std(samples.layers[-1].weight, axis=1).max()) > 0
    for before, after in zip(net.layers[:-1], result.model.layers[:-1]):
        assert bool(eqx.tree_equal(before, after))
    # predict fills the head with each draw and keeps the body
    out = result.posterior.predict(lambda m, x: jax.vmap(m)(x), data["x"])
    assert out.shape == (1, 100, 64, 1)


def test_pattern_b_body_trains_while_the_head_is_sampled():
    net = _mlp(jr.key(0))
    model = eb.bayesian(
        net,
        blackjax.sgld,
        mask=_head_mask(net),
        step_size=1e-5,
        warmup=200,
        keep=200,
        likelihood_scale=64.0 / (2 * 0.05**2),
        num_chains=2,
    )
    data = _regression()
    solver = eb.Solver(
        mlp_loss, optimizer=optax.adam(1e-2), progress=False, print_every=100
    )
    result = solver.run(model, 1000, key=jr.key(1), data=data, batch_size=16)
    loss = result.history.loss
    assert loss.shape == (10,)
    # The chunks' losses (each at one minibatch-free evaluation, with the head
    # sampled) fall far below the untrained network's.
    untrained = float(mlp_loss(net, data))
    assert float(jnp.median(loss[5:])) < 0.2 * untrained
    head = result.posterior.samples.layers[-1].weight
    assert head.shape == (2, 200, 1, 16)
    assert float(jnp.std(head, axis=1).min()) > 0
    assert result.posterior.samples.layers[0].weight is None
    assert not bool(eqx.tree_equal(net.layers[0], result.model.layers[0]))


def test_pattern_d_two_masked_groups_both_vary():
    model = eb.bayesian(
        MODEL,
        blackjax.nuts,
        mask=Coefficients(True, False),
        likelihood_scale=LIKELIHOOD_SCALE,
        warmup=200,
        keep=400,
        num_chains=2,
    )
    model = eb.bayesian(
        model,
        blackjax.mala,
        mask=Coefficients(False, True),
        likelihood_scale=LIKELIHOOD_SCALE,
        step_size=1e-5,
        warmup=200,
        keep=400,
        num_chains=2,
    )
    groups = model.groups
    assert [g.name for g in groups] == ["Coefficients/mask0", "Coefficients/mask1"]
    result = eb.Solver(mse, progress=False).run(model, key=jr.key(2), args=(F1, F2, Y))
    a, b = result.posterior.samples.a, result.posterior.samples.b
    assert a.shape == b.shape == (2, 400)
    assert float(jnp.std(a, axis=1).min()) > 0 and float(jnp.std(b, axis=1).min()) > 0
    # A Gibbs cycle of exact kernels targets the joint posterior.
    assert abs(float(jnp.mean(a)) - MEAN[0]) < 4 * _mcse(a) + 0.1 * SD[0]
    assert set(result.posterior.diagnostics) == set(g.name for g in groups)


def test_optax_group_and_chain_representative(caplog):
    # Correlated features, so that b's gradient depends on a's draws.
    f1, f2, y = sincos_data(correlated=True)
    mean, _ = exact_posterior(f1, f2, y)
    model = eb.optimise(MODEL, optax.adam(1e-2), where=lambda m: m.b, name="b")
    model = eb.bayesian(
        model,
        blackjax.hmc,
        where=lambda m: m.a,
        step_size=5e-3,
        num_integration_steps=8,
        adapt=False,
        likelihood_scale=LIKELIHOOD_SCALE,
        warmup=100,
        keep=200,
        num_chains=2,
    )
    solver = eb.Solver(mse, progress=False)
    with caplog.at_level(logging.WARNING, logger="eqbayes"):
        result = solver.run(model, 600, key=jr.key(0), args=(f1, f2, y))
    assert "gradient is taken at chain 0" in caplog.text
    assert result.posterior.samples.b is None
    assert set(result.posterior.diagnostics) == {"a"}
    # b is trained to (near) its optimum given a's draws
    assert abs(float(result.model.b) - mean[1]) < 0.1
    caplog.clear()
    averaged_model = eb.optimise(
        MODEL, optax.adam(1e-2), where=lambda m: m.b, chains="mean", name="b"
    )
    averaged_model = eqx.tree_at(lambda m: m.a, averaged_model, model.a)
    with caplog.at_level(logging.WARNING, logger="eqbayes"):
        averaged = solver.run(averaged_model, 600, key=jr.key(0), args=(f1, f2, y))
    assert "gradient is taken at chain 0" not in caplog.text
    assert abs(float(averaged.model.b) - mean[1]) < 0.1
    assert float(averaged.model.b) != float(result.model.b)


def test_solver_optimizer_alone_trains_the_model():
    solver = eb.Solver(mse, optimizer=optax.adam(5e-2), progress=False)
    result = solver.run(
        Coefficients(jnp.asarray(0.0), jnp.asarray(0.0)),
        500,
        key=jr.key(0),
        args=(F1, F2, Y),
    )
    assert abs(float(result.model.a) - MEAN[0]) < 0.01
    assert result.posterior.diagnostics == {}
    assert not result.posterior.has_chain


def test_step_loop_equals_run_with_minibatches_and_an_optimizer():
    net = _mlp(jr.key(0))
    model = eb.bayesian(
        net,
        blackjax.sgld,
        mask=_head_mask(net),
        step_size=1e-4,
        warmup=5,
        keep=10,
        likelihood_scale=64.0,
    )
    data = _regression()
    solver = eb.Solver(mlp_loss, optimizer=optax.adam(1e-3), progress=False)
    ran = solver.run(model, 15, key=jr.key(4), data=data, batch_size=16)
    state = solver.init(model, key=jr.key(4), data=data, batch_size=16)
    for _ in range(15):
        state = solver.step(state, data=data)
    stepped = solver.result(state)
    assert bool(eqx.tree_equal(ran.posterior.samples, stepped.posterior.samples))
    assert bool(eqx.tree_equal(ran.model, stepped.model))


def test_sparse_storage_holds_only_the_head():
    net = eqx.nn.MLP(1, 1, 256, 3, key=jr.key(0))
    num_params = sum(x.size for x in jax.tree.leaves(eqx.filter(net, eqx.is_array)))
    model = eb.bayesian(
        net,
        blackjax.sgld,
        where=lambda m: m.layers[-1],
        step_size=1e-6,
        warmup=10,
        keep=50,
    )
    result = eb.Solver(mlp_loss, progress=False).run(
        model, 60, key=jr.key(0), data=_regression(), batch_size=8
    )
    stored = sum(x.nbytes for x in jax.tree.leaves(result.posterior.samples))
    head = 256 + 1
    assert stored == head * 50 * 4
    assert stored < num_params * 50 * 4 / 100


class LoRALinear(eqx.Module):
    """A frozen linear layer plus a trainable low-rank update `B @ A`."""

    base: eqx.nn.Linear
    adapter: dict

    def __init__(self, base, rank, key):
        self.base = base
        self.adapter = {
            "A": 0.01 * jr.normal(key, (rank, base.in_features)),
            "B": jnp.zeros((base.out_features, rank)),
        }

    def __call__(self, x):
        return self.base(x) + self.adapter["B"] @ (self.adapter["A"] @ x)


def test_lora_adapters_are_sampled_and_the_base_stays():
    layer = LoRALinear(eqx.nn.Linear(1, 1, key=jr.key(0)), 2, jr.key(1))
    model = eb.bayesian(
        layer,
        blackjax.sgld,
        where=lambda m: m.adapter,
        step_size=1e-4,
        warmup=20,
        keep=50,
        likelihood_scale=64.0,
    )
    result = eb.Solver(mlp_loss, progress=False).run(
        model, key=jr.key(0), data=_regression(), batch_size=16
    )
    assert result.posterior.samples.base.weight is None
    assert result.posterior.samples.adapter["A"].shape == (1, 50, 2, 1)
    assert bool(eqx.tree_equal(result.model.base, layer.base))


def physics(model, f1, f2, y):
    """The coefficient's loss: the data misfit with b fixed by the first stage."""
    return jnp.mean((model(f1, f2) - y) ** 2)


def fit_b(model, f1, f2, y):
    """The first stage: b fits the cos(πx) part of the data."""
    residual = y - float(MEAN[0]) * f1
    return jnp.mean((model.b * f2 - residual) ** 2)


def test_substeps_two_stage_inference():
    model = eb.optimise(MODEL, optax.adam(2e-2), where=lambda m: m.b, name="b")
    model = eb.bayesian(
        model,
        blackjax.nuts,
        where=lambda m: m.a,
        name="a",
        adapt=False,
        step_size=0.01,
        likelihood_scale=LIKELIHOOD_SCALE,
        warmup=300,
        keep=1000,
    )
    solver = eb.Solver(
        physics,
        substeps=(eb.Substep(fit_b, "b"), eb.Substep(physics, ("a",))),
        progress=False,
    )
    result = solver.run(model, key=jr.key(0), args=(F1, F2, Y))
    b = float(result.model.b)
    assert abs(b - MEAN[1]) < 0.02
    a = result.posterior.samples.a
    # a's conditional posterior given b: mean from the normal equations.
    f1, f2, y = (np.asarray(v, np.float64) for v in (F1, F2, Y))
    precision = f1 @ f1 / 0.01 + 1 / 100
    conditional = (f1 @ (y - b * f2) / 0.01) / precision
    assert abs(float(jnp.mean(a)) - conditional) < 4 * _mcse(a) + 0.1 / np.sqrt(
        precision
    )


def test_a_masked_prior_sees_only_the_masked_leaves():
    net = _mlp(jr.key(0))
    seen = []

    def prior(position):
        leaves = jax.tree.leaves(position)
        seen.append([x.shape for x in leaves])
        return -0.5 * sum(jnp.sum(x**2) for x in leaves)

    model = eb.bayesian(
        net,
        blackjax.sgld,
        mask=_head_mask(net),
        prior=prior,
        step_size=1e-5,
        warmup=2,
        keep=2,
    )
    eb.Solver(mlp_loss, progress=False).run(
        model, key=jr.key(0), data=_regression(), batch_size=16
    )
    assert seen and all(shapes == [(1, 16), (1,)] for shapes in seen)


def test_describe_before_init():
    marked = eb.bayesian(MODEL, blackjax.nuts, where=lambda m: m.a)
    assert "known after `Solver.init`" in marked.a.describe()
    sgld = eb.bayesian(MODEL, blackjax.sgld, step_size=1e-5)
    assert "stochastic-gradient kernels report no info" in sgld.describe()
