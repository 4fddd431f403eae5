"""Quickstart: a posterior over two coefficients with NUTS.

We observe y = a·sin(πx) + b·cos(πx) + noise at 101 points on [0, 1] and ask for the
posterior of (a, b), not just a best fit. The model is an ordinary Equinox module, the
loss is a plain mean squared error; `eb.bayesian` marks the model as sampled and
`eb.Solver` runs four NUTS chains.

Run it with `python examples/quickstart.py` (a few seconds on a laptop). It prints a
summary and writes `quickstart.png` (data, posterior mean and 90% predictive band) to
the current directory when matplotlib is installed (`pip install 'eqbayes[plot]'`).
"""

import blackjax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Float

import eqbayes as eb


A_TRUE, B_TRUE = 3.14, -2.71
NOISE_STD = 0.1
NUM_POINTS = 101


class Coefficients(eqx.Module):
    """The forward model d(x) = a·sin(πx) + b·cos(πx)."""

    a: Float[Array, ""]
    b: Float[Array, ""]

    def __call__(self, x: Float[Array, " n"]) -> Float[Array, " n"]:
        return self.a * jnp.sin(jnp.pi * x) + self.b * jnp.cos(jnp.pi * x)


def make_data(key: jax.Array) -> tuple[Float[Array, " n"], Float[Array, " n"]]:
    x = jnp.linspace(0.0, 1.0, NUM_POINTS)
    clean = A_TRUE * jnp.sin(jnp.pi * x) + B_TRUE * jnp.cos(jnp.pi * x)
    return x, clean + NOISE_STD * jr.normal(key, x.shape)


def loss(model: Coefficients, x: Array, y: Array) -> Array:
    return jnp.mean((model(x) - y) ** 2)


def plot(x, y, x_grid, preds, new_data, path="quickstart.png") -> None:
    """Data, posterior mean and 90% bands; on the right, the curve's own uncertainty."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed, so no plot: pip install 'eqbayes[plot]'")
        return
    q = jnp.array([0.05, 0.95])
    mean = jnp.mean(preds, axis=(0, 1))
    band = jnp.quantile(preds, q, axis=(0, 1))
    new_data_band = jnp.quantile(new_data, q, axis=(0, 1))

    fig, (ax, zoom) = plt.subplots(1, 2, figsize=(10, 4))
    ax.fill_between(
        x_grid, *new_data_band, color="C0", alpha=0.25, lw=0, label="90% band, new data"
    )
    ax.fill_between(
        x_grid, *band, color="C1", alpha=0.8, lw=0, label="90% band, mean curve"
    )
    ax.plot(x_grid, mean, color="C0", lw=1, label="posterior mean")
    ax.plot(x, y, ".", color="k", ms=4, label="data")
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.set_title("a·sin(πx) + b·cos(πx), 4 NUTS chains")
    ax.legend()
    # The curve itself is pinned down far more tightly than the noise: zoom in.
    zoom.fill_between(
        x_grid, band[0] - mean, band[1] - mean, color="C1", alpha=0.4, lw=0
    )
    zoom.plot(x_grid, (preds[0, :20] - mean).T, color="k", lw=0.5, alpha=0.5)
    zoom.axhline(0.0, color="C0", lw=1)
    zoom.set_xlabel("x")
    zoom.set_ylabel("curve − posterior mean")
    zoom.set_title("90% band of the curve and 20 posterior draws")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"wrote {path}")


def main() -> None:
    data_key, run_key = jr.split(jr.key(0))
    x, y = make_data(data_key)

    model = Coefficients(a=jnp.array(0.0), b=jnp.array(0.0))
    # With Gaussian noise of standard deviation σ over N points,
    # log p(y | a, b) = −N/(2σ²) · MSE + const, so the MSE loss is scaled by N/(2σ²).
    model = eb.bayesian(
        model,
        blackjax.nuts,
        num_chains=4,
        warmup=500,
        keep=1000,
        init_jitter=0.1,
        likelihood_scale=NUM_POINTS / (2 * NOISE_STD**2),
        prior=eb.priors.gaussian(10.0),
    )
    result = eb.Solver(loss).run(model, key=run_key, args=(x, y))
    posterior = result.posterior

    header = ("", "truth", "mean", "5%", "95%", "R-hat", "ESS")
    print(f"{header[0]:3}" + "".join(f" {h:>7}" for h in header[1:]))
    for name, truth in (("a", A_TRUE), ("b", B_TRUE)):
        chain = getattr(posterior.samples, name)  # (chains, draws)
        lo, hi = jnp.quantile(chain, jnp.array([0.05, 0.95]))
        print(
            f"{name:3} {truth:7.3f} {float(jnp.mean(chain)):7.3f} {float(lo):7.3f} "
            f"{float(hi):7.3f} {float(eb.rhat(chain)):7.4f} {float(eb.ess(chain)):7.0f}"
        )
    diagnostics = posterior.diagnostics["Coefficients"]
    n_div = int(jnp.sum(diagnostics.is_divergent))
    print(f"divergent transitions: {n_div} of {diagnostics.is_divergent.size}")

    # Push every draw through the model: a (chains, draws, points) array.
    x_grid = jnp.linspace(0.0, 1.0, 200)
    preds = posterior.predict(lambda m, x: m(x), x_grid)
    # New observations add the measurement noise on top of the curve's uncertainty.
    new_data = preds + NOISE_STD * jr.normal(jr.key(1), preds.shape)
    plot(x, y, x_grid, preds, new_data)


if __name__ == "__main__":
    main()
