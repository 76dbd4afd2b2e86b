"""Backward strategies: one call shape, different answers to "what is kept?".

Every strategy is a small frozen object built by a lowercase factory and run as
``strategy.run(model, params, xs, ys, *, h0=None, mask=None, trace_memory=False,
profile=None)``.
Exact strategies produce a schedule (`bptt_memory.schedule`) that the one executor
runs; `truncated` keeps a ring buffer of the last k2 steps instead and returns a biased
gradient by design.

References: Williams & Peng 1990 (TBPTT(k1, k2)); Chen et al. 2016, "Training Deep Nets
with Sublinear Memory Cost" (uniform checkpoints); checkpointing policies in
`bptt_memory.checkpoint`.
"""

from __future__ import annotations

import collections
import itertools
import math
import sys
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, NamedTuple

import numpy as np

from .cell import Params, PlainKernels, State
from .cell import check_size as _check_size
from .cell import run_bytes as _run_bytes
from .engine import _execute, measure
from .model import Model, Result, Stats, check_model
from .profile import Profile, check_profile
from .schedule import Action, Advance, Cost, Free, Record, Restore, Reverse, Store, simulate
from .walk import Ledger

__all__ = ["Strategy", "ScheduledStrategy", "full", "truncated", "uniform", "best_uniform", "Full",
           "Truncated", "Uniform", "Update", "MAX_SCHEDULE_STEPS", "plan_cache_bytes",
           "clear_plan_caches"]

#: `schedule()` returns a tuple of actions, O(T) of them; beyond this many steps it
#: refuses, and `iter_schedule()` (lazy, O(1) memory for the built-in policies) serves.
MAX_SCHEDULE_STEPS = 10**7


class Strategy(ABC):
    """The interface every backward strategy shares."""

    @property
    @abstractmethod
    def name(self) -> str:
        """A short label such as ``binomial(slots=8)``."""

    @abstractmethod
    def run(self, model: Model, params: Params, xs: np.ndarray, ys: np.ndarray, *,
            h0: State | np.ndarray | None = None, mask: np.ndarray | None = None,
            trace_memory: bool = False, profile: Profile | None = None) -> Result:
        """Loss, gradients and `Stats` of the sequence (xs, ys).

        Args:
            xs: (T, B, n_in) inputs, same float dtype as params.
            ys: (T, B, n_out) targets for mse; (T, B) int labels for cross_entropy.
            h0: initial state, a tuple of (B, H) arrays (or one array); None means zeros.
            mask: (T, B) weights of each step's loss; None means all ones.
            trace_memory: also measure the run's peak with tracemalloc
                (``stats.traced_peak_bytes``); slower.
            profile: a `Profile` to fill with where the run's time went (seconds in
                forward and backward steps, matrix products); None, the default,
                times nothing.
        """

    @abstractmethod
    def cost(self, n_steps: int, state_bytes: int | None = None,
             residual_bytes: int | None = None, link_bytes: int = 0) -> Cost:
        """What a run on n_steps would do and hold, without running it: forward and
        backward steps, peak stored states and recorded steps, and peak bytes (None when
        the sizes are not given); the sizes as ``**cell.sizes(B, dtype)``.

        Every strategy prices itself this way, so planners never branch on its type
        (`bptt_memory.compare.plan`). Built-in strategies use closed forms where they
        exist (no loop over the steps); `Cost.actions` is None where it is not counted.
        """


def _check_sizes(where: str, state_bytes: int | None, residual_bytes: int | None,
                 link_bytes: int) -> None:
    if (state_bytes is None) != (residual_bytes is None):
        raise ValueError(f"{where}: give both state_bytes and residual_bytes, or neither")
    if state_bytes is not None:
        _check_size(where, "state_bytes", state_bytes)
        _check_size(where, "residual_bytes", residual_bytes)
    rb = residual_bytes or 0
    if (isinstance(link_bytes, bool) or not isinstance(link_bytes, (int, np.integer))
            or not 0 <= link_bytes <= max(rb - 1, 0)):
        raise ValueError(f"{where}(link_bytes={link_bytes!r}): needs an int from 0 to below "
                         "residual_bytes, e.g. cell.link_bytes(B, dtype)")


