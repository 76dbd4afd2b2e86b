"""The LSTM cell with PyTorch's gate order (i, f, g, o); state ``(h, c)``.

Its kernels, forward beside VJP, and the cell (NOTE [kernel layout] in _gated.py).
"""

from __future__ import annotations

import numpy as np

from ..cell import Cell
from . import _gated
from ._gated import Gated, Residuals, State, _Weights

__all__ = ["LSTM", "lstm"]

# --------------------------------------------------------------------------------------
# LSTM, gates (i, f, g, o):  i,f,o = σ(·), g = tanh(·);  c' = f⊙c + i⊙g;  h' = o⊙tanh(c')
# residuals: (h_prev, c_prev, gates=[i f g o] after activation, c'); c_prev links to the
# previous step's c' (NOTE [linked steps]), and tanh(c') is recomputed going backward: one
# tanh per step buys one B·H array less per step


def _gates(w: _Weights, xp: np.ndarray, h: np.ndarray, out: np.ndarray) -> np.ndarray:
    w.matmul(h, w.W_hhT, out=out)  # (4, B, H)
    out += xp
    # NOTE [one tanh for all gates] σ(z) = 0.5·tanh(z/2) + 0.5, so the σ gates (i, f, o)
    # and the tanh gate (g) take one tanh over all four blocks, between per-gate
    # scalings (by 0.5, or by 1 on g) and a shift (0.5, or 0 on g). Bitwise the same
    # as `_sigmoid`, since scaling by 0.5 is exact, and no per-gate work.
    out *= w.half
    np.tanh(out, out=out)
    out *= w.half
    out += w.shift
    return out


