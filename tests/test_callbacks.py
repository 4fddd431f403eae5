"""Callbacks: one host call per chunk with a typed record; the wandb logger."""

import glob
import json
import re
import threading
import time

import blackjax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from conftest import tree_equal
from problems import Coefficients, LIKELIHOOD_SCALE, mse, sincos_data

import eqbayes as eb
from eqbayes._chunks import _PACE, ChunkSizes, REFRESH_SECONDS


DATA = sincos_data()


def _marked(**kwargs):
    config = dict(num_chains=2, warmup=20, keep=30, likelihood_scale=LIKELIHOOD_SCALE)
    config.update(kwargs)
    return eb.bayesian(
        Coefficients(jnp.array(3.0), jnp.array(-2.5)), blackjax.nuts, **config
    )


def _two_groups():
    config = dict(num_chains=2, warmup=10, keep=20, likelihood_scale=LIKELIHOOD_SCALE)
    model = Coefficients(jnp.array(3.0), jnp.array(-2.5))
    model = eb.bayesian(model, blackjax.nuts, where=lambda m: m.a, **config)
    return eb.bayesian(
        model,
        blackjax.mala,
        where=lambda m: m.b,
        step_size=1e-5,
        name="slope",
        **config,
    )


class _Recorder(eb.callbacks.AbstractCallback):
    def __init__(self, fail_at=None):
        self.events = []
        self.records = []
        self.fail_at = fail_at

    def start(self, step, end):
        self.events.append(("start", step, end))

    def __call__(self, record):
        self.records.append(record)
        self.events.append(("chunk", record.step))
        if record.step == self.fail_at:
            raise KeyboardInterrupt

    def end(self):
        self.events.append(("end",))


@pytest.mark.parametrize("fast", [True, False])
def test_records_per_chunk(fast):
    model = _marked() if fast else _two_groups()
    recorder = _Recorder()
    seen = []
    solver = eb.Solver(
        mse, progress=False, print_every=10, callbacks=(recorder, seen.append)
    )
    result = solver.run(model, key=jr.key(0), args=DATA)
    records = recorder.records
    assert [r.step for r in seen] == [r.step for r in records]
    total = 50 if fast else 30
    assert recorder.events[0] == ("start", 0, total)
    assert recorder.events[-1] == ("end",)
    steps = [r.step for r in records]
    assert steps == sorted(steps) and steps[-1] == total
    assert sum(r.steps for r in records) == total
    assert all(r.end == total for r in records)
    np.testing.assert_allclose([r.loss for r in records], result.history.loss)
    # The last record's running statistics are those of the final posterior.
    last = records[-1]
    for name, group in last.groups.items():
        diagnostics = result.posterior.diagnostics[name]
        assert group.n_chains == 2
        assert group.n_samples == diagnostics.acceptance_rate.shape[1]
        np.testing.assert_allclose(
            group.mean_acceptance_rate,
            float(jnp.mean(diagnostics.acceptance_rate)),
            rtol=1e-6,
        )
        if diagnostics.is_divergent is not None:
            assert group.n_is_divergent == int(jnp.sum(diagnostics.is_divergent))
            np.testing.assert_allclose(
                group.mean_energy, float(jnp.mean(diagnostics.energy)), rtol=1e-6
            )
        else:
            assert group.n_is_divergent is None and group.mean_energy is None
    if not fast:
        # Scalar groups report their running mean.
        np.testing.assert_allclose(
            last.groups["a"].mean, float(jnp.mean(result.posterior.samples.a)), 1e-6
        )
        np.testing.assert_allclose(
            last.groups["slope"].mean,
            float(jnp.mean(result.posterior.samples.b)),
            rtol=1e-6,
        )
    metrics = last.metrics()
    prefix = "posterior/Coefficients/" if fast else "posterior/a/"
    assert metrics["step"] == total and metrics["loss"] == last.loss
    group = last.groups["Coefficients" if fast else "a"]
    for key in ("n_samples", "n_chains", "n_is_divergent", "mean_acceptance_rate"):
        assert metrics[prefix + key] == getattr(group, key)
    # Draws per chain at each record (chunks of 10 steps): none during warmup,
    # then one per step after it (thin=1), up to `keep`.
    assert steps == list(range(10, total + 1, 10))
    expected = (
        {"Coefficients": [0, 0, 10, 20, 30]}  # warmup=20, keep=30
        if fast
        else {"a": [0, 10, 20], "slope": [0, 10, 20]}  # warmup=10, keep=20
    )
    for name, counts in expected.items():
        assert [r.groups[name].n_samples for r in records] == counts
    # A record before any draw: no statistics yet.
    for group in records[0].groups.values():
        assert group.n_samples == 0 and group.n_chains == 2
        assert group.mean is None and group.n_is_divergent is None
        assert group.mean_acceptance_rate is None and group.mean_energy is None


