"""Recurrent cells with PyTorch's exact equations, each forward step beside its VJP.

A cell maps the state entering step t to the state leaving it. It can run a step
cheaply (new state only) or *record* it: keep the residuals that the step's
vector-Jacobian product needs, so the step can later be reversed without being
recomputed. What a recorded step keeps is exactly what BPTT must store: activations
and the entering state, never the weights.

The input projection x·W_ihᵀ (+ biases) does not depend on the state, so strategies
compute it for many steps in one matrix product and hand the cells one row block per
step (`xp`). Its gradient comes back from `vjp` as `dxp` and is turned into weight
gradients by the caller, again in one matrix product.

References: PyTorch `torch.nn.RNN`, `torch.nn.LSTM`, `torch.nn.GRU` documentation
(equations and gate order); Hochreiter & Schmidhuber 1997; Cho et al. 2014.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple

import numpy as np

__all__ = ["Cell", "vanilla", "lstm", "gru", "ACTIVATIONS"]

State = tuple[np.ndarray, ...]
Residuals = tuple[np.ndarray, ...]
Params = dict[str, np.ndarray]


def _sigmoid(z: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    # Written as 0.5·(1 + tanh(z/2)): exact, and never overflows for large |z|.
    out = np.multiply(z, 0.5, out=out)
    np.tanh(out, out=out)
    out += 1.0
    out *= 0.5
    return out


# --------------------------------------------------------------------------------------
# vanilla: h' = act(x·W_ihᵀ + b_ih + h·W_hhᵀ + b_hh)
# residuals: (h_prev, h')  -- act'(z) is read off the output h' for all three activations


def _act_tanh(z: np.ndarray) -> np.ndarray:
    return np.tanh(z, out=z)


def _dact_tanh(h: np.ndarray, dh: np.ndarray) -> np.ndarray:
    return dh * (1.0 - h * h)  # tanh' = 1 - tanh²


def _act_sigmoid(z: np.ndarray) -> np.ndarray:
    return _sigmoid(z, out=z)


def _dact_sigmoid(h: np.ndarray, dh: np.ndarray) -> np.ndarray:
    return dh * h * (1.0 - h)  # σ' = σ(1 - σ)


def _act_relu(z: np.ndarray) -> np.ndarray:
    return np.maximum(z, 0.0, out=z)


def _dact_relu(h: np.ndarray, dh: np.ndarray) -> np.ndarray:
    return dh * (h > 0.0)  # PyTorch's convention: relu'(0) = 0


ACTIVATIONS: dict[str, tuple[Callable, Callable]] = {
    "tanh": (_act_tanh, _dact_tanh),
    "sigmoid": (_act_sigmoid, _dact_sigmoid),
    "relu": (_act_relu, _dact_relu),
}


def _vanilla_forward(cell: Cell, p: Params, xp: np.ndarray, h: np.ndarray,
                     out: np.ndarray) -> np.ndarray:
    np.matmul(h, p["weight_hh"].T, out=out)  # (B, H)
    out += xp
    return ACTIVATIONS[cell.activation][0](out)


def _vanilla_step(cell: Cell, p: Params, xp: np.ndarray, state: State) -> State:
    return (_vanilla_forward(cell, p, xp, state[0], np.empty_like(state[0])),)


def _vanilla_record(cell: Cell, p: Params, xp: np.ndarray, state: State,
                    res: Residuals) -> State:
    h_prev, h_new = res
    np.copyto(h_prev, state[0])
    # The new state shares memory with the residual h': states are never mutated.
    return (_vanilla_forward(cell, p, xp, h_prev, h_new),)


def _vanilla_output(cell: Cell, res: Residuals) -> np.ndarray:
    return res[1]


def _vanilla_vjp(cell: Cell, p: Params, res: Residuals, dstate: State,
                 grads: Params) -> tuple[State, np.ndarray]:
    h_prev, h = res
    dz = ACTIVATIONS[cell.activation][1](h, dstate[0])  # (B, H)
    grads["weight_hh"] += dz.T @ h_prev
    grads["bias_hh"] += dz.sum(axis=0)
    return (dz @ p["weight_hh"],), dz


# --------------------------------------------------------------------------------------
# LSTM, gates (i, f, g, o):  i,f,o = σ(·), g = tanh(·);  c' = f⊙c + i⊙g;  h' = o⊙tanh(c')
# residuals: (h_prev, c_prev, gates=[i f g o] after activation, tanh(c'))


def _lstm_gates(p: Params, xp: np.ndarray, h: np.ndarray, out: np.ndarray) -> np.ndarray:
    H = h.shape[1]
    np.matmul(h, p["weight_hh"].T, out=out)  # (B, 4H)
    out += xp
    _sigmoid(out[:, : 2 * H], out=out[:, : 2 * H])
    np.tanh(out[:, 2 * H : 3 * H], out=out[:, 2 * H : 3 * H])
    _sigmoid(out[:, 3 * H :], out=out[:, 3 * H :])
    return out


def _lstm_new_c(gates: np.ndarray, c: np.ndarray) -> np.ndarray:
    H = c.shape[1]
    i, f, g = gates[:, :H], gates[:, H : 2 * H], gates[:, 2 * H : 3 * H]
    c_new = f * c
    c_new += i * g
    return c_new


def _lstm_step(cell: Cell, p: Params, xp: np.ndarray, state: State) -> State:
    h, c = state
    H = h.shape[1]
    gates = _lstm_gates(p, xp, h, np.empty_like(xp))
    c_new = _lstm_new_c(gates, c)
    h_new = np.tanh(c_new)
    h_new *= gates[:, 3 * H :]
    return (h_new, c_new)


def _lstm_record(cell: Cell, p: Params, xp: np.ndarray, state: State,
                 res: Residuals) -> State:
    h, c = state
    h_prev, c_prev, gates, tanh_c = res
    np.copyto(h_prev, h)
    np.copyto(c_prev, c)
    _lstm_gates(p, xp, h, gates)
    c_new = _lstm_new_c(gates, c)
    np.tanh(c_new, out=tanh_c)
    return (_lstm_output(cell, res), c_new)


def _lstm_output(cell: Cell, res: Residuals) -> np.ndarray:
    H = cell.n_hidden
    return res[2][:, 3 * H :] * res[3]  # h' = o ⊙ tanh(c')


def _lstm_vjp(cell: Cell, p: Params, res: Residuals, dstate: State,
              grads: Params) -> tuple[State, np.ndarray]:
    h_prev, c_prev, gates, tanh_c = res
    dh, dc = dstate
    H = cell.n_hidden
    i, f, g, o = (gates[:, k * H : (k + 1) * H] for k in range(4))
    dpre = np.empty_like(gates)  # (B, 4H): gradient w.r.t. the gate pre-activations
    dc_total = dh * o
    dc_total *= 1.0 - tanh_c * tanh_c
    dc_total += dc  # dL/dc' through h' and through the next step
    # o: do = dh ⊙ tanh(c'), times σ'
    np.multiply(dh, tanh_c, out=dpre[:, 3 * H :])
    dpre[:, 3 * H :] *= o * (1.0 - o)
    # i: di = dc ⊙ g;  f: df = dc ⊙ c_prev;  g: dg = dc ⊙ i
    np.multiply(dc_total, g, out=dpre[:, :H])
    dpre[:, :H] *= i * (1.0 - i)
    np.multiply(dc_total, c_prev, out=dpre[:, H : 2 * H])
    dpre[:, H : 2 * H] *= f * (1.0 - f)
    np.multiply(dc_total, i, out=dpre[:, 2 * H : 3 * H])
    dpre[:, 2 * H : 3 * H] *= 1.0 - g * g
    grads["weight_hh"] += dpre.T @ h_prev
    grads["bias_hh"] += dpre.sum(axis=0)
    dc_total *= f
    return (dpre @ p["weight_hh"], dc_total), dpre


# --------------------------------------------------------------------------------------
# GRU, gates (r, z, n):  r,z = σ(W_i·x + b_i + W_h·h + b_h);
# n = tanh(W_in·x + b_in + r⊙(W_hn·h + b_hn));  h' = (1 - z)⊙n + z⊙h
# xp holds only x·W_ihᵀ + b_ih: b_hn sits inside the reset gate's product.
# residuals: (h_prev, gates=[r z n] after activation, W_hn·h + b_hn)


def _gru_forward(p: Params, xp: np.ndarray, h: np.ndarray, gates: np.ndarray,
                 hn: np.ndarray) -> np.ndarray:
    H = h.shape[1]
    hp = h @ p["weight_hh"].T  # (B, 3H)
    hp += p["bias_hh"]
    np.add(xp[:, : 2 * H], hp[:, : 2 * H], out=gates[:, : 2 * H])
    _sigmoid(gates[:, : 2 * H], out=gates[:, : 2 * H])
    np.copyto(hn, hp[:, 2 * H :])
    n = gates[:, 2 * H :]
    np.multiply(gates[:, :H], hn, out=n)
    n += xp[:, 2 * H :]
    np.tanh(n, out=n)
    return _gru_new_h(gates, h)


def _gru_new_h(gates: np.ndarray, h: np.ndarray) -> np.ndarray:
    H = h.shape[1]
    z, n = gates[:, H : 2 * H], gates[:, 2 * H :]
    h_new = h - n  # h' = n + z ⊙ (h - n)
    h_new *= z
    h_new += n
    return h_new


def _gru_step(cell: Cell, p: Params, xp: np.ndarray, state: State) -> State:
    (h,) = state
    B, H = h.shape
    return (_gru_forward(p, xp, h, np.empty((B, 3 * H), h.dtype), np.empty_like(h)),)


def _gru_record(cell: Cell, p: Params, xp: np.ndarray, state: State,
                res: Residuals) -> State:
    h_prev, gates, hn = res
    np.copyto(h_prev, state[0])
    return (_gru_forward(p, xp, h_prev, gates, hn),)


def _gru_output(cell: Cell, res: Residuals) -> np.ndarray:
    return _gru_new_h(res[1], res[0])


def _gru_vjp(cell: Cell, p: Params, res: Residuals, dstate: State,
             grads: Params) -> tuple[State, np.ndarray]:
    h_prev, gates, hn = res
    (dh,) = dstate
    H = cell.n_hidden
    r, z, n = gates[:, :H], gates[:, H : 2 * H], gates[:, 2 * H :]
    dxp = np.empty_like(gates)  # (B, 3H): gradient w.r.t. x·W_ihᵀ + b_ih
    dn_pre = dxp[:, 2 * H :]
    np.multiply(dh, 1.0 - z, out=dn_pre)
    dn_pre *= 1.0 - n * n
    np.multiply(dh, h_prev - n, out=dxp[:, H : 2 * H])  # dz
    dxp[:, H : 2 * H] *= z * (1.0 - z)
    np.multiply(dn_pre, hn, out=dxp[:, :H])  # dr
    dxp[:, :H] *= r * (1.0 - r)
    dhp = dxp.copy()  # gradient w.r.t. h·W_hhᵀ + b_hh: same for r and z, r ⊙ dn for n
    dhp[:, 2 * H :] *= r
    grads["weight_hh"] += dhp.T @ h_prev
    grads["bias_hh"] += dhp.sum(axis=0)
    dh_prev = dhp @ p["weight_hh"]
    dh_prev += dh * z
    return (dh_prev,), dxp


# --------------------------------------------------------------------------------------


class _Kernels(NamedTuple):
    n_gates: int
    state_names: tuple[str, ...]
    residual_widths: tuple[int, ...]  # in units of H, one per residual array
    residual_names: tuple[str, ...]
    bias_hh_in_projection: bool  # False only for GRU, whose b_hn is gated by r
    step: Callable
    record: Callable
    output: Callable
    vjp: Callable


_KERNELS: dict[str, _Kernels] = {
    "vanilla": _Kernels(1, ("h",), (1, 1), ("h_prev", "h"), True,
                        _vanilla_step, _vanilla_record, _vanilla_output, _vanilla_vjp),
    "lstm": _Kernels(4, ("h", "c"), (1, 1, 4, 1), ("h_prev", "c_prev", "gates", "tanh_c"),
                     True, _lstm_step, _lstm_record, _lstm_output, _lstm_vjp),
    "gru": _Kernels(3, ("h",), (1, 3, 1), ("h_prev", "gates", "hn"), False,
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

    def __post_init__(self) -> None:
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

    @property
    def state_names(self) -> tuple[str, ...]:
        """Names of the state components: ``("h",)`` or ``("h", "c")``."""
        return self._k.state_names

    @property
    def residual_names(self) -> tuple[str, ...]:
        """Names of the arrays a recorded step keeps for its VJP."""
        return self._k.residual_names

    def residual_shapes(self, batch: int) -> tuple[tuple[int, int], ...]:
        """Shapes of the arrays a recorded step keeps, one per residual."""
        return tuple((batch, w * self.n_hidden) for w in self._k.residual_widths)

    def state_bytes(self, batch: int, dtype: np.dtype | type) -> int:
        """Bytes of one stored state: len(state_names) arrays of shape (B, H)."""
        return len(self.state_names) * batch * self.n_hidden * np.dtype(dtype).itemsize

    def residual_bytes(self, batch: int, dtype: np.dtype | type) -> int:
        """Bytes one recorded step keeps: vanilla 2·B·H, LSTM 7·B·H, GRU 5·B·H items."""
        return sum(self._k.residual_widths) * batch * self.n_hidden * np.dtype(dtype).itemsize

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        GH, H, I = self.n_gates * self.n_hidden, self.n_hidden, self.n_in
        return {"weight_ih": (GH, I), "weight_hh": (GH, H), "bias_ih": (GH,), "bias_hh": (GH,)}

    def project(self, params: Params, x: np.ndarray) -> np.ndarray:
        """x·W_ihᵀ + b_ih (+ b_hh where it is not gated) for any leading shape (..., I)."""
        xp = x @ params["weight_ih"].T  # (..., G·H)
        xp += params["bias_ih"]
        if self._k.bias_hh_in_projection:
            xp += params["bias_hh"]
        return xp

    def step(self, params: Params, xp: np.ndarray, state: State) -> State:
        """One plain step: the new state, nothing kept."""
        return self._k.step(self, params, xp, state)

    def new_residuals(self, batch: int, dtype: np.dtype | type) -> Residuals:
        return tuple(np.empty(s, dtype) for s in self.residual_shapes(batch))

    def record(self, params: Params, xp: np.ndarray, state: State, res: Residuals) -> State:
        """One step that fills `res` (from `new_residuals`) in place; returns the new state."""
        return self._k.record(self, params, xp, state, res)

    def output(self, res: Residuals) -> np.ndarray:
        """The hidden output h' of a recorded step, read off its residuals."""
        return self._k.output(self, res)

    def vjp(self, params: Params, res: Residuals, dstate: State,
            grads: Params) -> tuple[State, np.ndarray]:
        """Reverse one recorded step.

        Adds the step's contribution to ``grads["weight_hh"]`` and ``grads["bias_hh"]``
        (all of it, even where b_hh was folded into the projection) and returns
        (dL/dstate_prev, dL/dxp); the caller turns dxp into the gradients of
        ``weight_ih`` and ``bias_ih`` only.
        """
        return self._k.vjp(self, params, res, dstate, grads)


