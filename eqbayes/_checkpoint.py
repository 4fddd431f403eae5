"""Checkpoints: `save` and `load` a whole solver state, checked against a template."""

import dataclasses
import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import PyTree

from ._marking import path_str


_MAGIC = b"EQBAYES-CHECKPOINT\n"
_VERSION = 1
_SHOWN = 5

_NOT_CHECKPOINT = (
    "`eb.load({path!r}, like=...)`: the file is not an eqbayes checkpoint (it does not "
    "start with the checkpoint header). Pass a file written by `eb.save` or by "
    "`solver.run(..., checkpoint=...)`."
)
_CORRUPT = (
    "`eb.load({path!r}, like=...)`: the checkpoint file is corrupt or truncated "
    "({why}). A process killed while saving leaves the previous checkpoint intact "
    "(files are written to a temporary file and renamed); load that one, or start "
    "the solve again."
)
_VERSION_MSG = (
    "`eb.load({path!r}, like=...)`: the checkpoint has format version {found}, but "
    "this eqbayes reads version {expected}. Load it with the eqbayes version that "
    "wrote it."
)
_MISMATCH = (
    "`eb.load({path!r}, like=...)`: the checkpoint does not match `like`, so it was "
    "saved from a different model or configuration. {n} difference(s): {diffs}. "
    "Build `like` from the same marked model, solver and arguments the checkpoint "
    "was saved from, e.g. `like = solver.init(model, key=..., args=...)`."
)


# -- describing a state: what must match for a checkpoint to fit -------------------


def _is_key(x: Any) -> bool:
    return isinstance(x, (jax.Array, jax.ShapeDtypeStruct)) and jnp.issubdtype(
        x.dtype, jax.dtypes.prng_key
    )


def _stable(x: Any) -> str:
    """A description of a static value that is the same in every process (no
    memory addresses)."""
    if x is None or isinstance(x, (bool, int, float, complex, str, bytes)):
        return repr(x)
    if isinstance(x, (tuple, list)):
        return "(" + ", ".join(_stable(v) for v in x) + ")"
    if isinstance(x, dict):
        return "{" + ", ".join(f"{k!r}: {_stable(v)}" for k, v in x.items()) + "}"
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        fields = (f.name for f in dataclasses.fields(x))
        inner = ", ".join(f"{n}={_stable(getattr(x, n, None))}" for n in fields)
        return f"{type(x).__qualname__}({inner})"
    name = getattr(x, "__qualname__", None) or type(x).__qualname__
    return f"{getattr(x, '__module__', '') or ''}.{name}".lstrip(".")


def _statics(x: Any, path: str, out: dict[str, str]) -> None:
    """Every static field of every Module in `x` (configurations: kernels,
    warmup, keep, priors, ...), one entry per field of a dataclass value."""
    if isinstance(x, eqx.Module):
        for field in dataclasses.fields(x):
            value = getattr(x, field.name, None)
            where = f"{path}.{field.name}"
            if field.metadata.get("static", False):
                _flat_static(value, where, out)
            else:
                _statics(value, where, out)
    elif isinstance(x, (tuple, list)):
        for i, value in enumerate(x):
            _statics(value, f"{path}[{i}]", out)
    elif isinstance(x, dict):
        for key, value in x.items():
            _statics(value, f"{path}[{key!r}]", out)


def _flat_static(x: Any, path: str, out: dict[str, str]) -> None:
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        for field in dataclasses.fields(x):
            _flat_static(getattr(x, field.name, None), f"{path}.{field.name}", out)
    else:
        out[path] = _stable(x)


def _leaves(state: PyTree) -> dict[str, str]:
    flat, _ = jax.tree_util.tree_flatten_with_path(state)
    out = {}
    for path, leaf in flat:
        name = "state" + ("" if not path else "." + path_str(path)).replace(".[", "[")
        if _is_key(leaf):
            out[name] = f"key {tuple(leaf.shape)}"
        elif isinstance(leaf, (jax.Array, jax.ShapeDtypeStruct)) or eqx.is_array(leaf):
            out[name] = f"array {tuple(leaf.shape)} {leaf.dtype}"
        else:
            out[name] = _stable(leaf)
    return out


def describe(state: PyTree) -> dict[str, dict[str, str]]:
    """What must match for a checkpoint of `state` to be loaded: its leaves' names,
    shapes and dtypes and its static configuration (the same for every state of
    one solve, so a run describes its state once)."""
    statics: dict[str, str] = {}
    _statics(state, "state", statics)
    return {"leaves": _leaves(state), "config": statics}


def _differences(saved: dict, like: dict) -> list[str]:
    out = []
    for kind in ("config", "leaves"):
        a, b = saved.get(kind, {}), like[kind]
        for name in sorted(a.keys() | b.keys()):
            if name not in b:
                out.append(f"`{name}` is in the checkpoint but not in `like`")
            elif name not in a:
                out.append(f"`{name}` is in `like` but not in the checkpoint")
            elif a[name] != b[name]:
                out.append(
                    f"`{name}` is {a[name]} in the checkpoint but {b[name]} in `like`"
                )
    return out


# -- keys: the default serialiser rejects typed PRNG keys ---------------------------


