"""One process of the two-process check in `sharded_checks.py`.

    python tests/multihost_worker.py PROCESS_ID NUM_PROCESSES PORT OUT.npz

Each process has 4 host devices; with `jax.distributed` over the loopback interface
(CPU collectives by gloo) they form one global mesh of 8 devices, and the solve of
`sharded_problem.marked()` runs with its 16 chains sharded over it. Process 0 writes
the gathered samples and diagnostics to `OUT.npz`.
"""

import os
import sys


process_id, num_processes, port, out = sys.argv[1:5]
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"

import jax  # noqa: E402


jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(
    f"127.0.0.1:{port}",
    num_processes=int(num_processes),
    process_id=int(process_id),
)

import jax.random as jr  # noqa: E402
import numpy as np  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402
from jax.sharding import Mesh  # noqa: E402
from sharded_problem import DATA, marked, solver  # noqa: E402


assert jax.device_count() == 8 and jax.local_device_count() == 4
mesh = Mesh(np.array(jax.devices()), ("chains",))
result = solver().run(marked(), key=jr.key(0), args=DATA, mesh=mesh)
posterior = result.posterior
arrays = {
    "a": posterior.samples.a,
    "b": posterior.samples.b,
    **{f"diag_{k}": v for k, v in vars(posterior.diagnostics["Coefficients"]).items()},
}
# Only when asked: the chains live on both processes' devices until gathered.
gathered = multihost_utils.process_allgather(arrays, tiled=True)
if jax.process_index() == 0:
    np.savez(out, **{k: np.asarray(v) for k, v in gathered.items()})
