r"""Constraints: the set a parameter lives in, and a bijection onto it from
unconstrained space.

A leaf whose prior has a constrained `support` (or that is given `constraint=`
in [`eqbayes.bayesian`][], [`eqbayes.vi`][] or [`eqbayes.optimise`][]) is
inferred in unconstrained space: its position is $z \in \mathbb{R}^m$, the model
sees $\theta = T(z)$, and a sampled group's log density gains
$\log |\det J_T(z)|$. The transforms are Stan's:

| constraint | $T(z)$ | unconstrained shape |
|---|---|---|
| `real` | $z$ | same |
| `positive` | $e^z$ | same |
| `greater_than(low)` | $\text{low} + e^z$ | same |
| `interval(low, high)` | $\text{low} + (\text{high}-\text{low})\sigma(z)$ | same |
| `unit_interval` | $\sigma(z)$ | same |
| `simplex` | stick-breaking over the last axis (below) | last axis − 1 |

`simplex` is Stan's stick-breaking transform: for a simplex of $K$ components and
$z \in \mathbb{R}^{K-1}$, $s_k = \sigma(z_k - \log(K - k))$ ($k = 1, \dots,
K-1$), $\theta_k = s_k (1 - \sum_{j<k} \theta_j)$ and $\theta_K = 1 -
\sum_{j<K} \theta_j$; $z = 0$ is the uniform simplex. Its Jacobian is that of the
map onto the first $K - 1$ components (the last one is determined by them).

Bounds (`low`, `high`) are Python numbers, or arrays that broadcast against the
leaf; they are stored as hashable constants, so that a constraint can be part of a
group's static configuration.

!!! Example

    ```python
    import jax.numpy as jnp
    import eqbayes as eb

    c = eb.constraints.interval(0.0, 2.0)
    theta = c.forward(jnp.array([-1.0, 0.0, 3.0]))  # inside (0, 2)
    z = c.inverse(theta)  # back to [-1, 0, 3]
    c.log_abs_det_jacobian(z)  # a scalar
    ```
"""

import abc
import dataclasses
from typing import Any, final

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.nn import log_sigmoid

from ._custom_types import Array, ArrayLike, Float


__all__ = [
    "AbstractConstraint",
    "GreaterThan",
    "Interval",
    "Real",
    "Simplex",
    "greater_than",
    "interval",
    "positive",
    "real",
    "simplex",
    "unit_interval",
]


@dataclasses.dataclass(frozen=True)
class Constant:
    """An array constant that can be hashed and compared (a static setting)."""

    shape: tuple[int, ...]
    values: tuple[float, ...]

    @classmethod
    def of(cls, x: Any) -> "float | Constant":
        """`x` as a Python float when it is a scalar, else a `Constant`."""
        array = np.asarray(x, dtype=np.float64)
        if array.ndim == 0:
            return float(array)
        return cls(array.shape, tuple(array.ravel().tolist()))

    def numpy(self) -> np.ndarray:
        return np.asarray(self.values, np.float64).reshape(self.shape)

    def __repr__(self) -> str:
        return repr(self.numpy().tolist())


def numpy_of(x: "float | Constant") -> np.ndarray:
    """A parameter (float or `Constant`) as a float64 NumPy array."""
    return x.numpy() if isinstance(x, Constant) else np.asarray(x, np.float64)


def array_of(x: "float | Constant", like: Array) -> Any:
    """A parameter in the dtype of `like`: a Python float stays one (weakly typed),
    an array is cast and broadcast to `like`'s shape."""
    if isinstance(x, Constant):
        return jnp.broadcast_to(jnp.asarray(x.numpy(), like.dtype), like.shape)
    return x


_BOUND = (
    "`eqbayes.constraints.{fn}({args})`: {what}. Pass finite numbers (or arrays) "
    "with {fix}."
)


def _bound(value: Any, fn: str, args: str) -> "float | Constant":
    try:
        out = Constant.of(value)
    except (TypeError, ValueError):
        out = None
    if out is None or not np.all(np.isfinite(numpy_of(out))):
        raise ValueError(
            _BOUND.format(
                fn=fn,
                args=args,
                what=f"the bounds must be finite numbers, got {value!r}",
                fix="`low < high`",
            )
        )
    return out


