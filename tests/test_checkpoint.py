"""Checkpoints: save, load, resume bitwise, atomic writes, clear errors."""

import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import blackjax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import optax
import pytest
from conftest import tree_equal
from problems import Coefficients, LIKELIHOOD_SCALE, mse, sincos_data

import eqbayes as eb
import eqbayes._checkpoint


DATA = sincos_data()
TESTS = Path(__file__).resolve().parent


def _marked(**kwargs):
    config = dict(
        num_chains=4,
        warmup=30,
        keep=40,
        init_jitter=0.1,
        likelihood_scale=LIKELIHOOD_SCALE,
    )
    config.update(kwargs)
    return eb.bayesian(
        Coefficients(jnp.array(3.0), jnp.array(-2.5)), blackjax.nuts, **config
    )


class _StopAfter:
    """Interrupts a solve after the chunk that ends at `step`."""

    def __init__(self, step):
        self.step = step

    def __call__(self, record):
        if record.step == self.step:
            raise KeyboardInterrupt


def test_interrupted_solve_resumes_bitwise(tmp_path):
    """NUTS, 4 chains: stopped after any chunk and resumed from its checkpoint,
    the chain is the uninterrupted one, bit for bit."""
    model = _marked()
    key = jr.key(0)
    full = eb.Solver(mse, progress=False, print_every=10).run(model, key=key, args=DATA)
    like = eb.Solver(mse, progress=False).init(model, key=key, args=DATA)
    # Chunks end at 40 (warmup + 10 draws), 50, 60, 70.
    for stop in (50, 60, 70):
        path = tmp_path / f"stop{stop}.eqx"
        solver = eb.Solver(
            mse, progress=False, print_every=10, callbacks=(_StopAfter(stop),)
        )
        with pytest.raises(KeyboardInterrupt):
            solver.run(model, key=key, args=DATA, checkpoint=path)
        # The stopping callback runs before the checkpoint of its chunk.
        state = eb.load(path, like=like)
        assert int(state.step) == stop - 10
        resumed = eb.Solver(mse, progress=False).run(
            model, key=key, args=DATA, state=state
        )
        assert tree_equal(resumed.posterior.samples, full.posterior.samples)
        assert tree_equal(resumed.posterior.diagnostics, full.posterior.diagnostics)
        assert tree_equal(resumed.model, full.model)


def test_save_load_round_trip_and_more_steps(tmp_path):
    solver = eb.Solver(mse, progress=False)
    model = _marked(num_chains=2, warmup=5, keep=10)
    state = solver.init(model, key=jr.key(1), args=DATA)
    like = solver.init(model, key=jr.key(2), args=DATA)  # values do not matter
    path = tmp_path / "state.eqx"
    for _ in range(3):
        state = solver.step(state, args=DATA)
    # Saved in the middle of warmup (window adaptation under way): resumes bitwise.
    eb.save(path, state)
    full = solver.run(model, key=jr.key(1), args=DATA)
    resumed = solver.run(
        model, key=jr.key(1), args=DATA, state=eb.load(path, like=like)
    )
    assert tree_equal(resumed.posterior.samples, full.posterior.samples)
    for _ in range(4):
        state = solver.step(state, args=DATA)
    eb.save(path, state)
    loaded = eb.load(path, like=like)
    assert tree_equal(jr.key_data(loaded.key), jr.key_data(state.key))
    assert tree_equal(
        eqx.filter(loaded, eqx.is_array, replace=None).model,
        eqx.filter(state, eqx.is_array, replace=None).model,
    )
    # An abstract template works too.
    shapes = eqx.filter_eval_shape(solver.init, model, key=jr.key(0), args=DATA)
    assert int(eb.load(path, like=shapes).step) == 7
    # `steps=` continues past the schedule: the last `keep` draws are kept.
    result = solver.run(model, key=jr.key(1), args=DATA, state=loaded, steps=20)
    assert result.posterior.samples.a.shape == (2, 10)


def test_generic_over_state_fields(tmp_path):
    """Whatever a state carries (optax states, several keys, static settings)."""

    class State(eqx.Module):
        opt: optax.OptState
        keys: jax.Array
        count: jax.Array
        name: str = eqx.field(static=True)

    params = {"w": jnp.arange(3.0)}

    def adam(scale):  # an optax state (NamedTuples of arrays)
        inner = optax.ScaleByAdamState(
            count=jnp.asarray(3, jnp.int32), mu=params, nu={"w": scale * params["w"]}
        )
        return (inner, optax.EmptyState())

    state = State(adam(2.0), jr.split(jr.key(3), 2), jnp.asarray(4), "x")
    eb.save(tmp_path / "s.eqx", state)
    template = State(adam(0.0), jr.split(jr.key(0), 2), jnp.asarray(0), "x")
    loaded = eb.load(tmp_path / "s.eqx", like=template)
    assert tree_equal(loaded.opt, state.opt)
    assert tree_equal(jr.key_data(loaded.keys), jr.key_data(state.keys))
    other = State(adam(0.0), jr.split(jr.key(0), 2), jnp.asarray(0), "y")
    with pytest.raises(ValueError, match=re.escape("`state.name` is 'x' in the")):
        eb.load(tmp_path / "s.eqx", like=other)


