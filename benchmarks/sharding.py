"""The cost of placing a solve on a device mesh.

Two measurements, each in its own subprocess (the number of host devices is fixed
when JAX starts):

1. `one-device`: one device, the sin/cos problem with NUTS and 4 chains, `Solver.run`
   with `mesh=Mesh(devices[:1], ("chains",))` against no mesh. Target: ratio <= 1.05.
2. `chains`: 8 host devices forced with
   `XLA_FLAGS=--xla_force_host_platform_device_count=8`, K = 8, 32, 128 NUTS chains
   on the same problem, sharded over a `("chains",)` mesh of the 8 devices against
   the same K chains vmapped on one device (no mesh). Reported: draws per second
   (K x keep / wall time of the whole solve, warmup included) on each side, their
   ratio sharded / vmapped (> 1: sharding is faster), and the ratio of process CPU
   time sharded / vmapped (> 1: sharding costs more work).

The host devices of one CPU share its cores: on a machine with few cores the second
measurement shows the overhead of the partitioned program (collectives between host
devices, one program per device), not a speed-up. On an accelerator host each
device is a chip of its own and the same script measures the scaling.

Both sides run the same solve with the same key (their chains agree to rounding,
not necessarily bitwise: see docs/scaling.md); each call is timed to
`jax.block_until_ready` on the whole result after one warm-up call, the sides
interleaved (the order rotated), over `reps` repetitions with new keys:
the median call for the one-device ratio (a shared machine's occasional slow call
would dominate a total), the total for the throughputs. Wall and process CPU time
(all threads) are both reported: on a machine shared with other work, the CPU time
is much less sensitive to competing load.

    python benchmarks/sharding.py           # both measurements
    python benchmarks/sharding.py --quick   # shorter chains, fewer repetitions
"""

import argparse
import os
import statistics
import subprocess
import sys


def _run(args) -> None:
    if args.part == "chains":
        os.environ["XLA_FLAGS"] = (
            os.environ.get("XLA_FLAGS", "")
            + f" --xla_force_host_platform_device_count={args.devices}"
        )
    import blackjax
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import Mesh

    import eqbayes as eb

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from _timing import interleaved

    class Coefficients(eqx.Module):
        a: jax.Array
        b: jax.Array

    x = jnp.linspace(0.0, 1.0, 101)
    noise = 0.1 * jax.random.normal(jax.random.key(0), x.shape)
    y = 3.14 * jnp.sin(jnp.pi * x) - 2.71 * jnp.cos(jnp.pi * x) + noise

    def loss(model, x, y):
        pred = model.a * jnp.sin(jnp.pi * x) + model.b * jnp.cos(jnp.pi * x)
        return jnp.mean((pred - y) ** 2)

    solver = eb.Solver(loss, progress=False)

    def make(num_chains, mesh):
        model = eb.bayesian(
            Coefficients(jnp.zeros(()), jnp.zeros(())),
            blackjax.nuts,
            warmup=args.warmup,
            keep=args.keep,
            num_chains=num_chains,
            init_jitter=0.5,
            likelihood_scale=101 / (2 * 0.1**2),
        )
        return lambda key: solver.run(model, key=key, args=(x, y), mesh=mesh)

    def timed(sides, summary=sum):
        """Wall and process CPU time per side over `reps` interleaved calls, summed
        (or summarised by `summary`, e.g. `statistics.median`)."""
        wall, cpu = interleaved(sides, args.reps)
        return (
            {k: summary(v) for k, v in wall.items()},
            {k: summary(v) for k, v in cpu.items()},
        )

    devices = np.array(jax.devices())
    print(f"{len(devices)} device(s): {devices[0].platform}; load {os.getloadavg()}")
    if args.part == "one-device":
        mesh = Mesh(devices[:1], ("chains",))
        wall, cpu = timed(
            {"no mesh": make(4, None), "mesh": make(4, mesh)}, statistics.median
        )
        print(
            f"one-device mesh vs no mesh (NUTS, 4 chains, warmup {args.warmup}, "
            f"keep {args.keep}, {args.reps} reps; target ratio <= 1.05):"
        )
        for what, t in (("wall", wall), ("cpu", cpu)):
            print(
                f"  {what:>4}: median no mesh {t['no mesh']:.4f} s, mesh "
                f"{t['mesh']:.4f} s, ratio {t['mesh'] / t['no mesh']:.3f}"
            )
        return
    mesh = Mesh(devices, ("chains",))
    print(
        f"K chains sharded over {len(devices)} devices vs vmapped on one device "
        f"(NUTS, warmup {args.warmup}, keep {args.keep}, {args.reps} reps):"
    )
    print(
        f"{'K':>5} {'vmapped draws/s':>16} {'sharded draws/s':>16} {'ratio':>7} "
        f"{'cpu ratio':>10}"
    )
    for k in args.chains:
        wall, cpu = timed({"vmapped": make(k, None), "sharded": make(k, mesh)})
        draws = k * args.keep * args.reps
        rate = {name: draws / total for name, total in wall.items()}
        print(
            f"{k:>5} {rate['vmapped']:>16.0f} {rate['sharded']:>16.0f} "
            f"{rate['sharded'] / rate['vmapped']:>7.3f} "
            f"{cpu['sharded'] / cpu['vmapped']:>10.3f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--part", choices=("one-device", "chains"))
    parser.add_argument("--devices", type=int, default=8)
    parser.add_argument("--chains", type=int, nargs="+", default=[8, 32, 128])
    parser.add_argument("--warmup", type=int)
    parser.add_argument("--keep", type=int)
    parser.add_argument("--reps", type=int)
    args = parser.parse_args()
    args.warmup = args.warmup or (100 if args.quick else 300)
    args.keep = args.keep or (300 if args.quick else 2000)
    args.reps = args.reps or (3 if args.quick else 12)
    if args.part is not None:
        _run(args)
        return
    common = [
        *("--warmup", str(args.warmup), "--keep", str(args.keep)),
        *("--reps", str(args.reps), "--devices", str(args.devices)),
        "--chains",
        *map(str, args.chains),
    ]
    for part in ("one-device", "chains"):
        subprocess.run([sys.executable, __file__, "--part", part, *common], check=True)


if __name__ == "__main__":
    main()
