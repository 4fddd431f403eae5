"""The Solver: `init -> step -> result`, and `run` as compiled chunks of steps."""

import collections
import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.flatten_util
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, Int, PRNGKeyArray, PyTree

from ._custom_types import ArrayTree
from ._mcmc import KernelDiagnostics, over_chains
from ._posterior import History, Posterior, Result
from ._wrappers import AbstractGroup, is_group, unwrap


logger = logging.getLogger("eqbayes")

_NO_GROUPS = (
    "`Solver.init(model, ...)`: the model has no Bayesian groups and the solver has "
    "no optimiser, so there is nothing to do. Mark a sub-tree with "
    "`eb.bayesian(model, blackjax.nuts, where=...)`."
)
_CHAINS = (
    "`Solver.init(model, ...)`: every Bayesian group of one solve must run the same "
    "number of chains, but {detail}. Pass the same `num_chains=` to every "
    "`eb.bayesian(...)` call."
)
_LOSS_SHAPE = (
    "`Solver(loss)`: the loss must return a scalar, but `loss(model, *args)` returned "
    "{what}. Reduce it, e.g. with `jnp.mean(...)` or `jnp.sum(...)`."
)
_LOSS_FAILED = (
    "`Solver.init(model, ...)`: calling `loss(model, *args)` on the unwrapped model "
    "failed: {err}"
)
_STEPS = (
    "`Solver.run(..., steps={steps!r})`: group '{name}' needs {need} steps "
    "(warmup {warmup} + keep {keep} x thin {thin}). Pass `steps >= {need}` or "
    "`steps=None` for exactly that."
)
_STEPS_TYPE = (
    "`Solver.run(..., steps={steps!r})`: `steps` must be a positive integer or None."
)
_NOT_YET = "`{call}`: {what} are not available in this version of eqbayes."
_KEY = (
    "`Solver.{fn}(..., key=...)`: `key` must be a JAX PRNG key such as "
    "`jax.random.key(0)` (or a legacy `jax.random.PRNGKey(0)`); got {what}."
)
_PRINT_EVERY = (
    "`Solver(..., print_every={value!r})`: `print_every` must be a positive integer "
    "(steps per compiled chunk) or None."
)


class SolverState(eqx.Module):
    """Everything a solve carries from one step to the next.

    **Fields:**

    - `model`: the marked model; each group wrapper holds its state (kernel states
        of the K chains, step size, inverse mass matrix, adaptation, sample buffers).
    - `step`: solver steps taken so far.
    - `key`: the solve's key; step `t` uses `jax.random.fold_in(key, t)`, so a
        solve can be chunked, stepped by hand or resumed without changing its chain.
    """

    model: PyTree
    step: Int[Array, ""]
    key: PRNGKeyArray


# -- the pure mechanics ---------------------------------------------------------


def _flatten(model: PyTree):
    leaves, treedef = jax.tree.flatten(model, is_leaf=is_group)
    gidx = tuple(i for i, leaf in enumerate(leaves) if is_group(leaf))
    return leaves, treedef, gidx


def _plain_at(leaves, treedef, gidx, positions: dict[int, ArrayTree]) -> PyTree:
    """The plain model with group j at `positions[j]` (one chain); groups without
    chains (absent from `positions`) at their current value."""
    new = list(leaves)
    for j in gidx:
        if j in positions:
            new[j] = leaves[j].materialise(positions[j])
        else:
            new[j] = leaves[j].current()
    return jax.tree.unflatten(treedef, new)


def _logdensity_for(loss, leaves, treedef, gidx, i, args) -> Callable:
    """`others_k -> (theta -> log density of group i at chain k)`."""
    leaves = tuple(leaves)
    group = leaves[i]

    def for_chain(others_k):
        def logdensity(theta):
            model = _plain_at(leaves, treedef, gidx, {**others_k, i: theta})
            value = group.log_density(loss(model, *args), theta)
            # A non-finite log density is a rejected (divergent) transition.
            return jnp.where(jnp.isfinite(value), value, -jnp.inf)

        return logdensity

    return for_chain


def _positions(leaves, gidx, exclude: int | None = None) -> dict[int, ArrayTree]:
    """The chained groups' positions, chain axis first."""
    return {
        j: leaves[j].positions() for j in gidx if j != exclude and leaves[j].chained
    }


