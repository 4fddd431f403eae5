"""Sharded solves against the unsharded run, on 8 forced host devices.

Not collected by the default run (the number of host devices is fixed when JAX
starts): `test_sharding.py` runs this file in a pytest subprocess with
`XLA_FLAGS=--xla_force_host_platform_device_count=8`, or by hand:

    XLA_FLAGS=--xla_force_host_platform_device_count=8 \
        python -m pytest tests/sharded_checks.py
"""

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import blackjax
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from conftest import tree_equal
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from problems import Coefficients, LIKELIHOOD_SCALE, mse
from sharded_problem import DATA, marked, solver

import eqbayes as eb
from eqbayes import KernelDiagnostics


if jax.device_count() != 8:
    raise RuntimeError(
        "tests/sharded_checks.py needs 8 host devices: run it with "
        "XLA_FLAGS=--xla_force_host_platform_device_count=8 (test_sharding.py does)."
    )

DEVICES = np.array(jax.devices())
CHAINS = Mesh(DEVICES, ("chains",))
CHAINS_DATA = Mesh(DEVICES.reshape(4, 2), ("chains", "data"))
ONE = Mesh(DEVICES[:1], ("chains",))


def _chain_sharded(x, mesh) -> bool:
    return x.sharding.is_equivalent_to(NamedSharding(mesh, P("chains")), x.ndim)


def _unsharded(model, **kwargs):
    return solver().run(model, key=jr.key(0), args=DATA, **kwargs)


@pytest.fixture(scope="module")
def reference():
    """The unsharded solve of `marked()`: 16 chains under window adaptation."""
    return _unsharded(marked())


@pytest.fixture(scope="module")
def sharded():
    """The same solve with its chains over 8 devices (2 per device)."""
    return solver().run(marked(), key=jr.key(0), args=DATA, mesh=CHAINS)


@pytest.mark.parametrize("on", ["8_devices", "1_device"])
def test_chains_bitwise(on, reference, sharded):
    """The same bits as the unsharded solve, on 8 devices and on a one-device
    mesh."""
    if on == "8_devices":
        mesh, result = CHAINS, sharded
    else:
        mesh = ONE
        result = solver().run(marked(), key=jr.key(0), args=DATA, mesh=mesh)
    assert tree_equal(result.posterior.samples, reference.posterior.samples)
    assert tree_equal(result.posterior.diagnostics, reference.posterior.diagnostics)
    assert tree_equal(result.model, reference.model)
    # The history's loss is a mean over chains, reduced across devices.
    assert np.allclose(result.history.loss, reference.history.loss, rtol=1e-6)
    for leaf in jax.tree.leaves(result.posterior.samples):
        assert _chain_sharded(leaf, mesh)


def _stepped_group(model, with_state=False):
    """Six manual steps on the mesh and off it: the same bits. The group (and the
    solver state) after them."""
    s = solver()
    state = s.init(model, key=jr.key(1), args=DATA, mesh=CHAINS)
    plain = s.init(model, key=jr.key(1), args=DATA)
    for _ in range(6):
        state = s.step(state, args=DATA)
        plain = s.step(plain, args=DATA)
    assert tree_equal(state, plain)
    (group,) = [
        g
        for g in jax.tree.leaves(
            state.model, is_leaf=lambda x: isinstance(x, eb.BayesianLeaf)
        )
    ]
    return (state, group) if with_state else group


def test_state_placement_and_manual_steps():
    """Every chain-axis array is sharded over "chains", the rest replicated; manual
    `Solver.step` calls keep the placement and the bits."""
    state, group = _stepped_group(marked(warmup=5, keep=5), with_state=True)
    mcmc = group.state
    # Each chain adapts its own step size and mass matrix (`adapt=True`): they and
    # the adaptation state live on the chain axis too.
    chained = (
        mcmc.kernel_state,
        mcmc.draws,
        mcmc.step_size,
        mcmc.inverse_mass_matrix,
        mcmc.adaptation,
    )
    for leaf in jax.tree.leaves(chained):
        assert _chain_sharded(leaf, CHAINS)
    shared = (state.step, group.value)
    for leaf in jax.tree.leaves(shared):
        assert leaf.sharding.is_fully_replicated


def test_pooled_adaptation_placement_and_bits():
    """`adapt="pooled"`: the shared step size and mass matrix are replicated, and
    the sharded solve keeps every bit of the unsharded one."""
    group = _stepped_group(marked(warmup=5, keep=5, adapt="pooled"))
    shared = (group.state.step_size, group.state.inverse_mass_matrix)
    assert group.state.step_size.shape == ()
    for leaf in jax.tree.leaves(shared):
        assert leaf.sharding.is_fully_replicated


def _low_rank_group(state):
    (group,) = [
        g
        for g in jax.tree.leaves(
            state.model, is_leaf=lambda x: isinstance(x, eb.BayesianLeaf)
        )
    ]
    return group


