"""Stacked layers: the output of one cell is the input of the next, and the stack is a cell.

`stack(cell, cell, …)` stacks any protocol cells; its state is the layers' states one
after the other, its residuals the layers' residuals (plus, where a layer's output is not
among its residuals, a copy of it: the input the layer above needs to be reversed), so
the memory accounting stays exact. Parameters are the layers' own names with PyTorch's
layer suffix, ``weight_ih_l0``, ``weight_hh_l0``, …, ``weight_ih_l1``, …

`lstm`, `gru` and `vanilla` with ``num_layers=L`` are stacks of L built-in cells with
PyTorch's state layout for multi-layer modules: each state component is (L, B, H). There
is no dropout between layers.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from ..cell import Cell, CellError, Params, State, check_size

__all__ = ["Stack", "Layers", "stack", "layers"]


class Stack(Cell):
    """Build with `stack`."""

    def __init__(self, cells: tuple[Cell, ...]) -> None:
        self.layers = cells
        self._widths = [len(c.state_shapes(1)) for c in cells]
        # layer i > 0 needs its input, layer i − 1's output, to be reversed: kept as a
        # copy where that layer's residuals do not hold it
        self._copies = [i > 0 and cells[i - 1].keeps_output() for i in range(len(cells))]

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.layers == self.layers  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash(self.layers)

    def __repr__(self) -> str:
        return f"stack({', '.join(repr(c) for c in self.layers)})"

    @property
    def name(self) -> str:
        return f"stack({', '.join(c.name for c in self.layers)})"

    @property
    def n_in(self) -> int | None:
        return self.layers[0].n_in

    @property
    def output_size(self) -> int:
        return self.layers[-1].output_size

    # -- layouts ------------------------------------------------------------------
    def _split(self, state: State) -> list[State]:
        """The stack's flat state, one tuple per layer."""
        out, i = [], 0
        for w in self._widths:
            out.append(tuple(state[i : i + w]))
            i += w
        return out

    def _join(self, states: list[State]) -> State:
        return tuple(a for s in states for a in s)

    @staticmethod
    def _layer_params(params: Params, i: int, names: dict[str, tuple[int, ...]]) -> Params:
        return {k: params[f"{k}_l{i}"] for k in names}

    # -- the protocol -------------------------------------------------------------
    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        return {f"{k}_l{i}": s for i, c in enumerate(self.layers)
                for k, s in c.param_shapes().items()}

    def init(self, rng: np.random.Generator, dtype: np.dtype | type = np.float64) -> Params:
        return {f"{k}_l{i}": v for i, c in enumerate(self.layers)
                for k, v in c.init(rng, dtype).items()}

    def state_shapes(self, batch: int) -> tuple[tuple[int, ...], ...]:
        return tuple(s for c in self.layers for s in c.state_shapes(batch))

    def residual_shapes(self, batch: int) -> tuple[tuple[int, ...], ...]:
        shapes: list[tuple[int, ...]] = []
        for i, c in enumerate(self.layers):
            if self._copies[i]:
                shapes.append((batch, self.layers[i - 1].output_size))
            shapes += c.residual_shapes(batch)
        return tuple(shapes)

    def _params(self, params: Params) -> list[Params]:
        return [self._layer_params(params, i, c.param_shapes()) for i, c in enumerate(self.layers)]

    def step(self, params: Params, x: np.ndarray, state: State) -> State:
        new = []
        for c, p, s in zip(self.layers, self._params(params), self._split(state)):
            s = c.step(p, x, s)
            new.append(s)
            x = c.output(s)
        return self._join(new)

    def record(self, params: Params, x: np.ndarray, state: State) -> tuple[State, tuple]:
        new: list[State] = []
        res: list[Any] = []
        for i, (c, p, s) in enumerate(zip(self.layers, self._params(params), self._split(state))):
            if self._copies[i]:
                res.append(np.array(x))
            s, r = c.record(p, x, s)
            new.append(s)
            res.append(tuple(r))
            x = c.output(s)
        return self._join(new), self._flat(res)

    def _flat(self, res: list) -> tuple:
        return tuple(a for r in res for a in (r if isinstance(r, tuple) else (r,)))

    def _unflat(self, res: tuple) -> list[tuple[np.ndarray | None, tuple]]:
        """Per layer: (its input copy or None, its residuals)."""
        out, j = [], 0
        for i, c in enumerate(self.layers):
            copy = None
            if self._copies[i]:
                copy, j = res[j], j + 1
            n = len(c.residual_shapes(1))
            out.append((copy, tuple(res[j : j + n])))
            j += n
        return out

    def _inputs(self, x: np.ndarray, layers: list[tuple[np.ndarray | None, tuple]]
                ) -> list[np.ndarray]:
        xs = [x]
        for i in range(1, len(self.layers)):
            copy = layers[i][0]
            x_i = copy if copy is not None else self.layers[i - 1].residual_output(layers[i - 1][1])
            assert x_i is not None  # a copy is kept where the layer below cannot read it off
            xs.append(x_i)
        return xs

    def residual_output(self, residuals: tuple) -> np.ndarray | None:
        return self.layers[-1].residual_output(self._unflat(residuals)[-1][1])

    def keeps_output(self) -> bool:
        return self.layers[-1].keeps_output()

    def output(self, state: State) -> np.ndarray:
        return self.layers[-1].output(self._split(state)[-1])

    def output_vjp(self, doutput: np.ndarray, dstate: State) -> State:
        parts = self._split(dstate)
        parts[-1] = self.layers[-1].output_vjp(doutput, parts[-1])
        return self._join(parts)

    def vjp(self, params: Params, x: np.ndarray, residuals: tuple, dstate: State
            ) -> tuple[State, Params]:
        dprev, dparams, _ = self._reverse(params, x, residuals, dstate, False)
        return dprev, dparams

    def vjp_input(self, params: Params, x: np.ndarray, residuals: tuple, dstate: State
                  ) -> tuple[State, Params, np.ndarray]:
        dprev, dparams, dx = self._reverse(params, x, residuals, dstate, True)
        assert dx is not None
        return dprev, dparams, dx

    def _reverse(self, params: Params, x: np.ndarray, residuals: tuple, dstate: State,
                 want_dx: bool) -> tuple[State, Params, np.ndarray | None]:
        layers = self._unflat(residuals)
        inputs = self._inputs(x, layers)
        ps = self._params(params)
        dstates = self._split(dstate)
        dparams: Params = {}
        dx = None
        for i in range(len(self.layers) - 1, -1, -1):
            c, d = self.layers[i], dstates[i]
            if dx is not None:  # the layer above's input gradient is this layer's output's
                d = c.output_vjp(dx, d)
            if i > 0 or want_dx:
                got = c.vjp_input(ps[i], inputs[i], layers[i][1], d)
                if not isinstance(got, tuple) or len(got) != 3:
                    raise CellError(f"{c.name}.vjp_input: must return (dstate_prev, dparams, dx)")
                dstates[i], dp, dx = got
            else:
                dstates[i], dp = c.vjp(ps[i], inputs[i], layers[i][1], d)
            dparams.update({f"{k}_l{i}": v for k, v in dp.items()})
        return self._join(dstates), dparams, dx


