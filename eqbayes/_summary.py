"""Readable results: the per-component summary table and the ArviZ conversion."""

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from blackjax.mcmc.metrics import LowRankInverseMassMatrix
from jaxtyping import Array, PyTree

from . import diagnostics as _diagnostics
from ._groups import is_group
from ._marking import is_wrapper, MaskedGroup, path_str
from ._mcmc import KernelDiagnostics
from ._smc import SMCDiagnostics


_QUANTILES = (
    "`posterior.summary(quantiles={value!r})`: `quantiles` must be a sequence of "
    "numbers in [0, 1], e.g. `(0.05, 0.5, 0.95)`."
)
_NO_PANDAS = (
    "`Summary.to_pandas()` needs pandas (`pip install pandas`); `Summary.to_dict()` "
    "gives the same table as a dict of NumPy arrays without it."
)
_NO_ARVIZ = "`posterior.to_arviz()` needs ArviZ: `pip install 'eqbayes[arviz]'`."
_ARVIZ_DRAWS = (
    "`posterior.to_arviz()`: the sampled groups hold different numbers of draws "
    "({detail}), but an `arviz.InferenceData` has one `draw` dimension. Give every "
    "group the same `keep=`, or convert the groups' samples one at a time with "
    "`arviz.from_dict`."
)
_EMPTY = (
    "`posterior.{fn}()`: this model has no sampled leaves, so there is no chain to "
    "{what}. Mark a sub-tree with `eb.bayesian(...)`."
)

#: Rows printed by `str(summary)` before eliding the middle.
MAX_ROWS = 40


def group_labels(model: PyTree, marked: PyTree):
    """`(group name, group path, label prefix)` for every group of a marked model.

    A group's leaves are labelled by their path in the model (`layers[2].weight`),
    unless the group was given its own `name=`: then by that name and the path
    inside the group (`head.weight`; `curve.a` or `curve[0]` when the group is the
    whole model; the name alone when it is one leaf). Members of masked groups
    share their sub-tree, so they are always labelled by the path.
    """
    model_name = type(model).__name__
    out = []
    flat, _ = jax.tree_util.tree_flatten_with_path(marked, is_leaf=is_wrapper)
    for path, node in flat:
        where = path_str(path)
        if isinstance(node, MaskedGroup):
            out.extend((g.name, where, where) for g in node.groups if is_group(g))
        elif is_group(node):
            default = where or model_name
            prefix = where if node.name == default else node.name
            out.append((node.name, where, prefix))
    return tuple(out)


def _group_of(path: str, labels):
    best = None
    for name, where, prefix in labels:
        inside = (
            where == ""
            or path == where
            or path.startswith(where + ".")
            or path.startswith(where + "[")
        )
        if inside and (best is None or len(where) > len(best[1])):
            best = (name, where, prefix)
    return best


def _label(path: str, labels) -> str:
    best = _group_of(path, labels)
    if best is None:
        return path
    name, where, prefix = best
    rest = path[len(where) :]
    if not where and rest and not rest.startswith("["):
        # `path_str` drops the `.` before a top-level attribute: a whole-model
        # group's `name=` needs it back (`curve.a`, but `curve[0]`).
        rest = "." + rest
    label = (prefix + rest) if prefix else rest.lstrip(".")
    return label or name


def variables(samples: PyTree, labels) -> dict[str, Array]:
    """`{label: (K, N, *shape) draws}` for every sampled leaf, in the model's order."""
    flat, _ = jax.tree_util.tree_flatten_with_path(samples)
    return {_label(path_str(path), labels): leaf for path, leaf in flat}


def variables_by_group(samples: PyTree, labels) -> dict[str, dict[str, Array]]:
    """`{group name: {label: (K, N, *shape) draws}}`; leaves outside every known
    group (a posterior made by hand) under `"samples"`."""
    flat, _ = jax.tree_util.tree_flatten_with_path(samples)
    out: dict[str, dict[str, Array]] = {}
    for path, leaf in flat:
        best = _group_of(path_str(path), labels)
        group = "samples" if best is None else best[0]
        out.setdefault(group, {})[_label(path_str(path), labels)] = leaf
    return out


def _components(name: str, shape: tuple[int, ...]) -> list[str]:
    if shape == ():
        return [name]
    return [f"{name}[{', '.join(map(str, index))}]" for index in np.ndindex(*shape)]


