"""A cell plus a linear readout and a per-step loss; what every strategy runs.

The sequence loss is  L = Σ_t Σ_b mask[t, b] · ℓ(o_tb, y_tb) / B  with o_t = h_t·W_outᵀ + b_out,
h_t = ``cell.output(state_t+1)``, and ℓ the mean squared error over outputs ("mse"),
−log softmax(o)[y] ("cross_entropy"), or the caller's own function. With no mask each
step's term is exactly torch's ``F.mse_loss(o_t, y_t)`` or ``F.cross_entropy(o_t, y_t)``.

This module also owns input checking: every strategy calls `Model.check` first, so bad
input fails before any work with a message that names the argument and the fix.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, NamedTuple, Union

import numpy as np

from .cell import Cell, Params, State, check_size

__all__ = ["Model", "Stats", "Result", "LOSSES", "LossFn", "check_model"]

LOSSES = ("mse", "cross_entropy")

#: A loss of one's own: f(o (B, n_out), y_t) -> (per-example loss (B,), dloss/do (B, n_out)).
LossFn = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


def check_model(model: object, where: str) -> None:
    """A `Model` where one belongs, or a TypeError naming ``model`` and the fix."""
    if not isinstance(model, Model):
        hint = (" (a cell: wrap it as bm.Model(cell, n_out=...))" if isinstance(model, Cell)
                else "")
        raise TypeError(f"{where}(model=...): expected a bm.Model, got "
                        f"{type(model).__name__}{hint}")


def _plain_array(name: str, a: object) -> None:
    """Refuse numpy's array subclasses whose semantics differ: a masked array's mask would
    be ignored (and a NaN under it pass unseen), an np.matrix breaks broadcasting."""
    if isinstance(a, np.ma.MaskedArray):
        raise TypeError(f"{name}: a masked array; its mask would be ignored. Pass "
                        f"{name.split('[')[0]}.filled(value) and, for a loss mask, mask=")
    if isinstance(a, np.matrix):
        raise TypeError(f"{name}: an np.matrix; convert it with np.asarray(...)")


@dataclass(frozen=True)
class Model:
    """A recurrent cell read out linearly at every step, with a loss.

    Args:
        cell: any `bptt_memory.Cell`: a built-in (`vanilla`, `lstm`, `gru`), a `stack`,
            or one's own.
        n_out: outputs per step (classes, for cross_entropy).
        loss: "mse", "cross_entropy", or a function ``f(o, y) -> (per_example_loss (B,),
            dloss/do (B, n_out))`` of outputs o (B, n_out) and targets y, one row per
            example (ys is (T, B, ...)); it may be handed the rows of several steps at
            once, o (K·B, n_out) with their targets, so it must work row by row.

    >>> import numpy as np, bptt_memory as bm
    >>> model = bm.Model(bm.gru(3, 5), n_out=2, loss="mse")
    >>> sorted(model.init(np.random.default_rng(0)))
    ['bias_hh', 'bias_ih', 'bias_out', 'weight_hh', 'weight_ih', 'weight_out']
    """

    cell: Cell
    n_out: int
    loss: Union[str, LossFn] = "mse"

    def __post_init__(self) -> None:
        if not isinstance(self.cell, Cell):
            raise TypeError(
                f"Model(cell=...): expected a bm.Cell (bm.vanilla/lstm/gru/stack, or a subclass "
                f"of bm.Cell of one's own), got {type(self.cell).__name__}"
            )
        check_size("Model(n_out=...)", "n_out", self.n_out)
        if not callable(self.loss) and self.loss not in LOSSES:
            raise ValueError(f"Model(loss={self.loss!r}): unknown loss; use one of {list(LOSSES)} "
                             "or a function f(o, y) -> (per_example_loss, dloss_do)")
        clash = {"weight_out", "bias_out"} & set(self.cell.param_shapes())
        if clash:
            raise ValueError(f"Model(cell=...): {self.cell.name} names a parameter "
                             f"{sorted(clash)}, "
                             "which the readout uses; rename it")

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        shapes = dict(self.cell.param_shapes())
        shapes["weight_out"] = (self.n_out, self.cell.output_size)
        shapes["bias_out"] = (self.n_out,)
        return shapes

    def init(self, rng: np.random.Generator, dtype: np.dtype | type = np.float64) -> Params:
        """The cell's `Cell.init`, then the readout drawn U(−1/√H, 1/√H) with H the cell's
        output size (PyTorch's default for its recurrent cells and this readout)."""
        if not isinstance(rng, np.random.Generator):
            raise TypeError("Model.init(rng=...): pass np.random.default_rng(seed)")
        dtype = _float_dtype("Model.init(dtype=...)", dtype)
        params = dict(self.cell.init(rng, dtype))
        cell_shapes = self.cell.param_shapes()
        if not isinstance(params, dict) or set(params) != set(cell_shapes) or any(
                np.shape(params[k]) != s for k, s in cell_shapes.items()):
            raise TypeError(f"{self.cell.name}.init: must return a dict of arrays shaped as "
                            f"param_shapes() says: {cell_shapes}")
        params = {k: np.asarray(v, dtype) for k, v in params.items()}
        bound = 1.0 / math.sqrt(self.cell.output_size)
        for name in ("weight_out", "bias_out"):
            shape = self.param_shapes()[name]
            params[name] = rng.uniform(-bound, bound, size=shape).astype(dtype)
        return params

    def zero_state(self, batch: int, dtype: np.dtype | type) -> State:
        return tuple(np.zeros(s, dtype) for s in self.cell.state_shapes(batch))

    # -- the readout: o = h·W_outᵀ + b_out ------------------------------------------
    # ``matmul`` makes the products: np.matmul, or a `Profile`'s timing wrapper
    def readout(self, params: Params, h: np.ndarray, *,
                matmul: Callable[..., np.ndarray] = np.matmul) -> np.ndarray:
        """Outputs o (N, n_out) of outputs h (N, H) of the cell."""
        o = matmul(h, params["weight_out"].T)
        o += params["bias_out"]
        return o

    def readout_input_grad(self, params: Params, do: np.ndarray, out: np.ndarray, *,
                           matmul: Callable[..., np.ndarray] = np.matmul) -> np.ndarray:
        """dL/dh (N, H) from dL/do (N, n_out), into ``out``."""
        return matmul(do, params["weight_out"], out=out)

    def readout_grads(self, h: np.ndarray, do: np.ndarray, ones: np.ndarray, grads: Params, *,
                      matmul: Callable[..., np.ndarray] = np.matmul) -> None:
        """Add the readout's gradients of rows h, do; ``ones`` (N,) sums rows in one
        product (NOTE [bias sums] in bptt_memory/cells/_gated.py)."""
        grads["weight_out"] += matmul(do.T, h)
        grads["bias_out"] += matmul(ones, do)

    def step_loss(self, o: np.ndarray, y: np.ndarray, scale: np.ndarray
                  ) -> tuple[float, np.ndarray]:
        """This step's loss term and its gradient w.r.t. o.

        ``scale`` (B,) is mask[t]/B. Returns (Σ_b scale_b·ℓ_b, dL/do of shape (B, O)).
        """
        if callable(self.loss):
            return self._custom_loss(o, y, scale)
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

    def _custom_loss(self, o: np.ndarray, y: np.ndarray, scale: np.ndarray
                     ) -> tuple[float, np.ndarray]:
        got = self.loss(o, y)  # type: ignore[operator]
        name = getattr(self.loss, "__name__", "loss")
        N = o.shape[0]
        if not isinstance(got, tuple) or len(got) != 2:
            raise TypeError(f"Model(loss={name}): must return (per_example_loss (B,), dloss_do "
                            f"(B, n_out)), got {type(got).__name__}")
        per, do = np.asarray(got[0]), np.asarray(got[1])
        if per.shape != (N,):
            raise ValueError(f"Model(loss={name}): per-example loss has shape {per.shape} for "
                             f"outputs o of shape {o.shape}; expected ({N},), one loss per row")
        if do.shape != o.shape:
            raise ValueError(f"Model(loss={name}): dloss/do has shape {do.shape}; expected "
                             f"{o.shape}, the outputs' shape")
        do = do * scale[:, None]
        return float(np.dot(per, scale)), do.astype(o.dtype, copy=False)

    def check(self, params: Params, xs: np.ndarray, ys: np.ndarray,
              h0: State | np.ndarray | None, mask: np.ndarray | None,
              ) -> tuple[np.ndarray, np.ndarray, State, np.ndarray]:
        """Validate a run's inputs; return (xs, ys, h0, mask) ready to use.

        Raises TypeError/ValueError naming the argument and the fix; never lets a bad
        shape reach numpy. Finiteness is checked too, so a NaN never becomes a silently
        wrong gradient.
        """
        if not isinstance(params, dict):
            raise TypeError("params: expected a dict from model.init(...), got "
                            f"{type(params).__name__}")
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
            _plain_array(f"params[{name!r}]", p)
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
        _plain_array("xs", xs)
        if xs.ndim != 3:
            raise ValueError(f"xs: expected 3 dims (T, B, n_in), got shape {xs.shape}")
        T, B, n_in = xs.shape
        if T == 0:
            raise ValueError("xs: the sequence is empty (T = 0); pass at least one step")
        if B == 0:
            raise ValueError("xs: the batch is empty (B = 0); pass at least one example")
        if self.cell.n_in is not None and n_in != self.cell.n_in:
            raise ValueError(f"xs: last dim is {n_in}, the cell has n_in={self.cell.n_in}")
        if xs.dtype != dtype:
            raise TypeError(
                f"xs: dtype {xs.dtype} differs from params' {dtype}; convert with "
                f"xs.astype(np.{dtype})"
            )
        if not np.isfinite(xs).all():
            raise ValueError("xs: contains NaN or inf")

        if not isinstance(ys, np.ndarray):
            raise TypeError(f"ys: expected a numpy array, got {type(ys).__name__}")
        _plain_array("ys", ys)
        if callable(self.loss):
            if ys.shape[:2] != (T, B):
                raise ValueError(f"ys: shape {ys.shape}; a loss function gets ys[t], so ys must "
                                 f"start with (T, B) = {(T, B)}")
            if np.issubdtype(ys.dtype, np.inexact) and not np.isfinite(ys).all():
                raise ValueError("ys: contains NaN or inf")
        elif self.loss == "mse":
            if ys.shape != (T, B, self.n_out):
                raise ValueError(f"ys: shape {ys.shape}, mse needs (T, B, n_out) = "
                                 f"{(T, B, self.n_out)}")
            if ys.dtype != dtype:
                raise TypeError(f"ys: dtype {ys.dtype} differs from params' {dtype}; "
                                "convert with ys.astype")
            if not np.isfinite(ys).all():
                raise ValueError("ys: contains NaN or inf")
        else:
            if ys.shape != (T, B):
                raise ValueError(f"ys: shape {ys.shape}, cross_entropy needs integer labels "
                                 f"(T, B) = {(T, B)}")
            if not np.issubdtype(ys.dtype, np.integer):
                raise TypeError("ys: cross_entropy needs integer class labels, got dtype "
                                f"{ys.dtype}")
            if ys.min() < 0 or ys.max() >= self.n_out:
                raise ValueError(
                    f"ys: labels must lie in [0, n_out={self.n_out}), got range "
                    f"[{ys.min()}, {ys.max()}]"
                )

        if mask is None:
            mask = np.ones((T, B), dtype)
        else:
            if not isinstance(mask, np.ndarray):
                raise TypeError(f"mask: expected a numpy array (T, B), got {type(mask).__name__}")
            _plain_array("mask", mask)
            if mask.shape != (T, B):
                raise ValueError(f"mask: shape {mask.shape}, needs (T, B) = {(T, B)}")
            if not (np.issubdtype(mask.dtype, np.bool_) or np.issubdtype(mask.dtype, np.number)):
                raise TypeError(f"mask: needs bool or numeric weights, got dtype {mask.dtype}")
            if not np.isfinite(mask.astype(np.float64)).all():
                raise ValueError("mask: contains NaN or inf")
            mask = mask.astype(dtype)

        return xs, ys, self.check_h0(h0, B, dtype), mask

    def check_h0(self, h0: State | np.ndarray | None, batch: int, dtype: np.dtype) -> State:
        shapes = self.cell.state_shapes(batch)
        if h0 is None:
            return self.zero_state(batch, dtype)
        if isinstance(h0, np.ndarray):
            h0 = (h0,)
        names = self.cell.state_names
        if not isinstance(h0, tuple) or len(h0) != len(shapes):
            raise ValueError(
                f"h0: expected a tuple of {len(shapes)} arrays {names} shaped {shapes} for "
                f"{self.cell.name}, got {type(h0).__name__}"
                f"{'' if not isinstance(h0, tuple) else f' of length {len(h0)}'}"
            )
        for shape, a, n in zip(shapes, h0, names):
            name = f"h0 ({n})"
            if not isinstance(a, np.ndarray):
                raise TypeError(f"{name}: expected a numpy array, got {type(a).__name__}")
            _plain_array(name, a)
            if a.shape != shape:
                raise ValueError(f"{name}: shape {a.shape}, {self.cell.name} needs {shape}")
            if a.dtype != dtype:
                raise TypeError(f"{name}: dtype {a.dtype} differs from params' {dtype}")
            if not np.isfinite(a).all():
                raise ValueError(f"{name}: contains NaN or inf")
        return h0


def _float_dtype(where: str, dtype: object) -> np.dtype:
    try:
        dt = np.dtype(dtype)  # type: ignore[call-overload]
    except TypeError:
        raise TypeError(f"{where}: {dtype!r} is not a dtype; use np.float32 or "
                        "np.float64") from None
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
            it, so keeps less (NOTE [linked steps] in bptt_memory/cells/_gated.py; 0 for
            truncated's ring).
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
