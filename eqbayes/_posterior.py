"""What a solve hands back: the plain model, the posterior chain, the history."""

from collections.abc import Callable, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray, PyTree

from . import _summary
from ._checks import count
from ._marking import path_str
from ._mcmc import KernelDiagnostics
from ._smc import SMCDiagnostics


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

_LL_NO_CHAIN = (
    "`posterior.log_likelihood(...)`: this model has no sampled groups, so there "
    "are no draws to evaluate the log-likelihood at. Mark a sub-tree with "
    "`eb.bayesian(...)`."
)
_LL_DATA = (
    "`posterior.log_likelihood(fn, data, ...)`: `data` must be an array, or a "
    "pytree of arrays, with one observation per row along a shared leading axis; "
    "{detail}"
)
_LL_SCALAR = (
    "`posterior.log_likelihood(fn, data, ...)`: `fn(model, row, *args)` must return "
    "the log-likelihood of one observation, a scalar; it returned shape {shape}. "
    "Sum over the components of one observation inside `fn`."
)

_ARVIZ_NO_DATA = (
    "`posterior.to_arviz(log_likelihood=fn)` needs the observations too: "
    "`posterior.to_arviz(log_likelihood=fn, data=data)`, with one observation per "
    "row of `data`."
)
_ARVIZ_ARGS = (
    "`posterior.to_arviz(..., args=...)`: `args` must be a tuple of further "
    "arguments to `log_likelihood` (e.g. `args=(sigma,)`); got a `{type}`."
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
def _predict_chain(fn, samples, model, args, batch_size, keys=None):
    num_chains = jax.tree.leaves(samples)[0].shape[0]

    def one(draw_and_key):
        draw, key = draw_and_key
        plain = eqx.combine(draw, model)
        return fn(plain, *args) if key is None else fn(plain, *args, key=key)

    # Draw index by draw index, every chain at once: the chain axis stays in place
    # (sharded over devices when the solve was), about `batch_size` evaluations at
    # a time.
    by_draw = jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), (samples, keys))
    out = jax.lax.map(
        jax.vmap(one), by_draw, batch_size=max(1, batch_size // num_chains)
    )
    return jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), out)


def _check_rows(data: PyTree) -> PyTree:
    """`data` as arrays sharing a leading (row) axis, or a clear error."""
    leaves = jax.tree.leaves(data)
    if not leaves:
        raise ValueError(_LL_DATA.format(detail="it holds no arrays."))
    if not all(eqx.is_array_like(x) for x in leaves):
        kinds = sorted({type(x).__name__ for x in leaves if not eqx.is_array_like(x)})
        raise TypeError(_LL_DATA.format(detail=f"it holds {', '.join(kinds)}."))
    rows = jax.tree.map(jnp.asarray, data)
    lengths = {x.shape[0] if x.ndim else None for x in jax.tree.leaves(rows)}
    if len(lengths) != 1 or None in lengths:
        shapes = [x.shape for x in jax.tree.leaves(rows)]
        detail = f"got leaves of shapes {shapes}."
        raise ValueError(_LL_DATA.format(detail=detail))
    return rows


