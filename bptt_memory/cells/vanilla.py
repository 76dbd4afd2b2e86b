"""The Elman cell: h' = act(x·W_ihᵀ + b_ih + h·W_hhᵀ + b_hh), like ``torch.nn.RNN``.

Its kernels, forward beside VJP, and the cell (NOTE [kernel layout] in _gated.py).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from ..cell import Cell
from ._gated import Gated, Residuals, State, _Weights, sigmoid

__all__ = ["Vanilla", "vanilla", "ACTIVATIONS"]

# --------------------------------------------------------------------------------------
# vanilla: h' = act(x·W_ihᵀ + b_ih + h·W_hhᵀ + b_hh)
# residuals: (h_prev, h')  -- act'(z) is read off the output h' for all three activations;
# h_prev links to the previous step's h' (NOTE [linked steps])


def _act_tanh(z: np.ndarray) -> np.ndarray:
    return np.tanh(z, out=z)


def _dact_tanh(h: np.ndarray, dh: np.ndarray, out: np.ndarray) -> np.ndarray:
    np.multiply(h, h, out=out)
    np.subtract(1.0, out, out=out)  # tanh' = 1 - tanh²
    out *= dh
    return out


def _act_sigmoid(z: np.ndarray) -> np.ndarray:
    return sigmoid(z, out=z)


def _dact_sigmoid(h: np.ndarray, dh: np.ndarray, out: np.ndarray) -> np.ndarray:
    np.subtract(1.0, h, out=out)
    out *= h  # σ' = σ(1 - σ)
    out *= dh
    return out


def _act_relu(z: np.ndarray) -> np.ndarray:
    return np.maximum(z, 0.0, out=z)


def _dact_relu(h: np.ndarray, dh: np.ndarray, out: np.ndarray) -> np.ndarray:
    return np.multiply(dh, h > 0.0, out=out)  # PyTorch's convention: relu'(0) = 0


#: activation name -> (act(z) in place, dact(h, dh, out) = dh ⊙ act'(z) from h = act(z))
ACTIVATIONS: dict[str, tuple[Callable, Callable]] = {
    "tanh": (_act_tanh, _dact_tanh),
    "sigmoid": (_act_sigmoid, _dact_sigmoid),
    "relu": (_act_relu, _dact_relu),
}


def _forward(cell: Vanilla, w: _Weights, xp: np.ndarray, h: np.ndarray,
                     out: np.ndarray) -> np.ndarray:
    w.matmul(h, w.W_hhT[0], out=out)  # (B, H); xp is (1, B, H)
    out += xp[0]
    return ACTIVATIONS[cell.activation][0](out)


def _step(cell: Vanilla, w: _Weights, xp: np.ndarray, state: State) -> State:
    return (_forward(cell, w, xp, state[0], np.empty_like(state[0])),)


def _record(cell: Vanilla, w: _Weights, xp: np.ndarray, state: State,
                    res: Residuals) -> State:
    # The new state shares memory with the residual h' (states are never mutated), so
    # the next recorded step can link its h_prev to it (NOTE [linked steps]).
    return (_forward(cell, w, xp, state[0], res[1]),)


def _output(cell: Vanilla, res: Residuals, out: np.ndarray | None = None) -> np.ndarray:
    if out is None:
        return res[1]
    np.copyto(out, res[1])
    return out


def _vjp(cell: Vanilla, w: _Weights, res: Residuals, dstate: State, dxp: np.ndarray,
         dhp: np.ndarray) -> State:
    h_prev, h = res
    dz = dxp[0]  # (B, H) of (1, B, H); dhp is dxp
    ACTIVATIONS[cell.activation][1](h, dstate[0], dz)
    return (w.matmul(dz, w.W_hh[0]),)




class Vanilla(Gated):
    """Build with `vanilla`."""

    kind = "vanilla"
    n_gates = 1
    state_names = ("h",)
    residual_names = ("h_prev", "h")
    residual_widths = (1, 1)
    links = (1,)

    def __init__(self, n_in: int, n_hidden: int, activation: str = "tanh") -> None:
        super().__init__(n_in, n_hidden)
        if activation not in ACTIVATIONS:
            raise ValueError(f"vanilla(activation={activation!r}): unknown activation; "
                             f"use one of {sorted(ACTIVATIONS)}")
        self.activation = activation

    def _key(self) -> tuple:
        return super()._key() + (self.activation,)

    def __repr__(self) -> str:
        return (f"vanilla(n_in={self.n_in}, n_hidden={self.n_hidden}, "
                f"activation={self.activation!r})")

    _step = _step
    _record = _record
    _output = _output
    _vjp = _vjp


def vanilla(n_in: int, n_hidden: int, activation: str = "tanh", num_layers: int = 1) -> Cell:
    """Elman cell h' = act(x·W_ihᵀ + b_ih + h·W_hhᵀ + b_hh), like ``torch.nn.RNN``.

    Stores 2·B·H numbers per recorded step (h_prev and h') against B·H per state, B·H
    when the step before is still recorded (h_prev is its h').

    Args:
        activation: "tanh", "sigmoid" or "relu" (torch.nn.RNN has tanh and relu).
        num_layers: L > 1 stacks L cells like ``torch.nn.RNN(num_layers=L)``: parameters
            ``weight_ih_l0``, …, state (L, B, H); no dropout between layers.

    >>> vanilla(3, 4, activation="relu").param_shapes()["weight_hh"]
    (4, 4)
    """
    from .stack import layers

    return layers(lambda i: Vanilla(i, n_hidden, activation), n_in, n_hidden, num_layers, "vanilla")


#: Registered in `bptt_memory.CELLS` under this name.
CELLS = {"vanilla": vanilla}
