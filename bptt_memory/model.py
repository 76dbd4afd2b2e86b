"""A cell plus a linear readout and a per-step loss; what every strategy runs.

The sequence loss is  L = Σ_t Σ_b mask[t, b] · ℓ(o_tb, y_tb) / B  with o_t = h_t·W_outᵀ + b_out,
ℓ the mean squared error over outputs ("mse") or −log softmax(o)[y] ("cross_entropy").
With no mask each step's term is exactly torch's ``F.mse_loss(o_t, y_t)`` or
``F.cross_entropy(o_t, y_t)``.

This module also owns input checking: every strategy calls `Model.check` first, so bad
input fails before any work with a message that names the argument and the fix.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from .cells import Cell, Params, State, _check_size

__all__ = ["Model", "Stats", "Result", "LOSSES"]

LOSSES = ("mse", "cross_entropy")


@dataclass(frozen=True)
class Model:
    """A recurrent cell read out linearly at every step, with a loss.

    Args:
        cell: from `vanilla`, `lstm` or `gru`.
        n_out: outputs per step (classes, for cross_entropy).
        loss: "mse" or "cross_entropy".

    >>> import numpy as np, bptt_memory as bm
    >>> model = bm.Model(bm.gru(3, 5), n_out=2, loss="mse")
    >>> sorted(model.init(np.random.default_rng(0)))
    ['bias_hh', 'bias_ih', 'bias_out', 'weight_hh', 'weight_ih', 'weight_out']
    """

    cell: Cell
    n_out: int
    loss: str = "mse"

    def __post_init__(self) -> None:
        if not isinstance(self.cell, Cell):
            raise TypeError(
                f"Model(cell=...): expected a Cell from bm.vanilla/lstm/gru, got {type(self.cell).__name__}"
            )
        _check_size("Model(n_out=...)", "n_out", self.n_out)
        if self.loss not in LOSSES:
            raise ValueError(f"Model(loss={self.loss!r}): unknown loss; use one of {list(LOSSES)}")

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        shapes = self.cell.param_shapes()
        shapes["weight_out"] = (self.n_out, self.cell.n_hidden)
        shapes["bias_out"] = (self.n_out,)
        return shapes

    def init(self, rng: np.random.Generator, dtype: np.dtype | type = np.float64) -> Params:
        """Parameters drawn U(−1/√H, 1/√H), PyTorch's default for RNN cells and this readout."""
        if not isinstance(rng, np.random.Generator):
            raise TypeError("Model.init(rng=...): pass np.random.default_rng(seed)")
        dtype = _float_dtype("Model.init(dtype=...)", dtype)
        bound = 1.0 / math.sqrt(self.cell.n_hidden)
        return {
            name: rng.uniform(-bound, bound, size=shape).astype(dtype)
            for name, shape in self.param_shapes().items()
        }

    def zero_state(self, batch: int, dtype: np.dtype | type) -> State:
        return tuple(np.zeros((batch, self.cell.n_hidden), dtype) for _ in self.cell.state_names)

    def step_loss(self, o: np.ndarray, y: np.ndarray, scale: np.ndarray) -> tuple[float, np.ndarray]:
        """This step's loss term and its gradient w.r.t. o.

        ``scale`` (B,) is mask[t]/B. Returns (Σ_b scale_b·ℓ_b, dL/do of shape (B, O)).
        """
        if self.loss == "mse":
            diff = o - y  # (B, O)
            do = diff * ((2.0 / self.n_out) * scale)[:, None]
            # Σ_b scale_b·|diff_b|²/O is half of do·diff: one dot, where a per-example
            # reduction and then a weighted sum took four calls (B·O is small, so calls
            # are what a step's loss costs; binomial pays them once per step)
            return 0.5 * float(np.vdot(do, diff)), do
        shifted = o - o.max(axis=1, keepdims=True)
        with np.errstate(under="ignore"):  # exp of a logit far below the max is exactly 0
            exp = np.exp(shifted)
        total = exp.sum(axis=1)
        rows = np.arange(o.shape[0])
        per_example = np.log(total) - shifted[rows, y]
        dprob = exp
        dprob /= total[:, None]
        dprob[rows, y] -= 1.0
        dprob *= scale[:, None]
        return float(per_example @ scale), dprob

    def check(self, params: Params, xs: np.ndarray, ys: np.ndarray,
              h0: State | np.ndarray | None, mask: np.ndarray | None,
              ) -> tuple[np.ndarray, np.ndarray, State, np.ndarray]:
        """Validate a run's inputs; return (xs, ys, h0, mask) ready to use.

        Raises TypeError/ValueError naming the argument and the fix; never lets a bad
        shape reach numpy. Finiteness is checked too, so a NaN never becomes a silently
        wrong gradient.
        """
        if not isinstance(params, dict):
            raise TypeError(f"params: expected a dict from model.init(...), got {type(params).__name__}")
        shapes = self.param_shapes()
        missing, extra = sorted(set(shapes) - set(params)), sorted(set(params) - set(shapes))
        if missing or extra:
            raise ValueError(
                f"params: keys do not match the model (missing {missing}, unexpected {extra}); "
                "build them with model.init(rng)"
            )
        dtype = None
        for name, shape in shapes.items():
            p = params[name]
            if not isinstance(p, np.ndarray):
                raise TypeError(f"params[{name!r}]: expected a numpy array, got {type(p).__name__}")
            if p.shape != shape:
                raise ValueError(f"params[{name!r}]: shape {p.shape}, the model needs {shape}")
            _float_dtype(f"params[{name!r}]", p.dtype)
            if dtype is None:
                dtype = p.dtype
            elif p.dtype != dtype:
                raise TypeError(
                    f"params[{name!r}]: dtype {p.dtype} differs from the other params' {dtype}; "
                    "use one float dtype for all"
                )
            if not np.isfinite(p).all():
                raise ValueError(f"params[{name!r}]: contains NaN or inf")
        assert dtype is not None

        if not isinstance(xs, np.ndarray):
            raise TypeError(f"xs: expected a numpy array (T, B, n_in), got {type(xs).__name__}")
        if xs.ndim != 3:
            raise ValueError(f"xs: expected 3 dims (T, B, n_in), got shape {xs.shape}")
        T, B, n_in = xs.shape
        if T == 0:
            raise ValueError("xs: the sequence is empty (T = 0); pass at least one step")
        if B == 0:
            raise ValueError("xs: the batch is empty (B = 0); pass at least one example")
        if n_in != self.cell.n_in:
            raise ValueError(f"xs: last dim is {n_in}, the cell has n_in={self.cell.n_in}")
        if xs.dtype != dtype:
            raise TypeError(
                f"xs: dtype {xs.dtype} differs from params' {dtype}; convert with xs.astype(np.{dtype})"
            )
        if not np.isfinite(xs).all():
            raise ValueError("xs: contains NaN or inf")

        if not isinstance(ys, np.ndarray):
            raise TypeError(f"ys: expected a numpy array, got {type(ys).__name__}")
        if self.loss == "mse":
            if ys.shape != (T, B, self.n_out):
                raise ValueError(f"ys: shape {ys.shape}, mse needs (T, B, n_out) = {(T, B, self.n_out)}")
            if ys.dtype != dtype:
                raise TypeError(f"ys: dtype {ys.dtype} differs from params' {dtype}; convert with ys.astype")
            if not np.isfinite(ys).all():
                raise ValueError("ys: contains NaN or inf")
        else:
            if ys.shape != (T, B):
                raise ValueError(f"ys: shape {ys.shape}, cross_entropy needs integer labels (T, B) = {(T, B)}")
            if not np.issubdtype(ys.dtype, np.integer):
                raise TypeError(f"ys: cross_entropy needs integer class labels, got dtype {ys.dtype}")
            if ys.min() < 0 or ys.max() >= self.n_out:
                raise ValueError(
                    f"ys: labels must lie in [0, n_out={self.n_out}), got range [{ys.min()}, {ys.max()}]"
                )

        if mask is None:
            mask = np.ones((T, B), dtype)
        else:
            if not isinstance(mask, np.ndarray):
                raise TypeError(f"mask: expected a numpy array (T, B), got {type(mask).__name__}")
            if mask.shape != (T, B):
                raise ValueError(f"mask: shape {mask.shape}, needs (T, B) = {(T, B)}")
            if not (np.issubdtype(mask.dtype, np.bool_) or np.issubdtype(mask.dtype, np.number)):
                raise TypeError(f"mask: needs bool or numeric weights, got dtype {mask.dtype}")
            if not np.isfinite(mask.astype(np.float64)).all():
                raise ValueError("mask: contains NaN or inf")
            mask = mask.astype(dtype)

        return xs, ys, self.check_h0(h0, B, dtype), mask

    def check_h0(self, h0: State | np.ndarray | None, batch: int, dtype: np.dtype) -> State:
        names = self.cell.state_names
        if h0 is None:
            return self.zero_state(batch, dtype)
        if isinstance(h0, np.ndarray):
            h0 = (h0,)
        if not isinstance(h0, tuple) or len(h0) != len(names):
            raise ValueError(
                f"h0: expected a tuple of {len(names)} arrays {names} for a {self.cell.kind} cell, "
                f"got {type(h0).__name__}{'' if not isinstance(h0, tuple) else f' of length {len(h0)}'}"
            )
        for name, a in zip(names, h0):
            if not isinstance(a, np.ndarray):
                raise TypeError(f"h0 ({name}): expected a numpy array, got {type(a).__name__}")
            if a.shape != (batch, self.cell.n_hidden):
                raise ValueError(f"h0 ({name}): shape {a.shape}, needs (B, H) = {(batch, self.cell.n_hidden)}")
            if a.dtype != dtype:
                raise TypeError(f"h0 ({name}): dtype {a.dtype} differs from params' {dtype}")
            if not np.isfinite(a).all():
                raise ValueError(f"h0 ({name}): contains NaN or inf")
        return h0


