"""Sharded solves: the one-device checks here, the multi-device ones in a subprocess.

The number of host devices is fixed when JAX starts, so `sharded_checks.py` runs in
its own pytest process with `XLA_FLAGS=--xla_force_host_platform_device_count=8`
(8 CPU devices): chains over 8 devices, chains x data over a 4 x 2 mesh and a
one-device mesh, each against the unsharded run; its two-process check
(`jax.distributed` on the loopback interface) is slow-marked and runs with
`pytest -m slow`.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import jax
import jax.random as jr
import numpy as np
import pytest
from jax.sharding import Mesh
from problems import mse
from sharded_problem import DATA, marked

import eqbayes as eb
from eqbayes._sharding import check_mesh


HERE = Path(__file__).resolve().parent


def _sharded_checks(marker: str) -> None:
    env = dict(os.environ)
    env["XLA_FLAGS"] = (
        env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    ).strip()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-m",
            marker,
            "-p",
            "no:cacheprovider",
            str(HERE / "sharded_checks.py"),
        ],
        cwd=HERE.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]


def test_on_8_host_devices():
    _sharded_checks("not slow")


@pytest.mark.slow
def test_on_two_processes():
    _sharded_checks("slow")


def _init(mesh, **kwargs):
    return eb.Solver(mse, progress=False).init(
        marked(num_chains=2), key=jr.key(0), args=DATA, mesh=mesh, **kwargs
    )


def test_mesh_errors():
    device = np.array(jax.devices()[:1])
    # (Under the test suite's type-checking hook, `Solver.init` itself rejects a
    # non-Mesh first; without it, this check does.)
    with pytest.raises(
        TypeError, match=re.escape("`mesh` must be a `jax.sharding.Mesh`")
    ):
        check_mesh(jax.devices()[0], "init", {}, None)
    with pytest.raises(ValueError, match=re.escape("got ('x',)")):
        _init(Mesh(device, ("x",)))
    with pytest.raises(ValueError, match=re.escape("but no `data=` was given")):
        _init(Mesh(device.reshape(1, 1), ("chains", "data")))


def test_one_device_mesh_placement():
    """On one device, a mesh places the state and changes no bit."""
    mesh = Mesh(np.array(jax.devices()[:1]), ("chains",))
    solver = eb.Solver(mse, progress=False)
    model = marked(num_chains=2, warmup=10, keep=5)
    result = solver.run(model, key=jr.key(0), args=DATA, mesh=mesh)
    reference = solver.run(model, key=jr.key(0), args=DATA)
    assert eb.rhat(result.posterior.samples.a).shape == ()
    assert np.array_equal(result.posterior.samples.a, reference.posterior.samples.a)
    assert result.posterior.samples.a.sharding.mesh == mesh
