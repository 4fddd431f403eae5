"""`eqbayes.plot` (headless) and the lazy optional imports."""

import re
import subprocess
import sys

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import matplotlib
import numpy as np
import pytest

import eqbayes as eb


matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


class _Two(eqx.Module):
    a: jax.Array
    w: jax.Array


def _posterior():
    samples = _Two(jr.normal(jr.key(0), (3, 50)), jr.normal(jr.key(1), (3, 50, 4)))
    labels = (("a", "a", "a"), ("weights", "w", "weights"))
    return eb.Posterior(samples, {}, _Two(jnp.zeros(()), jnp.zeros(4)), labels)


def test_predictive_band(tmp_path):
    x = jnp.linspace(0, 1, 7)
    preds = x[None, None] + 0.1 * jr.normal(jr.key(2), (2, 100, 7))
    ax = eb.plot.predictive(x, preds, data=(x, x), interval=0.8)
    mean_line = ax.lines[0]
    np.testing.assert_allclose(
        mean_line.get_ydata(), np.mean(preds, axis=(0, 1)), rtol=1e-5
    )
    (band,) = ax.collections
    lo = np.quantile(np.asarray(preds).reshape(-1, 7), 0.1, axis=0)
    assert np.allclose(np.min(band.get_paths()[0].vertices[:, 1]), lo.min())
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["posterior 80% band", "posterior mean", "data"]
    ax.figure.savefig(tmp_path / "band.png")
    plt.close(ax.figure)


def test_trace_and_rank(tmp_path):
    posterior = _posterior()
    fig = eb.plot.trace(posterior)
    axes = np.asarray(fig.axes).reshape(-1, 2)
    assert [ax.get_ylabel() for ax in axes[:, 0]] == [
        "a",
        "weights[0]",
        "weights[1]",
        "weights[2]",
        "weights[3]",
    ]
    assert len(axes[0, 0].lines) == 3  # one trace per chain
    # Ranks of each chain: the histograms of all chains together count every draw.
    counts = sum(patch.get_data().values.sum() for patch in axes[0, 1].patches)
    assert counts == 150
    fig.savefig(tmp_path / "trace.png")
    plt.close(fig)
    fig = eb.plot.trace(posterior, "weights", max_components=2)
    assert len(fig.axes) == 4
    plt.close(fig)


def test_bad_input():
    with pytest.raises(ValueError, match=re.escape("no sampled group of that name")):
        eb.plot.trace(_posterior(), "nope")
    with pytest.raises(ValueError, match=re.escape("strictly between 0 and 1")):
        eb.plot.predictive(jnp.zeros(3), jnp.zeros((5, 3)), interval=1.5)
    with pytest.raises(ValueError, match=re.escape("`x`'s length last")):
        eb.plot.predictive(jnp.zeros(3), jnp.zeros((5, 4)))


def test_optional_dependencies_are_imported_lazily():
    code = (
        "import sys, eqbayes; "
        "print(sorted(m for m in ('matplotlib', 'wandb', 'arviz', 'tqdm', 'pandas') "
        "if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"
