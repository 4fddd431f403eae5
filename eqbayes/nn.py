"""Neural-network helpers: low-rank adapters (LoRA) for pretrained Equinox networks.

`lora` puts a [`eqbayes.nn.LoRALinear`][] in place of `eqx.nn.Linear` layers: the
pretrained weight stays frozen, and a low-rank update `B A` is learned, sampled or
fitted instead. [`eqbayes.nn.adapters`][] selects every adapter, for `where=` of
[`eqbayes.bayesian`][], [`eqbayes.vi`][] or [`eqbayes.optimise`][];
[`eqbayes.nn.merge`][] turns the result back into a plain network.
"""

import math
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Float, PRNGKeyArray, PyTree

from ._checks import is_count


_RANK = (
    "`eqbayes.nn.lora(model, rank={value!r})`: `rank` must be a positive integer "
    "(the rank of each adapter `B A`), e.g. `rank=4`."
)
_NO_LINEAR = (
    "`eqbayes.nn.lora(model, ...)`: {where} holds no `eqx.nn.Linear` layer, so "
    "there is nothing to adapt. Select a sub-tree with Linear layers (e.g. "
    "`where=lambda m: m.layers[-1]`), or leave `where=None` for every Linear layer."
)
_COMPLEX = (
    "`eqbayes.nn.lora(model, ...)`: the Linear layer with a weight of dtype {dtype} "
    "cannot be adapted: LoRA layers hold real floating-point weights."
)
_NO_ADAPTERS = (
    "`eqbayes.nn.{fn}(model)`: the model holds no LoRA layer, so there is no "
    "adapter to select. Make them first with `eqbayes.nn.lora(model, rank, key=key)`."
)

_UINT = {2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint64}


def _freeze(x: Array | None) -> Array | None:
    """A floating-point array as its raw bits (an unsigned integer array of the same
    width): no optimiser, sampler or `eqx.is_inexact_array` filter ever treats it as
    a parameter, so it is kept bitwise."""
    if x is None:
        return None
    return jax.lax.bitcast_convert_type(x, _UINT[x.dtype.itemsize])


def _thaw(bits: Array | None, dtype: Any) -> Array | None:
    if bits is None:
        return None
    return jax.lax.bitcast_convert_type(bits, dtype)