def diagnostics_line(
    name: str, diagnostics: KernelDiagnostics | SMCDiagnostics | None
) -> str:
    """One line on a group's kernel diagnostics: divergences, acceptance, energy
    (for tempered SMC: the stages, their ESS and acceptance)."""
    if diagnostics is None:
        return f"Group '{name}': no kernel diagnostics"
    if isinstance(diagnostics, SMCDiagnostics):
        return _smc_line(name, diagnostics)
    parts = []
    if diagnostics.is_divergent is not None:
        total = diagnostics.is_divergent.size
        count = int(jnp.sum(diagnostics.is_divergent))
        pct = 100.0 * count / max(total, 1)
        parts.append(f"{count}/{total} divergent ({pct:.2f}%)")
    if diagnostics.acceptance_rate is not None:
        parts.append(f"mean accept {float(jnp.mean(diagnostics.acceptance_rate)):.2f}")
    if diagnostics.energy is not None:
        parts.append(f"mean energy {float(jnp.mean(diagnostics.energy)):.4g}")
    if diagnostics.num_integration_steps is not None:
        mean = float(jnp.mean(diagnostics.num_integration_steps))
        parts.append(f"mean integration steps {mean:.1f}")
    parts += _tuning(diagnostics)
    return f"Group '{name}': " + (
        ", ".join(parts) if parts else "no kernel diagnostics"
    )


def _smc_line(name: str, d: SMCDiagnostics) -> str:
    stages = d.tempering.shape[0]
    parts = [f"tempered SMC, {stages} stage(s) to lambda = "]
    parts[0] += f"{float(d.tempering[-1]):.4g}" if stages else "0"
    if stages:
        parts.append(f"ESS before resampling min {float(jnp.min(d.ess)):.0f}")
        rate = d.acceptance_rate
        if bool(jnp.any(jnp.isfinite(rate))):
            parts.append(f"mean accept {float(jnp.nanmean(rate)):.2f}")
        parts.append(f"log evidence {float(jnp.sum(d.log_evidence_increment)):.6g}")
    return f"Group '{name}': " + ", ".join(parts)


def _spread(values: Any) -> str:
    """`"x"` when every chain has the same value, else `"lo–hi over the chains"`."""
    lo, hi = float(jnp.min(values)), float(jnp.max(values))
    return f"{lo:.3g}" if lo == hi else f"{lo:.3g}–{hi:.3g} over the chains"


def _tuning(diagnostics: KernelDiagnostics) -> list[str]:
    """The step size (its range over the chains) and the range of the inverse
    mass matrix's diagonal entries (over components and chains)."""
    parts = []
    if diagnostics.step_size is not None:
        parts.append(f"step size {_spread(diagnostics.step_size)}")
    imm = diagnostics.inverse_mass_matrix
    if isinstance(imm, LowRankInverseMassMatrix):
        lo, hi = float(jnp.min(imm.sigma**2)), float(jnp.max(imm.sigma**2))
        rescaled = imm.lam != 1
        most = int(jnp.max(jnp.sum(rescaled, axis=-1)))
        lam = imm.lam[rescaled]
        scales = (
            f"up to {most} direction(s) per chain rescaled by "
            f"{float(jnp.min(lam)):.3g}–{float(jnp.max(lam)):.3g}"
            if most
            else "no direction rescaled"
        )
        parts.append(
            f"low-rank inverse mass matrix (rank {imm.lam.shape[-1]}), sigma² "
            f"{lo:.3g}–{hi:.3g}, {scales}"
        )
    elif imm is not None:
        kind = "dense" if imm.ndim == 3 else "diagonal"
        diagonal = jnp.diagonal(imm, axis1=1, axis2=2) if imm.ndim == 3 else imm
        lo, hi = float(jnp.min(diagonal)), float(jnp.max(diagonal))
        parts.append(f"{kind} inverse mass matrix, diagonal entries {lo:.3g}–{hi:.3g}")
    return parts


def _percent(q: float) -> str:
    text = f"{100 * q:.10g}"
    return f"{text}%"


