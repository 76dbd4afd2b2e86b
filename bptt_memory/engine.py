"""The numpy executor: walks a schedule's actions with real arrays, for any protocol cell.

Every exact strategy (full, uniform, binomial, optimal) is a schedule run by `execute`.
The executor never decides anything: what is stored, recomputed and reversed is all in
the schedule, which `simulate` has checked before a single array is touched. `walk`
(bptt_memory/walk.py) dispatches the actions and keeps the books (stored states,
residuals, bytes held); this module does the work, in small named pieces: the cell's
`Kernels` (its steps, `Cell.kernels`), `_Readout` (the readout and loss of a window's
steps), and `_Run`, which walks the steps and the gradient windows.

NOTE [where the loss is computed] The readout and loss of step t are evaluated in the
backward pass, at the latest when step t is reversed, from h_t read off its residuals
or kept from a forward pass through step t (NOTE [readout rows]). Each step is read out
exactly once, so the loss is counted once; forward steps at most copy h_t, and never
compute the readout.

NOTE [memory accounting] The ledger adds and subtracts the `nbytes` of the real arrays a
strategy keeps for the backward pass (stored states, residuals); `Stats.peak_bytes` is
the peak of that running sum. Tests check it against the analytic formula per cell and
against `simulate`'s prediction, and tracemalloc checks it from outside.

NOTE [chunked products] Only the recurrence is sequential. A cell's `Kernels` may batch
the rest over up to CHUNK_STEPS consecutive steps (the built-in cells do: the input
projection x·W_ihᵀ + b of a chunk is one matrix product, and the gradients of every
weight and bias one product per window of steps), and the readout, loss and dL/dh_t of
up to a chunk of outputs h_t are one product each (NOTE [readout rows]). This changes
only the order in which float sums are taken, never what is held between steps.
"""

from __future__ import annotations

import time
import tracemalloc
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from .cell import Kernels, Params, State
from .model import Model, Result, Stats, check_model
from .profile import Profile, check_profile
from .schedule import Action, simulate
from .walk import Executor, Ledger, walk

__all__ = ["execute", "CHUNK_STEPS", "traced_allowance", "measure"]

#: Steps handled per matrix product: the input projection going forward; the readout,
#: loss and weight gradients going backward. Both use buffers of this many steps, made
#: once per run (transients, counted in `traced_allowance`, not in peak_bytes).
CHUNK_STEPS = 16


class _Readout:
    """The readout and loss of up to a chunk of steps, one product each, over rows of
    buffers made once per run: step t's at (t − window start)·B (NOTE [readout rows])."""

    def __init__(self, model: Model, params: Params, grads: Params, rows: int,
                 dtype: np.dtype, matmul: Callable[..., np.ndarray]) -> None:
        self.model, self.params, self.grads = model, params, grads
        self.matmul = matmul  # np.matmul, or a Profile's wrapper
        H, O = model.cell.output_size, model.n_out
        self.h = np.empty((rows, H), dtype)  # outputs h_t read out
        self.do = np.empty((rows, O), dtype)  # dL/do_t
        self.dh = np.empty((rows, H), dtype)  # dL/dh_t from the readout
        self.ones = np.ones(rows, dtype)  # whose product with rows sums them
        self.loss = 0.0

    def read(self, r0: int, r1: int, y: np.ndarray, scale: np.ndarray) -> None:
        """Loss of the steps whose outputs are in rows [r0, r1), y (K, B, ...), scale
        (K, B); write their dL/do_t and dL/dh_t rows."""
        n = r1 - r0
        o = self.model.readout(self.params, self.h[r0:r1], matmul=self.matmul)  # (K·B, O)
        loss, do = self.model.step_loss(o, y.reshape((n,) + y.shape[2:]), scale.reshape(n))
        self.loss += loss
        self.do[r0:r1] = do
        self.model.readout_input_grad(self.params, do, out=self.dh[r0:r1], matmul=self.matmul)

    def flush(self, r0: int, r1: int) -> None:
        self.model.readout_grads(self.h[r0:r1], self.do[r0:r1], self.ones[: r1 - r0],
                                 self.grads, matmul=self.matmul)

    def workspace(self) -> list[np.ndarray]:
        return [self.h, self.do, self.dh, self.ones]


