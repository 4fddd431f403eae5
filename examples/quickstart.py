"""Quickstart: a posterior over two coefficients with NUTS.

We observe y = a·sin(πx) + b·cos(πx) + noise at 101 points on [0, 1] and ask for the
posterior of (a, b), not just a best fit. The model is an ordinary Equinox module, the
loss is a plain mean squared error; `eb.bayesian` marks the model as sampled and
`eb.Solver` runs four NUTS chains.

Run it with `python examples/quickstart.py` (10 to 20 s on a 2-core CPU, nearly all
of it compilation: a second solve in the same process takes about a second). It
prints a summary and writes `quickstart.png` (data, posterior mean and 90% predictive
band) and `quickstart_trace.png` (trace and rank plots of the chains) to the current
directory when matplotlib is installed (`pip install 'eqbayes[plot]'`).
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


def plot(x, y, x_grid, preds, new_data, posterior, path="quickstart.png") -> None:
    """Data, posterior mean and 90% bands; on the right, the curve's own uncertainty.
    Then the chains' trace and rank plots."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # headless: draw to files
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed, so no plot: pip install 'eqbayes[plot]'")
        return
    fig, (ax, zoom) = plt.subplots(1, 2, figsize=(10, 4))
    eb.plot.predictive(x_grid, new_data, data=(x, y), ax=ax, label="new data")
    eb.plot.predictive(x_grid, preds, ax=ax, color="C1", label="curve")
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.set_title("a·sin(πx) + b·cos(πx), 4 NUTS chains")
    # The curve itself is pinned down far more tightly than the noise: zoom in.
    mean = jnp.mean(preds, axis=(0, 1))
    eb.plot.predictive(x_grid, preds - mean, ax=zoom, color="C1", label="curve")
    zoom.plot(x_grid, (preds[0, :20] - mean).T, color="k", lw=0.5, alpha=0.5)
    zoom.set_xlabel("x")
    zoom.set_ylabel("curve − posterior mean")
    zoom.set_title("90% band of the curve and 20 posterior draws")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    trace_path = path.replace(".png", "_trace.png")
    fig = eb.plot.trace(posterior)
    fig.savefig(trace_path, dpi=100)
    plt.close(fig)
    print(f"wrote {path} and {trace_path}")


def main() -> None:
    data_key, run_key = jr.split(jr.key(0))
    x, y = make_data(data_key)

    model = Coefficients(a=jnp.array(0.0), b=jnp.array(0.0))
    # With Gaussian noise of standard deviation σ over N points,
    # log p(y | a, b) = −N/(2σ²) · MSE + const, so the MSE loss is scaled by N/(2σ²).
    # Left at the default likelihood_scale=1, this mean loss would give a posterior
    # far too wide (about N/(2σ²) ≈ 5000 times the variance); a loss that is the full
    # negative log-likelihood, sum((model(x) - y)**2) / (2σ²), takes the default 1.
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

    # One row per coefficient: mean, sd, quantiles, MCSE, bulk/tail ESS, R-hat;
    # beneath it, each group's divergences and acceptance rate.
    print(f"truth: a = {A_TRUE}, b = {B_TRUE}")
    print(posterior.summary())

    # Push every draw through the model: a (chains, draws, points) array.
    x_grid = jnp.linspace(0.0, 1.0, 200)
    preds = posterior.predict(lambda m, x: m(x), x_grid)
    # New observations add the measurement noise on top of the curve's uncertainty.
    new_data = preds + NOISE_STD * jr.normal(jr.key(1), preds.shape)
    plot(x, y, x_grid, preds, new_data, posterior)


if __name__ == "__main__":
    main()