@pytest.mark.parametrize("adapt", [True, "pooled"])
def test_low_rank_manual_steps(adapt):
    """`metric="low_rank"` through a whole warmup (its slow window reads every
    chain's draws and gradients). Pooled: every bit of the unsharded solve, the
    factors replicated. Per chain: the factors live on the chain axis and agree
    with the unsharded ones to rounding (the estimate's reductions over a window
    are batched over 2 chains per device instead of 16, which changes their last
    bit), so the chains agree in distribution, not bitwise."""
    model = marked(warmup=40, keep=5, adapt=adapt, metric="low_rank", max_rank=1)
    s = solver()
    state = s.init(model, key=jr.key(1), args=DATA, mesh=CHAINS)
    plain = s.init(model, key=jr.key(1), args=DATA)
    for _ in range(40):  # to the end of warmup
        state = s.step(state, args=DATA)
        plain = s.step(plain, args=DATA)
    imm = _low_rank_group(state).state.inverse_mass_matrix
    assert not np.all(np.asarray(imm.sigma) == 1.0)  # estimated
    for leaf in jax.tree.leaves(imm):
        if adapt is True:
            assert _chain_sharded(leaf, CHAINS)
        else:
            assert leaf.sharding.is_fully_replicated
    if adapt == "pooled":
        assert tree_equal(state, plain)
    else:
        dense = [
            KernelDiagnostics(
                inverse_mass_matrix=_low_rank_group(x).state.inverse_mass_matrix
            ).dense_inverse_mass_matrix()
            for x in (state, plain)
        ]
        np.testing.assert_allclose(dense[0], dense[1], rtol=1e-4)


def test_chees_manual_steps_bitwise():
    """ChEES-HMC's shared update gathers every device's chains: stepped one
    solver step at a time, the sharded solve keeps every bit of the unsharded one
    through warmup and draws. (A whole `run` compiles warmup into one loop, where
    the sharded program is not bit-identical: the chains then agree in
    distribution only.)"""
    model = eb.bayesian(
        Coefficients(jnp.array(3.0), jnp.array(-2.5)),
        blackjax.hmc,
        adapt="chees",
        num_chains=16,
        warmup=30,
        keep=10,
        init_jitter=0.1,
        likelihood_scale=LIKELIHOOD_SCALE,
    )
    s = solver()
    state = s.init(model, key=jr.key(1), args=DATA, mesh=CHAINS)
    plain = s.init(model, key=jr.key(1), args=DATA)
    for _ in range(40):
        state = s.step(state, args=DATA)
        plain = s.step(plain, args=DATA)
    assert tree_equal(state, plain)


def test_two_groups_general_path_bitwise():
    """NUTS and MALA groups in one solve (the general path; each group's log
    density sees the other's chains), longer than the schedule."""
    model = marked(warmup=10, keep=8, where=lambda m: m.a)
    model = eb.bayesian(
        model,
        blackjax.mala,
        where=lambda m: m.b,
        step_size=1e-3,
        num_chains=16,
        warmup=10,
        keep=8,
        likelihood_scale=LIKELIHOOD_SCALE,
    )
    reference = _unsharded(model, steps=30)
    result = solver().run(model, key=jr.key(0), args=DATA, steps=30, mesh=CHAINS)
    assert tree_equal(result.posterior.samples, reference.posterior.samples)
    assert tree_equal(result.posterior.diagnostics, reference.posterior.diagnostics)


def test_resume_onto_a_mesh(reference):
    """A state made without a mesh continues on one: `run(state=..., mesh=...)`."""
    model = marked()
    s = solver()
    state = s.init(model, key=jr.key(0), args=DATA)
    result = s.run(model, key=jr.key(0), args=DATA, state=state, mesh=CHAINS)
    assert tree_equal(result.posterior.samples, reference.posterior.samples)


def _data_loss(model, data):
    f1, f2, y = data
    return mse(model, f1, f2, y)


def test_chains_times_data():
    """A 4 x 2 mesh: 8 chains over "chains", 96 data points over "data" (XLA
    reduces the loss across the two halves). The sums are reassociated, so the
    chains agree to float32 rounding: |diff| <= 1e-4 (about 3e-5 relative to the
    coefficients; 40 warmup + 25 NUTS steps). Pooled adaptation: a chain that
    adapts on its own follows its own acceptance rates, and a rounding-level
    change in one of them moves its step size and then its whole trajectory
    (the chain stays exact but no longer matches bit for bit); the mean over the
    chains damps that."""
    data = tuple(x[:96] for x in DATA)
    model = marked(num_chains=8, adapt="pooled")
    s = eb.Solver(_data_loss, progress=False)
    reference = s.run(model, key=jr.key(0), data=data)
    result = s.run(model, key=jr.key(0), data=data, mesh=CHAINS_DATA)
    got, want = result.posterior.samples, reference.posterior.samples
    assert float(jnp.max(jnp.abs(got.a - want.a))) <= 1e-4
    assert float(jnp.max(jnp.abs(got.b - want.b))) <= 1e-4
    assert _chain_sharded(got.a, CHAINS_DATA)