class Summary:
    """A posterior summary: one row per sampled leaf component.

    Made by [`eqbayes.Posterior.summary`][]. `print(summary)` shows the table
    and, beneath it, one line of kernel diagnostics per group.

    **Attributes:**

    - `names`: the row labels, e.g. `"layers[2].weight[0, 3]"`.
    - `columns`: `{column name: NumPy array with one entry per row}`: `mean`,
        `sd`, one column per quantile (`"5%"`, `"50%"`, `"95%"`), `mcse_mean`,
        `ess_bulk`, `ess_tail`, `r_hat`.
    - `groups`: `{group name: one line on its kernel diagnostics}`.
    """

    def __init__(
        self,
        names: Sequence[str],
        columns: dict[str, np.ndarray],
        groups: dict[str, str],
    ):
        self.names = tuple(names)
        self.columns = dict(columns)
        self.groups = dict(groups)

    def __len__(self) -> int:
        return len(self.names)

    def to_dict(self) -> dict[str, np.ndarray]:
        """The table as `{"name": labels, column: values, ...}` of NumPy arrays."""
        return {"name": np.asarray(self.names, dtype=object), **self.columns}

    def to_pandas(self) -> Any:
        """The table as a `pandas.DataFrame` indexed by the row labels (needs
        pandas)."""
        try:
            import pandas as pd
        except ImportError as err:
            raise ImportError(_NO_PANDAS) from err
        return pd.DataFrame(self.columns, index=pd.Index(self.names, name="name"))

    def to_string(self, max_rows: int | None = MAX_ROWS) -> str:
        """The printed table; `max_rows=None` prints every row."""
        rows = list(range(len(self.names)))
        elided = 0
        if max_rows is not None and len(rows) > max_rows:
            head = rows[: max_rows // 2]
            tail = rows[len(rows) - (max_rows - len(head)) :]
            elided = len(rows) - len(head) - len(tail)
            rows = head + [-1] + tail
        header = ["", *self.columns]
        lines = []
        for i in rows:
            if i == -1:
                lines.append(["...", *("" for _ in self.columns)])
                continue
            cells = [self.names[i]]
            for column, values in self.columns.items():
                cells.append(_format(column, float(values[i])))
            lines.append(cells)
        widths = [
            max(len(str(row[c])) for row in [header, *lines])
            for c in range(len(header))
        ]
        out = []
        for row in [header, *lines]:
            first = f"{row[0]:<{widths[0]}}"
            rest = "  ".join(f"{v:>{w}}" for v, w in zip(row[1:], widths[1:]))
            out.append(f"{first}  {rest}".rstrip())
        if elided:
            out.append(f"({elided} more rows: `summary.to_string(max_rows=None)`)")
        out.extend(self.groups.values())
        return "\n".join(out)

    def __str__(self) -> str:
        return self.to_string()

    def __repr__(self) -> str:
        return self.to_string()


def _format(column: str, value: float) -> str:
    if math.isnan(value):
        return "nan"
    if column.startswith("ess"):
        return f"{value:.0f}"
    if column == "r_hat":
        return f"{value:.3f}"
    return f"{value:.4g}"


def summarise(
    samples: PyTree,
    diagnostics: dict[str, KernelDiagnostics | SMCDiagnostics | None],
    labels,
    quantiles: Sequence[float] = (0.05, 0.5, 0.95),
) -> Summary:
    """The [`eqbayes.Summary`][] of a posterior."""
    try:
        qs = tuple(float(q) for q in quantiles)
    except (TypeError, ValueError):
        raise ValueError(_QUANTILES.format(value=quantiles)) from None
    if not all(0.0 <= q <= 1.0 for q in qs):
        raise ValueError(_QUANTILES.format(value=quantiles))
    chains = variables(samples, labels)
    if not chains:
        raise ValueError(_EMPTY.format(fn="summary", what="summarise"))
    names: list[str] = []
    parts: dict[str, list[np.ndarray]] = {}
    for name, chain in chains.items():
        names.extend(_components(name, chain.shape[2:]))
        flat = jnp.reshape(chain, (*chain.shape[:2], -1))
        for column, values in _columns(flat, qs).items():
            parts.setdefault(column, []).append(np.asarray(values))
    columns = {column: np.concatenate(values) for column, values in parts.items()}
    groups = {name: diagnostics_line(name, d) for name, d in diagnostics.items()}
    return Summary(names, columns, groups)


def _columns(flat: Array, qs: tuple[float, ...]) -> dict[str, Array]:
    """The summary columns of draws `(K, N, P)`, each of shape `(P,)`."""
    pooled = jnp.reshape(flat, (-1, flat.shape[-1]))
    out = {"mean": jnp.mean(pooled, axis=0), "sd": jnp.std(pooled, axis=0, ddof=1)}
    if qs:
        values = jnp.quantile(pooled, jnp.asarray(qs, pooled.dtype), axis=0)
        out.update({_percent(q): v for q, v in zip(qs, values)})
    out["mcse_mean"] = _diagnostics.mcse_mean(flat)
    out["ess_bulk"] = _diagnostics.ess(flat)
    out["ess_tail"] = _diagnostics.ess_tail(flat)
    out["r_hat"] = _diagnostics.rhat(flat)
    return out


_STATS = {"is_divergent": "diverging", "acceptance_rate": "acceptance_rate"}


def _arviz() -> Any:
    """The ArviZ module (0.2x: `arviz`; 1.x: `arviz`, or `arviz_base` alone)."""
    try:
        import arviz as az
    except ImportError:
        try:
            import arviz_base as az  # pyright: ignore[reportMissingImports]
        except ImportError as err:
            raise ImportError(_NO_ARVIZ) from err
    return az


def _is_arviz_1(az: Any) -> bool:
    """ArviZ 1.x (xarray `DataTree`, `from_dict` takes a dict of groups)."""
    major = str(getattr(az, "__version__", "0")).split(".")[0]
    return not major.isdigit() or int(major) >= 1


def as_numpy(x: Any) -> np.ndarray:
    """A NumPy array, floating point as float64: ArviZ computes PSIS in the dtype
    it is handed, and in float32 it can return `nan` for elpd_loo."""
    x = np.asarray(x)
    return x.astype(np.float64) if np.issubdtype(x.dtype, np.floating) else x


def to_arviz(
    samples: PyTree,
    diagnostics: dict[str, KernelDiagnostics | SMCDiagnostics | None],
    labels,
    extra: dict[str, dict[str, Any]] | None = None,
) -> Any:
    """The `arviz.InferenceData` (ArviZ 0.2x) or `xarray.DataTree` (ArviZ 1.x) of a
    posterior; `extra` holds further groups (`{group: {variable: array}}`, e.g.
    `log_likelihood`, `observed_data`, `posterior_predictive`)."""
    az = _arviz()
    chains = {k: np.asarray(v) for k, v in variables(samples, labels).items()}
    if not chains:
        raise ValueError(_EMPTY.format(fn="to_arviz", what="convert"))
    # Per-draw kernel statistics (the stages of tempered SMC are not draws).
    reported = {
        n: d for n, d in diagnostics.items() if isinstance(d, KernelDiagnostics)
    }
    draws = {name: x.shape[1] for name, x in chains.items()}
    for name, d in reported.items():
        for field in ("is_divergent", "acceptance_rate", "energy"):
            value = getattr(d, field)
            if value is not None:
                draws[f"group '{name}'"] = value.shape[1]
    if len(set(draws.values())) > 1:
        detail = ", ".join(f"{k}: {n}" for k, n in draws.items())
        raise ValueError(_ARVIZ_DRAWS.format(detail=detail))
    stats: dict[str, np.ndarray] = {}
    for name, d in reported.items():
        # One group: ArviZ's own names. Several: suffixed by the group's name, and
        # `diverging` is whether any group diverged.
        suffix = "" if len(reported) == 1 else f"[{name}]"
        for field in ("is_divergent", "acceptance_rate", "energy"):
            value = getattr(d, field)
            if value is not None:
                stats[_STATS.get(field, field) + suffix] = np.asarray(value)
    if len(reported) > 1:
        divergent = [
            np.asarray(d.is_divergent)
            for d in reported.values()
            if d.is_divergent is not None
        ]
        if divergent:
            stats["diverging"] = np.logical_or.reduce(divergent)
    groups: dict[str, dict[str, Any]] = {"posterior": chains}
    if stats:
        groups["sample_stats"] = stats
    for group, values in (extra or {}).items():
        groups[group] = {k: as_numpy(v) for k, v in values.items()}
    if _is_arviz_1(az):
        return az.from_dict(groups)
    return az.from_dict(**groups)
