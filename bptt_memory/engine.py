"""The one executor: walks a schedule's actions with real arrays, for any cell.

Every exact strategy (full, uniform, binomial, optimal) is a schedule run by `execute`;
truncated BPTT reuses the same forward and reverse steps (`Sweep`) on its ring buffer.
The executor never decides anything: what is stored, recomputed and reversed is all in
the schedule, which `simulate` has checked before a single array is touched.

NOTE [where the loss is computed] The readout and loss of step t are evaluated in the
backward pass, at the latest when step t is reversed, from h_t read off its residuals
or kept from a forward pass through step t (NOTE [readout rows] in `Sweep`). Each step
is read out exactly once, so the loss is counted once; forward steps at most copy h_t,
and never compute the readout.

NOTE [memory accounting] `Sweep.hold`/`Sweep.release` add and subtract the `nbytes` of
the real arrays a strategy keeps for the backward pass (stored states, residuals, ring
entries); `Stats.peak_bytes` is the peak of that running sum. Tests check it against the
analytic formula per cell and against `simulate`'s prediction, and tracemalloc checks it
from outside.
"""

from __future__ import annotations

import time
import tracemalloc
from typing import Callable, Iterable, Iterator, NamedTuple

import numpy as np

from .cells import Params, Residuals, State, _weights
from .model import Model, Result, Stats
from .schedule import Action, Advance, Cost, Free, Record, Restore, Reverse, Store, simulate

__all__ = ["execute", "Sweep", "CHUNK_STEPS"]

#: Steps handled per matrix product: the input projection going forward; the readout,
#: loss and weight gradients going backward. Both use buffers of this many steps, made
#: once per run (transients, counted in `traced_allowance`, not in peak_bytes).
CHUNK_STEPS = 16


class _Rows(NamedTuple):
    """The backward pass's chunk buffers: rows for `chunk` steps, step t's at
    (t − window start)·B (NOTE [gradient windows])."""

    dxp: np.ndarray  # (G, rows, H): dL/dxp, gate-major (NOTE [gate-major layout] in cells.py)
    dhp: np.ndarray  # (G, rows, H): dL/d(h·W_hhᵀ + b_hh); the dxp array itself unless GRU
    h_prev: np.ndarray  # (rows, H)
    h: np.ndarray  # (rows, H): the outputs h_t read out (NOTE [readout rows])
    do: np.ndarray  # (rows, O): dL/do_t
    dh: np.ndarray  # (rows, H): dL/dh_t from the readout
    ones: np.ndarray  # (rows,): 1s, whose product with rows sums them (NOTE [bias sums])

    def arrays(self) -> list[np.ndarray]:
        """Each buffer once (dhp may be dxp)."""
        return [a for i, a in enumerate(self) if i != 1 or a is not self.dxp]