def test_wrong_model_or_configuration(tmp_path):
    solver = eb.Solver(mse, progress=False)
    model = _marked(num_chains=2, warmup=5, keep=10)
    path = tmp_path / "state.eqx"
    eb.save(path, solver.init(model, key=jr.key(0), args=DATA))

    def like(**kwargs):
        return solver.init(_marked(**kwargs), key=jr.key(0), args=DATA)

    with pytest.raises(
        ValueError,
        match=re.escape("`state.model.config.warmup` is 5 in the checkpoint but 6"),
    ):
        eb.load(path, like=like(num_chains=2, warmup=6, keep=10))
    with pytest.raises(
        ValueError, match=re.escape("`state.model.config.num_chains` is 2")
    ):
        eb.load(path, like=like(num_chains=3, warmup=5, keep=10))
    with pytest.raises(ValueError, match=re.escape("config.kernel.name` is 'nuts'")):
        hmc = eb.bayesian(
            Coefficients(jnp.array(3.0), jnp.array(-2.5)),
            blackjax.hmc,
            num_chains=2,
            warmup=5,
            keep=10,
            num_integration_steps=3,
        )
        eb.load(path, like=solver.init(hmc, key=jr.key(0), args=DATA))
    with pytest.raises(ValueError, match=re.escape("saved from a different model")):
        part = eb.bayesian(
            Coefficients(jnp.array(3.0), jnp.array(-2.5)),
            blackjax.nuts,
            where=lambda m: m.a,
            num_chains=2,
            warmup=5,
            keep=10,
        )
        eb.load(path, like=solver.init(part, key=jr.key(0), args=DATA))


def test_corrupt_truncated_and_foreign_files(tmp_path):
    solver = eb.Solver(mse, progress=False)
    model = _marked(num_chains=2, warmup=5, keep=10)
    state = solver.init(model, key=jr.key(0), args=DATA)
    path = tmp_path / "state.eqx"
    eb.save(path, state)
    data = path.read_bytes()
    cases = {
        "truncated": data[: len(data) - 100],
        "cut-header": data[:30],
        "flipped": data[:-10] + bytes([data[-10] ^ 0xFF]) + data[-9:],
    }
    for name, content in cases.items():
        bad = tmp_path / f"{name}.eqx"
        bad.write_bytes(content)
        with pytest.raises(ValueError, match=re.escape("is corrupt or truncated")):
            eb.load(bad, like=state)
    foreign = tmp_path / "foreign.eqx"
    eqx.tree_serialise_leaves(foreign, jnp.zeros(3))
    with pytest.raises(ValueError, match=re.escape("not an eqbayes checkpoint")):
        eb.load(foreign, like=state)


def test_failed_write_leaves_previous_checkpoint(tmp_path, monkeypatch):
    solver = eb.Solver(mse, progress=False)
    model = _marked(num_chains=2, warmup=5, keep=10)
    state = solver.init(model, key=jr.key(0), args=DATA)
    path = tmp_path / "state.eqx"
    eb.save(path, state)
    before = path.read_bytes()

    def fail(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        eb.save(path, solver.step(state, args=DATA))
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind
    assert int(eb.load(path, like=state).step) == 0


_SCRIPT = """
import sys, time
sys.path.insert(0, {tests!r})
import jax.random as jr
import eqbayes as eb
from test_checkpoint import _marked, DATA, mse

def slow(record):
    print("chunk", record.step, flush=True)
    time.sleep(0.5)

solver = eb.Solver(mse, progress=False, print_every=10, callbacks=(slow,))
solver.run(_marked(), key=jr.key(7), args=DATA, checkpoint={path!r})
print("finished", flush=True)
"""


def test_killed_process_resumes(tmp_path):
    """A solve killed (SIGKILL) after some chunks resumes from its last checkpoint
    to the uninterrupted chain."""
    path = tmp_path / "run.eqx"
    script = tmp_path / "solve.py"
    script.write_text(textwrap.dedent(_SCRIPT.format(tests=str(TESTS), path=str(path))))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS.parent), env.get("PYTHONPATH", "")])
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("chunk 50"):  # the checkpoint of step 40 is written
                break
        else:
            pytest.fail(f"the solve ended early: {proc.wait()}")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    model = _marked()
    solver = eb.Solver(mse, progress=False)
    state = eb.load(path, like=solver.init(model, key=jr.key(7), args=DATA))
    assert 40 <= int(state.step) < 70
    resumed = solver.run(model, key=jr.key(7), args=DATA, state=state)
    full = solver.run(model, key=jr.key(7), args=DATA)
    assert tree_equal(resumed.posterior.samples, full.posterior.samples)
    assert tree_equal(resumed.posterior.diagnostics, full.posterior.diagnostics)