class AbstractConstraint(eqx.Module):
    """A set of parameter values with a bijection $T$ from unconstrained space.

    Subclasses are final and hold only hashable settings, so that constraints are
    static data (two equal constructions compare and hash equal).
    """

    @abc.abstractmethod
    def forward(self, z: Float[Array, "..."]) -> Float[Array, "..."]:
        """$\\theta = T(z)$ (elementwise, or over the last axis)."""

    @abc.abstractmethod
    def inverse(self, theta: Float[Array, "..."]) -> Float[Array, "..."]:
        """$z = T^{-1}(\\theta)$."""

    @abc.abstractmethod
    def log_abs_det_jacobian(self, z: Float[Array, "..."]) -> Float[Array, ""]:
        """$\\log |\\det J_T(z)|$ summed over every element (every vector for
        `simplex`): the term a density on $\\theta$ gains when written in $z$."""

    @abc.abstractmethod
    def contains(self, theta: ArrayLike) -> bool:
        """Whether every element (vector) of the concrete array `theta` lies in
        the interior of the set (checked on the host, at marking time)."""

    @abc.abstractmethod
    def unconstrained_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The shape of $z$ for a leaf of shape `shape`."""


@final
class Real(AbstractConstraint):
    """All real numbers: $T$ is the identity. Use [`eqbayes.constraints.real`][]."""

    def forward(self, z):
        return z

    def inverse(self, theta):
        return theta

    def log_abs_det_jacobian(self, z):
        return jnp.zeros((), z.dtype)

    def contains(self, theta):
        return bool(np.all(np.isfinite(np.asarray(theta))))

    def unconstrained_shape(self, shape):
        return shape

    def __repr__(self):
        return "real"


@final
class GreaterThan(AbstractConstraint):
    r"""$\theta > \text{low}$, with $T(z) = \text{low} + e^z$. Made by
    [`eqbayes.constraints.greater_than`][] (and `positive`, `low = 0`)."""

    low: "float | Constant" = eqx.field(static=True)

    def forward(self, z):
        low = array_of(self.low, z)
        return low + jnp.exp(z)

    def inverse(self, theta):
        low = array_of(self.low, theta)
        return jnp.log(theta - low)

    def log_abs_det_jacobian(self, z):
        return jnp.sum(z)

    def contains(self, theta):
        theta = np.asarray(theta, np.float64)
        return bool(np.all(np.isfinite(theta) & (theta > numpy_of(self.low))))

    def unconstrained_shape(self, shape):
        return shape

    def __repr__(self):
        return "positive" if self.low == 0.0 else f"greater_than({self.low!r})"


@final
class Interval(AbstractConstraint):
    r"""$\text{low} < \theta < \text{high}$, with $T(z) = \text{low} +
    (\text{high} - \text{low})\,\sigma(z)$ (the logistic sigmoid). Made by
    [`eqbayes.constraints.interval`][] (and `unit_interval`)."""

    low: "float | Constant" = eqx.field(static=True)
    high: "float | Constant" = eqx.field(static=True)

    def forward(self, z):
        low, high = array_of(self.low, z), array_of(self.high, z)
        return low + (high - low) * jax.nn.sigmoid(z)

    def inverse(self, theta):
        low, high = array_of(self.low, theta), array_of(self.high, theta)
        u = (theta - low) / (high - low)
        return jnp.log(u) - jnp.log1p(-u)

    def log_abs_det_jacobian(self, z):
        low, high = array_of(self.low, z), array_of(self.high, z)
        width = jnp.log(jnp.broadcast_to(jnp.asarray(high - low, z.dtype), z.shape))
        return jnp.sum(width + log_sigmoid(z) + log_sigmoid(-z))

    def contains(self, theta):
        theta = np.asarray(theta, np.float64)
        inside = (theta > numpy_of(self.low)) & (theta < numpy_of(self.high))
        return bool(np.all(np.isfinite(theta) & inside))

    def unconstrained_shape(self, shape):
        return shape

    def __repr__(self):
        if self.low == 0.0 and self.high == 1.0:
            return "unit_interval"
        return f"interval({self.low!r}, {self.high!r})"


@final
class Simplex(AbstractConstraint):
    r"""Vectors of positive components summing to 1, over the last axis, with
    Stan's stick-breaking transform (see the module docs); $z$ has one component
    fewer on the last axis. Use [`eqbayes.constraints.simplex`][]."""

    def _offset(self, z):
        n = z.shape[-1]
        # log(K - k) for k = 1..K-1 with K = n + 1: z = 0 is the uniform simplex.
        offset = jnp.log(jnp.arange(n, 0, -1).astype(z.dtype))
        return jnp.broadcast_to(offset, z.shape)

    def _log_parts(self, z):
        y = z - self._offset(z)
        log_s, log_1ms = log_sigmoid(y), log_sigmoid(-y)
        cum = jnp.cumsum(log_1ms, axis=-1)
        log_rest = jnp.concatenate([jnp.zeros_like(cum[..., :1]), cum[..., :-1]], -1)
        return log_s, log_1ms, log_rest, cum[..., -1:]

    def forward(self, z):
        log_s, _, log_rest, log_last = self._log_parts(z)
        return jnp.exp(jnp.concatenate([log_s + log_rest, log_last], axis=-1))

    def inverse(self, theta):
        head = theta[..., :-1]
        used = jnp.cumsum(head, axis=-1) - head
        s = head / (1 - used)
        return jnp.log(s) - jnp.log1p(-s) + self._offset(head)

    def log_abs_det_jacobian(self, z):
        log_s, log_1ms, log_rest, _ = self._log_parts(z)
        return jnp.sum(log_s + log_1ms + log_rest)

    def contains(self, theta):
        theta = np.asarray(theta, np.float64)
        if theta.ndim == 0 or theta.shape[-1] < 2:
            return False
        tol = 1e-5 * theta.shape[-1]
        total_ok = np.abs(theta.sum(-1) - 1.0) <= tol
        return bool(np.all(theta > 0) and np.all(total_ok))

    def unconstrained_shape(self, shape):
        return (*shape[:-1], shape[-1] - 1)

    def __repr__(self):
        return "simplex"


#: All real numbers (the identity transform): the support of the zero-centred
#: priors and of `normal`.
real = Real()
#: $\theta > 0$, with $T(z) = e^z$.
positive = GreaterThan(0.0)
#: $0 < \theta < 1$, with $T(z) = \sigma(z)$.
unit_interval = Interval(0.0, 1.0)
#: Positive vectors summing to 1 over the last axis (stick-breaking).
simplex = Simplex()


def greater_than(low: float | ArrayLike) -> GreaterThan:
    r"""$\theta > \text{low}$, with $T(z) = \text{low} + e^z$.

    **Arguments:**

    - `low`: the lower bound, a finite number or an array broadcasting against
        the leaf.

    **Returns:**

    A [`eqbayes.constraints.GreaterThan`][].
    """
    return GreaterThan(_bound(low, "greater_than", f"low={low!r}"))


_ORDER = (
    "`eqbayes.constraints.interval(low={low!r}, high={high!r})`: `low` must be "
    "below `high` everywhere. Pass e.g. `interval(0.0, 1.0)`."
)


def interval(low: float | ArrayLike, high: float | ArrayLike) -> Interval:
    r"""$\text{low} < \theta < \text{high}$, with $T(z) = \text{low} +
    (\text{high} - \text{low})\,\sigma(z)$.

    **Arguments:**

    - `low`, `high`: the bounds, finite numbers (or arrays broadcasting against
        the leaf) with `low < high`.

    **Returns:**

    A [`eqbayes.constraints.Interval`][].

    **Raises:**

    `ValueError` if a bound is not finite or `low >= high` anywhere.
    """
    args = f"low={low!r}, high={high!r}"
    lo, hi = _bound(low, "interval", args), _bound(high, "interval", args)
    if not np.all(numpy_of(lo) < numpy_of(hi)):
        raise ValueError(_ORDER.format(low=low, high=high))
    return Interval(lo, hi)


def is_subset(inner: AbstractConstraint, outer: AbstractConstraint) -> bool:
    """Whether the set `inner` lies inside `outer` (False when unknown)."""
    if isinstance(outer, Real) or inner == outer:
        return True
    if isinstance(outer, GreaterThan):
        low = numpy_of(outer.low)
        if isinstance(inner, (GreaterThan, Interval)):
            return bool(np.all(numpy_of(inner.low) >= low))
        return isinstance(inner, Simplex) and bool(np.all(low <= 0))
    if isinstance(outer, Interval):
        low, high = numpy_of(outer.low), numpy_of(outer.high)
        if isinstance(inner, Interval):
            return bool(
                np.all(numpy_of(inner.low) >= low)
                and np.all(numpy_of(inner.high) <= high)
            )
        return isinstance(inner, Simplex) and bool(
            np.all(low <= 0) and np.all(high >= 1)
        )
    return False
