"""The GRU cell with PyTorch's gate order (r, z, n) and the reset gate after the matmul.

Its kernels, forward beside VJP, and the cell (NOTE [kernel layout] in _gated.py).
"""

from __future__ import annotations

import numpy as np

from ..cell import Cell
from ._gated import Gated, Residuals, State, _Weights, sigmoid

__all__ = ["GRU", "gru"]

# --------------------------------------------------------------------------------------
# GRU, gates (r, z, n):  r,z = σ(W_i·x + b_i + W_h·h + b_h);
# n = tanh(W_in·x + b_in + r⊙(W_hn·h + b_hn));  h' = (1 - z)⊙n + z⊙h
# xp holds only x·W_ihᵀ + b_ih: b_hn sits inside the reset gate's product.
# residuals: (h_prev, gates=[r z n] after activation, W_hn·h + b_hn)


def _forward(w: _Weights, xp: np.ndarray, h: np.ndarray, gates: np.ndarray,
                 hn: np.ndarray) -> np.ndarray:
    hp = w.matmul(h, w.W_hhT)  # (3, B, H)
    hp += w.b_hh
    rz = gates[:2]
    np.add(xp[:2], hp[:2], out=rz)
    sigmoid(rz, out=rz)
    np.copyto(hn, hp[2])
    n = gates[2]
    np.multiply(gates[0], hn, out=n)
    n += xp[2]
    np.tanh(n, out=n)
    return _new_h(gates, h)


def _new_h(gates: np.ndarray, h: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    z, n = gates[1], gates[2]
    h_new = np.subtract(h, n, out=out)  # h' = n + z ⊙ (h - n)
    h_new *= z
    h_new += n
    return h_new


def _step(cell: GRU, w: _Weights, xp: np.ndarray, state: State) -> State:
    (h,) = state
    return (_forward(w, xp, h, np.empty((3,) + h.shape, h.dtype), np.empty_like(h)),)


def _record(cell: GRU, w: _Weights, xp: np.ndarray, state: State,
                res: Residuals) -> State:
    _, gates, hn = res
    return (_forward(w, xp, state[0], gates, hn),)


def _output(cell: GRU, res: Residuals, out: np.ndarray | None = None) -> np.ndarray:
    return _new_h(res[1], res[0], out)


def _vjp(cell: GRU, w: _Weights, res: Residuals, dstate: State, dxp: np.ndarray,
             dhp: np.ndarray) -> State:
    h_prev, gates, hn = res
    (dh,) = dstate
    r, z, n = gates
    slope = np.subtract(1.0, gates[:2])  # (2, B, H): σ' = σ(1 - σ) for r and z
    slope *= gates[:2]
    # dxp (3, B, H): gradient w.r.t. x·W_ihᵀ + b_ih
    dn = dxp[2]  # dh ⊙ (1 - z) ⊙ (1 - n²)
    np.multiply(n, n, out=dn)
    np.subtract(1.0, dn, out=dn)
    dh_z = np.subtract(1.0, z)  # (B, H)
    dh_z *= dh
    dn *= dh_z
    dz = dxp[1]  # dh ⊙ (h_prev - n) ⊙ σ'
    np.subtract(h_prev, n, out=dz)
    dz *= dh
    dz *= slope[1]
    np.multiply(dn, hn, out=dxp[0])  # dr
    dxp[0] *= slope[0]
    # dhp (3, B, H): gradient w.r.t. h·W_hhᵀ + b_hh: same for r and z, r ⊙ dn for n
    np.copyto(dhp[:2], dxp[:2])
    np.multiply(dn, r, out=dhp[2])
    dh_prev = w.matmul(dhp, w.W_hh).sum(axis=0)
    np.multiply(dh, z, out=dh_z)
    dh_prev += dh_z
    return (dh_prev,)




class GRU(Gated):
    """Build with `gru`."""

    kind = "gru"
    n_gates = 3
    state_names = ("h",)
    residual_names = ("h_prev", "gates", "hn")
    residual_widths = (1, 3, 1)
    links = (None,)
    bias_hh_in_projection = False

    _step = _step
    _record = _record
    _output = _output
    _vjp = _vjp


def gru(n_in: int, n_hidden: int, num_layers: int = 1) -> Cell:
    """GRU cell with PyTorch's gate order (r, z, n) and reset gate after the matmul.

    Stores 5·B·H numbers per recorded step (h_prev, three gates, W_hn·h + b_hn).

    Args:
        num_layers: L > 1 stacks L cells like ``torch.nn.GRU(num_layers=L)``: parameters
            ``weight_ih_l0``, …, state (L, B, H); no dropout between layers.

    >>> gru(3, 4).param_shapes()["bias_hh"]
    (12,)
    """
    from .stack import layers

    return layers(lambda i: GRU(i, n_hidden), n_in, n_hidden, num_layers, "gru")


#: Registered in `bptt_memory.CELLS` under this name.
CELLS = {"gru": gru}
