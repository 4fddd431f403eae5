"""What a solve hands back: the plain model, the posterior chain, the history."""

from collections.abc import Callable, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PyTree

from . import _summary
from ._checks import count
from ._mcmc import KernelDiagnostics


_SAMPLES = (
    "`posterior.predict(..., samples={value!r})`: `samples` must be one of 'auto', "
    "'chain' or 'point'."
)
_NO_CHAIN = (
    "`posterior.predict(..., samples='chain')`: this model has no sampled groups, so "
    "there is no chain to evaluate over. Mark a sub-tree with `eb.bayesian(...)`, or "
    "use `samples='point'`."
)
_BATCH = (
    "`posterior.predict(..., batch_size={value!r})`: `batch_size` must be a positive "
    "integer (draws evaluated at once) or None."
)

#: Draws evaluated at once by `Posterior.predict` unless told otherwise.
DEFAULT_PREDICT_BATCH = 64


class History(eqx.Module):
    """Per-chunk records of a solve.

    **Fields:**

    - `loss`: the loss at the end of each chunk (averaged over chains), shape
        `(n_chunks,)`.
    - `neg_elbo`: `{group name: (n_chunks,)}` negative ELBO of variational groups
        (empty when there are none).
    - `monitor`: `{group name: {name: (n_chunks,)}}`, every scalar a group
        monitors (see [`eqbayes.AbstractGroup.monitor`][]), the negative ELBO of
        variational groups included.
    """

    loss: Float[Array, " chunks"]
    neg_elbo: dict[str, Float[Array, " chunks"]]
    monitor: dict[str, dict[str, Float[Array, " chunks"]]] = eqx.field(
        default_factory=dict
    )


@eqx.filter_jit
def _predict_chain(fn, samples, model, args, batch_size):
    num_chains = jax.tree.leaves(samples)[0].shape[0]

    def one(draw):
        return fn(eqx.combine(draw, model), *args)

    # Draw index by draw index, every chain at once: the chain axis stays in place
    # (sharded over devices when the solve was), about `batch_size` evaluations at
    # a time.
    by_draw = jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), samples)
    out = jax.lax.map(
        jax.vmap(one), by_draw, batch_size=max(1, batch_size // num_chains)
    )
    return jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), out)