def _transition(loss, state: SolverState, args, *, phase: str, recording: str):
    """One solver step: every group makes one transition, in a fixed cycle."""
    leaves, treedef, gidx = _flatten(state.model)
    key = jr.fold_in(state.key, state.step)
    refresh = len(gidx) > 1
    for n, i in enumerate(gidx):
        leaves[i] = leaves[i].transition(
            jr.fold_in(key, n) if len(gidx) > 1 else key,
            state.step,
            _logdensity_for(loss, leaves, treedef, gidx, i, args),
            _positions(leaves, gidx, exclude=i),
            refresh=refresh,
            phase=phase,
            recording=recording,
        )
    model = jax.tree.unflatten(treedef, leaves)
    return SolverState(model, state.step + 1, state.key)


def _chain_losses(loss, model, args) -> Array:
    """The loss at each chain's current position, shape `(K,)`."""
    leaves, treedef, gidx = _flatten(model)
    positions = _positions(leaves, gidx)
    if not positions:  # no chains: one value
        return jnp.asarray(loss(_plain_at(leaves, treedef, gidx, {}), *args))[None]
    return over_chains(
        lambda p: loss(_plain_at(leaves, treedef, gidx, p), *args), positions
    )


@eqx.filter_jit
def _init_states(loss, model, key, args):
    leaves, treedef, gidx = _flatten(model)
    starts = {j: leaves[j].start(jr.fold_in(key, n)) for n, j in enumerate(gidx)}
    new = list(leaves)
    for i in gidx:
        new[i] = leaves[i].initialise(
            starts[i],
            _logdensity_for(loss, leaves, treedef, gidx, i, args),
            {j: p for j, p in starts.items() if j != i and leaves[j].chained},
        )
    return _strong(jax.tree.unflatten(treedef, new))


def _strong(tree):
    """Every array leaf strongly typed: a state's types are then the same whether it
    comes from `init` or from a step, so the compiled programs are reused."""
    return jax.tree.map(
        lambda x: jnp.asarray(x, x.dtype) if eqx.is_array(x) else x, tree
    )


def _fori(num, body, state):
    """`lax.fori_loop` over a state that may hold non-array leaves (activations).
    The carry, and so the returned state, is strongly typed."""
    dynamic, static = eqx.partition(_strong(state), eqx.is_array)

    def array_body(i, dynamic):
        out = body(i, eqx.combine(dynamic, static))
        return eqx.filter(_strong(out), eqx.is_array)

    return eqx.combine(jax.lax.fori_loop(0, num, array_body, dynamic), static)


@eqx.filter_jit
def _step(loss, state, args):
    return _strong(_transition(loss, state, args, phase="any", recording="auto"))


@eqx.filter_jit
def _run_general(loss, state, args, num_steps):
    def body(_, s):
        return _transition(loss, s, args, phase="any", recording="auto")

    state = _fori(num_steps, body, state)
    return state, jnp.mean(_chain_losses(loss, state.model, args))


@eqx.filter_jit
def _run_fast(loss, state, args, num_warmup, num_sample):
    """The pure-Bayesian fast path: `num_warmup` warmup steps (adaptation, no
    recording), then `num_sample` steps past warmup, each writing its draw's slot
    (the last write to a slot, at the `thin`-th step, is the draw). No conditions on
    the step counter; one program for every chunk."""

    def warm(_, s):
        return _transition(loss, s, args, phase="warmup", recording="never")

    def sample(_, s):
        return _transition(loss, s, args, phase="sample", recording="always")

    state = _fori(num_sample, sample, _fori(num_warmup, warm, state))
    return state, jnp.mean(_chain_losses(loss, state.model, args))


# -- the public Solver ----------------------------------------------------------


def _as_key(key: Any, fn: str) -> PRNGKeyArray:
    if isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        if key.shape != ():
            raise ValueError(
                _KEY.format(fn=fn, what=f"a batch of keys, shape {key.shape}")
            )
        return key
    if (
        isinstance(key, (jax.Array, np.ndarray))
        and key.dtype == jnp.uint32
        and (key.shape == (2,))
    ):
        return jr.wrap_key_data(jnp.asarray(key))
    raise TypeError(
        _KEY.format(fn=fn, what=f"an object of type `{type(key).__name__}`")
    )


