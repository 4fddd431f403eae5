"""Tempered SMC: `eb.smc` against hand-written blackjax, and NUTS for contrast.

Two problems, both with normalised densities so that the evidence is known:

- two modes: y_j = θ² + N(0, 0.5²), ten points near 4, θ ~ Normal(0, 3) (modes at
  θ ≈ ±2 of equal mass; log Z and E[θ²] by quadrature);
- regression: conjugate linear-Gaussian, 5 coefficients, 40 rows (log Z, mean and
  sd in closed form).

For each, `eb.smc` (`eb.Solver(loss).run`, HMC moves) and a hand-written blackjax
program of the same algorithm, in one `jax.jit` (`lax.while_loop` over the
stages): the same number of particles, `target_ess`, `num_mcmc_steps`,
`blackjax.hmc` with the same integration steps, the same metric (the reweighted
particles' covariance) and step-size rule, built from blackjax's parts
(`smc.ess.ess_solver` with `smc.solver.dichotomy`, `smc.resampling.systematic`,
`blackjax.hmc`). Times are interleaved repetitions (`_timing.interleaved`), after
one compiling call each; the eqbayes side includes everything `Solver.run` does
(checks, the init program, the host driver, the result). Then eqbayes NUTS with 4
chains on the two-mode problem over 8 keys: each chain stays in one mode.

Run: `python benchmarks/smc_blackjax.py` (`--particles N`, `--reps N`). On a
shared machine the times are noisy; run it with `nice` and compare ratios, not
seconds.
"""

import argparse
import math
import os
import statistics

import blackjax
import blackjax.smc.ess
import blackjax.smc.resampling
import blackjax.smc.solver
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from _timing import interleaved
from jax.scipy.special import logsumexp

import eqbayes as eb


NOISE, PRIOR = 0.5, 3.0
REG_NOISE, REG_PRIOR = 0.8, 2.0
TARGET_ESS, MCMC_STEPS, INTEGRATION_STEPS, TARGET_ACCEPTANCE = 0.5, 10, 10, 0.65
LOG_2PI = math.log(2 * math.pi)


class Theta(eqx.Module):
    theta: jax.Array


class Linear(eqx.Module):
    beta: jax.Array


def two_modes():
    y = 4.0 + NOISE * jr.normal(jr.key(1), (10,))

    def loss(model, y):
        r = (y - model.theta**2) / NOISE
        return 0.5 * jnp.sum(r**2) + y.shape[0] * (math.log(NOISE) + 0.5 * LOG_2PI)

    yn = np.asarray(y, np.float64)
    grid = np.linspace(-12, 12, 240_001)
    joint = (
        -0.5 * (grid / PRIOR) ** 2
        - math.log(PRIOR)
        - 0.5 * LOG_2PI
        - 0.5 * np.sum(((yn[None] - grid[:, None] ** 2) / NOISE) ** 2, 1)
        - yn.size * (math.log(NOISE) + 0.5 * LOG_2PI)
    )
    w = np.exp(joint - joint.max())
    log_z = joint.max() + math.log(w.sum() * (grid[1] - grid[0]))
    return dict(
        name="two modes",
        model=Theta(jnp.zeros(())),
        where=lambda m: m.theta,
        prior=eb.priors.normal(0.0, PRIOR),
        loss=loss,
        args=(y,),
        log_z=log_z,
        wrap=lambda flat: Theta(flat[0]),
        draw=lambda key, n: PRIOR * jr.normal(key, (n, 1)),
    )


def regression():
    kx, kb, ke = jr.split(jr.key(42), 3)
    x = jr.normal(kx, (40, 5))
    y = x @ jr.normal(kb, (5,)) + REG_NOISE * jr.normal(ke, (40,))

    def loss(model, x, y):
        r = (y - x @ model.beta) / REG_NOISE
        return 0.5 * jnp.sum(r**2) + y.shape[0] * (math.log(REG_NOISE) + 0.5 * LOG_2PI)

    xn, yn = np.asarray(x, np.float64), np.asarray(y, np.float64)
    cov_y = REG_NOISE**2 * np.eye(40) + REG_PRIOR**2 * xn @ xn.T
    log_z = -0.5 * (
        yn @ np.linalg.solve(cov_y, yn) + np.linalg.slogdet(cov_y)[1] + 40 * LOG_2PI
    )
    return dict(
        name="regression",
        model=Linear(jnp.zeros(5)),
        where=lambda m: m.beta,
        prior=eb.priors.normal(0.0, REG_PRIOR),
        loss=loss,
        args=(x, y),
        log_z=log_z,
        wrap=Linear,
        draw=lambda key, n: REG_PRIOR * jr.normal(key, (n, 5)),
    )