def test_record_n_samples_follow_each_groups_schedule():
    """`n_samples` counts each group's kept draws: none during its warmup, one
    every `thin` steps after it, and no more than `keep` once it has finished."""
    model = Coefficients(jnp.array(3.0), jnp.array(-2.5))
    config = dict(num_chains=2, likelihood_scale=LIKELIHOOD_SCALE)
    model = eb.bayesian(
        model, blackjax.nuts, where=lambda m: m.a, warmup=10, keep=10, **config
    )
    model = eb.bayesian(
        model,
        blackjax.mala,
        where=lambda m: m.b,
        step_size=1e-5,
        warmup=0,
        keep=10,
        thin=3,
        name="slope",
        **config,
    )
    recorder = _Recorder()
    solver = eb.Solver(mse, progress=False, print_every=10, callbacks=(recorder,))
    result = solver.run(model, key=jr.key(0), args=DATA)
    records = recorder.records
    assert [r.step for r in records] == [10, 20, 30]
    # "a" (warmup 10, keep 10) is done at step 20; "slope" (no warmup, thin 3)
    # keeps a draw every third step until step 30.
    assert [r.groups["a"].n_samples for r in records] == [0, 10, 10]
    assert [r.groups["slope"].n_samples for r in records] == [3, 6, 10]
    for name, group in records[-1].groups.items():
        draws = result.posterior.diagnostics[name].acceptance_rate.shape[1]
        assert group.n_samples == draws
    assert records[0].groups["a"].mean is None
    # ... and the running mean of "slope" at step 10 is that of its first 3 draws.
    np.testing.assert_allclose(
        records[0].groups["slope"].mean,
        float(jnp.mean(result.posterior.samples.b[:, :3])),
        rtol=1e-6,
    )


def test_callbacks_do_not_change_the_chain():
    model = _marked()
    plain = eb.Solver(mse, progress=False).run(model, key=jr.key(1), args=DATA)
    watched = eb.Solver(mse, progress=True, callbacks=(lambda r: None,)).run(
        model, key=jr.key(1), args=DATA
    )
    assert tree_equal(plain.posterior.samples, watched.posterior.samples)


def test_watched_chunks_are_timed_and_reported_off_the_main_thread():
    """Without `print_every`, a watched run starts with a chunk of 1 % of the solve,
    then times its chunks; callbacks run in order on a background thread."""
    threads, steps = [], []

    def callback(record):
        threads.append(threading.current_thread())
        steps.append((record.step, record.steps))

    model = _marked(warmup=100, keep=200)
    solver = eb.Solver(mse, progress=False, callbacks=(callback,))
    _PACE.clear()
    result = solver.run(model, key=jr.key(1), args=DATA)
    assert steps[0] == (3, 3)  # ceil(300 / 100)
    assert sum(n for _, n in steps) == 300 and steps[-1][0] == 300
    assert [s for s, _ in steps] == sorted(s for s, _ in steps)
    assert result.history.loss.shape == (len(steps),)
    # Every chunk but the last is reported while the next one computes; the last,
    # with nothing left to overlap, on the calling thread.
    assert len(set(threads[:-1])) == 1 and threads[0].name.startswith("eqbayes-host")
    assert threads[-1] is threading.main_thread()
    # The same solve again starts from the pace it last ran at: these 300 steps
    # take well under a quarter of a second, so one chunk.
    steps.clear()
    solver.run(model, key=jr.key(2), args=DATA)
    assert steps == [(300, 300)]


def test_a_callback_may_run_a_solve():
    """A solve started inside a callback (on the background thread) runs its own
    callbacks at once, on that thread, instead of waiting for itself."""
    inner = []

    def callback(record):
        if not inner:
            solver = eb.Solver(
                mse, progress=False, callbacks=(lambda r: inner.append(r.step),)
            )
            solver.run(_marked(warmup=5, keep=5), key=jr.key(3), args=DATA)

    eb.Solver(mse, progress=False, print_every=25, callbacks=(callback,)).run(
        _marked(), key=jr.key(0), args=DATA
    )
    assert inner and inner[-1] == 10