def _check_size(where: str, name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{where}: {name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{where}: {name} must be >= 1, got {value}")


def vanilla(n_in: int, n_hidden: int, activation: str = "tanh") -> Cell:
    """Elman cell h' = act(x·W_ihᵀ + b_ih + h·W_hhᵀ + b_hh), like ``torch.nn.RNN``.

    Stores 2·B·H numbers per recorded step (h_prev and h') against B·H per state.

    >>> vanilla(3, 4, activation="relu").param_shapes()["weight_hh"]
    (4, 4)
    """
    return Cell("vanilla", n_in, n_hidden, activation)


def lstm(n_in: int, n_hidden: int) -> Cell:
    """LSTM cell with PyTorch's gate order (i, f, g, o); state ``(h, c)``.

    Stores 7·B·H numbers per recorded step (h_prev, c_prev, four gates, tanh c')
    against 2·B·H per state: residuals cost 3.5 states, which is why mixing the
    two kinds of storage (``optimal``) pays off.

    >>> lstm(3, 4).residual_bytes(batch=2, dtype="float64")
    448
    """
    return Cell("lstm", n_in, n_hidden)


def gru(n_in: int, n_hidden: int) -> Cell:
    """GRU cell with PyTorch's gate order (r, z, n) and reset gate after the matmul.

    Stores 5·B·H numbers per recorded step (h_prev, three gates, W_hn·h + b_hn).

    >>> gru(3, 4).param_shapes()["bias_hh"]
    (12,)
    """
    return Cell("gru", n_in, n_hidden)
