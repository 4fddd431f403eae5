"""Mixed inference: eqbayes against the hand-written optax + blackjax loop.

Three measurements, each printed with its target. Step times are marginal costs:
every side solves at two lengths (a quarter of `steps`, and `steps`), all calls
interleaved with new keys after one compiling call each, and the time per step is
the difference of the total times over the difference of the steps, which leaves
out what a solve costs once (eqbayes: `init`'s checks, building the `Result`).

1. Pattern B step: Adam on the body of an `eqx.nn.MLP(1, 1, 64, 3)` plus SGLD on its
   last layer, minibatches of 32 drawn inside the step (epoch-wise shuffling). eqbayes
   (`eb.bayesian(..., mask=head)` + `eb.Solver(loss, optimizer=adam)`) against the same
   work written by hand with optax and blackjax in one `jax.jit` (the same batching,
   the same recording of the head's draws). Target: step-time ratio <= 1.10 (the
   ratio of the whole solves is printed too).
2. SGLD step on a 1,153-parameter MLP (`MLP(1, 1, 32, 2)`) with minibatches of 32,
   against one `value_and_grad` of the loss on a minibatch (a jitted loop of plain SGD
   steps on consecutive slices, so no shuffling at all). Target <= 1.2. Printed
   beside it: the hand-written blackjax SGLD step, and SGLD's Gaussian noise alone
   (blackjax draws one normal per parameter per step), the floor of any SGLD step
   beyond its gradient.
3. Memory of `posterior.samples` when only the head of a ~100k-parameter network is
   Bayesian (keep = 1000), against what a full-model chain would take.

    python benchmarks/mixed.py            # full run (a few minutes on 2 cores)
    python benchmarks/mixed.py --quick    # fewer steps and repetitions
"""

import argparse
import functools
import sys
from pathlib import Path

import blackjax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import optax

import eqbayes as eb


sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import interleaved, per_step  # noqa: E402


PATTERN_B_TARGET = 1.10
SGLD_TARGET = 1.2
NUM_DATA = 1024
BATCH = 32
STEP_SIZE = 1e-5
SCALE = NUM_DATA / (2 * 0.1**2)


def make_data():
    x = jnp.linspace(-1.0, 1.0, NUM_DATA)[:, None]
    y = jnp.sin(3 * x) + 0.1 * jr.normal(jr.key(1), x.shape)
    return {"x": x, "y": y}


def loss(model, batch):
    return jnp.mean((jax.vmap(model)(batch["x"]) - batch["y"]) ** 2)


def head_mask(net):
    falses = jax.tree.map(lambda _: False, net)
    trues = jax.tree.map(lambda _: True, net.layers[-1])
    return eqx.tree_at(lambda m: m.layers[-1], falses, replace=trues)


# -- Pattern B ---------------------------------------------------------------------


def eqbayes_pattern_b(net, warmup, keep):
    model = eb.bayesian(
        net,
        blackjax.sgld,
        mask=head_mask(net),
        step_size=STEP_SIZE,
        likelihood_scale=SCALE,
        prior=eb.priors.gaussian(1.0),
        warmup=warmup,
        keep=keep,
    )
    solver = eb.Solver(loss, optimizer=optax.adam(1e-3), progress=False)

    def run(key, data):
        result = solver.run(model, key=key, data=data, batch_size=BATCH)
        return result.posterior.samples, eqx.filter(result.model, eqx.is_array)

    return run


