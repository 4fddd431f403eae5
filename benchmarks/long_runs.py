"""What watching and checkpointing a solve cost.

The 4-chain NUTS quick example (the sin/cos inverse problem of `examples/quickstart.py`:
4 chains, warmup 500, 1000 draws per chain, float32; `quick`) and the same with 10000
draws per chain (`long`) are solved, in this process, in six ways, interleaved
(rotating which goes first), each repetition with a new key and timed to
`jax.block_until_ready` on the whole result, after one untimed call per way
(compilation):

- `off`: `eb.Solver(loss, progress=False)`, no callbacks: the whole solve in one
  compiled chunk;
- `watched`: `eb.Solver(loss, progress=True, callbacks=(eb.callbacks.WandbLogger(),))`
  with an offline wandb run, default chunks (timed to about a quarter of a second,
  after a first chunk of 1 % of the solve): after each chunk a progress-bar update
  and a wandb log of the chunk's record (loss and per-group running statistics);
- `checkpointed`: `eb.Solver(loss, progress=False).run(..., checkpoint=path)`:
  default chunks, the whole solver state saved atomically after each one;
- `watched10`, `chunked10`, `checkpointed10`: the same with ten fixed chunks
  (`print_every=steps // 10`, resp. `checkpoint_every=steps // 10`), and ten chunks
  with nothing watching: what each chunk boundary costs.

Reported per case and way: chunks per solve, median seconds, and the median over
repetitions of the paired ratio to `off` (the same key, so the same chain and the
same work; wall and process CPU time; a median, because a shared machine's
occasional slow repetition would otherwise dominate a total), and the
cost of ten checkpoints against the same ten chunks without them. Targets on the
quick example: `watched / off <= 1.05`; `checkpointed / off <= 1.10` (a checkpoint
after every chunk costs at most 10 % of the solve). Each chunk boundary costs a
fixed amount of work (a dispatch, a host transfer, the callbacks, which run on a
background thread while the next chunk computes), so fixed small chunks cost most
on short solves.

    python benchmarks/long_runs.py            # 20 repetitions
    python benchmarks/long_runs.py --reps 3
"""

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

import blackjax
import equinox as eqx
import jax
import jax.numpy as jnp


sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import interleaved  # noqa: E402

import eqbayes as eb  # noqa: E402


WATCH_TARGET = 1.05
CHECKPOINT_TARGET = 1.10
NOISE_SD = 0.1


class Coefficients(eqx.Module):
    a: jax.Array
    b: jax.Array


def loss(model, x, y):
    pred = model.a * jnp.sin(jnp.pi * x) + model.b * jnp.cos(jnp.pi * x)
    return jnp.mean((pred - y) ** 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=20)
    opts = parser.parse_args()

    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    import wandb

    x = jnp.linspace(0.0, 1.0, 101)
    noise = NOISE_SD * jax.random.normal(jax.random.key(0), x.shape)
    y = 3.14 * jnp.sin(jnp.pi * x) - 2.71 * jnp.cos(jnp.pi * x) + noise
    tmp = tempfile.mkdtemp()
    run = wandb.init(project="eqbayes-benchmark", dir=tmp)
    print(f"load average: {os.getloadavg()}")
    for case, keep in (("quick", 1000), ("long", 10000)):
        model = eb.bayesian(
            Coefficients(jnp.zeros(()), jnp.zeros(())),
            blackjax.nuts,
            num_chains=4,
            warmup=500,
            keep=keep,
            init_jitter=0.1,
            likelihood_scale=101 / (2 * NOISE_SD**2),
            prior=eb.priors.gaussian(10.0),
        )
        measure(case, model, (x, y), os.path.join(tmp, f"{case}.eqx"), opts.reps)
    run.finish()


def measure(case, model, args, checkpoint, reps):
    steps = 500 + model.config.keep
    off = eb.Solver(loss, progress=False)
    watched = eb.Solver(loss, progress=True, callbacks=(eb.callbacks.WandbLogger(),))
    watched10 = eb.Solver(
        loss,
        progress=True,
        print_every=steps // 10,
        callbacks=(eb.callbacks.WandbLogger(),),
    )
    chunked10 = eb.Solver(loss, progress=False, print_every=steps // 10)
    ways = {
        "off": lambda key: off.run(model, key=key, args=args),
        "watched": lambda key: watched.run(model, key=key, args=args),
        "checkpointed": lambda key: off.run(
            model, key=key, args=args, checkpoint=checkpoint
        ),
        "watched10": lambda key: watched10.run(model, key=key, args=args),
        "chunked10": lambda key: chunked10.run(model, key=key, args=args),
        "checkpointed10": lambda key: off.run(
            model,
            key=key,
            args=args,
            checkpoint=checkpoint,
            checkpoint_every=steps // 10,
        ),
    }
    chunks = {k: [] for k in ways}
    wall, cpu = interleaved(
        ways, reps, lambda name, result: chunks[name].append(result.history.loss.size)
    )
    names = list(ways)
    size = os.path.getsize(checkpoint)
    print(
        f"\n{case}: 4-chain NUTS, warmup 500, {model.config.keep} draws per chain, "
        f"{reps} repetitions; checkpoint file {size / 1e3:.0f} kB"
    )
    print(
        f"{'way':15} {'chunks':>7} {'median s':>9} {'ratio':>7} {'cpu':>7} "
        f"{'target':>7}   (median of the paired ratios to off)"
    )
    targets = {"watched": WATCH_TARGET, "checkpointed": CHECKPOINT_TARGET}

    def paired(times, name, base):
        """The median over repetitions of `name`'s time over `base`'s (the same
        key, so the same chain and work, one right after the other)."""
        return statistics.median(a / b for a, b in zip(times[name], times[base]))

    for name in names:
        ratio = paired(wall, name, "off")
        cpu_ratio = paired(cpu, name, "off")
        target = targets.get(name)
        print(
            f"{name:15} {statistics.median(chunks[name]):7.0f} "
            f"{statistics.median(wall[name]):9.3f} {ratio:7.3f} {cpu_ratio:7.3f} "
            f"{'' if target is None else f'{target:.2f}':>7}"
        )
    ratio = paired(wall, "checkpointed10", "chunked10")
    cpu_ratio = paired(cpu, "checkpointed10", "chunked10")
    print(
        f"ten checkpoints, against the same ten chunks without: {ratio:.3f} "
        f"(cpu {cpu_ratio:.3f})"
    )


if __name__ == "__main__":
    main()
