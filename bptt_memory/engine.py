"""The one executor: walks a schedule's actions with real arrays, for any cell.

Every exact strategy (full, uniform, binomial, optimal) is a schedule run by `execute`;
truncated BPTT reuses the same forward and reverse steps (`Sweep`) on its ring buffer.
The executor never decides anything: what is stored, recomputed and reversed is all in
the schedule, which `simulate` has checked before a single array is touched.

NOTE [where the loss is computed] The readout and loss of step t are evaluated when
step t is *reversed*, from h_t read off its residuals. Each step is reversed exactly
once, so the loss is counted once, and plain forward advances (recomputation) never
touch the readout.

NOTE [memory accounting] `Sweep.hold`/`Sweep.release` add and subtract the `nbytes` of
the real arrays a strategy keeps for the backward pass (stored states, residuals, ring
entries); `Stats.peak_bytes` is the peak of that running sum. Tests check it against the
analytic formula per cell and against `simulate`'s prediction, and tracemalloc checks it
from outside.
"""

from __future__ import annotations

import time
import tracemalloc
from typing import Callable, Iterable, Iterator

import numpy as np

from .cells import Params, Residuals, State
from .model import Model, Result, Stats
from .schedule import Action, Advance, Free, Record, Restore, Reverse, Store, simulate

__all__ = ["execute", "Sweep", "CHUNK_STEPS"]

#: Steps whose input projection is computed in one matrix product (a transient buffer).
CHUNK_STEPS = 16


class Sweep:
    """Forward and reverse steps of one run, with grads, loss, counters and bytes held."""

    def __init__(self, model: Model, params: Params, xs: np.ndarray | None = None,
                 ys: np.ndarray | None = None, mask: np.ndarray | None = None) -> None:
        """xs, ys, mask: the whole sequence, or None when steps arrive one by one."""
        self.model, self.cell, self.params = model, model.cell, params
        self.xs, self.ys = xs, ys
        # (T, B): each example's weight in the loss
        self.scale = None if mask is None or xs is None else mask / xs.shape[1]
        self.grads = {k: np.zeros_like(v) for k, v in params.items()}
        self.loss = 0.0
        self.forward_steps = self.backward_steps = 0
        self.held = self.peak = 0

    # -- memory --------------------------------------------------------------------
    def hold(self, arrays: Iterable[np.ndarray]) -> None:
        self.held += sum(a.nbytes for a in arrays)
        self.peak = max(self.peak, self.held)

    def release(self, arrays: Iterable[np.ndarray]) -> None:
        self.held -= sum(a.nbytes for a in arrays)

    # -- forward -------------------------------------------------------------------
    def _projections(self, n0: int, n1: int) -> Iterator[tuple[int, np.ndarray]]:
        for c0 in range(n0, n1, CHUNK_STEPS):
            c1 = min(c0 + CHUNK_STEPS, n1)
            xp = self.cell.project(self.params, self.xs[c0:c1])  # (chunk, B, G·H)
            for t in range(c0, c1):
                yield t, xp[t - c0]

    def advance(self, state: State, n0: int, n1: int) -> State:
        for _, xp in self._projections(n0, n1):
            state = self.cell.step(self.params, xp, state)
        self.forward_steps += n1 - n0
        return state

    def record(self, state: State, n0: int, n1: int,
               residuals_for: Callable[[int], Residuals]) -> State:
        """Run steps [n0, n1) keeping residuals in ``residuals_for(t)``'s arrays."""
        for t, xp in self._projections(n0, n1):
            state = self.cell.record(self.params, xp, state, residuals_for(t))
        self.forward_steps += n1 - n0
        return state

    # -- backward ------------------------------------------------------------------
    def reverse_step(self, t: int, res: Residuals, dstate: State) -> State:
        """Reverse step t of this run's sequence, loss included; return dL/dstate_t−1."""
        return self.reverse(res, dstate, self.xs[t], self.ys[t], self.scale[t])

    def reverse(self, res: Residuals, dstate: State, x: np.ndarray, y: np.ndarray | None,
                scale: np.ndarray | None) -> State:
        """Reverse one recorded step with input x; add its loss unless y is None."""
        p, g = self.params, self.grads
        if y is not None:
            h = self.cell.output(res)  # (B, H)
            o = h @ p["weight_out"].T
            o += p["bias_out"]
            loss, do = self.model.step_loss(o, y, scale)
            self.loss += loss
            g["weight_out"] += do.T @ h
            g["bias_out"] += do.sum(axis=0)
            dstate = (dstate[0] + do @ p["weight_out"],) + dstate[1:]
        dstate, dxp = self.cell.vjp(p, res, dstate, g)
        g["weight_ih"] += dxp.T @ x
        dbias = dxp.sum(axis=0)
        g["bias_ih"] += dbias
        self.backward_steps += 1
        return dstate

    def zero_adjoint(self, like: State) -> State:
        return tuple(np.zeros_like(a) for a in like)

    def stats(self, seconds: float, state_bytes: int, residual_bytes: int, **extra: int) -> Stats:
        return Stats(peak_bytes=self.peak, forward_steps=self.forward_steps,
                     backward_steps=self.backward_steps, seconds=seconds,
                     state_bytes=state_bytes, residual_bytes=residual_bytes, **extra)