class LoRALinear(eqx.Module):
    """An `eqx.nn.Linear` layer with a frozen weight and a low-rank adapter:
    `y = (W + B A) x + b`.

    Made by [`eqbayes.nn.lora`][]. The pretrained weight `W` and bias `b` are
    stored as their raw bits (unsigned integers of the same width, in `base`), so
    they are never parameters: `eqx.is_inexact_array` skips them, no eqbayes group
    and no `Solver(optimizer=...)` can change them, and they stay bitwise equal to
    the pretrained values. Only `A` (shape `(rank, in)`) and `B` (shape
    `(out, rank)`) are floating-point leaves.

    **Fields:**

    - `base`: the pretrained `eqx.nn.Linear`, its `weight` and `bias` held as bits.
    - `A`: the adapter's down-projection, `(rank, in_features)`.
    - `B`: the adapter's up-projection, `(out_features, rank)`; zero at the start,
        so the layer computes exactly what the pretrained one did.
    - `dtype`: the floating-point dtype of the pretrained weight (static).
    """

    base: eqx.nn.Linear
    A: Float[Array, "rank fan_in"]
    B: Float[Array, "fan_out rank"]
    dtype: Any = eqx.field(static=True)

    def __init__(self, linear: eqx.nn.Linear, rank: int, *, key: PRNGKeyArray):
        """**Arguments:**

        - `linear`: the pretrained layer.
        - `rank`: the adapter's rank.
        - `key`: for `A`'s initial values, `N(0, 1/in_features)` per entry.
        """
        weight = linear.weight
        if not jnp.issubdtype(weight.dtype, jnp.floating):
            raise TypeError(_COMPLEX.format(dtype=weight.dtype))
        fan_out, fan_in = weight.shape
        self.dtype = weight.dtype
        self.base = eqx.tree_at(
            lambda l: (l.weight, l.bias),
            linear,
            (_freeze(weight), _freeze(linear.bias)),
            is_leaf=lambda x: x is None,
        )
        scale = 1.0 / math.sqrt(max(fan_in, 1))
        self.A = scale * jr.normal(key, (rank, fan_in), self.dtype)
        self.B = jnp.zeros((fan_out, rank), self.dtype)

    @property
    def weight(self) -> Float[Array, "fan_out fan_in"]:
        """The frozen pretrained weight `W`."""
        return _thaw(self.base.weight, self.dtype)  # pyright: ignore

    @property
    def bias(self) -> Float[Array, " fan_out"] | None:
        """The frozen pretrained bias `b` (None without one)."""
        return _thaw(self.base.bias, self.dtype)

    def merged(self) -> eqx.nn.Linear:
        """The plain `eqx.nn.Linear` with weight `W + B A` and bias `b`."""
        return eqx.tree_at(
            lambda l: (l.weight, l.bias),
            self.base,
            (self.weight + self.B @ self.A, self.bias),
            is_leaf=lambda x: x is None,
        )

    def __call__(self, x: Array, *, key: PRNGKeyArray | None = None) -> Array:
        """`(W + B A) x + b`, with the shapes of `eqx.nn.Linear` (`"scalar"`
        inputs and outputs included); `key` is ignored."""
        del key
        if self.base.in_features == "scalar":
            x = jnp.broadcast_to(x, (1,))
        y = self.weight @ x + self.B @ (self.A @ x)
        bias = self.bias
        if bias is not None:
            y = y + bias
        if self.base.out_features == "scalar":
            y = jnp.squeeze(y)
        return y


def _is_layer(x: Any) -> bool:
    return isinstance(x, (eqx.nn.Linear, LoRALinear))


def _linears(tree: PyTree) -> list[eqx.nn.Linear]:
    return [
        x
        for x in jax.tree.leaves(tree, is_leaf=_is_layer)
        if isinstance(x, eqx.nn.Linear)
    ]


def lora(
    model: PyTree,
    rank: int,
    *,
    where: Callable[[PyTree], Any] | None = None,
    key: PRNGKeyArray,
) -> PyTree:
    """Puts a LoRA layer in place of `eqx.nn.Linear` layers of a pretrained model.

    Each selected layer becomes a [`eqbayes.nn.LoRALinear`][] computing
    `(W + B A) x + b`, with `W` and `b` frozen bitwise at their pretrained values,
    `A` random and `B = 0`: the adapted model computes exactly what the
    pretrained one did until `A` and `B` move. Mark the adapters with
    `where=eqbayes.nn.adapters` to sample (`eb.bayesian`), fit (`eb.vi`) or
    optimise (`eb.optimise`) only them: a chain then stores only the adapters'
    `r (in + out)` values per layer, never the frozen weights. For MCMC,
    `where=eqbayes.nn.adapters_b` (each `A` held at its random start) gives a
    posterior without the scaling symmetry of `(A, B)`; see
    [`eqbayes.nn.adapters_b`][].

    **Arguments:**

    - `model`: a plain model (any pytree) holding `eqx.nn.Linear` layers.
    - `rank`: the rank `r` of each adapter.
    - `where`: selects the sub-tree(s) whose Linear layers are adapted, like
        `eqx.tree_at`'s `where` (e.g. `lambda m: m.layers[-2:]`); `None` adapts
        every Linear layer of the model.
    - `key`: a PRNG key for the adapters' initial `A`.

    **Returns:**

    The model with the selected Linear layers replaced.

    !!! Example

        ```python
        import eqbayes.nn

        adapted = eqbayes.nn.lora(pretrained, rank=2, key=jr.key(0))
        marked = eb.bayesian(adapted, blackjax.nuts, where=eqbayes.nn.adapters_b)
        result = eb.Solver(loss).run(marked, key=jr.key(1), args=(x, y))
        plain = eqbayes.nn.merge(result.model)  # eqx.nn.Linear layers, W + B A
        ```
    """
    if not is_count(rank):
        raise ValueError(_RANK.format(value=rank))
    selected = model if where is None else where(model)
    found = _linears(selected)
    if not found:
        text = "the model" if where is None else "the `where`-selected sub-tree"
        raise ValueError(_NO_LINEAR.format(where=text))
    keys = iter(jr.split(key, len(found)))

    def convert(tree: PyTree) -> PyTree:
        return jax.tree.map(
            lambda x: (
                LoRALinear(x, rank, key=next(keys))
                if isinstance(x, eqx.nn.Linear)
                else x
            ),
            tree,
            is_leaf=_is_layer,
        )

    if where is None:
        return convert(model)
    return eqx.tree_at(where, model, replace_fn=convert)


