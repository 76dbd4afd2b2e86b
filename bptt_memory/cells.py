"""Recurrent cells with PyTorch's exact equations, each forward step beside its VJP.

A cell maps the state entering step t to the state leaving it. It can run a step
cheaply (new state only) or *record* it: keep the residuals that the step's
vector-Jacobian product needs, so the step can later be reversed without being
recomputed. What a recorded step keeps is exactly what BPTT must store: activations
and the entering state, never the weights.

The input projection x·W_ihᵀ (+ biases) does not depend on the state, so strategies
compute it for many steps in one matrix product and hand the cells one block per step
(`xp`). Its gradient comes back from `vjp` as `dxp` and is turned into weight
gradients by the caller, again in one matrix product.

NOTE [kernel layout] Each kind has four kernels, forward beside VJP: `step` (new state
only), `record` (fills the step's residuals in place, all but the entering state: NOTE
[linked steps]), `output` (h' read off the residuals) and `vjp`. They work gate-major,
on (G, B, H) blocks (NOTE [gate-major layout]). They take the recurrent weights as
`_Weights`, so the executor can hand them row-major copies of the W_gᵀ blocks made once
per run (a plain product is faster than one through a transposed view) and gate
constants laid out like the gates, while the `Cell` methods pass views of the caller's
params. A `vjp` kernel writes dL/dxp and dL/d(h·W_hhᵀ + b_hh) into buffers the caller
owns (one buffer unless b_hh is gated, i.e. for all but GRU) and returns
dL/dstate_prev; the caller turns those rows into weight gradients, one step at a time
(`Cell.vjp`) or many steps per matrix product (the executor). Elementwise work is done
in place, on whole blocks where possible.

References: PyTorch `torch.nn.RNN`, `torch.nn.LSTM`, `torch.nn.GRU` documentation
(equations and gate order); Hochreiter & Schmidhuber 1997; Cho et al. 2014.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from dataclasses import dataclass
from types import ModuleType
from typing import Callable, NamedTuple

import numpy as np

__all__ = ["Cell", "vanilla", "lstm", "gru", "ACTIVATIONS"]

State = tuple[np.ndarray, ...]
Residuals = tuple[np.ndarray, ...]
Params = dict[str, np.ndarray]


class _Weights(NamedTuple):
    """The recurrent weights in the layouts the kernels multiply by, and gate constants
    (NOTE [gate-major layout])."""

    W_hhT: np.ndarray  # (G, H, H): block g is W_g ᵀ, W_g = weight_hh[g·H:(g+1)·H]; h·W_gᵀ
    W_hh: np.ndarray  # (G, H, H): block g is W_g; dL/dh = Σ_g dpre_g·W_g
    b_hh: np.ndarray  # (G, 1, H): added inside the step only where it is gated (GRU)
    # Per gate, (G, 1, 1) or (G, B, H), for a cell whose σ and tanh gates share a block (LSTM):
    on_sigma: np.ndarray | None  # 1 on σ gates, 0 on tanh's
    on_tanh: np.ndarray | None  # 1 - on_sigma
    half: np.ndarray | None  # 0.5 on σ gates, 1 on tanh's
    shift: np.ndarray | None  # 0.5 on σ gates, 0 on tanh's
    fused: ModuleType | None  # `_fused` where the steps run on it (`Cell.uses_fused`)


def _weights(cell: Cell, params: Params, batch: int | None = None,
             dtype: np.dtype | None = None) -> _Weights:
    """Views of params (`Cell` methods, which may see params change between calls); or,
    given the batch (the executor, once per run), the W_gᵀ blocks copied row-major and
    the gate constants as whole (G, B, H) blocks, so that the elementwise products need
    no broadcasting. The steps run on the compiled kernels where `Cell.uses_fused` says
    so for the params' dtype and for ``dtype``, the arrays' (the executor's are the
    params'; a `Cell` method's caller may mix them, and then gets numpy's kernels)."""
    G, H = cell.n_gates, cell.n_hidden
    W_hh = params["weight_hh"].reshape(G, H, H)
    W_hhT = W_hh.transpose(0, 2, 1)
    if batch is not None:
        W_hh, W_hhT = np.ascontiguousarray(W_hh), np.ascontiguousarray(W_hhT)
    consts: tuple = (None,) * 4
    sigma_gates = _KERNELS[cell.kind].sigma_gates
    if sigma_gates:
        on_sigma = np.array(sigma_gates, W_hh.dtype).reshape(G, 1, 1)
        if batch is not None:
            on_sigma = np.broadcast_to(on_sigma, (G, batch, H)).copy()
        consts = (on_sigma, 1.0 - on_sigma, 1.0 - 0.5 * on_sigma, 0.5 * on_sigma)
    same = dtype is None or dtype == W_hh.dtype
    fused = _fused_kernels() if same and cell.uses_fused(W_hh.dtype) else None
    return _Weights(W_hhT, W_hh, params["bias_hh"].reshape(G, 1, H), *consts, fused)


# NOTE [gate-major layout] A cell with G gates computes G blocks of pre-activations per
# step. The kernels keep them gate-major, (G, B, H): each gate's block is one contiguous
# (B, H) array, so every elementwise pass over a gate is a plain contiguous loop (numpy
# ran a product or a sum over a (B, H) column block of a (B, G·H) array 3× slower than
# over a contiguous one at B=32, H=128: it sets up a strided iteration for each), and
# the recurrent products are G (B, H)·(H, H) products in one batched matmul, which
# OpenBLAS ran 13–30% faster at H=128 than one (B, H)·(H, G·H) product, and within
# ±8% of it at H=512 (float32 and float64, forward and backward). The projections xp,
# their gradients dxp, and the stored gates are all (G, B, H) (vanilla's one gate is
# indexed off its (1, B, H) blocks); the public `Cell` methods take and return
# PyTorch's (B, G·H) layout and convert.


def _sigmoid(z: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    # Written as 0.5·(1 + tanh(z/2)): exact, and never overflows for large |z|.
    out = np.multiply(z, 0.5, out=out)
    np.tanh(out, out=out)
    out += 1.0
    out *= 0.5
    return out


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
    return _sigmoid(z, out=z)


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


def _vanilla_forward(cell: Cell, w: _Weights, xp: np.ndarray, h: np.ndarray,
                     out: np.ndarray) -> np.ndarray:
    np.matmul(h, w.W_hhT[0], out=out)  # (B, H); xp is (1, B, H)
    out += xp[0]
    return ACTIVATIONS[cell.activation][0](out)


def _vanilla_step(cell: Cell, w: _Weights, xp: np.ndarray, state: State) -> State:
    return (_vanilla_forward(cell, w, xp, state[0], np.empty_like(state[0])),)


def _vanilla_record(cell: Cell, w: _Weights, xp: np.ndarray, state: State,
                    res: Residuals) -> State:
    # The new state shares memory with the residual h' (states are never mutated), so
    # the next recorded step can link its h_prev to it (NOTE [linked steps]).
    return (_vanilla_forward(cell, w, xp, state[0], res[1]),)


def _vanilla_output(cell: Cell, res: Residuals, out: np.ndarray | None = None) -> np.ndarray:
    if out is None:
        return res[1]
    np.copyto(out, res[1])
    return out


def _vanilla_vjp(cell: Cell, w: _Weights, res: Residuals, dstate: State, dz: np.ndarray,
                 dhp: np.ndarray) -> State:
    h_prev, h = res
    dz = dz[0]  # (B, H) of (1, B, H); dhp is dz
    ACTIVATIONS[cell.activation][1](h, dstate[0], dz)
    return (np.matmul(dz, w.W_hh[0]),)


# --------------------------------------------------------------------------------------
# LSTM, gates (i, f, g, o):  i,f,o = σ(·), g = tanh(·);  c' = f⊙c + i⊙g;  h' = o⊙tanh(c')
# residuals: (h_prev, c_prev, gates=[i f g o] after activation, c'); c_prev links to the
# previous step's c' (NOTE [linked steps]), and tanh(c') is recomputed going backward: one
# tanh per step buys one B·H array less per step


def _lstm_gates(w: _Weights, xp: np.ndarray, h: np.ndarray, out: np.ndarray) -> np.ndarray:
    np.matmul(h, w.W_hhT, out=out)  # (4, B, H)
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


def _lstm_new_c(gates: np.ndarray, c: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    i, f, g, _ = gates
    c_new = np.multiply(f, c, out=out)
    c_new += i * g
    return c_new


# NOTE [fused float32 LSTM] With numba installed (``pip install bptt_memory[fast]``), a
# float32 LSTM step does its elementwise work in one compiled loop forward and one
# backward (`_fused`) instead of about thirty numpy calls; the matrix products stay the
# ones below. reports/speed_vs_torch measures both kernels side by side. The fused tanh
# is a rational approximation within 7 ulp, so float32 results differ from numpy's
# kernels in the last bits (tests/test_fused.py bounds how far) and are as
# deterministic. float64 always runs numpy's kernels: numba has no vectorised float64
# tanh, and the gradient tests hold float64 to 1e-12. ``lstm(..., fused=False)`` keeps
# one cell on numpy's kernels; BPTT_MEMORY_FUSED=0 in the environment, read at import,
# keeps every cell there.
_FUSED = os.environ.get("BPTT_MEMORY_FUSED", "1") != "0" and \
    importlib.util.find_spec("numba") is not None


def _fused_for(cell: Cell, c: np.ndarray) -> ModuleType | None:
    """The `_fused` kernels for a step whose c is `c`, or None for numpy's (the rule is
    `Cell.uses_fused`'s alone)."""
    return _fused_kernels() if cell.uses_fused(c.dtype) else None


@functools.cache
def _fused_kernels() -> ModuleType:
    """Import `_fused`, and numba with it, on the first float32 LSTM step."""
    try:
        from . import _fused
    except ImportError as e:
        raise ImportError(f"bptt_memory: numba is installed but its import failed ({e}); "
                          "set BPTT_MEMORY_FUSED=0 to run float32 LSTMs on numpy's "
                          "kernels instead") from e
    return _fused


def _lstm_step(cell: Cell, w: _Weights, xp: np.ndarray, state: State) -> State:
    h, c = state
    if w.fused is not None:
        gates = np.matmul(h, w.W_hhT)  # (4, B, H), activated in place
        h_new, c_new = np.empty_like(h), np.empty_like(c)
        w.fused.lstm_forward(gates, *xp, c, c_new, h_new)
        return (h_new, c_new)
    gates = _lstm_gates(w, xp, h, np.empty((4,) + h.shape, h.dtype))
    c_new = _lstm_new_c(gates, c)
    h_new = np.tanh(c_new)
    h_new *= gates[3]
    return (h_new, c_new)


def _lstm_record(cell: Cell, w: _Weights, xp: np.ndarray, state: State,
                 res: Residuals) -> State:
    h, c = state
    _, _, gates, c_new = res
    if w.fused is not None:
        np.matmul(h, w.W_hhT, out=gates)
        h_new = np.empty_like(h)
        w.fused.lstm_forward(gates, *xp, c, c_new, h_new)
        return (h_new, c_new)
    _lstm_gates(w, xp, h, gates)
    # c' is written into the residual and is the new state's c: states are never mutated
    _lstm_new_c(gates, c, out=c_new)
    return (_lstm_output(cell, res), c_new)


def _lstm_output(cell: Cell, res: Residuals, out: np.ndarray | None = None) -> np.ndarray:
    fused = _fused_for(cell, res[3])
    if fused is not None:  # the forward's own tanh (NOTE [fused float32 LSTM])
        h = np.empty_like(res[3]) if out is None else out
        fused.lstm_output(res[3], res[2][3], h)
        return h
    h = np.tanh(res[3], out=out)  # h' = o ⊙ tanh(c')
    h *= res[2][3]
    return h


def _lstm_vjp(cell: Cell, w: _Weights, res: Residuals, dstate: State, dpre: np.ndarray,
              dhp: np.ndarray) -> State:
    h_prev, c_prev, gates, c = res
    dh, dc = dstate
    if w.fused is not None:
        dc_prev, dh_prev = np.empty_like(c), np.empty_like(c)
        w.fused.lstm_vjp(c_prev, gates, c, dh, dc, *dpre, dc_prev)
        w.fused.sum_gates(np.matmul(dpre, w.W_hh), dh_prev)
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
    slope = np.subtract(w.on_sigma, gates)  # (4, B, H)
    slope *= gates
    slope += w.on_tanh
    dpre *= slope
    dc_total *= f
    return (np.matmul(dpre, w.W_hh).sum(axis=0), dc_total)


# --------------------------------------------------------------------------------------
# GRU, gates (r, z, n):  r,z = σ(W_i·x + b_i + W_h·h + b_h);
# n = tanh(W_in·x + b_in + r⊙(W_hn·h + b_hn));  h' = (1 - z)⊙n + z⊙h
# xp holds only x·W_ihᵀ + b_ih: b_hn sits inside the reset gate's product.
# residuals: (h_prev, gates=[r z n] after activation, W_hn·h + b_hn)


def _gru_forward(w: _Weights, xp: np.ndarray, h: np.ndarray, gates: np.ndarray,
                 hn: np.ndarray) -> np.ndarray:
    hp = np.matmul(h, w.W_hhT)  # (3, B, H)
    hp += w.b_hh
    rz = gates[:2]
    np.add(xp[:2], hp[:2], out=rz)
    _sigmoid(rz, out=rz)
    np.copyto(hn, hp[2])
    n = gates[2]
    np.multiply(gates[0], hn, out=n)
    n += xp[2]
    np.tanh(n, out=n)
    return _gru_new_h(gates, h)


def _gru_new_h(gates: np.ndarray, h: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    z, n = gates[1], gates[2]
    h_new = np.subtract(h, n, out=out)  # h' = n + z ⊙ (h - n)
    h_new *= z
    h_new += n
    return h_new


def _gru_step(cell: Cell, w: _Weights, xp: np.ndarray, state: State) -> State:
    (h,) = state
    return (_gru_forward(w, xp, h, np.empty((3,) + h.shape, h.dtype), np.empty_like(h)),)


def _gru_record(cell: Cell, w: _Weights, xp: np.ndarray, state: State,
                res: Residuals) -> State:
    _, gates, hn = res
    return (_gru_forward(w, xp, state[0], gates, hn),)


def _gru_output(cell: Cell, res: Residuals, out: np.ndarray | None = None) -> np.ndarray:
    return _gru_new_h(res[1], res[0], out)


def _gru_vjp(cell: Cell, w: _Weights, res: Residuals, dstate: State, dxp: np.ndarray,
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
    dh_prev = np.matmul(dhp, w.W_hh).sum(axis=0)
    np.multiply(dh, z, out=dh_z)
    dh_prev += dh_z
    return (dh_prev,)


# --------------------------------------------------------------------------------------


# NOTE [linked steps] A recorded step's first residuals are the state entering it
# (h_prev, and c_prev for an LSTM): a reversal then needs nothing but its own residuals.
# But the entering state is the previous step's new state, and where a cell keeps that in
# its own residuals (vanilla's h', LSTM's c'), a step recorded while the previous step's
# residuals are still held *links* to those arrays instead of copying them: full() keeps
# h once per step, not twice. Steps are reversed last first, so a linked step always
# dies before the step it links to. `Cell.link_bytes` is what a linked step saves;
# `simulate` and the executor apply the same rule, so peak_bytes stays exact. The kernels
# never write the entering-state slots: their callers fill them (`Cell.enter`).


class _Kernels(NamedTuple):
    n_gates: int
    state_names: tuple[str, ...]
    residual_widths: tuple[int, ...]  # (B, H) blocks per residual array (gates: G)
    residual_names: tuple[str, ...]  # the first len(state_names) are the entering state
    links: tuple[int | None, ...]  # per state component: the residual holding the new one
    bias_hh_in_projection: bool  # False only for GRU, whose b_hn is gated by r
    sigma_gates: tuple[int, ...] | None  # LSTM: 1 per σ gate, 0 per tanh gate, in order
    # xp, dxp, dhp and the gates are (G, B, H) (NOTE [gate-major layout])
    step: Callable  # (cell, w, xp, state) -> state'
    record: Callable  # (cell, w, xp, state, res) -> state', res filled in place
    output: Callable  # (cell, res, out=None) -> h'
    vjp: Callable  # (cell, w, res, dstate, dxp, dhp) -> dstate_prev; dxp, dhp filled


_KERNELS: dict[str, _Kernels] = {
    "vanilla": _Kernels(1, ("h",), (1, 1), ("h_prev", "h"), (1,), True,
                        None, _vanilla_step, _vanilla_record, _vanilla_output, _vanilla_vjp),
    "lstm": _Kernels(4, ("h", "c"), (1, 1, 4, 1), ("h_prev", "c_prev", "gates", "c"),
                     (None, 3), True, (1, 1, 0, 1),
                     _lstm_step, _lstm_record, _lstm_output, _lstm_vjp),
    "gru": _Kernels(3, ("h",), (1, 3, 1), ("h_prev", "gates", "hn"), (None,), False, None,
                    _gru_step, _gru_record, _gru_output, _gru_vjp),
}


@dataclass(frozen=True)
class Cell:
    """One recurrent cell: its sizes, its kind, and its step/VJP kernels.

    Build it with `vanilla`, `lstm` or `gru`. Parameter names and shapes follow
    PyTorch's single-layer modules: ``weight_ih`` (G·H, I), ``weight_hh`` (G·H, H),
    ``bias_ih`` and ``bias_hh`` (G·H,), gate blocks stacked in PyTorch's order.
    """

    kind: str
    n_in: int
    n_hidden: int
    activation: str = "tanh"
    fused: bool = True  # float32 LSTM steps on `_fused`'s kernels where numba is installed

    def __post_init__(self) -> None:
        if not isinstance(self.fused, bool):
            raise TypeError(f"{self.kind}(fused={self.fused!r}): fused must be True or False")
        _check_size(f"{self.kind}(n_in=...)", "n_in", self.n_in)
        _check_size(f"{self.kind}(n_hidden=...)", "n_hidden", self.n_hidden)
        if self.kind not in _KERNELS:
            raise ValueError(f"Cell(kind={self.kind!r}): unknown kind; use one of {sorted(_KERNELS)}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(
                f"{self.kind}(activation={self.activation!r}): unknown activation; "
                f"use one of {sorted(ACTIVATIONS)}"
            )
        if self.kind != "vanilla" and self.activation != "tanh":
            raise ValueError(
                f"{self.kind}(activation={self.activation!r}): the activation is fixed by the "
                "cell's equations; only vanilla takes one"
            )

    @property
    def _k(self) -> _Kernels:
        return _KERNELS[self.kind]

    @property
    def n_gates(self) -> int:
        return self._k.n_gates

    def uses_fused(self, dtype: np.dtype | type | str) -> bool:
        """Whether this cell's steps in `dtype` run on the compiled kernels (NOTE [fused
        float32 LSTM]): float32 LSTM steps, numba installed, and neither ``fused=False``
        nor BPTT_MEMORY_FUSED=0.

        >>> lstm(3, 4).uses_fused("float64"), lstm(3, 4, fused=False).uses_fused("float32")
        (False, False)
        """
        return _FUSED and self.fused and self.kind == "lstm" and np.dtype(dtype) == np.float32

    @property
    def state_names(self) -> tuple[str, ...]:
        """Names of the state components: ``("h",)`` or ``("h", "c")``."""
        return self._k.state_names

    @property
    def residual_names(self) -> tuple[str, ...]:
        """Names of the arrays a recorded step keeps for its VJP."""
        return self._k.residual_names

    def residual_shapes(self, batch: int) -> tuple[tuple[int, ...], ...]:
        """Shapes of the arrays a recorded step keeps, one per residual: (B, H), or
        (G, B, H) for the gates (NOTE [gate-major layout])."""
        return _shapes(self._k.residual_widths, (batch, self.n_hidden))

    def state_bytes(self, batch: int, dtype: np.dtype | type) -> int:
        """Bytes of one stored state: len(state_names) arrays of shape (B, H)."""
        return len(self.state_names) * batch * self.n_hidden * np.dtype(dtype).itemsize

    def residual_bytes(self, batch: int, dtype: np.dtype | type) -> int:
        """Bytes one recorded step keeps on its own: vanilla 2·B·H, LSTM 7·B·H, GRU 5·B·H
        items. A step linked to the previous one keeps `link_bytes` less."""
        return sum(self._k.residual_widths) * batch * self.n_hidden * np.dtype(dtype).itemsize

    def link_bytes(self, batch: int, dtype: np.dtype | type) -> int:
        """Bytes a recorded step shares with the previous step when that step's residuals
        are still held (NOTE [linked steps]): vanilla h_prev, LSTM c_prev (B·H items
        each); GRU none (its h' is not among its residuals)."""
        n = sum(j is not None for j in self._k.links)
        return n * batch * self.n_hidden * np.dtype(dtype).itemsize

    def sizes(self, batch: int, dtype: np.dtype | type) -> dict[str, int]:
        """state_bytes, residual_bytes and link_bytes as keywords, for `simulate` and
        the schedules: ``simulate(plan, **cell.sizes(B, dtype))``."""
        return {"state_bytes": self.state_bytes(batch, dtype),
                "residual_bytes": self.residual_bytes(batch, dtype),
                "link_bytes": self.link_bytes(batch, dtype)}

    def recorded_bytes(self, n_steps: int, batch: int, dtype: np.dtype | type) -> int:
        """Bytes held by n consecutive recorded steps: full()'s peak_bytes for n = T.

        >>> cell = vanilla(3, 4)   # 2·B·H for the first step, B·H for each linked one
        >>> cell.recorded_bytes(10, batch=2, dtype="float64") == (2 + 9) * 2 * 4 * 8
        True
        """
        _check_size("Cell.recorded_bytes", "n_steps", n_steps)
        return _run_bytes(n_steps, self.residual_bytes(batch, dtype), self.link_bytes(batch, dtype))

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        GH, H, I = self.n_gates * self.n_hidden, self.n_hidden, self.n_in
        return {"weight_ih": (GH, I), "weight_hh": (GH, H), "bias_ih": (GH,), "bias_hh": (GH,)}

    def project(self, params: Params, x: np.ndarray) -> np.ndarray:
        """x·W_ihᵀ + b_ih (+ b_hh where it is not gated) for any leading shape (..., I)."""
        xp = np.matmul(x, params["weight_ih"].T)  # (..., G·H)
        xp += params["bias_ih"]
        if self._k.bias_hh_in_projection:
            xp += params["bias_hh"]
        return xp

    def _gate_major(self, xp: np.ndarray) -> np.ndarray:
        """(B, G·H) -> a (G, B, H) view (NOTE [gate-major layout])."""
        return xp.reshape(xp.shape[0], self.n_gates, self.n_hidden).transpose(1, 0, 2)

    def step(self, params: Params, xp: np.ndarray, state: State) -> State:
        """One plain step from xp (B, G·H) (`project`): the new state, nothing kept."""
        return self._k.step(self, _weights(self, params, dtype=state[0].dtype),
                            self._gate_major(xp), state)

    def new_residuals(self, batch: int, dtype: np.dtype | type) -> Residuals:
        return tuple(np.empty(s, dtype) for s in self.residual_shapes(batch))

    def enter(self, state: State, previous: Residuals | None = None
              ) -> tuple[Residuals, tuple[np.ndarray, ...]]:
        """(res, owned): residual arrays for a step entering `state`, and those of them
        that are new.

        The entering-state slots hold a copy of `state`, except that, given `previous`
        (the residuals of the step just before, still held), a slot the cell links is
        that step's very array (NOTE [linked steps]); `owned` leaves those out.
        """
        k = self._k
        if len(state) != len(k.links):
            raise ValueError(f"{self.kind}.enter(state=...): expected {len(k.links)} arrays "
                             f"{self.state_names}, got {len(state)}")
        res, owned = [], []
        for s, link in zip(state, k.links):
            if previous is not None and link is not None:
                res.append(previous[link])
            else:
                a = s.copy()
                res.append(a)
                owned.append(a)
        B, dtype = state[0].shape[0], state[0].dtype
        for shape in _shapes(k.residual_widths[len(state):], (B, self.n_hidden)):
            a = np.empty(shape, dtype)
            res.append(a)
            owned.append(a)
        return tuple(res), tuple(owned)

    def record(self, params: Params, xp: np.ndarray, state: State, res: Residuals) -> State:
        """One step that fills `res` (from `new_residuals`) in place; returns the new state."""
        for slot, s in zip(res, state):  # the entering state (NOTE [linked steps])
            np.copyto(slot, s)
        return self._k.record(self, _weights(self, params, dtype=state[0].dtype),
                              self._gate_major(xp), state, res)

    def output(self, res: Residuals) -> np.ndarray:
        """The hidden output h' of a recorded step, read off its residuals."""
        return self._k.output(self, res)

    def vjp(self, params: Params, res: Residuals, dstate: State,
            grads: Params) -> tuple[State, np.ndarray]:
        """Reverse one recorded step.

        Adds the step's contribution to ``grads["weight_hh"]`` and ``grads["bias_hh"]``
        (all of it, even where b_hh was folded into the projection) and returns
        (dL/dstate_prev, dL/dxp), dxp (B, G·H) like `project`'s xp; the caller turns
        dxp into the gradients of ``weight_ih`` and ``bias_ih`` only.
        """
        k, G, H = self._k, self.n_gates, self.n_hidden
        B = res[0].shape[0]
        dxp = np.empty((G, B, H), res[0].dtype)
        dhp = dxp if k.bias_hh_in_projection else np.empty_like(dxp)
        dstate_prev = k.vjp(self, _weights(self, params, dtype=res[-1].dtype), res, dstate,
                            dxp, dhp)
        # res[0] is h_prev for every kind; block g of weight_hh's gradient is dhp_gᵀ·h_prev
        grads["weight_hh"] += np.matmul(dhp.transpose(0, 2, 1), res[0]).reshape(G * H, H)
        grads["bias_hh"] += dhp.sum(axis=1).reshape(G * H)
        return dstate_prev, dxp.transpose(1, 0, 2).reshape(B, G * H)


@functools.cache
def _shapes(widths: tuple[int, ...], bh: tuple[int, int]) -> tuple[tuple[int, ...], ...]:
    """Residual shapes for `residual_widths`: (B, H) for width 1, (G, B, H) for G.
    Cached: `Cell.enter` asks once per recorded step."""
    return tuple(bh if w == 1 else (w,) + bh for w in widths)


def _run_bytes(n_steps: int, residual_bytes: int, link_bytes: int) -> int:
    """Bytes of n steps recorded one after another: the first alone, the rest linked."""
    return residual_bytes + (n_steps - 1) * (residual_bytes - link_bytes)


def _check_size(where: str, name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{where}: {name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{where}: {name} must be >= 1, got {value}")


def vanilla(n_in: int, n_hidden: int, activation: str = "tanh") -> Cell:
    """Elman cell h' = act(x·W_ihᵀ + b_ih + h·W_hhᵀ + b_hh), like ``torch.nn.RNN``.

    Stores 2·B·H numbers per recorded step (h_prev and h') against B·H per state, B·H
    when the step before is still recorded (h_prev is its h').

    >>> vanilla(3, 4, activation="relu").param_shapes()["weight_hh"]
    (4, 4)
    """
    return Cell("vanilla", n_in, n_hidden, activation)


def lstm(n_in: int, n_hidden: int, fused: bool = True) -> Cell:
    """LSTM cell with PyTorch's gate order (i, f, g, o); state ``(h, c)``.

    Stores 7·B·H numbers per recorded step (h_prev, c_prev, four gates, c'), 6·B·H when
    the step before is still recorded (c_prev is its c'), against 2·B·H per state:
    residuals cost 3 to 3.5 states, which is why mixing the two kinds of storage
    (``optimal``) pays off.

    Args:
        fused: run float32 steps' elementwise work in compiled kernels when numba is
            installed, with a tanh within 7 ulp instead of numpy's (NOTE [fused float32
            LSTM]); False keeps numpy's kernels. float64 steps always run numpy's.

    >>> lstm(3, 4).residual_bytes(batch=2, dtype="float64")
    448
    """
    return Cell("lstm", n_in, n_hidden, fused=fused)


def gru(n_in: int, n_hidden: int) -> Cell:
    """GRU cell with PyTorch's gate order (r, z, n) and reset gate after the matmul.

    Stores 5·B·H numbers per recorded step (h_prev, three gates, W_hn·h + b_hn).

    >>> gru(3, 4).param_shapes()["bias_hh"]
    (12,)
    """
    return Cell("gru", n_in, n_hidden)