def _keys_to_data(tree: PyTree) -> PyTree:
    def convert(x):
        if not _is_key(x):
            return x
        if isinstance(x, jax.ShapeDtypeStruct):
            return jax.eval_shape(jr.key_data, x)
        return jr.key_data(x)

    return jax.tree.map(convert, tree)


def _data_to_keys(tree: PyTree, like: PyTree) -> PyTree:
    def convert(x, template):
        if not _is_key(template):
            return x
        impl = jr.key_impl(template) if isinstance(template, jax.Array) else None
        return jr.wrap_key_data(x, impl=impl)

    return jax.tree.map(convert, tree, like)


# -- the file ---------------------------------------------------------------------


def save(path: str | os.PathLike, state: PyTree) -> None:
    """Writes a solver state to a checkpoint file, atomically.

    The whole state is saved with `eqx.tree_serialise_leaves` (typed PRNG keys as
    their key data): every group's kernel states, adaptation, sample buffers and
    diagnostics, the step counter and the key, and whatever else the state
    carries. A header records the state's structure and static configuration
    (kernels, warmup, keep, priors, ...), so that [`eqbayes.load`][] can say what
    differs when the checkpoint does not fit, and a checksum, so that a damaged
    file is never loaded.

    The file is written to a temporary file beside `path` and then renamed over
    it: a process killed while saving leaves the previous checkpoint intact. (The
    file is not `fsync`-ed, which would cost more than the rest of the save; after
    an operating-system crash the checksum still keeps a damaged file from being
    loaded.)

    **Arguments:**

    - `path`: the file to write (replaced if it exists).
    - `state`: a [`eqbayes.SolverState`][] (from `Solver.init` or `Solver.step`, or
        written by `Solver.run(..., checkpoint=...)`).

    !!! Example

        ```python
        state = solver.init(model, key=jax.random.key(0), args=(x, y))
        for _ in range(100):
            state = solver.step(state, args=(x, y))
        eb.save("run.eqx", state)
        ```
    """
    write(path, state, describe(state))


def write(path: str | os.PathLike, state: PyTree, description: dict) -> None:
    """[`eqbayes.save`][] with the state's `describe(state)` already at hand."""
    path = Path(path)
    buffer = io.BytesIO()
    eqx.tree_serialise_leaves(buffer, _keys_to_data(state))
    payload = buffer.getvalue()
    header = {
        "version": _VERSION,
        "size": len(payload),
        "sha256": hashlib.sha256(payload).hexdigest(),
        **description,
    }
    head = json.dumps(header).encode()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(_MAGIC + len(head).to_bytes(8, "little") + head + payload)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def load(path: str | os.PathLike, *, like: PyTree) -> PyTree:
    """Reads a checkpoint written by [`eqbayes.save`][].

    **Arguments:**

    - `path`: the checkpoint file.
    - `like`: a state of the same solve to fill in: the state `Solver.init` makes
        for the same marked model, solver configuration and arguments (its values
        do not matter, only its structure, shapes, dtypes and configuration), or
        `eqx.filter_eval_shape` of that call.

    **Returns:**

    The saved state. Continue the solve with
    `solver.run(model, key=key, state=state, steps=more)`: the chain is bitwise
    the one an uninterrupted solve would have drawn.

    **Raises:**

    `ValueError` when the file is not a checkpoint, is corrupt or truncated, or was
    saved from a different model or configuration (the message names what
    differs).

    !!! Example

        ```python
        like = solver.init(model, key=jax.random.key(0), args=(x, y))
        state = eb.load("run.eqx", like=like)
        result = solver.run(model, key=jax.random.key(0), args=(x, y), state=state)
        ```
    """
    name = os.fspath(path)
    with open(path, "rb") as f:
        data = f.read()
    if not data.startswith(_MAGIC):
        raise ValueError(_NOT_CHECKPOINT.format(path=name))
    start = len(_MAGIC)
    if len(data) < start + 8:
        raise ValueError(_CORRUPT.format(path=name, why="the header is cut short"))
    size = int.from_bytes(data[start : start + 8], "little")
    try:
        header = json.loads(data[start + 8 : start + 8 + size].decode())
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ValueError(
            _CORRUPT.format(path=name, why="the header cannot be read")
        ) from None
    if not isinstance(header, dict) or "version" not in header:
        raise ValueError(_CORRUPT.format(path=name, why="the header is incomplete"))
    if header["version"] != _VERSION:
        raise ValueError(
            _VERSION_MSG.format(path=name, found=header["version"], expected=_VERSION)
        )
    payload = data[start + 8 + size :]
    if len(payload) != header.get("size"):
        why = f"{len(payload)} bytes of data where {header.get('size')} were written"
        raise ValueError(_CORRUPT.format(path=name, why=why))
    if hashlib.sha256(payload).hexdigest() != header.get("sha256"):
        raise ValueError(_CORRUPT.format(path=name, why="the checksum does not match"))
    diffs = _differences(header, describe(like))
    if diffs:
        shown = "; ".join(diffs[:_SHOWN])
        if len(diffs) > _SHOWN:
            shown += f"; and {len(diffs) - _SHOWN} more"
        raise ValueError(_MISMATCH.format(path=name, n=len(diffs), diffs=shown))
    state = eqx.tree_deserialise_leaves(io.BytesIO(payload), _keys_to_data(like))
    return _data_to_keys(state, like)