def _lora_layers(model: PyTree) -> list[LoRALinear]:
    return [
        x
        for x in jax.tree.leaves(model, is_leaf=_is_layer)
        if isinstance(x, LoRALinear)
    ]


def adapters(model: PyTree) -> tuple[Any, ...]:
    """Every adapter of a model: `(A, B)` of each [`eqbayes.nn.LoRALinear`][], in
    the model's order.

    Pass it as `where=` so that a group holds the adapters and nothing else:
    `eb.bayesian(model, kernel, where=eqbayes.nn.adapters)` (or `eb.vi`,
    `eb.optimise`). The adapters of all layers form one group, named
    `"(layers[0].A, layers[0].B, ...)"` unless given `name=`.

    **Arguments:**

    - `model`: a model made by [`eqbayes.nn.lora`][].

    **Returns:**

    A tuple of the adapters' arrays.
    """
    layers = _lora_layers(model)
    if not layers:
        raise ValueError(_NO_ADAPTERS.format(fn="adapters"))
    return tuple(x for layer in layers for x in (layer.A, layer.B))


def adapters_b(model: PyTree) -> tuple[Any, ...]:
    """The `B` factor of every adapter, in the model's order: a `where=` that
    leaves each `A` at its random start.

    With both factors free, `(A, B)` and `(c A, B / c)` give the same network
    for every `c != 0`, so a posterior over both has ridges and mirror-image
    copies that MCMC explores badly (in the [Bayesian
    LoRA](../tutorials/bayesian_lora.py) tutorial: 12 % divergent transitions
    and R-hat 1.26 with NUTS). Holding each `A` at its random projection (as
    LoRA-FA does in training) removes the symmetry: in the same problem, no
    divergences and R-hat below 1.03. A chain then stores `out * rank` values
    per layer.

    **Arguments:**

    - `model`: a model made by [`eqbayes.nn.lora`][].

    **Returns:**

    A tuple of the adapters' `B` arrays.
    """
    layers = _lora_layers(model)
    if not layers:
        raise ValueError(_NO_ADAPTERS.format(fn="adapters_b"))
    return tuple(layer.B for layer in layers)


def merge(model: PyTree) -> PyTree:
    """The plain network: every [`eqbayes.nn.LoRALinear`][] replaced by an
    `eqx.nn.Linear` with weight `W + B A` (and the pretrained bias).

    **Arguments:**

    - `model`: a plain model with LoRA layers, e.g. `result.model`, or a
        posterior draw inside `posterior.predict(lambda m: eqbayes.nn.merge(m))`.

    **Returns:**

    The model with the structure it had before [`eqbayes.nn.lora`][].
    """
    return jax.tree.map(
        lambda x: x.merged() if isinstance(x, LoRALinear) else x,
        model,
        is_leaf=_is_layer,
    )


__all__ = ["LoRALinear", "adapters", "adapters_b", "lora", "merge"]