def _groups(model: PyTree) -> list[AbstractGroup]:
    return [leaf for leaf in jax.tree.leaves(model, is_leaf=is_group) if is_group(leaf)]


def _summarise(name: str, diagnostics: KernelDiagnostics | None) -> str:
    if diagnostics is None:
        return f"Group '{name}': no kernel diagnostics"
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
    return f"Group '{name}': " + (
        ", ".join(parts) if parts else "no kernel diagnostics"
    )


class Solver(eqx.Module):
    """Steps every group of a marked model together.

    One `Solver` serves any number of solves: the compiled program is reused by
    later calls with the same model structure and configuration.

    **Arguments:**

    - `loss`: `loss(model, *args) -> scalar`, called with the plain model (every
        wrapper replaced by values). With `data=`, `loss(model, data, *args)`.
    - `optimizer`: reserved for optax training of unmarked leaves (not available
        yet; must be None: unmarked leaves stay frozen).
    - `print_every`: steps per compiled chunk: one dispatch, one host transfer and
        one progress-bar update per chunk. By default a tenth of the solve when a
        progress bar is shown, else the whole solve in one chunk (each dispatch
        costs about a millisecond of Python and pytree handling).
    - `progress`: show a progress bar (needs `tqdm`: `pip install 'eqbayes[progress]'`;
        without it, no bar).
    - `callbacks`: reserved (must be empty).

    !!! Example

        ```python
        solver = eb.Solver(loss)
        result = solver.run(model, key=jax.random.key(0), args=(x, y))
        ```
    """

    loss: Callable[..., Any] = eqx.field(static=True)
    optimizer: Any = eqx.field(static=True, default=None)
    print_every: int | None = eqx.field(static=True, default=None)
    progress: bool = eqx.field(static=True, default=True)
    callbacks: Sequence[Any] = eqx.field(static=True, default=())

    def __check_init__(self):
        if not callable(self.loss):
            raise TypeError(
                f"`Solver(loss)`: `loss` must be callable `loss(model, *args) -> "
                f"scalar`; got an object of type `{type(self.loss).__name__}`."
            )
        if self.optimizer is not None:
            raise NotImplementedError(
                _NOT_YET.format(call="Solver(..., optimizer=...)", what="optax parts")
            )
        if tuple(self.callbacks):
            raise NotImplementedError(
                _NOT_YET.format(call="Solver(..., callbacks=...)", what="callbacks")
            )
        pe = self.print_every
        if pe is not None and (
            isinstance(pe, bool) or not isinstance(pe, int) or pe < 1
        ):
            raise ValueError(_PRINT_EVERY.format(value=pe))

    # -- init -> step -> result ---------------------------------------------------

    def _loss_args(self, args, data):
        args = tuple(args)
        return args if data is None else (data, *args)

    def init(
        self,
        model: PyTree,
        *,
        key: PRNGKeyArray,
        args: Sequence[Any] = (),
        data: PyTree | None = None,
        batch_size: int | None = None,
    ) -> SolverState:
        """Checks the configuration and builds the initial state.

        Every misconfiguration raises here, before anything is compiled.

        **Arguments:**

        - `model`: the marked model.
        - `key`: a JAX PRNG key; it fixes the chains' starting jitter and every
            transition.
        - `args`: extra arguments of the loss.
        - `data`: optional data pytree, passed to the loss as its second argument.
        - `batch_size`: reserved for minibatches (not available yet).

        **Returns:**

        A [`eqbayes.SolverState`][] at step 0.
        """
        if batch_size is not None:
            raise NotImplementedError(
                _NOT_YET.format(
                    call="Solver.init(..., batch_size=...)", what="minibatches"
                )
            )
        key = _as_key(key, "init")
        args = self._loss_args(args, data)
        groups = _groups(model)
        if not groups:
            raise ValueError(_NO_GROUPS)
        for group in groups:
            group.check()
        chains = {g.name: g.num_chains for g in groups if g.chained}
        if len(set(chains.values())) > 1:
            detail = ", ".join(f"'{n}' has num_chains={k}" for n, k in chains.items())
            raise ValueError(_CHAINS.format(detail=detail))
        self._check_loss(model, args)
        init_key, run_key = jr.split(key)
        model = _init_states(self.loss, model, init_key, args)
        if logger.isEnabledFor(logging.INFO):
            for group in _groups(model):
                logger.info(group.describe())
        return SolverState(model, jnp.asarray(0, jnp.int32), run_key)

    def _check_loss(self, model, args):
        try:
            out = _loss_shape(self.loss, unwrap(model), args)
        except Exception as err:  # noqa: BLE001 - re-raised with context
            raise type(err)(_LOSS_FAILED.format(err=err)) from err
        if not (
            isinstance(out, jax.ShapeDtypeStruct)
            and out.shape == ()
            and jnp.issubdtype(out.dtype, jnp.floating)
        ):
            what = (
                f"an array of shape {out.shape} and dtype {out.dtype}"
                if isinstance(out, jax.ShapeDtypeStruct)
                else f"an object of type `{type(out).__name__}`"
            )
            raise ValueError(_LOSS_SHAPE.format(what=what))

    def step(
        self,
        state: SolverState,
        *,
        args: Sequence[Any] = (),
        data: PyTree | None = None,
        batch: PyTree | None = None,
    ) -> SolverState:
        """Takes one solver step (compiled with `eqx.filter_jit`).

        A loop of `step` calls gives the same chain as `run` for the same key.
        `args` (and `data`) must be the ones the state was initialised with.

        **Returns:**

        The new [`eqbayes.SolverState`][].
        """
        if batch is not None:
            raise NotImplementedError(
                _NOT_YET.format(call="Solver.step(..., batch=...)", what="minibatches")
            )
        return _step(self.loss, state, self._loss_args(args, data))

    def result(self, state: SolverState, history: History | None = None) -> Result:
        """Collects the posterior and the plain model from a state.

        **Arguments:**

        - `state`: a [`eqbayes.SolverState`][].
        - `history`: per-chunk records; `run` passes its own. By default, the loss
            is not re-evaluated and the history is empty.

        **Returns:**

        A [`eqbayes.Result`][].
        """
        steps_done = int(state.step)
        plain = unwrap(state.model)

        samples = jax.tree.map(
            lambda x: x.draws(steps_done) if is_group(x) else None,
            state.model,
            is_leaf=is_group,
        )
        diagnostics = {
            g.name: g.kernel_diagnostics(steps_done) for g in _groups(state.model)
        }
        if history is None:
            history = History(jnp.zeros((0,)), {})
        return Result(plain, Posterior(samples, diagnostics, plain), history)

    # -- run ------------------------------------------------------------------------

    def run(
        self,
        model: PyTree,
        steps: int | None = None,
        *,
        key: PRNGKeyArray,
        args: Sequence[Any] = (),
        data: PyTree | None = None,
        batch_size: int | None = None,
        state: SolverState | None = None,
    ) -> Result:
        """Runs a whole solve in compiled chunks and returns its result.

        **Arguments:**

        - `model`: the marked model (see [`eqbayes.bayesian`][]).
        - `steps`: solver steps; `None` means the longest group's
            `warmup + keep * thin`. A longer solve keeps each group's last `keep`
            draws.
        - `key`: a JAX PRNG key (`jax.random.key(0)`); same key, same chain.
        - `args`: extra arguments of the loss, `loss(model, *args)`.
        - `data`: optional data, passed as `loss(model, data, *args)`.
        - `batch_size`: reserved for minibatches (not available yet).
        - `state`: continue from this state (e.g. a saved one) instead of
            initialising; `steps` then counts the further steps (default: to the
            end of the longest group's schedule).

        **Returns:**

        A [`eqbayes.Result`][].
        """
        groups = _groups(model if state is None else state.model)
        if not groups:
            raise ValueError(_NO_GROUPS)
        done = 0 if state is None else int(state.step)
        needed = max(w + k * t for w, k, t in (g.schedule for g in groups))
        if steps is None:
            steps = max(needed - done, 0)
        elif isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(_STEPS_TYPE.format(steps=steps))
        for g in groups:
            warmup, keep, thin = g.schedule
            if done + steps < warmup + keep * thin:
                raise ValueError(
                    _STEPS.format(
                        steps=steps,
                        name=g.name,
                        need=warmup + keep * thin - done,
                        warmup=warmup,
                        keep=keep,
                        thin=thin,
                    )
                )
        if state is None:
            state = self.init(
                model, key=key, args=args, data=data, batch_size=batch_size
            )
        args = self._loss_args(args, data)
        bar = _progress_bar(self.progress, steps)
        if self.print_every is not None:
            chunk = self.print_every
        elif bar is not None:
            chunk = max(1, math.ceil(steps / 10))
        else:  # nobody is watching: one dispatch for the whole solve
            chunk = steps
        configs = {g.schedule for g in groups}
        fast = len(configs) == 1 and done == 0 and steps == needed
        losses = []
        with _logging_around(bar):
            if fast:
                ((warmup, keep, thin),) = configs
                logger.info(
                    f"MCMC fast path: warmup {warmup} steps in one loop, then "
                    f"{keep} draws x thin {thin} in chunks of "
                    f"{max(1, chunk // thin)} draws (warmup runs in the first chunk)."
                )
                per_chunk = max(1, chunk // thin)
                for start in range(0, keep, per_chunk):
                    n = min(per_chunk, keep - start)
                    n_warm = warmup if start == 0 else 0
                    state, loss = _run_fast(
                        self.loss,
                        state,
                        args,
                        jnp.asarray(n_warm),
                        jnp.asarray(n * thin),
                    )
                    losses.append(np.asarray(loss))  # one host transfer per chunk
                    _advance(bar, n_warm + n * thin)
            else:
                logger.info(
                    f"General path: {steps} steps in chunks of {chunk} "
                    f"(fast path needs one warmup/keep/thin for all groups and a "
                    f"fresh solve of exactly their length)."
                )
                for start in range(0, steps, chunk):
                    n = min(chunk, steps - start)
                    state, loss = _run_general(self.loss, state, args, jnp.asarray(n))
                    losses.append(np.asarray(loss))  # one host transfer per chunk
                    _advance(bar, n)
        history = History(
            jnp.asarray(np.stack(losses)) if losses else jnp.zeros((0,)), {}
        )
        assert state is not None
        result = self.result(state, history)
        if logger.isEnabledFor(logging.INFO):
            for name, diagnostics in result.posterior.diagnostics.items():
                logger.info(_summarise(name, diagnostics))
        return result


_LOSS_SHAPES: "collections.OrderedDict[Any, Any]" = collections.OrderedDict()
_LOSS_SHAPES_SIZE = 64


def _loss_shape(loss, model, args):
    """`eqx.filter_eval_shape` of the loss, remembered (for the last few losses and
    input shapes) so that a repeated solve does not trace the loss again."""
    leaves, treedef = jax.tree.flatten((model, args))
    signature = tuple(
        (x.shape, x.dtype, getattr(x, "weak_type", False)) if eqx.is_array(x) else x
        for x in leaves
    )
    try:
        key = (loss, treedef, signature)
        hash(key)
    except TypeError:
        return eqx.filter_eval_shape(loss, model, *args)
    if key in _LOSS_SHAPES:
        _LOSS_SHAPES.move_to_end(key)
    else:
        _LOSS_SHAPES[key] = eqx.filter_eval_shape(loss, model, *args)
        if len(_LOSS_SHAPES) > _LOSS_SHAPES_SIZE:
            _LOSS_SHAPES.popitem(last=False)
    return _LOSS_SHAPES[key]


def _progress_bar(enabled: bool, total: int):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        logger.debug("tqdm is not installed: no progress bar.")
        return None
    return tqdm(total=total, desc="eqbayes", unit="step", leave=False)


def _logging_around(bar):
    """Routes eqbayes's log lines through the progress bar so they don't collide,
    and closes the bar at the end."""
    import contextlib

    if bar is None:
        return contextlib.nullcontext()
    from tqdm.contrib.logging import logging_redirect_tqdm

    stack = contextlib.ExitStack()
    stack.callback(bar.close)
    stack.enter_context(logging_redirect_tqdm(loggers=[logger]))
    return stack


def _advance(bar, n: int):
    if bar is not None:
        bar.update(n)


__all__ = ["Solver", "SolverState"]