def test_smc_particles_sharded():
    """Tempered SMC on a "chains" mesh: each device moves its block of particles,
    and the particles come back sharded over it. Resampling and the step size
    shared by the particles amplify the rounding differences of a sharded program
    (a move that lands in the other mode), so the solve agrees with the unsharded
    one statistically, not bit for bit: the two-mode targets of `test_smc.py`.
    A number of particles that is not a multiple of the axis runs replicated; a
    one-device mesh gives the unsharded bits."""
    from test_smc import (
        _two_modes_model,
        two_modes_data,
        two_modes_loss,
        two_modes_quadrature,
    )

    y = two_modes_data()
    log_z, second_moment = two_modes_quadrature(y)
    s = eb.Solver(two_modes_loss, progress=False)
    model = _two_modes_model(num_particles=1000)
    masses = []
    for seed in range(4):
        result = s.run(model, key=jr.key(seed), args=(y,), mesh=CHAINS)
        theta = result.posterior.samples.theta
        assert theta.sharding.spec == P(None, "chains")
        theta = np.asarray(theta)
        masses.append(np.mean(theta > 0))
        assert abs(np.mean(theta**2) / second_moment - 1) < 0.02
        assert abs(float(result.posterior.log_evidence) - log_z) < 0.3
    assert abs(np.mean(masses) - 0.5) < 0.05

    uneven = _two_modes_model(num_particles=204)
    result = s.run(uneven, key=jr.key(0), args=(y,), mesh=CHAINS)
    assert result.posterior.samples.theta.sharding.is_fully_replicated
    reference = s.run(uneven, key=jr.key(0), args=(y,))
    one = s.run(uneven, key=jr.key(0), args=(y,), mesh=ONE)
    assert tree_equal(one.posterior.samples, reference.posterior.samples)


def test_predict_rhat_ess_on_sharded_chains(reference, sharded):
    """predict is evaluated chain-sharded and stays so; rhat/ess take sharded
    chains. Nothing is gathered until asked (`jax.device_get`)."""
    reference, posterior = reference.posterior, sharded.posterior
    f1, f2, _ = DATA

    def fn(m):
        return m(f1, f2)

    preds = posterior.predict(fn, batch_size=32)
    assert preds.shape == (16, 25, f1.shape[0])
    assert _chain_sharded(preds, CHAINS)
    want = reference.predict(fn, batch_size=32)
    assert np.allclose(jax.device_get(preds), want, rtol=1e-6, atol=1e-6)
    for stat in (eb.rhat, eb.ess):
        got = stat(posterior.samples.a)
        assert np.allclose(jax.device_get(got), stat(reference.samples.a), rtol=1e-5)


@pytest.mark.parametrize(
    "mesh_kwargs, match",
    [
        (
            dict(num_chains=12, mesh=CHAINS),
            "group 'Coefficients' runs num_chains=12, which the mesh's 'chains' axis "
            "of size 8 does not divide",
        ),
        (
            dict(num_chains=8, mesh=CHAINS_DATA, data=DATA),
            "the data leaf at `data[0]` has shape (101,); the mesh's 'data' axis of "
            "size 2",
        ),
        (
            dict(num_chains=8, mesh=Mesh(DEVICES, ("batch",))),
            "the mesh's axes must be named 'chains' and/or 'data'; got ('batch',)",
        ),
    ],
)
def test_mesh_errors_before_compilation(mesh_kwargs, match):
    num_chains = mesh_kwargs.pop("num_chains")
    data = mesh_kwargs.pop("data", None)
    loss = _data_loss if data is not None else mse
    args = () if data is not None else DATA
    s = eb.Solver(loss, progress=False)
    with pytest.raises(ValueError, match=re.escape(match)):
        s.init(
            marked(num_chains=num_chains),
            key=jr.key(0),
            args=args,
            data=data,
            **mesh_kwargs,
        )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_two_processes_equal_one(tmp_path, reference):
    """Two processes on the loopback interface, 4 host devices each, one global
    mesh of 8 (`jax.distributed`, gloo CPU collectives): the same bits as the
    single-process, single-device run."""
    worker = Path(__file__).with_name("multihost_worker.py")
    out = tmp_path / "samples.npz"
    port = str(_free_port())
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    procs = [
        subprocess.Popen(
            [sys.executable, str(worker), str(i), "2", port, str(out)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    logs = [p.communicate(timeout=600)[0] for p in procs]
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-4000:]
    got = np.load(out)
    reference = reference.posterior
    assert np.array_equal(got["a"], reference.samples.a)
    assert np.array_equal(got["b"], reference.samples.b)
    for field, value in vars(reference.diagnostics["Coefficients"]).items():
        assert np.array_equal(got[f"diag_{field}"], value)