def test_chunk_sizes():
    sizes = ChunkSizes(1000, every=None)
    assert sizes.next(0) == 10
    sizes.observe(10, seconds=0.01, host_seconds=0.0)  # 1 ms per step
    assert sizes.next(10) == round(REFRESH_SECONDS / 1e-3)
    # Slow host work (callbacks, checkpoints) makes the chunks longer: 20x it.
    sizes.observe(100, seconds=0.1, host_seconds=0.025)
    assert sizes.next(110) == 500
    assert sizes.next(900) == 100  # never past the end
    fixed = ChunkSizes(1000, every=300)
    fixed.observe(300, seconds=10.0, host_seconds=1.0)
    assert fixed.next(0) == 300 and fixed.next(900) == 100


def test_end_is_called_when_a_run_fails():
    recorder = _Recorder(fail_at=30)
    solver = eb.Solver(mse, progress=False, print_every=10, callbacks=(recorder,))
    with pytest.raises(KeyboardInterrupt):
        solver.run(_marked(), key=jr.key(0), args=DATA)
    assert recorder.events[-1] == ("end",)
    assert [e for e in recorder.events if e[0] == "chunk"][-1] == ("chunk", 30)


def _wandb_history(directory):
    """The history rows of an offline wandb run, read from its `.wandb` file (a
    LevelDB-style log of protobuf records)."""
    from wandb.proto import wandb_internal_pb2

    (path,) = glob.glob(f"{directory}/wandb/offline-run-*/run-*.wandb")
    with open(path, "rb") as f:
        data = f.read()
    assert data[:4] == b":W&B"
    block, pos, pending, rows = 32768, 7, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        length = int.from_bytes(data[pos + 4 : pos + 6], "little")
        kind = data[pos + 6]
        if pos + 7 + length > len(data):  # still being written
            break
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            if record.WhichOneof("record_type") == "history":
                rows.append(
                    {
                        item.key or "/".join(item.nested_key): json.loads(
                            item.value_json
                        )
                        for item in record.history.item
                    }
                )
    return rows


def test_wandb_logger_offline(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    recorder = _Recorder()
    solver = eb.Solver(
        mse,
        progress=False,
        print_every=10,
        callbacks=(eb.callbacks.WandbLogger(), recorder),
    )
    run = wandb.init(project="eqbayes-test", dir=str(tmp_path))
    try:
        solver.run(_two_groups(), key=jr.key(0), args=DATA)
    finally:
        run.finish()
    # wandb's service process writes the file asynchronously, also after `finish`.
    deadline = time.monotonic() + 60
    rows = _wandb_history(tmp_path)
    while len(rows) < 3 and time.monotonic() < deadline:
        time.sleep(0.2)
        rows = _wandb_history(tmp_path)
    assert len(rows) == len(recorder.records) == 3  # 30 steps, chunks of 10
    for row, record in zip(rows, recorder.records):
        assert row["step"] == record.step
        np.testing.assert_allclose(row["loss"], record.loss, rtol=1e-6)
        for name in ("a", "slope"):
            group = record.groups[name]
            assert row[f"posterior/{name}/n_samples"] == group.n_samples
            assert row[f"posterior/{name}/n_chains"] == 2
        if record.groups["a"].n_samples:
            assert (
                row["posterior/a/n_is_divergent"] == record.groups["a"].n_is_divergent
            )
            np.testing.assert_allclose(
                row["posterior/a/mean_energy"], record.groups["a"].mean_energy
            )
            np.testing.assert_allclose(
                row["posterior/slope/mean_acceptance_rate"],
                record.groups["slope"].mean_acceptance_rate,
            )
            np.testing.assert_allclose(
                row["posterior/a/mean"], record.groups["a"].mean, rtol=1e-6
            )
            assert "posterior/slope/mean_energy" not in row  # MALA records none


def test_bad_callbacks():
    with pytest.raises(TypeError, match=re.escape("every callback must be callable")):
        eb.Solver(mse, callbacks=(3,))
    with pytest.raises(ValueError, match=re.escape("`every` must be a positive")):
        eb.callbacks.Checkpoint("x.eqx", every=0)
    for delay in (-1.0, float("nan"), "1", True):
        with pytest.raises(ValueError, match=re.escape("`delay` must be a number")):
            eb.callbacks.ProgressBar(delay=delay)
    with pytest.raises(ValueError, match=re.escape("needs `checkpoint=path`")):
        eb.Solver(mse, progress=False).run(
            _marked(), key=jr.key(0), args=DATA, checkpoint_every=10
        )


def test_wandb_logger_needs_a_run(monkeypatch):
    wandb = pytest.importorskip("wandb")
    monkeypatch.setattr(wandb, "run", None)
    solver = eb.Solver(mse, progress=False, callbacks=(eb.callbacks.WandbLogger(),))
    with pytest.raises(RuntimeError, match=re.escape("no wandb run is active")):
        solver.run(_marked(), key=jr.key(0), args=DATA)