def _float_dtype(where: str, dtype: object) -> np.dtype:
    try:
        dt = np.dtype(dtype)  # type: ignore[call-overload]
    except TypeError:
        raise TypeError(f"{where}: {dtype!r} is not a dtype; use np.float32 or np.float64") from None
    if dt not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise TypeError(f"{where}: dtype {dt} is not supported; use np.float32 or np.float64")
    return dt


@dataclass
class Stats:
    """What one run held and did.

    Attributes:
        peak_bytes: exact peak, over the run, of the bytes the strategy holds between
            steps for the backward pass: stored states, recorded residuals, ring-buffer
            entries. Excludes params, grads, the caller's xs/ys/h0, the single working
            state and adjoint, and transient temporaries inside a step.
        forward_steps: cell forward evaluations, first sweep and recomputation alike.
        backward_steps: step VJPs.
        seconds: wall time of the run.
        peak_states, peak_residuals: peak counts of stored states and recorded steps.
        state_bytes, residual_bytes: bytes of one stored state / one recorded step.
        link_bytes: what a step recorded while the step before it is held shares with
            it, so keeps less (NOTE [linked steps] in cells.py; 0 for truncated's ring).
        traced_peak_bytes: tracemalloc's peak over the run when run with
            ``trace_memory=True`` (else None). It also sees the grads and transient
            temporaries, so peak_bytes ≤ traced_peak_bytes ≤ peak_bytes + `traced_allowance`.
        workspace_bytes: the executor's reusable chunk buffers (inputs and input
            projections of CHUNK_STEPS steps; gradient rows of as many), made once per
            run whatever the strategy and T, overwritten by every chunk and holding
            nothing the backward pass needs later: a fixed workspace like the grads, so
            not in peak_bytes, but counted here exactly (truncated, which reverses one
            step at a time, has one step's rows).
        traced_allowance: that documented allowance in bytes (its formula is in
            `bptt_memory.engine.traced_allowance`: grads and weight copies, chunk
            buffers, step temporaries and Python object overhead).
    """

    peak_bytes: int = 0
    forward_steps: int = 0
    backward_steps: int = 0
    seconds: float = 0.0
    peak_states: int = 0
    peak_residuals: int = 0
    state_bytes: int = 0
    residual_bytes: int = 0
    link_bytes: int = 0
    traced_peak_bytes: int | None = None
    traced_allowance: int | None = None
    workspace_bytes: int = 0
    extra: dict = field(default_factory=dict)


class Result(NamedTuple):
    """The loss, its gradient and what computing it cost."""

    loss: float
    grads: Params
    grad_h0: State
    stats: Stats
