"""The cell protocol: what any recurrent cell gives every strategy.

A cell maps the state entering step t to the state leaving it. It can run a step cheaply
(`step`: the new state only) or *record* it (`record`: the new state and the residuals
that the step's vector-Jacobian product needs), and reverse a recorded step (`vjp`). It
declares the shapes of its parameters, of its state and of its residuals, so the bytes a
strategy will hold are known before anything runs. That is all a strategy needs: a cell
written against this protocol runs under every strategy, with exact `Stats.peak_bytes`.

What a recorded step keeps is exactly what BPTT must store: activations and, typically,
the entering state, never the weights (they are read, one copy whatever T).

Optional hooks make a cell fast without making it different: `kernels` hands the
executor one run's steps as a `Kernels` object, which may batch work over many steps (the
input projection of a chunk, the weight-gradient products of a window) and share arrays
between consecutive recorded steps (NOTE [linked steps] in bptt_memory/cells/_gated.py).
The default, `PlainKernels`, runs the protocol's methods one step at a time: correct,
only slower. The built-in cells (`bptt_memory.cells`) are protocol cells with that hook.

States are tuples of arrays and are never mutated: `step` and `record` return new arrays
(or arrays they own), so a strategy may keep a state by reference.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any, Callable, Sequence

import numpy as np

__all__ = ["Cell", "Kernels", "PlainKernels", "State", "Params", "CellError"]

State = tuple[np.ndarray, ...]
Params = dict[str, np.ndarray]


class CellError(TypeError):
    """A cell broke its protocol: which cell, which method, what was expected."""


class Cell(ABC):
    """A recurrent cell: subclass it and write the six abstract methods.

    Required (see the README's IndRNN for a complete example):

    - ``param_shapes()``: ``{name: shape}``, the cell's own parameter names;
    - ``state_shapes(batch)``: the shapes of the state's components, a tuple of tuples;
    - ``residual_shapes(batch)``: the shapes of what `record` keeps, so bytes are known
      before running;
    - ``step(params, x, state)``: the new state from x (B, n_in); nothing kept;
    - ``record(params, x, state)``: ``(new_state, residuals)``;
    - ``vjp(params, x, residuals, dstate)``: ``(dstate_prev, dparams)``, dparams a dict of
      this step's gradient contributions (any subset of the parameter names).

    Optional, with defaults: `init`, `output` and `output_vjp` (what the readout sees,
    default ``state[0]``), `output_size`, `n_in`, `residual_output`, `vjp_input` (needed
    only to stack the cell above another), `link_bytes` and `kernels` (speed).
    """

    # -- required -----------------------------------------------------------------
    @abstractmethod
    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """``{name: shape}`` of the cell's parameters."""

    @abstractmethod
    def state_shapes(self, batch: int) -> tuple[tuple[int, ...], ...]:
        """Shapes of the state components, e.g. ``((B, H),)`` or ``((B, H), (B, H))``."""

    @abstractmethod
    def residual_shapes(self, batch: int) -> tuple[tuple[int, ...], ...]:
        """Shapes of the arrays `record` keeps, in the order it returns them."""

    @abstractmethod
    def step(self, params: Params, x: np.ndarray, state: State) -> State:
        """One step from x (B, n_in): the new state; nothing kept."""

    @abstractmethod
    def record(self, params: Params, x: np.ndarray, state: State) -> tuple[State, tuple]:
        """One step that keeps what its VJP needs: ``(new_state, residuals)``."""

    @abstractmethod
    def vjp(self, params: Params, x: np.ndarray, residuals: tuple, dstate: State
            ) -> tuple[State, Params]:
        """Reverse a recorded step: dL/dstate_new -> ``(dL/dstate_prev, dparams)``."""

    # -- optional -----------------------------------------------------------------
    @property
    def name(self) -> str:
        """How errors and tables name this cell."""
        return type(self).__name__

    @property
    def n_in(self) -> int | None:
        """Input width, checked against xs when known (None: not checked)."""
        return None

    @property
    def state_names(self) -> tuple[str, ...]:
        """Names of the state components, for messages: ``("h", "c")``; by default their
        indices."""
        return tuple(str(i) for i in range(len(self.state_shapes(1))))

    @property
    def output_size(self) -> int:
        """Width of `output`, the readout's input: by default the last dimension of the
        first state component."""
        return self.state_shapes(1)[0][-1]

    def init(self, rng: np.random.Generator, dtype: np.dtype | type = np.float64) -> Params:
        """Parameters drawn U(−1/√H, 1/√H) with H = `output_size` (PyTorch's default for
        its recurrent cells), in `param_shapes` order."""
        bound = 1.0 / math.sqrt(self.output_size)
        return {name: rng.uniform(-bound, bound, size=shape).astype(dtype)
                for name, shape in self.param_shapes().items()}

    def output(self, state: State) -> np.ndarray:
        """The array the readout sees, (B, output_size): ``state[0]`` by default. It must
        be a selection of the state (linear), whose gradient `output_vjp` adds back."""
        return state[0]

    def output_vjp(self, doutput: np.ndarray, dstate: State) -> State:
        """Add dL/doutput into the state's adjoint (the transpose of `output`)."""
        return (dstate[0] + doutput,) + tuple(dstate[1:])

    def residual_output(self, residuals: tuple) -> np.ndarray | None:
        """The step's `output`, read off its residuals, or None (the default) when they
        do not hold it: the executor then keeps a copy of the output beside them, and
        `residual_bytes` counts it."""
        return None

    def vjp_input(self, params: Params, x: np.ndarray, residuals: tuple, dstate: State
                  ) -> tuple[State, Params, np.ndarray]:
        """`vjp` and dL/dx: needed only where another cell feeds this one (`stack`)."""
        raise CellError(
            f"{self.name}.vjp_input: not implemented; a cell stacked above another must "
            "return the gradient of its input too (dstate_prev, dparams, dx)"
        )

    def link_bytes(self, batch: int, dtype: np.dtype | type) -> int:
        """Bytes a recorded step shares with the step before when both are held (NOTE
        [linked steps] in bptt_memory/cells/_gated.py); 0 unless `kernels` links them."""
        return 0

    def kernels(self, params: Params, batch: int, grads: Params, rows: int) -> Kernels:
        """One run's steps for the executor (`Kernels`); ``grads`` receives the cell's
        parameter gradients and ``rows`` is how many batch rows of gradient buffers the
        executor's windows need. Override to batch work over many steps."""
        return PlainKernels(self, params, grads, batch)

    # -- derived ------------------------------------------------------------------
    def keeps_output(self) -> bool:
        """Whether the executor keeps a copy of each recorded step's output beside its
        residuals (when `residual_output` is not overridden)."""
        return type(self).residual_output is Cell.residual_output

    def state_bytes(self, batch: int, dtype: np.dtype | type) -> int:
        """Bytes of one stored state."""
        return _bytes(self.state_shapes(batch), dtype)

    def residual_bytes(self, batch: int, dtype: np.dtype | type) -> int:
        """Bytes one recorded step keeps on its own (its residuals, and its output where
        `keeps_output`); a step linked to the one before keeps `link_bytes` less."""
        extra = batch * self.output_size if self.keeps_output() else 0
        return _bytes(self.residual_shapes(batch), dtype) + extra * np.dtype(dtype).itemsize

    def sizes(self, batch: int, dtype: np.dtype | type) -> dict[str, int]:
        """state_bytes, residual_bytes and link_bytes as keywords, for `simulate`, the
        schedules and ``strategy.cost``: ``simulate(plan, **cell.sizes(B, dtype))``."""
        return {"state_bytes": self.state_bytes(batch, dtype),
                "residual_bytes": self.residual_bytes(batch, dtype),
                "link_bytes": self.link_bytes(batch, dtype)}

    def recorded_bytes(self, n_steps: int, batch: int, dtype: np.dtype | type) -> int:
        """Bytes held by n consecutive recorded steps: full()'s peak_bytes for n = T."""
        check_size(f"{self.name}.recorded_bytes", "n_steps", n_steps)
        return run_bytes(n_steps, self.residual_bytes(batch, dtype), self.link_bytes(batch, dtype))


class Kernels(ABC):
    """One run's steps, as the executor calls them (made by `Cell.kernels`).

    The executor hands a chunk of inputs to `project` and each step the projected input
    ``u`` (by default x itself); `vjp` writes the step's gradient at buffer row ``row``
    (a multiple of B within the current gradient window) or adds it straight into the
    grads, and `flush` turns a window's rows into parameter gradients.
    """

    def __init__(self, cell: Cell, params: Params, grads: Params) -> None:
        self.cell, self.params, self.grads = cell, params, grads

    def project(self, xs: np.ndarray) -> Sequence[Any] | np.ndarray:
        """Per-step inputs for the steps of xs (K, B, n_in), K at most the chunk."""
        return xs

    @abstractmethod
    def step(self, u: Any, state: State) -> State:
        """`Cell.step` from a projected input."""

    @abstractmethod
    def record(self, u: Any, state: State, previous: Any | None
               ) -> tuple[State, Any, int]:
        """`Cell.record` from a projected input: (new state, residuals, bytes they hold).
        ``previous`` is the step before's residuals where they are still held."""

    @abstractmethod
    def output(self, residuals: Any, out: np.ndarray | None = None) -> np.ndarray:
        """The recorded step's output, (B, output_size); into ``out`` when given."""

    def entering_output(self, residuals: Any) -> np.ndarray | None:
        """The step before's output read off this step's residuals, or None."""
        return None

    @abstractmethod
    def vjp(self, row: int, x: np.ndarray, residuals: Any, dstate: State) -> State:
        """Reverse a recorded step (x its input): dL/dstate_prev."""

    def flush(self, r0: int, r1: int, xs: np.ndarray) -> None:
        """Add the gradients waiting in buffer rows [r0, r1), whose inputs are xs."""

    def add_output_grad(self, doutput: np.ndarray, dstate: State) -> State:
        """dstate plus dL/doutput from the readout (`Cell.output_vjp`); ``doutput`` is
        the executor's buffer row, free to be overwritten."""
        return self.cell.output_vjp(doutput, dstate)

    def workspace(self) -> list[np.ndarray]:
        """The buffers this object reuses across steps (`Stats.workspace_bytes`)."""
        return []

    def route_products(self, matmul: Callable[..., np.ndarray]) -> bool:
        """Make every later matrix product through ``matmul`` (``np.matmul``'s call:
        ``matmul(a, b, out=None)``) and say so with True; the default makes none and
        says False, and a `Profile` then reports these steps' products as unmeasured.
        Called at most once, before the first step, and only when profiling."""
        return False


class PlainKernels(Kernels):
    """The protocol's methods, one step at a time, checked on the first step.

    A recorded step's residuals are the cell's own, with a copy of its output beside
    them unless `Cell.residual_output` reads it off them.
    """

    def __init__(self, cell: Cell, params: Params, grads: Params, batch: int) -> None:
        super().__init__(cell, params, grads)
        self.batch = batch
        self._keeps = cell.keeps_output()
        self._checked: set[str] = set()

    def step(self, u: np.ndarray, state: State) -> State:
        new = self.cell.step(self.params, u, state)
        if "step" not in self._checked:
            check_state(self.cell, "step", new, state)
            self._checked.add("step")
        return new

    def record(self, u: np.ndarray, state: State, previous: Any | None
               ) -> tuple[State, Any, int]:
        cell = self.cell
        got = cell.record(self.params, u, state)
        if "record" not in self._checked:
            check_record(cell, got, state, self.batch)
            self._checked.add("record")
        new, res = got
        out = np.array(cell.output(new)) if self._keeps else None
        held = sum([a.nbytes for a in res]) + (0 if out is None else out.nbytes)
        return new, (res, out), held

    def output(self, residuals: Any, out: np.ndarray | None = None) -> np.ndarray:
        res, kept = residuals
        h = kept if kept is not None else self.cell.residual_output(res)
        assert h is not None  # kept unless the cell reads it off its residuals
        if out is None:
            return h
        np.copyto(out, h)
        return out

    def vjp(self, row: int, x: np.ndarray, residuals: Any, dstate: State) -> State:
        dprev, dparams = self.cell.vjp(self.params, x, residuals[0], dstate)
        if "vjp" not in self._checked:
            check_vjp(self.cell, dprev, dparams, dstate, self.params)
            self._checked.add("vjp")
        for k, v in dparams.items():
            self.grads[k] += v
        return dprev


# -- checks: a protocol cell's mistakes named on the first step --------------------------


def check_state(cell: Cell, method: str, new: object, state: State) -> None:
    """`new` must be a tuple of arrays shaped and typed like `state`."""
    where = f"{cell.name}.{method}"
    if not isinstance(new, tuple) or len(new) != len(state):
        got = f"a tuple of {len(new)}" if isinstance(new, tuple) else type(new).__name__
        raise CellError(f"{where}: returned {got} as the new state; expected a tuple of "
                        f"{len(state)} arrays shaped {tuple(s.shape for s in state)}")
    for i, (a, s) in enumerate(zip(new, state)):
        if not isinstance(a, np.ndarray) or a.shape != s.shape or a.dtype != s.dtype:
            got = (f"shape {a.shape} dtype {a.dtype}" if isinstance(a, np.ndarray)
                   else type(a).__name__)
            raise CellError(f"{where}: new state component {i} is {got}; expected shape "
                            f"{s.shape} dtype {s.dtype}, like the state it was given")


def check_record(cell: Cell, got: object, state: State, batch: int) -> None:
    """`record` must return (new_state, residuals), residuals as `residual_shapes` says."""
    where = f"{cell.name}.record"
    if not isinstance(got, tuple) or len(got) != 2:
        raise CellError(f"{where}: must return (new_state, residuals), got {type(got).__name__}")
    new, res = got
    check_state(cell, "record", new, state)
    shapes = cell.residual_shapes(batch)
    dtype = state[0].dtype
    if not isinstance(res, tuple) or len(res) != len(shapes):
        n = len(res) if isinstance(res, tuple) else type(res).__name__
        raise CellError(f"{where}: returned {n} residuals; residual_shapes({batch}) declares "
                        f"{len(shapes)}: {shapes}")
    for i, (a, shape) in enumerate(zip(res, shapes)):
        if not isinstance(a, np.ndarray) or a.shape != tuple(shape) or a.dtype != dtype:
            got_ = (f"shape {a.shape} dtype {a.dtype}" if isinstance(a, np.ndarray)
                    else type(a).__name__)
            raise CellError(f"{where}: residual {i} is {got_}; residual_shapes({batch}) "
                            f"declares shape {tuple(shape)} and the state's dtype is {dtype}")


def check_vjp(cell: Cell, dprev: object, dparams: object, dstate: State, params: Params) -> None:
    """`vjp` must return (dstate_prev shaped like the state, {param name: its shape})."""
    check_state(cell, "vjp", dprev, dstate)
    if not isinstance(dparams, dict):
        raise CellError(f"{cell.name}.vjp: dparams must be a dict {{name: array}}, "
                        f"got {type(dparams).__name__}")
    for k, v in dparams.items():
        if k not in params:
            raise CellError(f"{cell.name}.vjp: dparams[{k!r}] is not a parameter; "
                            f"param_shapes() names {sorted(params)}")
        if not isinstance(v, np.ndarray) or v.shape != params[k].shape:
            got = f"shape {v.shape}" if isinstance(v, np.ndarray) else type(v).__name__
            raise CellError(f"{cell.name}.vjp: dparams[{k!r}] is {got}; expected "
                            f"{params[k].shape}, the parameter's shape")


def _bytes(shapes: tuple[tuple[int, ...], ...], dtype: np.dtype | type) -> int:
    return sum(math.prod(s) for s in shapes) * np.dtype(dtype).itemsize


def run_bytes(n_steps: int, residual_bytes: int, link_bytes: int) -> int:
    """Bytes of n steps recorded one after another: the first alone, the rest linked."""
    return residual_bytes + (n_steps - 1) * (residual_bytes - link_bytes)


def check_size(where: str, name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{where}: {name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{where}: {name} must be >= 1, got {value}")