class Posterior(eqx.Module):
    """The posterior of a solve: draws, kernel diagnostics and predictions.

    **Fields:**

    - `samples`: a pytree of the model's structure holding `(K, N, *leaf_shape)`
        arrays at sampled leaves and `None` at every other leaf (the
        `eqx.partition` convention: frozen leaves are not copied).
    - `diagnostics`: `{group name: KernelDiagnostics or None}` (an
        [`eqbayes.SMCDiagnostics`][] for a tempered SMC group).
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
    - `log_evidence`: $\\log p(\\text{data})$, normalising constants included, as
        estimated by a tempered SMC group ([`eqbayes.smc`][]); None for other
        solves.
    """

    samples: PyTree[Float[Array, "chain _draw ..."] | None]
    diagnostics: dict[str, KernelDiagnostics | SMCDiagnostics | None]
    model: PyTree
    labels: tuple[tuple[str, str, str], ...] = eqx.field(static=True, default=())
    unconstrained: PyTree[Float[Array, "chain _draw ..."] | None] = None
    log_evidence: Float[Array, ""] | None = None

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
        key: PRNGKeyArray | None = None,
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
        - `key`: with a key, `fn` is called as `fn(model, *args, key=draw_key)`,
            with an independent key for every (chain, draw) (`jr.split(key, (K,
            N))`, the same whatever `batch_size`): the way to draw new
            observations with their noise (a posterior predictive sample), not
            only the noise-free function. `"point"` passes `key` itself.

        **Returns:**

        `fn`'s output with leading axes `(K, N)`, or `fn`'s plain output for
        `"point"`.

        !!! Example

            ```python
            bands = result.posterior.predict(lambda m, x: jax.vmap(m)(x), x_grid)
            lo, hi = jnp.quantile(bands, jnp.array([0.05, 0.95]), axis=(0, 1))

            # New observations y ~ N(m(x), sigma^2), one set per draw.
            def simulate(m, x, *, key):
                mean = jax.vmap(m)(x)
                return mean + sigma * jr.normal(key, mean.shape)

            y_rep = result.posterior.predict(simulate, x_grid, key=jr.key(0))
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
            if key is None:
                return fn(self.model, *args)
            return fn(self.model, *args, key=key)
        keys = None
        if key is not None:
            keys = jr.split(key, jax.tree.leaves(self.samples)[0].shape[:2])
        return _predict_chain(fn, self.samples, self.model, args, batch_size, keys)

    def log_likelihood(
        self,
        fn: Callable[..., Any],
        data: PyTree[ArrayLike],
        *args: Any,
        batch_size: int | None = None,
    ) -> Float[Array, "chain draw obs"]:
        """The log-likelihood of every observation at every posterior draw.

        What PSIS-LOO and WAIC need (`az.loo`, `az.compare`; or pass
        `fn` to [`eqbayes.Posterior.to_arviz`][]). Each observation is one row of
        `data` along its leading axis; `fn` is evaluated for every row at every
        (chain, draw), batched over draws as in [`eqbayes.Posterior.predict`][]
        (about `batch_size` draws at a time, all rows of a draw at once).

        The relation to the solve: the chain targets
        `-likelihood_scale * loss(model, ...) + log prior`, so the per-observation
        log-likelihood should satisfy `sum_i fn(model, row_i) ==
        -likelihood_scale * loss(model, data)` up to a constant in the
        parameters. For a Gaussian likelihood written as a mean squared error
        `loss = mean((m(x) - y)**2)` with `likelihood_scale = n / (2 sigma^2)`,
        `fn(m, (x, y)) = -(m(x) - y)**2 / (2 sigma^2) - log(sigma sqrt(2 pi))`: LOO
        needs the normalising constant only to compare models with different
        likelihoods.

        **Arguments:**

        - `fn`: `fn(model, row, *args) -> scalar`, the log-likelihood of one
            observation, with the plain model and one row of `data` (the same
            pytree structure, the leading axis removed).
        - `data`: an array or a pytree of arrays with the observations along a
            shared leading axis.
        - `*args`: passed to `fn` unbatched (shared by all rows).
        - `batch_size`: draws evaluated at once (default 64).

        **Returns:**

        An array `(K, N, n_obs)` (chains, draws, observations) in the model's
        floating-point dtype; `to_arviz` hands it to ArviZ as float64.

        !!! Example

            ```python
            def log_lik(model, row):
                x, y = row
                return jax.nn.log_sigmoid(jnp.where(y, 1, -1) * model(x))

            ll = result.posterior.log_likelihood(log_lik, (x, y))  # (K, N, n)
            ```
        """
        if not self.has_chain:
            raise ValueError(_LL_NO_CHAIN)
        rows = _check_rows(data)
        row = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype), rows)
        out = jax.eval_shape(fn, self.model, row, *args)
        if not (isinstance(out, jax.ShapeDtypeStruct) and out.shape == ()):
            shape = jax.tree.map(lambda x: x.shape, out)
            raise ValueError(_LL_SCALAR.format(shape=shape))

        def pointwise(model, rows, *args):
            return jax.vmap(lambda row: fn(model, row, *args))(rows)

        return self.predict(
            pointwise, rows, *args, samples="chain", batch_size=batch_size
        )

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

    def to_arviz(
        self,
        log_likelihood: Callable[..., Any]
        | dict[str, Callable[..., Any]]
        | None = None,
        data: PyTree[ArrayLike] | None = None,
        args: Any = (),
        *,
        observed_data: PyTree[ArrayLike] | None = None,
        posterior_predictive: PyTree[ArrayLike] | None = None,
        batch_size: int | None = None,
    ) -> Any:
        """The chain as ArviZ data (needs ArviZ: `pip install 'eqbayes[arviz]'`):
        an `arviz.InferenceData` with ArviZ 0.2x, an `xarray.DataTree` with
        ArviZ 1.x (`arviz-base`).

        The `posterior` group holds one variable per sampled leaf, named as in
        [`eqbayes.Posterior.summary`][], with dimensions `(chain, draw, ...)`.
        `sample_stats` holds `diverging`, `acceptance_rate` and `energy` where the
        kernel records them (with several groups, suffixed by the group's name,
        `acceptance_rate[head]`, and `diverging` true where any group diverged).
        `az.summary`, `az.plot_trace` and `az.plot_pair` then work directly.

        For model checking, give the per-observation log-likelihood and the data:
        the `log_likelihood` group then holds
        [`eqbayes.Posterior.log_likelihood`][]`(fn, data, *args)` as a variable
        `obs` (or one variable per entry of a dict of functions), and
        `observed_data` holds the data (an array as `obs`, a dict by its keys, any
        other pytree by its paths, `obs[0]`, ...). `az.loo` and `az.compare` then
        work (and `az.waic`, which ArviZ 1.x no longer has). For posterior
        predictive checks (`az.plot_ppc`; ArviZ 1.x: `az.plot_ppc_dist`), also
        pass `posterior_predictive=`, draws `(K, N, ...)` of new observations
        (e.g. from [`eqbayes.Posterior.predict`][] with `key=`), named like their
        observed counterpart. The added groups' floating-point arrays reach ArviZ
        as float64: ArviZ computes PSIS in the dtype it is handed, and in float32
        it can return `nan` (as it does for a logistic regression on scikit-learn's
        breast-cancer data, where float64 gives a finite elpd).

        **Arguments:**

        - `log_likelihood`: `fn(model, row, *args) -> scalar`, the log-likelihood
            of one observation (see [`eqbayes.Posterior.log_likelihood`][]), or
            `{name: fn}`; needs `data`.
        - `data`: the observations, rows along the leading axis.
        - `args`: a tuple of further arguments to `log_likelihood`.
        - `observed_data`: what the `observed_data` group holds, when not all of
            `data` (e.g. `{"obs": y}` when `data` is `(x, y)`): an array (named
            `obs`) or a dict of arrays.
        - `posterior_predictive`: draws of new observations, `(K, N, ...)`: an
            array (named `obs`) or a dict of arrays.
        - `batch_size`: draws evaluated at once for the log-likelihood.

        !!! Example

            ```python
            import arviz as az

            idata = result.posterior.to_arviz()
            az.plot_trace(idata)

            def log_lik(model, row):
                x, y = row
                return jax.nn.log_sigmoid(jnp.where(y, 1, -1) * model(x))

            idata = result.posterior.to_arviz(log_lik, (x, y), observed_data=y)
            az.loo(idata)
            ```
        """
        if not isinstance(args, tuple):
            raise TypeError(_ARVIZ_ARGS.format(type=type(args).__name__))
        extra: dict[str, dict[str, Any]] = {}
        if log_likelihood is not None:
            if data is None:
                raise ValueError(_ARVIZ_NO_DATA)
            fns = (
                log_likelihood
                if isinstance(log_likelihood, dict)
                else {"obs": log_likelihood}
            )
            extra["log_likelihood"] = {
                name: self.log_likelihood(f, data, *args, batch_size=batch_size)
                for name, f in fns.items()
            }
        if observed_data is None and data is not None:
            observed_data = data
        if observed_data is not None:
            extra["observed_data"] = _named(observed_data)
        if posterior_predictive is not None:
            extra["posterior_predictive"] = _named(posterior_predictive)
        return _summary.to_arviz(self.samples, self.diagnostics, self.labels, extra)


def _named(values: PyTree) -> dict[str, Any]:
    """`{name: array}` for ArviZ: a dict as it is, an array as `obs`, any other
    pytree by its paths (`obs[0]`, `obs.y`)."""
    if isinstance(values, dict) and all(isinstance(k, str) for k in values):
        return dict(values)
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(values)[0]:
        label = path_str(path)
        out["obs" + ("." if label and not label.startswith("[") else "") + label] = leaf
    return out


class Result(eqx.Module):
    """The outcome of [`eqbayes.Solver.run`][] (or [`eqbayes.Solver.result`][]).

    **Fields:**

    - `model`: the plain model: sampled leaves at chain 0's last draw.
    - `posterior`: a [`eqbayes.Posterior`][].
    - `history`: a [`eqbayes.History`][].
    - `variational`: `{group name: fitted q}` for the variational groups
        ([`eqbayes.MeanFieldGaussian`][] or [`eqbayes.FullRankGaussian`][]) and
        the Laplace groups ([`eqbayes.LaplaceGaussian`][]); empty when there are
        none.
    - `state`: the final [`eqbayes.SolverState`][]: continue the solve with
        `solver.run(model, key=key, state=result.state, steps=n)`, or save it with
        [`eqbayes.save`][].
    """

    model: PyTree
    posterior: Posterior
    history: History
    variational: dict[str, Any] = eqx.field(default_factory=dict)
    state: Any = None