def _check_materialise(where: str, n_steps: int) -> None:
    """Refuse a tuple of O(n_steps) actions past MAX_SCHEDULE_STEPS: `iter_schedule` serves."""
    if n_steps > MAX_SCHEDULE_STEPS:
        raise ValueError(
            f"{where}(n_steps={n_steps}): a tuple of actions for more than "
            f"{MAX_SCHEDULE_STEPS:.0e} steps would not fit in memory; use "
            "iter_schedule(n_steps, ...), which generates them lazily, or cost(n_steps, ...) "
            "for the totals"
        )


class ScheduledStrategy(Strategy):
    """An exact strategy: it only decides a schedule; the executor runs it."""

    @abstractmethod
    def iter_schedule(self, n_steps: int, state_bytes: int | None = None,
                      residual_bytes: int | None = None, link_bytes: int = 0) -> Iterator[Action]:
        """The actions for a sequence of n_steps, generated lazily without touching arrays."""

    def schedule(self, n_steps: int, state_bytes: int | None = None,
                 residual_bytes: int | None = None, link_bytes: int = 0) -> tuple[Action, ...]:
        """`iter_schedule`'s actions as a tuple, refused past MAX_SCHEDULE_STEPS steps."""
        _check_materialise(f"{self.name}.schedule", _check_steps(f"{self.name}.schedule", n_steps))
        return tuple(self.iter_schedule(n_steps, state_bytes, residual_bytes, link_bytes))

    def cost(self, n_steps: int, state_bytes: int | None = None,
             residual_bytes: int | None = None, link_bytes: int = 0) -> Cost:
        """`Strategy.cost`; by default `simulate` walks the schedule (O(actions)): the
        built-in policies override it with their closed forms."""
        T = _check_steps(f"{self.name}.cost", n_steps)
        if state_bytes is None or residual_bytes is None:
            return simulate(self.iter_schedule(T), n_steps=T)
        return simulate(self.iter_schedule(T, state_bytes, residual_bytes, link_bytes), n_steps=T,
                        state_bytes=state_bytes, residual_bytes=residual_bytes,
                        link_bytes=link_bytes)

    def run(self, model: Model, params: Params, xs: np.ndarray, ys: np.ndarray, *,
            h0: State | np.ndarray | None = None, mask: np.ndarray | None = None,
            trace_memory: bool = False, profile: Profile | None = None) -> Result:
        check_model(model, f"{self.name}.run")
        profile = check_profile(profile, f"{self.name}.run")
        xs, ys, h0_, mask_ = model.check(params, xs, ys, h0, mask)
        T, B = xs.shape[:2]
        sizes = model.cell.sizes(B, xs.dtype)
        actions, _ = _PLANS.get(self, T, sizes)  # planned and checked once per shape

        def run() -> Result:
            plan = self.iter_schedule(T, **sizes) if actions is None else actions
            res = _execute(plan, model, params, xs, ys, h0_, mask_, sizes, profile=profile)
            res.stats.extra["plan_cache_bytes"] = plan_cache_bytes()
            return res

        return measure(run, model, params, B, xs.dtype) if trace_memory else run()