def traced_allowance(model: Model, params: Params, batch: int, dtype: np.dtype,
                     held_items: int) -> int:
    """Bytes tracemalloc may see beyond ``peak_bytes``: see `Stats.traced_allowance`.

    The grads (params-sized), the input-projection chunk, 16 step-sized (B, 4H)
    temporaries, and 1 KiB of Python object overhead per held state or step (array
    headers, tuples, dict entries), plus 256 KiB for the interpreter's own bookkeeping
    (its free lists of small objects fill once per process and tracemalloc sees them).
    """
    item = np.dtype(dtype).itemsize
    GH = model.cell.n_gates * model.cell.n_hidden
    step = batch * max(4 * model.cell.n_hidden, GH, model.n_out) * item
    grads = sum(p.nbytes for p in params.values())
    return grads + CHUNK_STEPS * batch * GH * item + 16 * step + 1024 * held_items + 262144


def measure(run: Callable[[], Result], model: Model, params: Params, batch: int,
            dtype: np.dtype) -> Result:
    """Run under tracemalloc; fill ``stats.traced_peak_bytes`` and ``traced_allowance``."""
    was_tracing = tracemalloc.is_tracing()
    if not was_tracing:
        tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        res = run()
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        if not was_tracing:
            tracemalloc.stop()
    s = res.stats
    s.traced_peak_bytes = peak
    s.traced_allowance = traced_allowance(model, params, batch, dtype,
                                          s.peak_states + s.peak_residuals)
    return res


def execute(schedule: Iterable[Action], model: Model, params: Params, xs: np.ndarray,
            ys: np.ndarray, *, h0: State | np.ndarray | None = None,
            mask: np.ndarray | None = None, trace_memory: bool = False) -> Result:
    """Run a hand-written or generated schedule with real arrays; exact gradients.

    The schedule is checked by `simulate` first (on the sequence's T), so an invalid
    schedule raises `ScheduleError` before any step runs.

    >>> import numpy as np, bptt_memory as bm
    >>> model = bm.Model(bm.vanilla(2, 3), n_out=1)
    >>> params = model.init(np.random.default_rng(0))
    >>> xs, ys = np.ones((2, 1, 2)), np.zeros((2, 1, 1))
    >>> plan = (bm.Advance(0, 1), bm.Record(1, 2), bm.Reverse(1, 2),
    ...         bm.Restore(0), bm.Record(0, 1), bm.Reverse(0, 1))
    >>> res = bm.execute(plan, model, params, xs, ys)
    >>> res.stats.forward_steps, res.stats.peak_residuals
    (3, 1)
    >>> abs(res.loss - bm.full().run(model, params, xs, ys).loss) < 1e-15
    True
    """
    xs, ys, h0_, mask_ = model.check(params, xs, ys, h0, mask)
    T, B = xs.shape[:2]
    actions = tuple(schedule)
    cell = model.cell
    sb, rb = cell.state_bytes(B, xs.dtype), cell.residual_bytes(B, xs.dtype)
    cost = simulate(actions, n_steps=T, state_bytes=sb, residual_bytes=rb)

    def run() -> Result:
        return _execute(actions, model, params, xs, ys, h0_, mask_, sb, rb, cost.peak_states,
                        cost.peak_residuals)

    return measure(run, model, params, B, xs.dtype) if trace_memory else run()


def _execute(actions: Iterable[Action], model: Model, params: Params, xs: np.ndarray,
             ys: np.ndarray, h0: State, mask: np.ndarray, state_bytes: int,
             residual_bytes: int, peak_states: int, peak_residuals: int) -> Result:
    """Walk already validated actions. Stats carry the simulator's peak counts."""
    start = time.perf_counter()
    sweep = Sweep(model, params, xs, ys, mask)
    B, dtype = xs.shape[1], xs.dtype
    cell = model.cell
    state = h0
    stored: dict[int, State] = {}
    residuals: dict[int, Residuals] = {}
    dstate = sweep.zero_adjoint(h0)

    def new_residuals(t: int) -> Residuals:
        res = residuals[t] = cell.new_residuals(B, dtype)
        sweep.hold(res)
        return res

    for a in actions:
        if isinstance(a, Advance):
            state = sweep.advance(state, a.n0, a.n1)
        elif isinstance(a, Record):
            state = sweep.record(state, a.n0, a.n1, new_residuals)
        elif isinstance(a, Reverse):
            for t in range(a.n1 - 1, a.n0 - 1, -1):
                res = residuals.pop(t)
                dstate = sweep.reverse_step(t, res, dstate)
                sweep.release(res)
        elif isinstance(a, Store):
            stored[a.n] = tuple(s.copy() for s in state)
            sweep.hold(stored[a.n])
        elif isinstance(a, Restore):
            state = h0 if a.n == 0 else stored[a.n]
        elif isinstance(a, Free):
            sweep.release(stored.pop(a.n))
    stats = sweep.stats(time.perf_counter() - start, state_bytes, residual_bytes,
                        peak_states=peak_states, peak_residuals=peak_residuals)
    return Result(sweep.loss, sweep.grads, dstate, stats)