class _Run(Executor):
    """One run of a schedule on numpy arrays: forward steps a chunk at a time, reverse
    steps in gradient windows (NOTE [gradient windows]), with the ledger's books; with
    a `Profile`, each action timed and every product the kernels can route through its
    `Profile.matmul`."""

    def __init__(self, model: Model, params: Params, xs: np.ndarray, ys: np.ndarray,
                 mask: np.ndarray, links: bool, profile: Profile | None = None) -> None:
        self.ledger = Ledger()
        self.model, self.cell, self.params = model, model.cell, params
        self.xs, self.ys, self.mask = xs, ys, mask  # mask/B is taken a window at a time
        T, B = xs.shape[:2]
        self.T, self.B = T, B
        self.chunk = min(CHUNK_STEPS, T)
        self.links = links
        self.grads = {k: np.zeros_like(v) for k, v in params.items()}
        self.kernels: Kernels = self.cell.kernels(params, B, self.grads, self.chunk * B)
        self.profile = profile
        matmul: Callable[..., np.ndarray] = np.matmul
        if profile is not None and profile.products:
            matmul = profile.matmul
            if not self.kernels.route_products(matmul):
                profile.not_measured(
                    f"{self.cell.name}: its kernels ({type(self.kernels).__name__}) make their "
                    "products without a matmul to route (Kernels.route_products); only the "
                    "readout's products were seen")
        self.readout = _Readout(model, params, self.grads, self.chunk * B, xs.dtype, matmul)
        self._pending: tuple[int, int] | None = None  # steps whose gradients wait in rows
        # NOTE [readout rows]: the window whose outputs forward steps keep (it holds the
        # last step not yet reversed), which of its rows hold a kept h_t (bits, from the
        # window start), and the first of its steps already read out
        self._window, self._kept, self._done = T - self.chunk, 0, T

    # -- forward -------------------------------------------------------------------
    def _steps(self, state: State, n0: int, n1: int, record: bool) -> State:
        """Run steps [n0, n1); keep the outputs the readout will want (NOTE [readout rows])."""
        k, ledger, C = self.kernels, self.ledger, self.chunk
        keep0, keep1 = max(n0, self._window, 0), min(n1, self._done)
        for c0 in range(n0, n1, C):
            c1 = min(c0 + C, n1)
            us = k.project(self.xs[c0:c1])
            for t in range(c0, c1):
                if record:
                    previous = ledger.residuals.get(t - 1) if self.links else None
                    state, res, nbytes = k.record(us[t - c0], state, previous)
                    ledger.keep(t, res, nbytes)
                else:
                    state = k.step(us[t - c0], state)
                if keep0 <= t < keep1:
                    self._keep(t, self.cell.output(state))
        return state

    def advance(self, state: State, n0: int, n1: int) -> State:
        if self.profile is None:
            return self._steps(state, n0, n1, record=False)
        t0 = time.perf_counter()
        state = self._steps(state, n0, n1, record=False)
        self.profile.forward_seconds += time.perf_counter() - t0
        return state

    def record(self, state: State, n0: int, n1: int) -> State:
        if self.profile is None:
            return self._steps(state, n0, n1, record=True)
        t0 = time.perf_counter()
        state = self._steps(state, n0, n1, record=True)
        self.profile.forward_seconds += time.perf_counter() - t0
        return state

    def copy(self, state: State) -> tuple[State, int]:
        stored = tuple([s.copy() for s in state])
        return stored, sum([s.nbytes for s in stored])

    def _keep(self, t: int, h: np.ndarray) -> None:
        """Copy step t's output h_t into the window's h rows (NOTE [readout rows])."""
        r = (t - self._window) * self.B
        self.readout.h[r : r + self.B] = h
        self._kept |= 1 << (t - self._window)

    # -- backward ------------------------------------------------------------------
    def reverse(self, n0: int, n1: int, dstate: Any) -> Any:
        """Reverse steps n1−1 … n0, losses included, a piece at a time; residuals die
        as soon as their piece is reversed.

        NOTE [gradient windows] Steps are reversed from T − 1 down to 0, whatever actions
        do it, so the weight gradients are gathered in windows of `chunk` steps on a grid
        fixed from the end, [T − (j+1)·chunk, T − j·chunk): step t's rows (its gradient
        rows in the cell's kernels, h_t, dL/dh_t and dL/do_t) sit in the buffers at
        (t − window start)·B, and one matrix product per window adds them once its last
        step is reversed (or at `finish`). A Reverse of one step (binomial) thus costs
        no more products than one of many.
        """
        if self.profile is None:
            return self._reverse(n0, n1, dstate)
        t0 = time.perf_counter()
        dstate = self._reverse(n0, n1, dstate)
        self.profile.backward_seconds += time.perf_counter() - t0
        return dstate

    def _reverse(self, n0: int, n1: int, dstate: Any) -> Any:
        for c0, c1, w0 in self._windows(n0, n1):
            residuals = [self.ledger.residuals[t] for t in range(c0, c1)]
            dstate = self._reverse_piece(c0, c1, w0, residuals, dstate)
            for t in range(c0, c1):
                self.ledger.drop(t)
        return dstate

    def _windows(self, n0: int, n1: int) -> Iterator[tuple[int, int, int]]:
        """(c0, c1, w0): the pieces [c0, c1) of [n0, n1), last first, each inside the
        gradient window that starts at w0 (NOTE [gradient windows])."""
        T, C = self.T, self.chunk
        c1 = n1
        while c1 > n0:
            w0 = T - ((T - c1) // C + 1) * C  # start of the window holding step c1 − 1
            c0 = max(n0, w0)
            yield c0, c1, w0
            c1 = c0

    def _reverse_piece(self, c0: int, c1: int, w0: int, residuals: list, dstate: State) -> State:
        """Reverse steps c1−1 … c0, all in the gradient window that starts at w0.

        NOTE [readout rows] The readout and loss of step t need only its output h_t, and
        the outputs of the current window's steps pass by before they are reversed: a
        forward step (advance or record) through one not yet read out copies its h_t into
        the window's h rows (`_keep`, B·H into the workspace), and so does each stored
        state (the output of the step before it) when the window starts. A piece whose
        steps are not yet read out then reads out, in one product each, its own steps
        and every kept step just below them. Where its own step t was not kept, h_t is
        read off step t + 1's residuals when the piece holds step t + 1 and the cell
        can (`Kernels.entering_output`: a copy, where an LSTM would recompute a tanh),
        else off step t's own (`Kernels.output`). Reversing step t also keeps h_t−1
        where its residuals hold it. binomial and optimal reverse one step at a time,
        but rebuild its state by passing through the steps before it, so they read out
        a few steps or a whole window at once, nearly as full() does. Each step is read
        out once (the rows already read out are never kept again), and whichever pass
        kept h_t, it computed the same h_t.
        """
        B, k, rows = self.B, self.kernels, self.readout
        s0 = max(w0, 0)  # the first window starts before step 0 when chunk does not divide T
        if w0 != self._window:
            raise ValueError(f"steps {c0}..{c1 - 1} are not in the window being reversed "
                             f"(from {self._window}); reverse every step, last first")
        if self._pending is None:  # the window's first piece
            self._scale = self.mask[s0 : w0 + self.chunk] / B  # its loss weights, mask/B
            self._pending = (c0, c1)
        else:
            self._pending = (c0, self._pending[1])
        if c0 < self._done:  # NOTE [readout rows]
            if c0 > s0 and not self._kept >> (c0 - 1 - w0) & 1:
                h_prev = k.entering_output(residuals[0])
                if h_prev is not None:
                    self._keep(c0 - 1, h_prev)
            lo, hi = c0, self._done
            while lo > s0 and self._kept >> (lo - 1 - w0) & 1:
                lo -= 1
            for t in range(c0, hi):
                if not self._kept >> (t - w0) & 1:
                    r = (t - w0) * B
                    h = k.entering_output(residuals[t + 1 - c0]) if t + 1 < c1 else None
                    if h is not None:
                        np.copyto(rows.h[r : r + B], h)
                    else:
                        k.output(residuals[t - c0], rows.h[r : r + B])
            rows.read((lo - w0) * B, (hi - w0) * B, self.ys[lo:hi], self._scale[lo - s0 : hi - s0])
            self._done = lo
        for i in range(len(residuals) - 1, -1, -1):
            t, r = c0 + i, (c0 + i - w0) * B
            dstate = k.add_output_grad(rows.dh[r : r + B], dstate)
            dstate = k.vjp(r, self.xs[t], residuals[i], dstate)
        if c0 == s0:  # the window is done: add its gradients before forward steps reuse its rows
            self.finish()
            self._window, self._kept, self._done = w0 - self.chunk, 0, c0
            # a stored state n is the output of step n − 1: keep those the next window has
            for n in range(max(self._window, 0) + 1, c0 + 1):
                if n in self.ledger.stored:
                    self._keep(n - 1, self.cell.output(self.ledger.stored[n]))
        return dstate

    def finish(self) -> None:
        """Add the gradients still waiting in the buffers (NOTE [gradient windows])."""
        if self._pending is not None:
            (lo, hi), w0 = self._pending, self._window
            self._pending = None
            r0, r1 = (lo - w0) * self.B, (hi - w0) * self.B
            self.kernels.flush(r0, r1, self.xs[lo:hi])
            self.readout.flush(r0, r1)

    def workspace_bytes(self) -> int:
        return sum(a.nbytes for a in self.kernels.workspace() + self.readout.workspace())


def traced_allowance(model: Model, params: Params, batch: int, dtype: np.dtype,
                     held_items: int, workspace_bytes: int) -> int:
    """Bytes tracemalloc may see beyond ``peak_bytes``: see `Stats.traced_allowance`.

    Everything a run allocates besides what it holds for the backward pass, with P the
    params' bytes, W the executor's reused buffers (`Stats.workspace_bytes`) and S the
    larger of one step's residuals and one step's readout rows:

    - 4·P: the grads; the kernels' copies of the weights; one gradient product before it
      is added;
    - 2·W: the buffers, and as much again of transients the size of a chunk's rows;
    - 16·S: step-sized temporaries;
    - 1 KiB of Python object overhead per held state or step (array headers, tuples,
      dict entries), plus 256 KiB for the interpreter's own bookkeeping (its free lists
      of small objects fill once per process and tracemalloc sees them).
    """
    item = np.dtype(dtype).itemsize
    cell = model.cell
    step = max(cell.residual_bytes(batch, dtype), cell.state_bytes(batch, dtype),
               batch * (4 * cell.output_size + model.n_out) * item)
    params_bytes = sum(p.nbytes for p in params.values())
    return 4 * params_bytes + 2 * workspace_bytes + 16 * step + 1024 * held_items + 262144


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
                                          s.peak_states + s.peak_residuals, s.workspace_bytes)
    return res