def handwritten_pattern_b(net, warmup, keep):
    """Adam on the body, SGLD on the head, one `jax.jit`: the loop a careful user
    writes with optax and blackjax."""
    params, static = eqx.partition(net, eqx.is_inexact_array)
    head = params.layers[-1]
    body = eqx.tree_at(lambda p: p.layers[-1], params, replace=None)
    optimizer = optax.adam(1e-3)
    prior = eb.priors.gaussian(1.0)

    def assemble(body, head):
        params = eqx.tree_at(
            lambda p: p.layers[-1], body, head, is_leaf=lambda x: x is None
        )
        return eqx.combine(params, static)

    def logdensity(head, body, batch):
        return -SCALE * loss(assemble(body, head), batch) + prior(head)

    per_epoch = NUM_DATA // BATCH

    @jax.jit
    def run(key, data):
        data_key = jr.fold_in(key, 1)

        def step(carry, t):
            body, head, opt_state, order = carry
            i = t % per_epoch
            order = jax.lax.cond(
                i == 0,
                lambda: jr.permutation(jr.fold_in(data_key, t // per_epoch), NUM_DATA),
                lambda: order,
            )
            index = jax.lax.dynamic_slice_in_dim(order, i * BATCH, BATCH)
            batch = jax.tree.map(lambda x: x[index], data)
            sgld = blackjax.sgld(lambda h, b: jax.grad(logdensity)(h, body, b))
            head = sgld.step(jr.fold_in(key, t), head, batch, STEP_SIZE)
            grads = jax.grad(lambda b: loss(assemble(b, head), batch))(body)
            updates, opt_state = optimizer.update(grads, opt_state, body)
            body = optax.apply_updates(body, updates)
            return (body, head, opt_state, order), head

        carry = (body, head, optimizer.init(body), jnp.zeros(NUM_DATA, jnp.int32))
        carry = jax.lax.fori_loop(0, warmup, lambda t, c: step(c, t)[0], carry)
        carry, draws = jax.lax.scan(step, carry, jnp.arange(warmup, warmup + keep))
        return draws, eqx.filter(assemble(carry[0], carry[1]), eqx.is_array)

    return run


def step_times(makers, lengths, data, reps):
    """Seconds per step of each side (`makers[side](n)` builds a solve of `n` steps,
    called as `run(key, data)`), as the marginal cost of the longer of two solves
    (`_timing.per_step`), and the total time per (side, length)."""
    runs = {
        (side, n): functools.partial(make(n), data=data)
        for side, make in makers.items()
        for n in lengths
    }
    wall, _ = interleaved(runs, reps)
    return per_step(wall, list(makers), lengths), {k: sum(v) for k, v in wall.items()}


# -- SGLD step against one value_and_grad -----------------------------------------


def sgld_steps(net, steps):
    model = eb.bayesian(
        net,
        blackjax.sgld,
        step_size=STEP_SIZE,
        likelihood_scale=SCALE,
        warmup=steps - 1,
        keep=1,
    )
    solver = eb.Solver(loss, progress=False)

    def run(key, data):
        result = solver.run(model, key=key, data=data, batch_size=BATCH)
        return eqx.filter(result.model, eqx.is_array)

    return run


def handwritten_sgld_steps(net, steps):
    """blackjax SGLD on the same minibatches (epoch-wise shuffling), one `jax.jit`."""
    params, static = eqx.partition(net, eqx.is_inexact_array)
    prior = eb.priors.gaussian(10.0)
    per_epoch = NUM_DATA // BATCH

    def logdensity(p, batch):
        return -SCALE * loss(eqx.combine(p, static), batch) + prior(p)

    sgld = blackjax.sgld(jax.grad(logdensity))

    @jax.jit
    def run(key, data):
        data_key = jr.fold_in(key, 1)

        def body(t, carry):
            params, order = carry
            i = t % per_epoch
            order = jax.lax.cond(
                i == 0,
                lambda: jr.permutation(jr.fold_in(data_key, t // per_epoch), NUM_DATA),
                lambda: order,
            )
            index = jax.lax.dynamic_slice_in_dim(order, i * BATCH, BATCH)
            batch = jax.tree.map(lambda x: x[index], data)
            params = sgld.step(jr.fold_in(key, t), params, batch, STEP_SIZE)
            return params, order

        carry = (params, jnp.zeros(NUM_DATA, jnp.int32))
        return jax.lax.fori_loop(0, steps, body, carry)[0]

    return run


def value_and_grad_steps(net, steps):
    params, static = eqx.partition(net, eqx.is_inexact_array)
    per_epoch = NUM_DATA // BATCH

    @jax.jit
    def run(key, data):
        del key

        def body(t, params):
            start = (t % per_epoch) * BATCH
            batch = jax.tree.map(
                lambda x: jax.lax.dynamic_slice_in_dim(x, start, BATCH), data
            )
            value, grads = jax.value_and_grad(
                lambda p: loss(eqx.combine(p, static), batch)
            )(params)
            return jax.tree.map(lambda p, g: p - 1e-6 * g, params, grads)

        return jax.lax.fori_loop(0, steps, body, params)  # arrays only

    return run


def noise_steps(net, steps):
    """Only SGLD's noise: blackjax's `generate_gaussian_noise` of the parameters,
    added to them, per step (what a step costs beyond its gradient)."""
    from blackjax.util import generate_gaussian_noise

    params, _ = eqx.partition(net, eqx.is_inexact_array)

    @jax.jit
    def run(key, data):
        del data

        def body(t, params):
            noise = generate_gaussian_noise(jr.fold_in(key, t), params)
            return jax.tree.map(lambda p, z: p + 1e-6 * z, params, noise)

        return jax.lax.fori_loop(0, steps, body, params)

    return run


# -- memory ------------------------------------------------------------------------


def memory(keep):
    net = eqx.nn.MLP(8, 1, 224, 3, key=jr.key(0))
    size = sum(x.size for x in jax.tree.leaves(eqx.filter(net, eqx.is_array)))
    x = jr.normal(jr.key(2), (256, 8))
    data = {"x": x, "y": jnp.sum(jnp.sin(x), axis=1, keepdims=True)}
    model = eb.bayesian(
        net,
        blackjax.sgld,
        where=lambda m: m.layers[-1],
        step_size=1e-7,
        warmup=0,
        keep=keep,
    )
    result = eb.Solver(loss, progress=False).run(
        model, key=jr.key(0), data=data, batch_size=BATCH
    )
    stored = sum(x.nbytes for x in jax.tree.leaves(result.posterior.samples))
    head = sum(x.size for x in jax.tree.leaves(net.layers[-1]))
    return size, head, stored


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    quick = parser.parse_args().quick
    steps, reps = (400, 3) if quick else (2000, 7)
    data = make_data()

    net = eqx.nn.MLP(1, 1, 64, 3, key=jr.key(0))
    lengths = (steps // 4, steps)
    step, totals = step_times(
        {
            "eqbayes": lambda n: eqbayes_pattern_b(net, n // 2, n // 2),
            "hand-written": lambda n: handwritten_pattern_b(net, n // 2, n // 2),
        },
        lengths,
        data,
        reps,
    )
    ratio = step["eqbayes"] / step["hand-written"]
    whole = totals["eqbayes", steps] / totals["hand-written", steps]
    print(
        f"Pattern B (Adam body + SGLD head, MLP(1, 1, 64, 3), batch {BATCH}, solves "
        f"of {lengths[0]} and {steps} steps x {reps}): per step eqbayes "
        f"{1e6 * step['eqbayes']:.1f} us, hand-written {1e6 * step['hand-written']:.1f}"
        f" us, ratio {ratio:.3f} (target <= {PATTERN_B_TARGET}); whole {steps}-step "
        f"solves {whole:.3f}"
    )

    small = eqx.nn.MLP(1, 1, 32, 2, key=jr.key(0))
    count = sum(x.size for x in jax.tree.leaves(eqx.filter(small, eqx.is_array)))
    step, _ = step_times(
        {
            "sgld": lambda n: sgld_steps(small, n),
            "hand-written": lambda n: handwritten_sgld_steps(small, n),
            "value_and_grad": lambda n: value_and_grad_steps(small, n),
            "noise": lambda n: noise_steps(small, n),
        },
        lengths,
        data,
        reps,
    )
    print(
        f"SGLD step ({count}-parameter MLP, batch {BATCH}): "
        f"{1e6 * step['sgld']:.1f} us against one value_and_grad "
        f"{1e6 * step['value_and_grad']:.1f} us, ratio "
        f"{step['sgld'] / step['value_and_grad']:.3f} (target <= {SGLD_TARGET})\n"
        f"  hand-written blackjax SGLD {1e6 * step['hand-written']:.1f} us (eqbayes / "
        f"hand-written {step['sgld'] / step['hand-written']:.3f}); SGLD's Gaussian "
        f"noise alone (one normal per parameter, drawn as blackjax does) "
        f"{1e6 * step['noise']:.1f} us"
    )

    size, head, stored = memory(200 if quick else 1000)
    full = size * (200 if quick else 1000) * 4
    print(
        f"Memory (Bayesian head of a {size}-parameter MLP, head {head} parameters, "
        f"keep {200 if quick else 1000}): posterior.samples {stored / 1e6:.3f} MB, "
        f"a full-model chain {full / 1e6:.1f} MB ({full / stored:.0f}x)"
    )


if __name__ == "__main__":
    main()