class Posterior(eqx.Module):
    """The posterior of a solve: draws, kernel diagnostics and predictions.

    **Fields:**

    - `samples`: a pytree of the model's structure holding `(K, N, *leaf_shape)`
        arrays at sampled leaves and `None` at every other leaf (the
        `eqx.partition` convention: frozen leaves are not copied).
    - `diagnostics`: `{group name: KernelDiagnostics or None}`.
    - `model`: the plain model at the end of the solve; `predict` fills its sampled
        leaves with each draw.
    - `labels`: `(group name, group path, label prefix)` per group, which name the
        leaves in `summary` and `to_arviz` (filled in by the solver).
    - `unconstrained`: the draws in the space they were sampled in, with the
        structure of `samples`: at a constrained leaf (a prior with a constrained
        support, or `constraint=`) the unconstrained $z$ with
        $\theta = T(z)$ in `samples` (for `simplex`, one component fewer on the
        last axis); elsewhere the same draws as `samples`. For diagnosis (a
        sampler's geometry is that of $z$). None when not filled in.
    """

    samples: PyTree[Float[Array, "chain _draw ..."] | None]
    diagnostics: dict[str, KernelDiagnostics | None]
    model: PyTree
    labels: tuple[tuple[str, str, str], ...] = eqx.field(static=True, default=())
    unconstrained: PyTree[Float[Array, "chain _draw ..."] | None] = None

    @property
    def has_chain(self) -> bool:
        """Whether any leaf is sampled."""
        return bool(jax.tree.leaves(self.samples))

    def predict(
        self,
        fn: Callable[..., Any],
        *args: Any,
        samples: str = "auto",
        batch_size: int | None = None,
    ) -> PyTree:
        """Evaluates `fn(model, *args)` at every posterior draw.

        The nonlinear pushforward: for a neural network, the mean of the
        predictions is not the prediction at the mean weights, so every
        (chain, draw) is evaluated. Draws are evaluated about `batch_size` at a
        time (`jax.lax.map` over the draws, every chain at once), so large outputs
        do not hold the whole chain in memory at once. On sharded samples (a solve
        with `mesh=`) each device evaluates its own chains and the output stays
        sharded over chains: nothing is gathered to the host.

        **Arguments:**

        - `fn`: `fn(model, *args) -> pytree of arrays`, with the plain model.
        - `*args`: passed to `fn`.
        - `samples`: `"auto"` (the chain if the model has sampled groups, else the
            point), `"chain"` (the chain; an error when there is none) or `"point"`
            (the model's current values, one evaluation).
        - `batch_size`: draws evaluated at once (default 64; at least one per
            chain).

        **Returns:**

        `fn`'s output with leading axes `(K, N)`, or `fn`'s plain output for
        `"point"`.

        !!! Example

            ```python
            bands = result.posterior.predict(lambda m, x: jax.vmap(m)(x), x_grid)
            lo, hi = jnp.quantile(bands, jnp.array([0.05, 0.95]), axis=(0, 1))
            ```
        """
        if samples not in ("auto", "chain", "point"):
            raise ValueError(_SAMPLES.format(value=samples))
        if batch_size is None:
            batch_size = DEFAULT_PREDICT_BATCH
        else:
            count(batch_size, _BATCH.format(value=batch_size))
        if samples == "chain" and not self.has_chain:
            raise ValueError(_NO_CHAIN)
        if samples == "point" or not self.has_chain:
            return fn(self.model, *args)
        return _predict_chain(fn, self.samples, self.model, args, batch_size)

    def summary(
        self, *, quantiles: Sequence[float] = (0.05, 0.5, 0.95)
    ) -> _summary.Summary:
        """A table with one row per sampled leaf component.

        Rows are labelled by the leaf's path in the model and its index,
        `layers[2].weight[0, 3]` (or, for a group marked with `name=`, by that name
        and the path inside the group). Columns: `mean`, `sd`, the `quantiles`
        over all chains and draws, `mcse_mean` (Monte Carlo standard error of the
        mean), `ess_bulk`, `ess_tail` and `r_hat` (rank-normalised split R-hat),
        from `eqbayes.diagnostics` (equal to ArviZ's). Beneath the table,
        one line per group on divergences and acceptance.

        **Arguments:**

        - `quantiles`: the quantiles to show, as fractions.

        **Returns:**

        An [`eqbayes.Summary`][]: print it, or take `to_dict()` (NumPy arrays)
        or `to_pandas()` (with pandas installed).

        !!! Example

            ```python
            print(result.posterior.summary())
            table = result.posterior.summary().to_dict()
            table["r_hat"].max()
            ```
        """
        return _summary.summarise(
            self.samples, self.diagnostics, self.labels, quantiles
        )

    def to_arviz(self) -> Any:
        """The chain as an `arviz.InferenceData` (needs ArviZ:
        `pip install 'eqbayes[arviz]'`).

        The `posterior` group holds one variable per sampled leaf, named as in
        [`eqbayes.Posterior.summary`][], with dimensions `(chain, draw, ...)`.
        `sample_stats` holds `diverging`, `acceptance_rate` and `energy` where the
        kernel records them (with several groups, suffixed by the group's name,
        `acceptance_rate[head]`, and `diverging` true where any group diverged).
        `az.summary`, `az.plot_trace` and `az.plot_pair` then work directly.

        !!! Example

            ```python
            import arviz as az

            idata = result.posterior.to_arviz()
            az.plot_trace(idata)
            ```
        """
        return _summary.to_arviz(self.samples, self.diagnostics, self.labels)


class Result(eqx.Module):
    """The outcome of [`eqbayes.Solver.run`][] (or [`eqbayes.Solver.result`][]).

    **Fields:**

    - `model`: the plain model: sampled leaves at chain 0's last draw.
    - `posterior`: a [`eqbayes.Posterior`][].
    - `history`: a [`eqbayes.History`][].
    - `variational`: `{group name: fitted q}` for the variational groups
        ([`eqbayes.MeanFieldGaussian`][] or [`eqbayes.FullRankGaussian`][]); empty
        when there are none.
    - `state`: the final [`eqbayes.SolverState`][]: continue the solve with
        `solver.run(model, key=key, state=result.state, steps=n)`, or save it with
        [`eqbayes.save`][].
    """

    model: PyTree
    posterior: Posterior
    history: History
    variational: dict[str, Any] = eqx.field(default_factory=dict)
    state: Any = None