class Sweep:
    """Forward and reverse steps of one run, with grads, loss, counters and bytes held.

    NOTE [chunked products] Only the recurrence h·W_hhᵀ is sequential. Everything else
    is batched over up to CHUNK_STEPS consecutive steps: going forward, the input
    projection x·W_ihᵀ + b of a chunk is one matrix product into a reused buffer; going
    backward, the readout, loss and dL/dh_t of up to a chunk of outputs h_t are one
    product each (NOTE [readout rows]), the cell VJPs then run step by step writing
    their dxp (and, for GRU, dL/d(h·W_hhᵀ)) rows into a buffer, and the gradients of
    every weight and bias are one product each per window of steps (NOTE [gradient
    windows]). This changes only the order in which float sums are taken, never what
    is held between steps.
    """

    def __init__(self, model: Model, params: Params, xs: np.ndarray | None = None,
                 ys: np.ndarray | None = None, mask: np.ndarray | None = None) -> None:
        """xs, ys, mask: the whole sequence, or None when steps arrive one by one."""
        self.model, self.cell, self.params = model, model.cell, params
        self.xs, self.ys = xs, ys
        # (T, B) weights of each example's loss; divided by B a chunk at a time, since a
        # (T, B) quotient made here would be a transient that grows with T
        self.mask = mask
        self.grads = {k: np.zeros_like(v) for k, v in params.items()}
        self.loss = 0.0
        self.forward_steps = self.backward_steps = 0
        self.held = self.peak = 0
        # a whole sequence is run in chunks; a stream is reversed one step at a time
        self.chunk = 1 if xs is None else min(CHUNK_STEPS, xs.shape[0])
        self._kernels = model.cell._k
        self._w = None  # the executor's prepared weights, made on first use
        self._fwd = self._rev = None  # chunk buffers, made on first use
        self._pending = None  # (lo, hi): steps of _window whose weight gradients wait in _rev
        # NOTE [readout rows]: the window whose outputs forward steps keep (it holds the
        # last step not yet reversed), which of its rows hold a kept h_t (bits, from
        # the window start), and the first of its steps already read out
        T = 0 if xs is None else xs.shape[0]
        self._window, self._kept, self._done = T - self.chunk, 0, T
        self.stored: dict[int, State] = {}  # the executor's stored states, by step

    # -- memory --------------------------------------------------------------------
    def hold(self, arrays: Iterable[np.ndarray]) -> None:
        self.held += sum([a.nbytes for a in arrays])
        if self.held > self.peak:
            self.peak = self.held

    def release(self, arrays: Iterable[np.ndarray]) -> None:
        self.held -= sum([a.nbytes for a in arrays])

    # -- forward -------------------------------------------------------------------
    def _prepared(self):
        """The recurrent weights (`_weights`) and the projection's weights W_ihᵀ per
        gate with the bias as one more input row, (G, I + 1, H) (NOTE [bias row]):
        copied once per run (NOTE [gate-major layout])."""
        if self._w is None:
            p, k = self.params, self._kernels
            G, H = self.cell.n_gates, self.cell.n_hidden
            bias = p["bias_ih"] + p["bias_hh"] if k.bias_hh_in_projection else p["bias_ih"]
            I = self.cell.n_in
            W_aug = np.empty((G, I + 1, H), bias.dtype)  # row-major, whatever params' layout
            W_aug[:, :I] = p["weight_ih"].reshape(G, H, I).transpose(0, 2, 1)
            W_aug[:, I] = bias.reshape(G, H)
            self._w = (_weights(self.cell, p, batch=self.xs.shape[1]), W_aug)
        return self._w

    def _projections(self, n0: int, n1: int) -> Iterator[tuple[int, np.ndarray]]:
        """(c0, xp) for chunks of [n0, n1) from c0 on; xp is (G, K·B, H) for the chunk's
        K steps, step c0 + k's (G, B, H) in rows [k·B, (k+1)·B).

        NOTE [bias row] x·W_ihᵀ + b is one product, [x 1]·[W_ihᵀ; b]: the chunk's inputs
        are copied into rows that end in a 1. Adding b to the product's (G, K·B, H)
        output instead, broadcast over steps, took a quarter of the projection's time
        (float32 and float64, B = 32, I = 32, H = 128, 16 steps); the copy and the extra
        row cost at most a twentieth.

        The buffers are reused by the next chunk: a step reads its rows only while it runs.
        """
        w, W_aug = self._prepared()
        B, I = self.xs.shape[1:]
        if self._fwd is None:
            G, _, H = W_aug.shape
            x1 = np.ones((self.chunk * B, I + 1), self.xs.dtype)  # column I stays 1
            self._fwd = (x1, np.empty((G, self.chunk * B, H), self.xs.dtype))
        x1, buf = self._fwd
        for c0 in range(n0, n1, self.chunk):
            c1 = min(c0 + self.chunk, n1)
            n = (c1 - c0) * B
            x1[:n, :I] = self.xs[c0:c1].reshape(n, I)
            xp = buf[:, :n]  # (G, K·B, H)
            np.matmul(x1[:n], W_aug, out=xp)
            yield c0, xp

    def _steps(self, kernel: Callable, state: State, n0: int, n1: int,
               residuals_for: Callable[[int, State], Residuals] | None) -> State:
        """Run steps [n0, n1) with `kernel` (the cell's step, or its record given
        residuals_for); keep the outputs the readout will want (NOTE [readout rows])."""
        cell, w = self.cell, self._prepared()[0]
        keep0, keep1 = max(n0, self._window, 0), min(n1, self._done)
        B = self.xs.shape[1]
        for c0, xp in self._projections(n0, n1):
            for k in range(xp.shape[1] // B):
                t, xp_t = c0 + k, xp[:, k * B : (k + 1) * B]
                if residuals_for is None:
                    state = kernel(cell, w, xp_t, state)
                else:
                    state = kernel(cell, w, xp_t, state, residuals_for(t, state))
                if keep0 <= t < keep1:
                    self._keep(t, state[0])
        self.forward_steps += n1 - n0
        return state

    def advance(self, state: State, n0: int, n1: int) -> State:
        return self._steps(self._kernels.step, state, n0, n1, None)

    def record(self, state: State, n0: int, n1: int,
               residuals_for: Callable[[int, State], Residuals]) -> State:
        """Run steps [n0, n1) keeping residuals in ``residuals_for(t, state)``'s arrays,
        whose entering-state slots it has filled (`Cell.enter`)."""
        return self._steps(self._kernels.record, state, n0, n1, residuals_for)

    def _keep(self, t: int, h: np.ndarray) -> None:
        """Copy step t's output h_t into the window's h rows (NOTE [readout rows])."""
        B = h.shape[0]
        r = (t - self._window) * B
        self._rows(B, h.dtype).h[r : r + B] = h
        self._kept |= 1 << (t - self._window)

    # -- backward ------------------------------------------------------------------
    def reverse_steps(self, n0: int, n1: int, residuals: list[Residuals],
                      dstate: State) -> State:
        """Reverse steps n1−1 … n0 of this run's sequence (residuals[i] is step n0 + i),
        losses included; return dL/dstate_n0. Steps are reversed last first: n1 − 1 is
        the last step not yet reversed.

        NOTE [gradient windows] Steps are reversed from T − 1 down to 0, whatever actions
        do it, so the weight gradients are gathered in windows of `chunk` steps on a grid
        fixed from the end, [T − (j+1)·chunk, T − j·chunk): step t's rows (its dxp, h_prev,
        h_t, dL/dh_t and readout gradient) sit in the buffers at (t − window start)·B, and
        one matrix product per window adds them once its last step is reversed (or at
        `finish`). A Reverse of one step (binomial) thus costs no more products than one
        of many.
        """
        for c0, c1, w0 in self.windows(n0, n1):
            dstate = self.reverse_piece(c0, c1, w0, residuals[c0 - n0 : c1 - n0], dstate)
        return dstate

    def reverse_piece(self, c0: int, c1: int, w0: int, residuals: list[Residuals],
                      dstate: State) -> State:
        """`reverse_steps` for one piece (c0, c1, w0) from `windows`: steps c1−1 … c0,
        all in the gradient window that starts at w0.

        NOTE [readout rows] The readout and loss of step t need only its output h_t, and
        the outputs of the current window's steps pass by before they are reversed: a
        forward step (advance or record) through one not yet read out copies its h_t into
        the window's h rows (`_keep`, B·H into the workspace), and so does each stored
        state (the output of the step before it) when the window starts. A piece whose
        steps are not yet read out then reads out, in one product each, its own steps
        and every kept step just below them. Where its own step t was not kept, h_t is
        a copy of step t + 1's h_prev when the piece holds step t + 1 (full() reverses
        16 steps per piece: a copy in place of LSTM's tanh), else it is computed off
        step t's residuals. Reversing step t also keeps h_t−1 from its residuals.
        binomial and optimal reverse one step at a time, but rebuild its state by
        passing through the steps before it, so they read out a few steps or a whole
        window at once, nearly as full() does. Each step is read out once (the rows
        already read out are never kept again), and whichever pass kept h_t, it
        computed the same h_t.
        """
        B = self.xs.shape[1]
        s0 = max(w0, 0)  # the first window starts before step 0 when chunk does not divide T
        if w0 != self._window:
            raise ValueError(f"Sweep.reverse_piece: steps {c0}..{c1 - 1} are not in the window "
                             f"being reversed (from {self._window}); reverse every step, last first")
        if self._pending is None:  # the window's first piece
            # the window's loss weights, mask/B, made once for all its pieces
            self._scale = self.mask[s0 : w0 + self.chunk] / B
            self._pending = (c0, c1)
        else:
            self._pending = (c0, self._pending[1])
        h_rows = self._rows(B, self.xs.dtype).h
        if c0 < self._done:  # NOTE [readout rows]
            if c0 > s0 and not self._kept >> (c0 - 1 - w0) & 1:
                self._keep(c0 - 1, residuals[0][0])  # h_prev is the output of step c0 − 1
            lo, hi = c0, self._done
            while lo > s0 and self._kept >> (lo - 1 - w0) & 1:
                lo -= 1
            for t in range(c0, hi):
                if not self._kept >> (t - w0) & 1:
                    r = (t - w0) * B
                    if t + 1 < c1:  # h_t is step t + 1's h_prev: a copy, not a recomputation
                        np.copyto(h_rows[r : r + B], residuals[t + 1 - c0][0])
                    else:
                        self._kernels.output(self.cell, residuals[t - c0], h_rows[r : r + B])
            self._readout((lo - w0) * B, (hi - w0) * B, self.ys[lo:hi],
                          self._scale[lo - s0 : hi - s0])
            self._done = lo
        dstate = self._reverse_rows(self._prepared()[0], residuals, dstate, (c0 - w0) * B,
                                    readout=True)
        if c0 == s0:  # the window is done: add its gradients before forward steps reuse its rows
            self.finish()
            self._window, self._kept, self._done = w0 - self.chunk, 0, c0
            # a stored state n is the output of step n − 1: keep those the next window has
            for n in range(max(self._window, 0) + 1, c0 + 1):
                if n in self.stored:
                    self._keep(n - 1, self.stored[n][0])
        return dstate

    def windows(self, n0: int, n1: int) -> Iterator[tuple[int, int, int]]:
        """(c0, c1, w0): the pieces [c0, c1) of [n0, n1), last first, each inside the
        gradient window that starts at w0 (NOTE [gradient windows])."""
        T, C = self.xs.shape[0], self.chunk
        c1 = n1
        while c1 > n0:
            w0 = T - ((T - c1) // C + 1) * C  # start of the window holding step c1 − 1
            c0 = max(n0, w0)
            yield c0, c1, w0
            c1 = c0

    def reverse_step(self, t: int, res: Residuals, dstate: State) -> State:
        """Reverse step t of this run's sequence, loss included; return dL/dstate_t−1."""
        return self.reverse_steps(t, t + 1, [res], dstate)

    def reverse(self, res: Residuals, dstate: State, x: np.ndarray, y: np.ndarray | None,
                scale: np.ndarray | None) -> State:
        """Reverse one recorded step with input x; add its loss unless y is None.

        Reads the weights from ``self.params`` at every call, so a stream's caller may
        update them between steps; its gradients are complete when it returns.
        """
        B = x.shape[0]
        rows = self._rows(B, x.dtype)
        if y is not None:
            self._kernels.output(self.cell, res, rows.h[:B])
            self._readout(0, B, y[None], scale[None])
        dstate = self._reverse_rows(_weights(self.cell, self.params), [res], dstate, 0,
                                    readout=y is not None)
        self._weight_grads(0, B, x, readout=y is not None)
        return dstate

    def finish(self) -> None:
        """Add the weight gradients still waiting in the buffers (NOTE [gradient windows])."""
        if self._pending is not None:
            (lo, hi), w0 = self._pending, self._window
            self._pending = None
            B = self.xs.shape[1]
            self._weight_grads((lo - w0) * B, (hi - w0) * B, self.xs[lo:hi], readout=True)

    def _rows(self, B: int, dtype: np.dtype) -> _Rows:
        """The backward pass's chunk buffers, made on first use."""
        if self._rev is None:
            k, H = self._kernels, self.cell.n_hidden
            n, G = self.chunk * B, k.n_gates
            dxp = np.empty((G, n, H), dtype)
            self._rev = _Rows(dxp, dxp if k.bias_hh_in_projection else np.empty_like(dxp),
                              np.empty((n, H), dtype), np.empty((n, H), dtype),
                              np.empty((n, self.model.n_out), dtype), np.empty((n, H), dtype),
                              np.ones(n, dtype))
        return self._rev

    def _weight_grads(self, r0: int, r1: int, x: np.ndarray, readout: bool) -> None:
        """Add the gradients of every weight and bias from buffer rows [r0, r1)."""
        rows, g = self._rev, self.grads
        G, _, H = rows.dxp.shape
        dxp = rows.dxp[:, r0:r1]  # (G, K·B, H)
        dhp = dxp if rows.dhp is rows.dxp else rows.dhp[:, r0:r1]
        # block g of each (G·H, ·) weight's gradient is one product over all the rows
        g["weight_hh"] += np.matmul(dhp.transpose(0, 2, 1), rows.h_prev[r0:r1]).reshape(G * H, H)
        g["weight_ih"] += np.matmul(dxp.transpose(0, 2, 1),
                                    x.reshape(r1 - r0, -1)).reshape(G * H, -1)
        # NOTE [bias sums] A bias's gradient sums its rows; a product with a row of
        # ones does it 1.4 to 3.4 times faster than dxp.sum(axis=1), which walks the
        # (G, K·B, H) rows with a strided reduction (float32 and float64, G = 3 and 4,
        # K·B = 512; the most at H = 128, the least at H = 512)
        ones = rows.ones[: r1 - r0]
        dbias = np.matmul(ones, dxp).reshape(G * H)
        g["bias_ih"] += dbias
        g["bias_hh"] += dbias if dhp is dxp else np.matmul(ones, dhp).reshape(G * H)
        if readout:
            do = rows.do[r0:r1]  # (K·B, O)
            g["weight_out"] += np.matmul(do.T, rows.h[r0:r1])
            g["bias_out"] += np.matmul(ones, do)

    def _readout(self, r0: int, r1: int, y: np.ndarray, scale: np.ndarray) -> None:
        """Readout and loss of the steps whose outputs h_t are in rows [r0, r1), y (K, B,
        ...), scale (K, B): add their loss, write their dL/do_t and dL/dh_t rows
        (NOTE [where the loss is computed])."""
        p, rows = self.params, self._rev
        n = r1 - r0
        o = np.matmul(rows.h[r0:r1], p["weight_out"].T)  # (K·B, O)
        o += p["bias_out"]
        loss, do = self.model.step_loss(o, y.reshape((n,) + y.shape[2:]), scale.reshape(n))
        self.loss += loss
        rows.do[r0:r1] = do
        np.matmul(do, p["weight_out"], out=rows.dh[r0:r1])  # (K·B, H)

    def _reverse_rows(self, w, residuals: list[Residuals], dstate: State, r0: int,
                      readout: bool) -> State:
        """Reverse K consecutive steps, last first, writing their gradient rows from
        buffer row r0 on, adding dL/dh_t from the readout's rows where ``readout``; the
        caller adds the weight gradients (`_weight_grads`)."""
        cell, k, rows = self.cell, self._kernels, self._rev
        B = residuals[0][0].shape[0]
        for i in range(len(residuals) - 1, -1, -1):
            res = residuals[i]
            r = r0 + i * B
            if readout:
                dh = rows.dh[r : r + B]
                dh += dstate[0]
                dstate = (dh,) + dstate[1:]
            dstate = k.vjp(cell, w, res, dstate, rows.dxp[:, r : r + B], rows.dhp[:, r : r + B])
            rows.h_prev[r : r + B] = res[0]  # res[0] is h_prev for every kind
        self.backward_steps += len(residuals)
        return dstate

    def zero_adjoint(self, like: State) -> State:
        return tuple(np.zeros_like(a) for a in like)

    def stats(self, seconds: float, **extra: int) -> Stats:
        buffers = [*(self._fwd or ()), *(() if self._rev is None else self._rev.arrays())]
        workspace = sum(b.nbytes for b in buffers)
        return Stats(peak_bytes=self.peak, forward_steps=self.forward_steps,
                     backward_steps=self.backward_steps, seconds=seconds,
                     workspace_bytes=workspace, **extra)


def traced_allowance(model: Model, params: Params, batch: int, dtype: np.dtype,
                     held_items: int) -> int:
    """Bytes tracemalloc may see beyond ``peak_bytes``: see `Stats.traced_allowance`.

    With P the params' bytes, I the input width, G·H the gate width, O the readout width
    and C = CHUNK_STEPS, everything a run allocates besides what it holds for the
    backward pass:

    - 4·P: the grads; the executor's row-major copies of W_hhᵀ and of W_ihᵀ with its
      bias row (truncated instead keeps its running sum and the last update's grads);
      one weight-gradient product before it is added;
    - C·B·(3·G·H + 3·H + 4·O + I + 2) items of chunk buffers and their transients
      (inputs with their 1s and input projections; dxp and GRU's dhp rows; h_prev, h_t
      and dL/dh_t rows; the readout's outputs, loss gradients and the loss's
      temporaries; the 1s that sum rows), NOTE [chunked products];
    - 4·B·G·H items of gate constants (LSTM), laid out like one step's gates;
    - 16 step-sized (B, max(4H, G·H, O)) temporaries;
    - 1 KiB of Python object overhead per held state or step (array headers, tuples,
      dict entries), plus 256 KiB for the interpreter's own bookkeeping (its free lists
      of small objects fill once per process and tracemalloc sees them).
    """
    item = np.dtype(dtype).itemsize
    I, H, O = model.cell.n_in, model.cell.n_hidden, model.n_out
    GH = model.cell.n_gates * H
    step = batch * max(4 * H, GH, O) * item
    params_bytes = sum(p.nbytes for p in params.values())
    chunks = CHUNK_STEPS * batch * (3 * GH + 3 * H + 4 * O + I + 2) * item
    constants = 4 * batch * GH * item
    return 4 * params_bytes + chunks + constants + 16 * step + 1024 * held_items + 262144


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
    sizes = model.cell.sizes(B, xs.dtype)
    cost = simulate(actions, n_steps=T, **sizes)

    def run() -> Result:
        return _execute(actions, model, params, xs, ys, h0_, mask_, sizes, cost)

    return measure(run, model, params, B, xs.dtype) if trace_memory else run()


def _execute(actions: Iterable[Action], model: Model, params: Params, xs: np.ndarray,
             ys: np.ndarray, h0: State, mask: np.ndarray, sizes: dict[str, int],
             cost: Cost, resume: tuple[State, dict[int, State]] | None = None) -> Result:
    """Walk already validated actions (``sizes`` as `Cell.sizes`, ``cost`` from
    `simulate`); ``resume``: the working state and the stored states (held from the
    start) of a forward pass run elsewhere, e.g. `Online.stream`'s, which the actions
    continue. Stats carry the simulator's peak counts, and in
    ``stats.extra`` the wall seconds spent in forward steps (Advance, Record:
    ``forward_seconds``) and in backward steps (Reverse and the weight gradients:
    ``backward_seconds``), the rest being bookkeeping."""
    start = time.perf_counter()
    sweep = Sweep(model, params, xs, ys, mask)
    cell = model.cell
    state = h0
    stored = sweep.stored  # step -> the state stored there (Store)
    if resume is not None:
        state = resume[0]
        stored.update(resume[1])
        sweep.hold([a for s in resume[1].values() for a in s])
    residuals: dict[int, Residuals] = {}
    owned: dict[int, tuple[np.ndarray, ...]] = {}  # what each recorded step added
    dstate = sweep.zero_adjoint(h0)
    links = sizes["link_bytes"] > 0

    def new_residuals(t: int, state: State) -> Residuals:
        # NOTE [linked steps]: the same rule as `simulate`'s
        res, owned[t] = cell.enter(state, residuals.get(t - 1) if links else None)
        residuals[t] = res
        sweep.hold(owned[t])
        return res

    forward_seconds = backward_seconds = 0.0
    clock = time.perf_counter
    for a in actions:
        if isinstance(a, Advance):
            t0 = clock()
            state = sweep.advance(state, a.n0, a.n1)
            forward_seconds += clock() - t0
        elif isinstance(a, Record):
            t0 = clock()
            state = sweep.record(state, a.n0, a.n1, new_residuals)
            forward_seconds += clock() - t0
        elif isinstance(a, Reverse):
            t0 = clock()
            for c0, c1, w0 in sweep.windows(a.n0, a.n1):  # residuals die a piece at a time
                chunk = [residuals.pop(t) for t in range(c0, c1)]
                dstate = sweep.reverse_piece(c0, c1, w0, chunk, dstate)
                for t in range(c0, c1):
                    sweep.release(owned.pop(t))
            backward_seconds += clock() - t0
        elif isinstance(a, Store):
            stored[a.n] = tuple([s.copy() for s in state])
            sweep.hold(stored[a.n])
        elif isinstance(a, Restore):
            state = h0 if a.n == 0 else stored[a.n]
        elif isinstance(a, Free):
            sweep.release(stored.pop(a.n))
    t0 = time.perf_counter()
    sweep.finish()
    backward_seconds += time.perf_counter() - t0
    stats = sweep.stats(time.perf_counter() - start, **sizes,
                        peak_states=cost.peak_states, peak_residuals=cost.peak_residuals)
    # where the time went: cell steps forward (advance, record) and backward (reverse)
    stats.extra.update(forward_seconds=forward_seconds, backward_seconds=backward_seconds)
    return Result(sweep.loss, sweep.grads, dstate, stats)