def execute(schedule: Iterable[Action], model: Model, params: Params, xs: np.ndarray,
            ys: np.ndarray, *, h0: State | np.ndarray | None = None,
            mask: np.ndarray | None = None, trace_memory: bool = False,
            profile: Profile | None = None) -> Result:
    """Run a hand-written or generated schedule with real arrays; exact gradients.

    The schedule is checked by `simulate` first (on the sequence's T), so an invalid
    schedule raises `ScheduleError` before any step runs. ``profile``: a `Profile` to
    fill with where the run's time went (off by default).

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
    check_model(model, "execute")
    profile = check_profile(profile, "execute")
    xs, ys, h0_, mask_ = model.check(params, xs, ys, h0, mask)
    T, B = xs.shape[:2]
    actions = tuple(schedule)
    sizes = model.cell.sizes(B, xs.dtype)
    simulate(actions, n_steps=T, **sizes)  # a ScheduleError before any step runs

    def run() -> Result:
        return _execute(actions, model, params, xs, ys, h0_, mask_, sizes, profile=profile)

    return measure(run, model, params, B, xs.dtype) if trace_memory else run()


def _execute(actions: Iterable[Action], model: Model, params: Params, xs: np.ndarray,
             ys: np.ndarray, h0: State, mask: np.ndarray, sizes: dict[str, int],
             resume: tuple[State, dict[int, State]] | None = None,
             profile: Profile | None = None) -> Result:
    """Walk actions `simulate` has validated (``sizes`` as `Cell.sizes`); ``resume``: the
    working state and the stored states (held from the start) of a forward pass run
    elsewhere, e.g. `Online.stream`'s, which the actions continue. Stats carry the
    ledger's measured peaks (tests hold them to the simulator's). ``profile``: checked
    and cleared by the caller (`check_profile`); this run's times are added to it."""
    start = time.perf_counter()
    run = _Run(model, params, xs, ys, mask, links=sizes["link_bytes"] > 0, profile=profile)
    state = None
    if resume is not None:
        state = resume[0]
        for n, s in resume[1].items():
            run.ledger.store(n, s, sum([a.nbytes for a in s]))
    dh0 = walk(actions, run, h0, tuple(np.zeros_like(a) for a in h0), start=state)
    if profile is None:
        run.finish()
    else:  # the last window's weight gradients: backward work
        t0 = time.perf_counter()
        run.finish()
        profile.backward_seconds += time.perf_counter() - t0
    ledger = run.ledger
    stats = Stats(peak_bytes=ledger.peak, forward_steps=ledger.forward_steps,
                  backward_steps=ledger.backward_steps, seconds=time.perf_counter() - start,
                  workspace_bytes=run.workspace_bytes(), peak_states=ledger.peak_states,
                  peak_residuals=ledger.peak_residuals, state_bytes=sizes["state_bytes"],
                  residual_bytes=sizes["residual_bytes"], link_bytes=sizes["link_bytes"])
    return Result(run.readout.loss, run.grads, dh0, stats)