def test_checkpoint_every(tmp_path, monkeypatch):
    saved = []
    write = eqbayes._checkpoint.write
    monkeypatch.setattr(
        eqbayes._checkpoint,
        "write",
        lambda p, state, description: (
            saved.append(int(state.step)),
            write(p, state, description),
        ),
    )
    chunks = []
    solver = eb.Solver(
        mse, progress=False, callbacks=(lambda r: chunks.append(r.step),)
    )
    model = _marked(num_chains=2, warmup=10, keep=30)
    path = tmp_path / "run.eqx"
    solver.run(model, key=jr.key(0), args=DATA, checkpoint=path, checkpoint_every=20)
    # A checkpoint once 20 steps have passed since the last one, and at the end.
    assert saved[-1] == 40 and saved[:-1]
    assert all(b - a >= 20 for a, b in zip([0, *saved[:-1]], saved[:-1]))
    assert all(step in chunks for step in saved)
    like = solver.init(model, key=jr.key(0), args=DATA)
    assert int(eb.load(path, like=like).step) == 40
    # Chunks are then `checkpoint_every` steps long.
    saved.clear()
    eb.Solver(mse, progress=False).run(
        model, key=jr.key(0), args=DATA, checkpoint=path, checkpoint_every=20
    )
    assert saved == [20, 40]


def test_mixed_solve_resumes_bitwise(tmp_path):
    """Pattern B: a masked SGLD head sampled while Adam trains the body on
    minibatches; the optax state, the data order and the chains all resume."""
    net = eqx.nn.MLP(1, 1, 8, 1, activation=jnp.tanh, key=jr.key(0))
    mask = eqx.tree_at(
        lambda m: m.layers[-1],
        jax.tree.map(lambda _: False, net),
        replace=jax.tree.map(lambda _: True, net.layers[-1]),
    )
    model = eb.bayesian(
        net,
        blackjax.sgld,
        mask=mask,
        step_size=1e-5,
        warmup=20,
        keep=20,
        likelihood_scale=1000.0,
        num_chains=2,
    )
    x = jnp.linspace(-1, 1, 32)[:, None]
    data = {"x": x, "y": jnp.sin(3 * x)}

    def loss(model, batch):
        return jnp.mean((jax.vmap(model)(batch["x"]) - batch["y"]) ** 2)

    def solver(*callbacks):
        return eb.Solver(
            loss,
            optimizer=optax.adam(1e-2),
            progress=False,
            print_every=10,
            callbacks=callbacks,
        )

    full = solver().run(model, 60, key=jr.key(1), data=data, batch_size=8)
    path = tmp_path / "mixed.eqx"
    with pytest.raises(KeyboardInterrupt):
        solver(_StopAfter(40)).run(
            model, 60, key=jr.key(1), data=data, batch_size=8, checkpoint=path
        )
    like = solver().init(model, key=jr.key(1), data=data, batch_size=8)
    state = eb.load(path, like=like)
    assert int(state.step) == 30
    resumed = solver().run(model, 30, key=jr.key(1), data=data, state=state)
    assert tree_equal(resumed.posterior.samples, full.posterior.samples)
    assert tree_equal(resumed.model, full.model)


def test_vi_solve_resumes_bitwise(tmp_path):
    """A variational fit stopped after a chunk and resumed from its checkpoint gives
    the uninterrupted fit, its draws and its -ELBO history."""
    model = eb.vi(
        Coefficients(jnp.array(3.0), jnp.array(-2.5)),
        optimizer=optax.adam(1e-2),
        likelihood_scale=LIKELIHOOD_SCALE,
        posterior_draws=50,
    )
    key = jr.key(0)
    full = eb.Solver(mse, progress=False, print_every=20).run(
        model, 100, key=key, args=DATA
    )
    like = eb.Solver(mse, progress=False).init(model, key=key, args=DATA)
    path = tmp_path / "vi.eqx"
    solver = eb.Solver(mse, progress=False, print_every=20, callbacks=(_StopAfter(60),))
    with pytest.raises(KeyboardInterrupt):
        solver.run(model, 100, key=key, args=DATA, checkpoint=path)
    state = eb.load(path, like=like)
    assert int(state.step) == 40
    resumed = eb.Solver(mse, progress=False, print_every=20).run(
        model, 60, key=key, args=DATA, state=state
    )
    assert tree_equal(resumed.posterior.samples, full.posterior.samples)
    assert tree_equal(resumed.variational, full.variational)
    assert tree_equal(resumed.model, full.model)