class Layers(Stack):
    """L built-in cells of one kind with PyTorch's multi-layer layout: every state
    component is (L, B, H), layer l's at [l]. Build with ``lstm(..., num_layers=L)``."""

    def __init__(self, cells: tuple[Cell, ...], kind: str) -> None:
        super().__init__(cells)
        self.kind = kind

    def __repr__(self) -> str:
        c = self.layers[0]
        return (f"{self.kind}(n_in={c.n_in}, n_hidden={c.output_size}, "
                f"num_layers={len(self.layers)})")

    @property
    def name(self) -> str:
        return f"{self.kind}(num_layers={len(self.layers)})"

    def state_shapes(self, batch: int) -> tuple[tuple[int, ...], ...]:
        L = len(self.layers)
        return tuple((L,) + s for s in self.layers[0].state_shapes(batch))

    def _split(self, state: State) -> list[State]:
        return [tuple(a[i] for a in state) for i in range(len(self.layers))]

    def _join(self, states: list[State]) -> State:
        return tuple(np.stack(parts) for parts in zip(*states))

    def output(self, state: State) -> np.ndarray:
        return state[0][-1]

    def output_vjp(self, doutput: np.ndarray, dstate: State) -> State:
        dh = dstate[0].copy()
        dh[-1] += doutput
        return (dh,) + tuple(dstate[1:])


def stack(*cells: Cell) -> Stack:
    """Stack protocol cells: each one's `output` is the next one's input.

    The stack is itself a cell (state: the layers' states in order; residuals: theirs),
    so every strategy runs it with exact bytes. Every layer but the first must implement
    `Cell.vjp_input` (the built-in cells do).

    >>> import bptt_memory as bm
    >>> s = bm.stack(bm.lstm(3, 8), bm.gru(8, 4))
    >>> sorted(s.param_shapes())[:2], s.state_shapes(2)
    (['bias_hh_l0', 'bias_hh_l1'], ((2, 8), (2, 8), (2, 4)))
    """
    if not cells:
        raise ValueError("stack(): give at least one cell, e.g. "
                         "stack(bm.lstm(3, 8), bm.lstm(8, 8))")
    for i, c in enumerate(cells):
        if not isinstance(c, Cell):
            raise TypeError(f"stack(): argument {i} is a {type(c).__name__}, not a bm.Cell")
        if i and c.n_in is not None and c.n_in != cells[i - 1].output_size:
            raise ValueError(f"stack(): layer {i} ({c.name}) takes inputs of width {c.n_in}, but "
                             f"layer {i - 1} outputs {cells[i - 1].output_size}")
    return Stack(tuple(cells))


def layers(make: Callable[[int], Cell], n_in: int, n_hidden: int, num_layers: int,
           kind: str) -> Cell:
    """``make(n_in)`` for one layer; L > 1 of them in PyTorch's multi-layer layout."""
    check_size(f"{kind}(num_layers=...)", "num_layers", num_layers)
    first = make(n_in)
    if num_layers == 1:
        return first
    return Layers((first,) + tuple(make(n_hidden) for _ in range(int(num_layers) - 1)), kind)
