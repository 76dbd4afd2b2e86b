"""What the built-in cells share: PyTorch's one-layer layout and the executor's fast path.

The built-in cells (`vanilla`, `lstm`, `gru`) are protocol cells (`bptt_memory.Cell`)
with PyTorch's equations, parameter names and shapes: ``weight_ih`` (G·H, I),
``weight_hh`` (G·H, H), ``bias_ih`` and ``bias_hh`` (G·H,), gate blocks stacked in
PyTorch's order. Each kind is one module holding its four kernels, forward beside VJP:
`_step` (new state only), `_record` (fills the step's residuals in place, all but the
entering state: NOTE [linked steps]), `_output` (h' read off the residuals) and `_vjp`.

The kernels take a step's input projection x·W_ihᵀ (+ biases) rather than x: it does
not depend on the state, so `GatedKernels` (the built-ins' `Cell.kernels` hook) computes
it for a chunk of steps in one matrix product, and turns the VJPs' dL/dxp rows into
weight gradients in one product per window of steps (NOTE [chunked products] in
engine.py). The protocol methods (`step`, `record`, `vjp`) do the same one step at a time.

NOTE [kernel layout] The kernels work gate-major, on (G, B, H) blocks (NOTE [gate-major
layout]). They take the recurrent weights as `_Weights`, so `GatedKernels` can hand them
row-major copies of the W_gᵀ blocks made once per run (a plain product is faster than
one through a transposed view) and gate constants laid out like the gates, while the
protocol methods pass views of the caller's params. A `_vjp` kernel writes dL/dxp and
dL/d(h·W_hhᵀ + b_hh) into buffers the caller owns (one buffer unless b_hh is gated, i.e.
for all but GRU) and returns dL/dstate_prev. Elementwise work is done in place.

References: PyTorch `torch.nn.RNN`, `torch.nn.LSTM`, `torch.nn.GRU` documentation
(equations and gate order); Hochreiter & Schmidhuber 1997; Cho et al. 2014.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from types import ModuleType
from typing import Any, Callable, ClassVar, NamedTuple, Sequence

import numpy as np

from ..cell import Cell, Kernels, Params, State, check_size

__all__ = ["Gated", "GatedKernels"]

Residuals = tuple[np.ndarray, ...]


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
    fused: ModuleType | None  # `_fused` where the steps run on it (`Gated.uses_fused`)
    # every product of the kernels is made through it: np.matmul, or a Profile's timing
    # wrapper (`GatedKernels.route_products`)
    matmul: Callable[..., np.ndarray] = np.matmul


def _weights(cell: Gated, params: Params, batch: int | None = None,
             dtype: np.dtype | None = None) -> _Weights:
    """Views of params (the protocol methods, which may see params change between
    calls); or, given the batch (`GatedKernels`, once per run), the W_gᵀ blocks copied
    row-major and the gate constants as whole (G, B, H) blocks, so that the elementwise
    products need no broadcasting. The steps run on the compiled kernels where
    `uses_fused` says so for the params' dtype and for ``dtype``, the arrays' (a caller
    that mixes them gets numpy's kernels)."""
    G, H = cell.n_gates, cell.n_hidden
    W_hh = params["weight_hh"].reshape(G, H, H)
    W_hhT = W_hh.transpose(0, 2, 1)
    if batch is not None:
        W_hh, W_hhT = np.ascontiguousarray(W_hh), np.ascontiguousarray(W_hhT)
    on_sigma = on_tanh = half = shift = None
    if cell.sigma_gates:
        on_sigma = np.array(cell.sigma_gates, W_hh.dtype).reshape(G, 1, 1)
        if batch is not None:
            on_sigma = np.broadcast_to(on_sigma, (G, batch, H)).copy()
        on_tanh, half, shift = 1.0 - on_sigma, 1.0 - 0.5 * on_sigma, 0.5 * on_sigma
    same = dtype is None or dtype == W_hh.dtype
    fused = fused_kernels() if same and cell.uses_fused(W_hh.dtype) else None
    return _Weights(W_hhT, W_hh, params["bias_hh"].reshape(G, 1, H), on_sigma, on_tanh, half,
                    shift, fused)


# NOTE [gate-major layout] A cell with G gates computes G blocks of pre-activations per
# step. The kernels keep them gate-major, (G, B, H): each gate's block is one contiguous
# (B, H) array, so every elementwise pass over a gate is a plain contiguous loop (numpy
# sets up a strided iteration for a column block of a (B, G·H) array, which is several
# times slower), and the recurrent products are G (B, H)·(H, H) products in one batched
# matmul (reports/speed_vs_torch measures the kernels). The projections xp, their
# gradients dxp, and the stored gates are all (G, B, H) (vanilla's one gate is indexed
# off its (1, B, H) blocks); the protocol methods take x and give PyTorch's layouts.


def sigmoid(z: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """σ(z) written as 0.5·(1 + tanh(z/2)): exact, and never overflows for large |z|."""
    out = np.multiply(z, 0.5, out=out)
    np.tanh(out, out=out)
    out += 1.0
    out *= 0.5
    return out


# NOTE [fused float32 LSTM] With numba installed (``pip install bptt_memory[fast]``), a
# float32 LSTM step does its elementwise work in one compiled loop forward and one
# backward (`_fused`) instead of about thirty numpy calls; the matrix products stay
# numpy's. reports/speed_vs_torch measures both kernels side by side. The fused tanh is
# a rational approximation within 7 ulp, so float32 results differ from numpy's kernels
# in the last bits (tests/test_fused.py bounds how far) and are as deterministic.
# float64 always runs numpy's kernels: numba has no vectorised float64 tanh, and the
# gradient tests hold float64 to 1e-12. ``lstm(..., fused=False)`` keeps one cell on
# numpy's kernels; BPTT_MEMORY_FUSED=0 in the environment, read at import, keeps every
# cell there.
FUSED = os.environ.get("BPTT_MEMORY_FUSED", "1") != "0" and \
    importlib.util.find_spec("numba") is not None


@functools.cache
def fused_kernels() -> ModuleType:
    """Import `_fused`, and numba with it, on the first float32 LSTM step."""
    try:
        from .. import _fused
    except ImportError as e:
        raise ImportError(f"bptt_memory: numba is installed but its import failed ({e}); "
                          "set BPTT_MEMORY_FUSED=0 to run float32 LSTMs on numpy's "
                          "kernels instead") from e
    return _fused


# NOTE [linked steps] A recorded step's first residuals are the state entering it
# (h_prev, and c_prev for an LSTM): a reversal then needs nothing but its own residuals.
# But the entering state is the previous step's new state, and where a cell keeps that in
# its own residuals (vanilla's h', LSTM's c'), a step recorded while the previous step's
# residuals are still held *links* to those arrays instead of copying them: full() keeps
# h once per step, not twice. Steps are reversed last first, so a linked step always
# dies before the step it links to. `Cell.link_bytes` is what a linked step saves;
# `simulate` and the executor apply the same rule, so peak_bytes stays exact. The kernels
# never write the entering-state slots: their callers fill them (`Gated.enter`).


class Gated(Cell):
    """A built-in one-layer cell: sizes, layout constants and protocol methods over the
    kind's kernels. Abstract: each kind (one module) fills in the class constants and
    the four kernels."""

    kind: ClassVar[str]
    n_gates: ClassVar[int]
    state_names: ClassVar[tuple[str, ...]]
    residual_names: ClassVar[tuple[str, ...]]  # the first len(state_names) are the entering state
    residual_widths: ClassVar[tuple[int, ...]]  # (B, H) blocks per residual array (gates: G)
    links: ClassVar[tuple[int | None, ...]]  # per state component: the residual holding the new one
    bias_hh_in_projection: ClassVar[bool] = True  # False only for GRU, whose b_hn is gated by r
    sigma_gates: ClassVar[tuple[int, ...] | None] = None  # LSTM: 1 per σ gate, 0 per tanh gate

    def __init__(self, n_in: int, n_hidden: int) -> None:
        check_size(f"{self.kind}(n_in=...)", "n_in", n_in)
        check_size(f"{self.kind}(n_hidden=...)", "n_hidden", n_hidden)
        self._n_in, self.n_hidden = int(n_in), int(n_hidden)

    # value semantics: two cells of the same kind and sizes are the same cell
    def _key(self) -> tuple:
        return (self.kind, self._n_in, self.n_hidden)

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other._key() == self._key()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return f"{self.kind}(n_in={self._n_in}, n_hidden={self.n_hidden})"

    # -- the kind's kernels -------------------------------------------------------
    def _step(self, w: _Weights, xp: np.ndarray, state: State) -> State:
        raise NotImplementedError

    def _record(self, w: _Weights, xp: np.ndarray, state: State, res: Residuals) -> State:
        raise NotImplementedError

    def _output(self, res: Residuals, out: np.ndarray | None = None) -> np.ndarray:
        raise NotImplementedError

    def _vjp(self, w: _Weights, res: Residuals, dstate: State, dxp: np.ndarray,
             dhp: np.ndarray) -> State:
        raise NotImplementedError

    # -- the protocol ---------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.kind

    @property
    def n_in(self) -> int:
        return self._n_in

    @property
    def output_size(self) -> int:
        return self.n_hidden

    def uses_fused(self, dtype: np.dtype | type | str) -> bool:
        """Whether this cell's steps in `dtype` run on the compiled kernels (NOTE [fused
        float32 LSTM]): only float32 LSTMs do."""
        return False

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        GH, H, I = self.n_gates * self.n_hidden, self.n_hidden, self._n_in
        return {"weight_ih": (GH, I), "weight_hh": (GH, H), "bias_ih": (GH,), "bias_hh": (GH,)}

    def state_shapes(self, batch: int) -> tuple[tuple[int, ...], ...]:
        return ((batch, self.n_hidden),) * len(self.state_names)

    def residual_shapes(self, batch: int) -> tuple[tuple[int, ...], ...]:
        """One per residual: (B, H), or (G, B, H) for the gates (NOTE [gate-major layout])."""
        return _shapes(self.residual_widths, (batch, self.n_hidden))

    def link_bytes(self, batch: int, dtype: np.dtype | type) -> int:
        """Bytes a recorded step shares with the step before when both are held (NOTE
        [linked steps]): vanilla h_prev, LSTM c_prev; GRU none (its h' is not among
        its residuals)."""
        n = sum(j is not None for j in self.links)
        return n * batch * self.n_hidden * np.dtype(dtype).itemsize

    def project(self, params: Params, x: np.ndarray) -> np.ndarray:
        """x·W_ihᵀ + b_ih (+ b_hh where it is not gated) for any leading shape (..., I)."""
        xp = np.matmul(x, params["weight_ih"].T)  # (..., G·H)
        xp += params["bias_ih"]
        if self.bias_hh_in_projection:
            xp += params["bias_hh"]
        return xp

    def _gate_major(self, xp: np.ndarray) -> np.ndarray:
        """(B, G·H) -> a (G, B, H) view (NOTE [gate-major layout])."""
        return xp.reshape(xp.shape[0], self.n_gates, self.n_hidden).transpose(1, 0, 2)

    def step(self, params: Params, x: np.ndarray, state: State) -> State:
        w = _weights(self, params, dtype=state[0].dtype)
        return self._step(w, self._gate_major(self.project(params, x)), state)

    def record(self, params: Params, x: np.ndarray, state: State) -> tuple[State, Residuals]:
        res, _ = self.enter(state)
        w = _weights(self, params, dtype=state[0].dtype)
        return self._record(w, self._gate_major(self.project(params, x)), state, res), res

    def residual_output(self, residuals: tuple) -> np.ndarray:
        return self._output(residuals)

    def vjp(self, params: Params, x: np.ndarray, residuals: tuple, dstate: State
            ) -> tuple[State, Params]:
        dprev, dparams, _ = self._reverse(params, x, residuals, dstate, False)
        return dprev, dparams

    def vjp_input(self, params: Params, x: np.ndarray, residuals: tuple, dstate: State
                  ) -> tuple[State, Params, np.ndarray]:
        return self._reverse(params, x, residuals, dstate, True)

    def _reverse(self, params: Params, x: np.ndarray, res: tuple, dstate: State,
                 want_dx: bool) -> tuple[State, Params, Any]:
        G, H = self.n_gates, self.n_hidden
        B = res[0].shape[0]
        dxp = np.empty((G, B, H), res[0].dtype)
        dhp = dxp if self.bias_hh_in_projection else np.empty_like(dxp)
        dprev = self._vjp(_weights(self, params, dtype=res[-1].dtype), res, dstate, dxp, dhp)
        dx_rows = dxp.transpose(1, 0, 2).reshape(B, G * H)  # PyTorch's (B, G·H) layout
        dh_rows = dhp.transpose(1, 0, 2).reshape(B, G * H)
        dparams = {
            "weight_ih": np.matmul(dx_rows.T, x),
            # res[0] is h_prev
            "weight_hh": np.matmul(dhp.transpose(0, 2, 1), res[0]).reshape(G * H, H),
            "bias_ih": dx_rows.sum(axis=0),
            "bias_hh": dh_rows.sum(axis=0),
        }
        return dprev, dparams, (np.matmul(dx_rows, params["weight_ih"]) if want_dx else None)

    def enter(self, state: State, previous: Residuals | None = None
              ) -> tuple[Residuals, tuple[np.ndarray, ...]]:
        """(res, owned): residual arrays for a step entering `state`, and those of them
        that are new.

        The entering-state slots hold a copy of `state`, except that, given `previous`
        (the residuals of the step just before, still held), a slot the cell links is
        that step's very array (NOTE [linked steps]); `owned` leaves those out.
        """
        if len(state) != len(self.links):
            raise ValueError(f"{self.kind}.enter(state=...): expected {len(self.links)} arrays "
                             f"{self.state_names}, got {len(state)}")
        res, owned = [], []
        for s, link in zip(state, self.links):
            if previous is not None and link is not None:
                res.append(previous[link])
            else:
                a = s.copy()
                res.append(a)
                owned.append(a)
        B, dtype = state[0].shape[0], state[0].dtype
        for shape in _shapes(self.residual_widths[len(state):], (B, self.n_hidden)):
            a = np.empty(shape, dtype)
            res.append(a)
            owned.append(a)
        return tuple(res), tuple(owned)

    def kernels(self, params: Params, batch: int, grads: Params, rows: int) -> Kernels:
        return GatedKernels(self, params, grads, batch, rows)


class GatedKernels(Kernels):
    """The built-ins' fast path (NOTE [chunked products] in engine.py): input projections
    a chunk at a time, steps on row-major weight copies, dL/dxp rows turned into weight
    gradients one product per window, consecutive recorded steps linked.

    NOTE [bias row] x·W_ihᵀ + b is one product, [x 1]·[W_ihᵀ; b]: the chunk's inputs are
    copied into rows that end in a 1, which costs less than adding b, broadcast over the
    steps, to the product's output.
    """

    def __init__(self, cell: Gated, params: Params, grads: Params, batch: int, rows: int) -> None:
        super().__init__(cell, params, grads)
        self.g = cell
        G, H, I = cell.n_gates, cell.n_hidden, cell.n_in
        dtype = params["weight_hh"].dtype
        self.w = _weights(cell, params, batch=batch)
        bias = params["bias_ih"]
        if cell.bias_hh_in_projection:
            bias = bias + params["bias_hh"]
        self.W_aug = np.empty((G, I + 1, H), dtype)  # row-major whatever params' layout
        self.W_aug[:, :I] = params["weight_ih"].reshape(G, H, I).transpose(0, 2, 1)
        self.W_aug[:, I] = bias.reshape(G, H)
        self.B, self.rows = batch, rows
        self.matmul: Callable[..., np.ndarray] = np.matmul  # `route_products`
        self._fwd: tuple[np.ndarray, np.ndarray] | None = None
        self._rev: tuple[np.ndarray, ...] | None = None

    def project(self, xs: np.ndarray) -> Sequence[np.ndarray]:
        """(G, B, H) views, one per step, into a buffer the next chunk overwrites: a
        step reads its projection only while it runs."""
        B, I = self.B, self.g.n_in
        if self._fwd is None:
            G, _, H = self.W_aug.shape
            x1 = np.ones((self.rows, I + 1), xs.dtype)  # column I stays 1
            self._fwd = (x1, np.empty((G, self.rows, H), xs.dtype))
        x1, buf = self._fwd
        n = xs.shape[0] * B
        x1[:n, :I] = xs.reshape(n, I)
        xp = buf[:, :n]  # (G, K·B, H)
        self.matmul(x1[:n], self.W_aug, out=xp)
        return [xp[:, k * B : (k + 1) * B] for k in range(xs.shape[0])]

    def step(self, u: np.ndarray, state: State) -> State:
        return self.g._step(self.w, u, state)

    def record(self, u: np.ndarray, state: State, previous: Any | None
               ) -> tuple[State, Residuals, int]:
        res, owned = self.g.enter(state, previous)
        return self.g._record(self.w, u, state, res), res, sum([a.nbytes for a in owned])

    def output(self, residuals: Any, out: np.ndarray | None = None) -> np.ndarray:
        return self.g._output(residuals, out)

    def entering_output(self, residuals: Any) -> np.ndarray:
        return residuals[0]  # h_prev, the output of the step before

    def _buffers(self) -> tuple[np.ndarray, ...]:
        """dxp, dhp (dxp itself unless GRU), h_prev rows and a row of 1s, made on first use."""
        if self._rev is None:
            G, H, n = self.g.n_gates, self.g.n_hidden, self.rows
            dtype = self.W_aug.dtype
            dxp = np.empty((G, n, H), dtype)
            dhp = dxp if self.g.bias_hh_in_projection else np.empty_like(dxp)
            self._rev = (dxp, dhp, np.empty((n, H), dtype), np.ones(n, dtype))
        return self._rev

    def vjp(self, row: int, x: np.ndarray, residuals: Any, dstate: State) -> State:
        dxp, dhp, h_prev, _ = self._buffers()
        r0, r1 = row, row + self.B
        dstate = self.g._vjp(self.w, residuals, dstate, dxp[:, r0:r1], dhp[:, r0:r1])
        h_prev[r0:r1] = residuals[0]  # res[0] is h_prev for every kind
        return dstate

    def flush(self, r0: int, r1: int, xs: np.ndarray) -> None:
        """Block g of each (G·H, ·) weight's gradient is one product over all the rows.

        NOTE [bias sums] A bias's gradient sums its rows; a product with a row of ones does
        it faster than dxp.sum(axis=1), which walks the (G, K·B, H) rows with a strided
        reduction.
        """
        dxp_all, dhp_all, h_prev, ones_all = self._buffers()
        g, G, H, matmul = self.grads, self.g.n_gates, self.g.n_hidden, self.matmul
        dxp = dxp_all[:, r0:r1]  # (G, K·B, H)
        dhp = dxp if dhp_all is dxp_all else dhp_all[:, r0:r1]
        g["weight_hh"] += matmul(dhp.transpose(0, 2, 1), h_prev[r0:r1]).reshape(G * H, H)
        x_rows = xs.reshape(r1 - r0, -1)
        g["weight_ih"] += matmul(dxp.transpose(0, 2, 1), x_rows).reshape(G * H, -1)
        ones = ones_all[: r1 - r0]
        dbias = matmul(ones, dxp).reshape(G * H)
        g["bias_ih"] += dbias
        g["bias_hh"] += dbias if dhp is dxp else matmul(ones, dhp).reshape(G * H)

    def route_products(self, matmul: Callable[..., np.ndarray]) -> bool:
        """Every product, the steps' included (float32 LSTM's fused steps too: their
        products are numpy's), goes through ``matmul`` from now on."""
        self.matmul = matmul
        self.w = self.w._replace(matmul=matmul)
        return True

    def add_output_grad(self, doutput: np.ndarray, dstate: State) -> State:
        doutput += dstate[0]  # in place: the executor's row is not read again
        return (doutput,) + tuple(dstate[1:])

    def workspace(self) -> list[np.ndarray]:
        bufs = list(self._fwd or ())
        if self._rev is not None:
            dxp, dhp, h_prev, ones = self._rev
            bufs += [dxp] + ([] if dhp is dxp else [dhp]) + [h_prev, ones]
        return bufs


@functools.cache
def _shapes(widths: tuple[int, ...], bh: tuple[int, int]) -> tuple[tuple[int, ...], ...]:
    """Residual shapes for `residual_widths`: (B, H) for width 1, (G, B, H) for G.
    Cached: `Gated.enter` asks once per recorded step."""
    return tuple(bh if w == 1 else (w,) + bh for w in widths)