def _new_c(gates: np.ndarray, c: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    i, f, g, _ = gates
    c_new = np.multiply(f, c, out=out)
    c_new += i * g
    return c_new


def _step(cell: LSTM, w: _Weights, xp: np.ndarray, state: State) -> State:
    h, c = state
    if w.fused is not None:
        gates = w.matmul(h, w.W_hhT)  # (4, B, H), activated in place
        h_new, c_new = np.empty_like(h), np.empty_like(c)
        w.fused.lstm_forward(gates, *xp, c, c_new, h_new)
        return (h_new, c_new)
    gates = _gates(w, xp, h, np.empty((4,) + h.shape, h.dtype))
    c_new = _new_c(gates, c)
    h_new = np.tanh(c_new)
    h_new *= gates[3]
    return (h_new, c_new)


def _record(cell: LSTM, w: _Weights, xp: np.ndarray, state: State,
                 res: Residuals) -> State:
    h, c = state
    _, _, gates, c_new = res
    if w.fused is not None:
        w.matmul(h, w.W_hhT, out=gates)
        h_new = np.empty_like(h)
        w.fused.lstm_forward(gates, *xp, c, c_new, h_new)
        return (h_new, c_new)
    _gates(w, xp, h, gates)
    # c' is written into the residual and is the new state's c: states are never mutated
    _new_c(gates, c, out=c_new)
    return (_output(cell, res), c_new)


def _output(cell: LSTM, res: Residuals, out: np.ndarray | None = None) -> np.ndarray:
    fused = _gated.fused_kernels() if cell.uses_fused(res[3].dtype) else None
    if fused is not None:  # the forward's own tanh (NOTE [fused float32 LSTM])
        h = np.empty_like(res[3]) if out is None else out
        fused.lstm_output(res[3], res[2][3], h)
        return h
    h = np.tanh(res[3], out=out)  # h' = o ⊙ tanh(c')
    h *= res[2][3]
    return h


def _vjp(cell: LSTM, w: _Weights, res: Residuals, dstate: State, dxp: np.ndarray,
         dhp: np.ndarray) -> State:
    dpre = dxp  # (4, B, H): the gates' pre-activations, dhp the same array
    h_prev, c_prev, gates, c = res
    dh, dc = dstate
    if w.fused is not None:
        dc_prev, dh_prev = np.empty_like(c), np.empty_like(c)
        w.fused.lstm_vjp(c_prev, gates, c, dh, dc, *dpre, dc_prev)
        w.fused.sum_gates(w.matmul(dpre, w.W_hh), dh_prev)
        return (dh_prev, dc_prev)
    i, f, g, o = gates
    tanh_c = np.tanh(c)  # (B, H)
    # dL/dc' through h' and through the next step: dc + dh ⊙ o ⊙ (1 - tanh²c')
    dc_total = np.multiply(tanh_c, tanh_c)  # (B, H)
    np.subtract(1.0, dc_total, out=dc_total)
    dc_total *= o
    dc_total *= dh
    dc_total += dc
    # dpre (4, B, H), the gradient w.r.t. the gate pre-activations (dhp is dpre):
    # what reaches each gate's output (di = dc⊙g, df = dc⊙c_prev, dg = dc⊙i, do = dh⊙tanh c')
    np.multiply(dc_total, g, out=dpre[0])
    np.multiply(dc_total, c_prev, out=dpre[1])
    np.multiply(dc_total, i, out=dpre[2])
    np.multiply(dh, tanh_c, out=dpre[3])
    # times every gate's activation derivative, on all blocks at once:
    # σ' = σ·(1 - σ) on i, f, o and tanh' = g·(0 - g) + 1 on g (NOTE [one tanh for all gates])
    assert w.on_sigma is not None and w.on_tanh is not None  # an LSTM's gate constants
    slope = np.subtract(w.on_sigma, gates)  # (4, B, H)
    slope *= gates
    slope += w.on_tanh
    dpre *= slope
    dc_total *= f
    return (w.matmul(dpre, w.W_hh).sum(axis=0), dc_total)




class LSTM(Gated):
    """Build with `lstm`."""

    kind = "lstm"
    n_gates = 4
    state_names = ("h", "c")
    residual_names = ("h_prev", "c_prev", "gates", "c")
    residual_widths = (1, 1, 4, 1)
    links = (None, 3)
    sigma_gates = (1, 1, 0, 1)

    def __init__(self, n_in: int, n_hidden: int, fused: bool = True) -> None:
        if not isinstance(fused, bool):
            raise TypeError(f"lstm(fused={fused!r}): fused must be True or False")
        super().__init__(n_in, n_hidden)
        self.fused = fused

    def _key(self) -> tuple:
        return super()._key() + (self.fused,)

    def __repr__(self) -> str:
        return f"lstm(n_in={self.n_in}, n_hidden={self.n_hidden}, fused={self.fused})"

    def uses_fused(self, dtype: np.dtype | type | str) -> bool:
        """Whether this cell's steps in `dtype` run on the compiled kernels (NOTE [fused
        float32 LSTM] in _gated.py): float32, numba installed, and neither
        ``fused=False`` nor BPTT_MEMORY_FUSED=0.

        >>> lstm(3, 4).uses_fused("float64"), lstm(3, 4, fused=False).uses_fused("float32")
        (False, False)
        """
        return _gated.FUSED and self.fused and np.dtype(dtype) == np.float32

    _step = _step
    _record = _record
    _output = _output
    _vjp = _vjp


def lstm(n_in: int, n_hidden: int, fused: bool = True, num_layers: int = 1) -> Cell:
    """LSTM cell with PyTorch's gate order (i, f, g, o); state ``(h, c)``.

    Stores 7·B·H numbers per recorded step (h_prev, c_prev, four gates, c'), 6·B·H when
    the step before is still recorded (c_prev is its c'), against 2·B·H per state:
    residuals cost 3 to 3.5 states, which is why mixing the two kinds of storage
    (``optimal``) pays off.

    Args:
        fused: run float32 steps' elementwise work in compiled kernels when numba is
            installed, with a tanh within 7 ulp instead of numpy's (NOTE [fused float32
            LSTM] in _gated.py); False keeps numpy's kernels. float64 always runs numpy's.
        num_layers: L > 1 stacks L cells like ``torch.nn.LSTM(num_layers=L)``: parameters
            ``weight_ih_l0``, …, state (h, c) each (L, B, H); no dropout between layers.

    >>> lstm(3, 4).residual_bytes(batch=2, dtype="float64")
    448
    """
    from .stack import layers

    return layers(lambda i: LSTM(i, n_hidden, fused), n_in, n_hidden, num_layers, "lstm")


#: Registered in `bptt_memory.CELLS` under this name.
CELLS = {"lstm": lstm}