def handwritten(problem, num_particles: int, max_stages: int = 500):
    """Adaptive tempered SMC from blackjax's parts, one `jax.jit`: returns
    `run(key) -> (particles, log Z, stages)`."""
    loss, wrap, args = problem["loss"], problem["wrap"], problem["args"]
    # The same prior object as the eqbayes side: the same log density.
    log_prior_fn, draw = problem["prior"], problem["draw"]
    n = num_particles

    def finite(value):  # NaN and infinities are -inf: zero weight, a rejected move
        return jnp.where(jnp.isfinite(value), value, -jnp.inf)

    def log_lik(flat):
        return finite(-loss(wrap(flat), *args))

    def covariance(x, w, ess):
        mean = w @ x
        c = x - mean[None]
        shrink = 5.0 / (ess + 5.0)
        return (1 - shrink) * (w[:, None] * c).T @ c + shrink * 1e-3 * jnp.eye(
            x.shape[1]
        )

    def stage(carry):
        x, ll, lam, log_z, step_size, i, key = carry
        key, k_resample, k_move = jr.split(key, 3)
        delta = blackjax.smc.ess.ess_solver(
            lambda _: ll, x, TARGET_ESS, 1 - lam, blackjax.smc.solver.dichotomy
        )
        new_lam = jnp.where(delta >= 1 - lam, 1.0, lam + delta)
        log_w = (new_lam - lam) * ll
        total = logsumexp(log_w)
        w = jnp.exp(log_w - total)
        ess = jnp.exp(blackjax.smc.ess.log_ess(log_w))
        imm = covariance(x, w, ess)
        x = x[blackjax.smc.resampling.systematic(k_resample, w, n)]

        def logdensity(flat):
            return finite(log_prior_fn(flat) - new_lam * loss(wrap(flat), *args))

        def transition(c, key):
            states, eps = c
            kernel = blackjax.hmc(logdensity, eps, imm, INTEGRATION_STEPS)
            states, info = jax.vmap(kernel.step)(jr.split(key, n), states)
            rate = jnp.mean(info.acceptance_rate)
            return (states, eps * jnp.exp(2 * (rate - TARGET_ACCEPTANCE))), rate

        init = blackjax.hmc(logdensity, step_size, imm, INTEGRATION_STEPS).init
        (states, step_size), _ = jax.lax.scan(
            transition,
            (jax.vmap(init)(x), step_size),
            jr.split(k_move, MCMC_STEPS),
        )
        x = states.position
        return (
            x,
            jax.vmap(log_lik)(x),
            new_lam,
            log_z + total - math.log(n),
            step_size,
            i + 1,
            key,
        )

    @jax.jit
    def run(key):
        k_init, key = jr.split(key)
        x = draw(k_init, n)
        carry = (x, jax.vmap(log_lik)(x), 0.0, 0.0, 0.5, 0, key)
        carry = jax.tree.map(jnp.asarray, carry)
        carry = jax.lax.while_loop(
            lambda c: (c[2] < 1) & (c[5] < max_stages), stage, carry
        )
        return carry[0], carry[3], carry[5]

    return run


def compare(problem, num_particles: int, reps: int) -> None:
    model = eb.smc(
        problem["model"],
        where=problem["where"],
        prior=problem["prior"],
        num_particles=num_particles,
        target_ess=TARGET_ESS,
        num_mcmc_steps=MCMC_STEPS,
        num_integration_steps=INTEGRATION_STEPS,
    )
    solver = eb.Solver(problem["loss"], progress=False)
    hand = handwritten(problem, num_particles)
    runs = {
        "eqbayes": lambda key: solver.run(model, key=key, args=problem["args"]),
        "blackjax": hand,
    }
    errors: dict[str, list[float]] = {"eqbayes": [], "blackjax": []}
    stages: dict[str, list[int]] = {"eqbayes": [], "blackjax": []}

    masses: list[float] = []

    def seen(name, result):
        if name == "eqbayes":
            log_z = float(result.posterior.log_evidence)
            count = int(result.state.step)
            if problem["name"] == "two modes":
                masses.append(float(np.mean(result.posterior.samples.theta > 0)))
        else:
            log_z, count = float(result[1]), int(result[2])
        errors[name].append(log_z - problem["log_z"])
        stages[name].append(count)

    wall, cpu = interleaved(runs, reps, seen)
    median = {k: statistics.median(v) for k, v in wall.items()}
    cpu_median = {k: statistics.median(v) for k, v in cpu.items()}
    print(f"\n{problem['name']} ({num_particles} particles, {reps} reps):")
    for name in runs:
        print(
            f"  {name:9s} median {median[name] * 1e3:8.1f} ms, stages "
            f"{statistics.mean(stages[name]):.1f}, log Z error mean "
            f"{statistics.mean(errors[name]):+.3f} (max |.| "
            f"{max(abs(e) for e in errors[name]):.3f})"
        )
    print(
        f"  ratio eqbayes / blackjax: wall {median['eqbayes'] / median['blackjax']:.2f}"
        f", process CPU {cpu_median['eqbayes'] / cpu_median['blackjax']:.2f}"
    )
    if masses:
        print(
            f"  eqbayes mass of theta > 0 (true 0.50): mean {np.mean(masses):.3f}, "
            f"range {min(masses):.3f}-{max(masses):.3f}"
        )


def nuts_contrast(keys: int = 8) -> None:
    """NUTS, 4 chains from θ = N(0, 2²) starts, over `keys` keys: each chain ends
    in one mode, so the pooled share of θ > 0 is the share of chains that fell
    into it."""
    problem = two_modes()
    model = eb.bayesian(
        problem["model"],
        blackjax.nuts,
        where=problem["where"],
        prior=problem["prior"],
        num_chains=4,
        init_jitter=2.0,
        warmup=500,
        keep=1000,
    )
    solver = eb.Solver(problem["loss"], progress=False)
    print("\nNUTS, 4 chains (warmup 500, keep 1000) on the two-mode problem:")
    for key in range(keys):
        result = solver.run(model, key=jr.key(key), args=problem["args"])
        theta = np.asarray(result.posterior.samples.theta)
        signs = "".join("+" if m > 0 else "-" for m in theta.mean(axis=1))
        print(
            f"  key {key}: chain modes {signs}, pooled share of theta > 0 "
            f"{(theta > 0).mean():.2f} (true 0.50), R-hat "
            f"{float(eb.rhat(result.posterior.samples.theta)):.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--particles", type=int, default=2000)
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--no-nuts", action="store_true")
    options = parser.parse_args()
    print(f"load average {os.getloadavg()[0]:.1f}")
    for problem in (two_modes(), regression()):
        compare(problem, options.particles, options.reps)
    if not options.no_nuts:
        nuts_contrast()


if __name__ == "__main__":
    main()