class _PlanMemo:
    """Memo of checked plans per (strategy, T, sizes): (actions or None, `Cost`),
    bounded in bytes.

    NOTE [plan memo] A training loop runs the same strategy on sequences of the same
    shape again and again; planning (optimal's programme, then `simulate` walking every
    action) is pure, so it is done once. Plans of more than `max_actions` actions are
    not kept (binomial at T = 10⁶ has millions): their actions are generated again,
    lazily, for the executor, and only their `Cost` is kept. The oldest entries go once
    the kept actions would take more than `max_bytes` (sys.getsizeof of each action and
    its fields). A pure function's cache: what `run` does never depends on what ran
    before, only how long planning takes; `clear_plan_caches` empties it.
    """

    def __init__(self, max_entries: int = 16, max_actions: int = 100_000,
                 max_bytes: int = 32 << 20) -> None:
        self._max, self._max_actions, self.max_bytes = max_entries, max_actions, max_bytes
        self._entries: dict[tuple, tuple[tuple[Action, ...] | None, Cost, int]] = {}

    def get(self, strategy: ScheduledStrategy, T: int, sizes: dict[str, int]
            ) -> tuple[tuple[Action, ...] | None, Cost]:
        key: tuple | None = (strategy, T, *sizes.values())
        try:
            hash(key)
        except TypeError:  # a user's strategy that is not a frozen dataclass: plan each time
            key = None
        if key is None or key not in self._entries:
            schedule = strategy.iter_schedule(T, **sizes)
            head = tuple(itertools.islice(schedule, self._max_actions + 1))
            entry: tuple[tuple[Action, ...] | None, Cost, int]
            if len(head) <= self._max_actions:
                entry = (head, simulate(head, n_steps=T, **sizes), _tuple_bytes(head))
            else:
                entry = (None, simulate(itertools.chain(head, schedule), n_steps=T, **sizes), 0)
            if key is None or entry[2] > self.max_bytes:
                return entry[:2]
            while self._entries and (len(self._entries) >= self._max
                                     or self.nbytes() + entry[2] > self.max_bytes):
                del self._entries[next(iter(self._entries))]  # the oldest
            self._entries[key] = entry
        return self._entries[key][:2]

    def nbytes(self) -> int:
        return sum(e[2] for e in self._entries.values())

    def clear(self) -> None:
        self._entries = {}


def _tuple_bytes(actions: tuple[Action, ...]) -> int:
    """Bytes a tuple of actions holds: the tuple, each action, its field dict and fields."""
    return sys.getsizeof(actions) + sum(
        sys.getsizeof(a) + sys.getsizeof(a.__dict__)
        + sum(sys.getsizeof(v) for v in a.__dict__.values()) for a in actions)


_PLANS = _PlanMemo()


def plan_cache_bytes() -> int:
    """Bytes held by the planning caches: checked plans (NOTE [plan memo]) and optimal's
    tables (`bptt_memory.checkpoint`), both bounded. A run reports it beside its Stats,
    in ``stats.extra["plan_cache_bytes"]``: memory the user pays for, though no run holds
    it for its backward pass.

    >>> clear_plan_caches(); plan_cache_bytes()
    0
    """
    from .checkpoint import _MEMO  # checkpoint imports this module

    return _PLANS.nbytes() + _MEMO.nbytes()


def clear_plan_caches() -> None:
    """Empty the planning caches (`plan_cache_bytes`); later runs plan again."""
    from .checkpoint import _MEMO

    _PLANS.clear()
    _MEMO.clear()


def _check_steps(where: str, n_steps: object) -> int:
    _check_size(where, "n_steps", n_steps)
    return int(n_steps)  # type: ignore[call-overload]


# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Full(ScheduledStrategy):
    """Build with `full`."""

    @property
    def name(self) -> str:
        return "full()"

    def iter_schedule(self, n_steps: int, state_bytes: int | None = None,
                      residual_bytes: int | None = None, link_bytes: int = 0) -> Iterator[Action]:
        T = _check_steps("full().schedule", n_steps)
        return iter((Record(0, T), Reverse(0, T)))

    def cost(self, n_steps: int, state_bytes: int | None = None,
             residual_bytes: int | None = None, link_bytes: int = 0) -> Cost:
        T = _check_steps("full().cost", n_steps)
        _check_sizes("full().cost", state_bytes, residual_bytes, link_bytes)
        peak = None if residual_bytes is None else _run_bytes(T, residual_bytes, link_bytes)
        return Cost(T, T, T, 0, T, peak, 2)


def full() -> Full:
    """Store every step's residuals going forward, then backpropagate once.

    The fastest exact strategy (T forward steps, T backward steps) and the most
    memory-hungry: peak_bytes = cell.recorded_bytes(T, B, dtype), which is
    T × cell.residual_bytes(B, dtype) less (T − 1) × cell.link_bytes(B, dtype)
    (NOTE [linked steps]).

    >>> full().schedule(n_steps=4)
    (Record(n0=0, n1=4), Reverse(n0=0, n1=4))
    """
    return Full()


# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Uniform(ScheduledStrategy):
    """Build with `uniform`."""

    every: int | None = None

    def __post_init__(self) -> None:
        if self.every is not None:
            _check_size("uniform(every=...)", "every", self.every)
            object.__setattr__(self, "every", int(self.every))  # numpy ints become ints

    @property
    def name(self) -> str:
        return f"uniform(every={self.every})"

    def segment(self, n_steps: int) -> int:
        """k: the given `every`, or round(√T) when it is None."""
        return self.every if self.every is not None else max(1, round(math.sqrt(n_steps)))

    def forward_steps(self, n_steps: int) -> int:
        """T + k·(m − 1) with m = ⌈T/k⌉ segments: all but the last run twice."""
        T = _check_steps("uniform().forward_steps", n_steps)
        k = self.segment(T)
        return T + k * (-(-T // k) - 1)

    def peak_bytes(self, n_steps: int, state_bytes: int, residual_bytes: int,
                   link_bytes: int = 0) -> int:
        """max(m − 2, 0) stored states and one segment of min(k, T) steps recorded in one
        run, its steps after the first linked (NOTE [linked steps]); what `simulate` finds."""
        T = _check_steps("uniform().peak_bytes", n_steps)
        k = min(self.segment(T), T)
        stored = max(-(-T // k) - 2, 0) * state_bytes
        return stored + _run_bytes(k, residual_bytes, link_bytes)

    def cost(self, n_steps: int, state_bytes: int | None = None,
             residual_bytes: int | None = None, link_bytes: int = 0) -> Cost:
        """`Strategy.cost` from the closed forms of `uniform`'s docstring."""
        T = _check_steps("uniform().cost", n_steps)
        _check_sizes("uniform().cost", state_bytes, residual_bytes, link_bytes)
        k = min(self.segment(T), T)
        m = -(-T // k)
        peak = (None if state_bytes is None or residual_bytes is None
                else self.peak_bytes(T, state_bytes, residual_bytes, link_bytes))
        # per segment but the last: store (not the first), advance, later restore,
        # record, reverse, free (not the first); the last: record, reverse
        actions = 2 + (m - 1) * 4 + 2 * max(m - 2, 0)
        return Cost(T, self.forward_steps(T), T, max(m - 2, 0), k, peak, actions)

    def iter_schedule(self, n_steps: int, state_bytes: int | None = None,
                      residual_bytes: int | None = None, link_bytes: int = 0) -> Iterator[Action]:
        T = _check_steps("uniform().schedule", n_steps)
        k = self.segment(T)
        starts = range(0, T, k)  # segment j is [starts[j], min(starts[j] + k, T)); lazy
        for n0 in starts[:-1]:
            if n0:
                yield Store(n0)
            yield Advance(n0, n0 + k)
        for n0 in reversed(starts):
            n1 = min(n0 + k, T)
            if n0 != starts[-1]:
                yield Restore(n0)
            yield Record(n0, n1)
            yield Reverse(n0, n1)
            if n0 and n0 != starts[-1]:
                yield Free(n0)


def uniform(every: int | None = None) -> Uniform:
    """Chen et al.'s √T checkpointing: trades one extra forward sweep for O(√T) memory.

    Stores the state entering every k-th step (k = `every`, or round(√T)), then reverses
    segment by segment, recomputing each segment once while recording its residuals.
    With m = ⌈T/k⌉ segments:

    - forward_steps = T + k·(m − 1)  (every segment but the last is run twice)
    - peak stored states = m − 2 for m ≥ 2 (boundary 0 is h0 and the last segment
      starts from the working state, so neither is stored), else 0
    - peak recorded steps = min(k, T)

    >>> from bptt_memory import simulate
    >>> simulate(uniform(every=3).schedule(n_steps=10)).forward_steps   # 10 + 3·3
    19
    """
    return Uniform(every)


def best_uniform(n_steps: int, budget_bytes: int, state_bytes: int, residual_bytes: int,
                 link_bytes: int = 0) -> Uniform | None:
    """The uniform(every=k) with the fewest forward steps (then the least memory) whose
    peak fits budget_bytes, or None when none does; from the closed forms, no schedule.

    >>> # 8 states + 10 steps:
    >>> best_uniform(100, budget_bytes=20 * 8, state_bytes=8, residual_bytes=8)
    Uniform(every=10)
    """
    T = _check_steps("best_uniform", n_steps)
    # NOTE [uniform segments] For a number of segments m = ⌈T/k⌉, both the forward steps
    # T + k·(m − 1) and the peak grow with k, so only the smallest k with ⌈T/k⌉ = m can
    # win. Those k are O(√T) (k <= √T, or m <= √T): the loop jumps from one to the next.
    best = None
    k = 1
    while k <= T:
        m = -(-T // k)
        u = Uniform(k)
        peak = u.peak_bytes(T, state_bytes, residual_bytes, link_bytes)
        if peak <= budget_bytes:
            key = (T + k * (m - 1), peak, k)
            best = key if best is None or key < best else best
        if m == 1:
            break
        k = -(-T // (m - 1))  # the smallest k with ⌈T/k⌉ <= m − 1
    return None if best is None else Uniform(best[2])


# --------------------------------------------------------------------------------------


class Update(NamedTuple):
    """One TBPTT update point: the steps it covers and their gradient."""

    t: int  # steps 1 … t have been seen; this update closes at step t
    loss: float  # loss of steps (previous update point, t]
    grads: Params
    grad_h0: State | None  # gradient w.r.t. h0 when the window reached it, else None
    backward_steps: int


@dataclass(frozen=True)
class Truncated(Strategy):
    """Build with `truncated`."""

    k1: int
    k2: int

    def __post_init__(self) -> None:
        _check_size("truncated(k1=...)", "k1", self.k1)
        _check_size("truncated(k2=...)", "k2", self.k2)
        object.__setattr__(self, "k1", int(self.k1))
        object.__setattr__(self, "k2", int(self.k2))
        if self.k2 < self.k1:
            raise ValueError(
                f"truncated(k1={self.k1}, k2={self.k2}): k2 < k1 would drop the losses of "
                "steps no window covers; use k2 >= k1"
            )

    @property
    def name(self) -> str:
        return f"truncated(k1={self.k1}, k2={self.k2})"

    def cost(self, n_steps: int, state_bytes: int | None = None,
             residual_bytes: int | None = None, link_bytes: int = 0) -> Cost:
        """`Strategy.cost`: T forward steps; at update point t (every k1 steps and at the
        end) min(t, k2) backward steps (NOTE [tbptt window]); a ring of min(k2, T) whole
        recorded steps (ring entries are not linked), no stored state. Closed form."""
        T = _check_steps("truncated().cost", n_steps)
        _check_sizes("truncated().cost", state_bytes, residual_bytes, link_bytes)
        k1, k2 = self.k1, self.k2
        J = T // k1  # update points j·k1, j = 1 … J; then T itself if k1 does not divide T
        J0 = min(J, k2 // k1)  # those whose window j·k1 still fits in k2
        backward = k1 * J0 * (J0 + 1) // 2 + (J - J0) * k2 + (min(T, k2) if T % k1 else 0)
        ring = min(k2, T)
        peak = None if residual_bytes is None else ring * residual_bytes
        return Cost(T, T, backward, 0, ring, peak, None)

    def run(self, model: Model, params: Params, xs: np.ndarray, ys: np.ndarray, *,
            h0: State | np.ndarray | None = None, mask: np.ndarray | None = None,
            trace_memory: bool = False, profile: Profile | None = None) -> Result:
        check_model(model, f"{self.name}.run")
        profile = check_profile(profile, f"{self.name}.run")
        xs, ys, h0_, mask_ = model.check(params, xs, ys, h0, mask)
        T, B = xs.shape[:2]

        def run() -> Result:
            start = time.perf_counter()
            loss, grads = 0.0, {k: np.zeros_like(v) for k, v in params.items()}
            grad_h0 = tuple(np.zeros_like(a) for a in h0_)
            ledger: Ledger = Ledger()
            for u in self._updates(model, params, zip(xs, ys, mask_), h0_, B, ledger, n_steps=T,
                                   profile=profile):
                loss += u.loss
                for k in grads:
                    grads[k] += u.grads[k]
                if u.grad_h0 is not None:
                    grad_h0 = tuple(a + b for a, b in zip(grad_h0, u.grad_h0))
            cell = model.cell
            stats = Stats(peak_bytes=ledger.peak, forward_steps=ledger.forward_steps,
                          backward_steps=ledger.backward_steps,
                          seconds=time.perf_counter() - start,
                          state_bytes=cell.state_bytes(B, xs.dtype),
                          residual_bytes=cell.residual_bytes(B, xs.dtype),
                          peak_residuals=ledger.peak_residuals)
            return Result(loss, grads, grad_h0, stats)

        return measure(run, model, params, B, xs.dtype) if trace_memory else run()

    def stream(self, model: Model, params: Params,
               steps: Iterable[tuple[np.ndarray, ...]], *,
               h0: State | np.ndarray | None = None) -> Iterator[Update]:
        """Online TBPTT: yield an `Update` every k1 steps of a stream of unknown length.

        Args:
            steps: iterable of ``(x_t, y_t)`` or ``(x_t, y_t, mask_t)``, x_t (B, n_in).
            params: read at every step, so the caller may update them in place
                between updates (``params[k] -= lr * u.grads[k]``); the ring keeps
                residuals computed with the params of the step that recorded them,
                as in Williams & Peng's online algorithm.

        Memory is a ring of at most k2 recorded steps, whatever the stream's length (and
        never more than the steps seen so far); the last k2 inputs and targets are kept
        by reference. A final update covers the steps after the last multiple of k1 when
        the stream ends.
        """
        B, _, h0_, checked = open_stream(model, params, steps, h0, f"{self.name}.stream")
        yield from self._updates(model, params, checked, h0_, B, Ledger(), n_steps=None)

    def _updates(self, model: Model, params: Params, steps: Iterable[tuple[np.ndarray, ...]],
                 h0: State, B: int, ledger: Ledger, n_steps: int | None,
                 profile: Profile | None = None) -> Iterator[Update]:
        """TBPTT(k1, k2) over (x_t, y_t, mask_t) steps on a ring of at most k2 entries.

        NOTE [tbptt window] Steps are numbered 1 … T. At update point t the losses of the
        steps since the previous update point are backpropagated through steps
        (max(0, t − k2), t]; the state entering that window is a constant, so the adjoint
        leaving it is dropped unless the window reaches h0.

        Steps are recorded and reversed through the cell's protocol alone (`PlainKernels`),
        reading ``params`` at every call; the ring grows to k2 entries and then reuses
        its oldest, so nothing is allocated ahead of the steps that fill it. A `Profile`
        times each recorded step (forward) and each update (backward); the protocol
        methods make their products with no matmul to route, so it sees the readout's.
        """
        kernels = PlainKernels(model.cell, params, {}, B)
        matmul: Callable[..., np.ndarray] = np.matmul
        if profile is not None and profile.products:
            matmul = profile.matmul
            profile.not_measured(f"{self.name}: its steps run the cell's protocol methods "
                                 "(PlainKernels), whose products are not routed; only the "
                                 "readout's products were seen")
        ring: collections.deque = collections.deque()  # (x, y, scale, residuals), oldest first
        state, t, last = h0, 0, 0
        for x, y, m in steps:
            if len(ring) == self.k2:
                ledger.drop(t - self.k2)
                ring.popleft()
            if profile is None:
                state, res, nbytes = kernels.record(x, state, None)
            else:
                t0 = time.perf_counter()
                state, res, nbytes = kernels.record(x, state, None)
                profile.forward_seconds += time.perf_counter() - t0
            ledger.keep(t, res, nbytes)
            ledger.forward_steps += 1
            ring.append((x, y, m / B, res))
            t += 1
            if t % self.k1 == 0 or t == n_steps:
                yield self._update(model, kernels, ring, ledger, h0, t, last, matmul, profile)
                last = t
        if t > last:  # a stream that ended between update points
            yield self._update(model, kernels, ring, ledger, h0, t, last, matmul, profile)

    def _update(self, model: Model, kernels: PlainKernels, ring: collections.deque,
                ledger: Ledger, h0: State, t: int, last: int,
                matmul: Callable[..., np.ndarray], profile: Profile | None) -> Update:
        t0 = time.perf_counter() if profile is not None else 0.0
        params = kernels.params
        grads = kernels.grads = {k: np.zeros_like(v) for k, v in params.items()}
        loss = 0.0
        first = t - len(ring)  # window: steps first+1 … t, the whole ring
        dstate = tuple(np.zeros_like(a) for a in h0)
        for step in range(t, first, -1):
            x, y, scale, res = ring[step - first - 1]
            if step > last:  # the step's own loss, read out now
                h = kernels.output(res)
                o = model.readout(params, h, matmul=matmul)
                step_loss, do = model.step_loss(o, y, scale)
                loss += step_loss
                model.readout_grads(h, do, np.ones(h.shape[0], h.dtype), grads, matmul=matmul)
                dh = model.readout_input_grad(params, do, out=np.empty_like(h), matmul=matmul)
                dstate = kernels.add_output_grad(dh, dstate)
            dstate = kernels.vjp(0, x, res, dstate)
        ledger.backward_steps += t - first
        if profile is not None:
            profile.backward_seconds += time.perf_counter() - t0
        return Update(t, loss, grads, dstate if first == 0 else None, t - first)


def open_stream(model: Model, params: Params, steps: Iterable[tuple[np.ndarray, ...]],
                h0: State | np.ndarray | None, where: str
                ) -> tuple[int, np.dtype, State, Iterator[tuple[np.ndarray, ...]]]:
    """(B, dtype, h0, the steps checked one by one as they arrive) for a stream of
    ``(x_t, y_t[, mask_t])``: the model, the first step and h0 are checked at once,
    before any work; every later step when it comes, its batch against the first's."""
    check_model(model, where)
    it = iter(steps)
    try:
        first = next(it)
    except StopIteration:
        raise ValueError(f"{where}(steps=...): the stream is empty; pass at least one "
                         "step") from None
    first = _check_stream_step(model, params, first, 0)
    B, dtype = first[0].shape[0], first[0].dtype
    h0_ = model.check_h0(h0, B, dtype)

    def checked() -> Iterator[tuple[np.ndarray, ...]]:
        yield first
        for i, s in enumerate(it, start=1):
            x, y, m = _check_stream_step(model, params, s, i)
            if x.shape[0] != B:
                raise ValueError(f"steps[{i}]: batch {x.shape[0]} differs from the first "
                                 f"step's {B}")
            yield x, y, m

    return B, dtype, h0_, checked()


def _check_stream_step(model: Model, params: Params, step: object,
                       i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if not isinstance(step, tuple) or len(step) not in (2, 3):
        raise TypeError(f"steps[{i}]: expected a tuple (x_t, y_t) or (x_t, y_t, mask_t)")
    x, y = step[0], step[1]
    m = step[2] if len(step) == 3 else None
    if not isinstance(x, np.ndarray):
        raise TypeError(f"steps[{i}]: x_t must be a numpy array (B, n_in), got {type(x).__name__}")
    if x.ndim != 2:
        raise ValueError(f"steps[{i}]: x_t must be a (B, n_in) array, got shape {x.shape}")
    # Reuse the sequence checks on a one-step sequence: same rules, and the message
    # names the step (xs/ys/mask there mean x_t/y_t/mask_t here).
    try:
        xs, ys, _, mask = model.check(params, x[None], np.asarray(y)[None], None,
                                      None if m is None else np.asarray(m)[None])
    except (TypeError, ValueError) as e:
        raise type(e)(f"steps[{i}]: {e} (in one step: x_t, y_t, mask_t)") from None
    return xs[0], ys[0], mask[0]


def truncated(k1: int, k2: int | None = None) -> Truncated:
    """Williams & Peng's TBPTT(k1, k2): O(k2) memory whatever T, at the price of bias.

    Every k1 steps (and at the end), the losses of the last k1 steps are backpropagated
    through the last k2 steps on a ring buffer of k2 recorded steps, preallocated and
    overwritten in place. `run` returns the sum of those updates, all at the same params;
    `stream` yields them one by one for online learning.

    Args:
        k1: steps between updates, >= 1.
        k2: steps backpropagated through at each update, >= k1 (default k1).

    Warning:
        Unless k2 >= T the gradient is biased: dependencies longer than k2 steps are
        cut. With k2 >= T it equals the exact gradient.

    >>> truncated(4).name
    'truncated(k1=4, k2=4)'
    """
    return Truncated(k1, k1 if k2 is None else k2)
