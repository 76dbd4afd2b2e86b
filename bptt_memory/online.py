"""Online checkpointing: exact gradients when the sequence's length is not known in advance.

`online(slots)` decides which states to keep as the forward pass goes, step by step,
without reading T; when the sequence ends (`EndForward(T)`) it reverses what it kept,
segment by segment, with Griewank's binomial schedule in the slots each segment has
free. It holds at most `slots` states and one step's residuals, like `binomial(slots)`,
and does the same forward steps as offline binomial for every T up to (s + 1)(s + 2)/2
with s = slots (NOTE [online placement]); beyond that, a few percent more.

References: P. Stumm & A. Walther, "New algorithms for optimal online checkpointing",
SIAM J. Sci. Comput. 32(2), 2010 (optimality up to (s + 1)(s + 2)/2 steps); Q. Wang,
P. Moin & G. Iaccarino, "Minimal repetition dynamic checkpointing algorithm for unsteady
adjoint calculation", SIAM J. Sci. Comput. 31(4), 2009 (keep the repetition number
minimal as the run grows); A. Griewank & A. Walther, "Algorithm 799: Revolve", 2000.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np

from .cell import Params, PlainKernels, State
from .checkpoint import _binomial_actions, _coalesce, _shift, _t, check_slots
from .engine import _execute
from .model import Model, Result
from .profile import Profile, check_profile
from .schedule import (
    Action,
    Advance,
    Cost,
    EndForward,
    Free,
    Record,
    Restore,
    Reverse,
    Store,
    simulate,
)
from .strategies import (
    ScheduledStrategy,
    _check_sizes,
    _check_steps,
    open_stream,
    plan_cache_bytes,
)

__all__ = ["online", "Online", "OnlinePolicy"]


class OnlinePolicy:
    """The forward pass's decisions, fed one step at a time; it never sees T before `end`.

    NOTE [online placement] Stored states split [0, w) into segments [p_i, p_i+1), with
    p_0 = 0 (h0) and w the working state's boundary. When the sequence ends, segment i
    is reversed after those after it, while p_1 … p_i are still held: with its entry
    and the s − i free slots it has c_i = s − i + 1 snapshots, and binomial reverses its
    L_i steps with L_i + t(L_i, c_i) forward steps (Griewank eq. 2). A segment that
    repeats no step more than r − 1 times has L_i <= η(c_i, r − 1) = C(c_i + r − 1, c_i).
    The policy keeps every segment within that bound for the smallest level r it can:

    - while a slot is free, it stores the working state (gaps of 1: r = 1);
    - when the last segment would outgrow its bound, it must store the working state,
      so it frees one p_j whose two neighbouring segments merged still fit the bound
      of the merged one's place (later segments move one place forward, where bounds
      only grow); if no p_j can go, r grows by one (Wang, Moin & Iaccarino's minimal
      repetition idea, with Griewank's bounds per segment).

    Which p_j: at r <= 2 the earliest that can go, beyond that the latest. With
    c_0 = s + 1 snapshots, offline binomial does 3T − s − 3 forward steps for
    s + 2 < T <= C(s + 3, 2); online that needs every one of the s slots used with
    L_i <= s − i + 2, since then the total is T + Σ(2L_i − 1). Freeing the earliest
    p_j that can go packs the early, larger bounds first and keeps that total up to at
    least (s + 1)(s + 2)/2 steps (tested for every T there and s <= 20), slightly short
    of C(s + 3, 2); beyond, freeing the latest keeps segments short near the end, where
    the fewest slots are free, and stays within a few percent of offline binomial
    (reports/long_sequences).

    The step that ends the sequence is recorded, not advanced first: `forward()` runs a
    step only once the caller knows it is not the last (a stream looks one step ahead).

    >>> p = OnlinePolicy(slots=2)
    >>> [a for _ in range(3) for a in p.forward()]
    [Advance(n0=0, n1=1), Store(n=1), Advance(n0=1, n1=2), Store(n=2), Advance(n0=2, n1=3)]
    >>> from bptt_memory import format_schedule
    >>> print(format_schedule(p.end(4)))
    end forward, T = 4
    record   [3, 4)
    reverse  [3, 4)
    restore  2
    record   [2, 3)
    reverse  [2, 3)
    free     2
    restore  1
    record   [1, 2)
    reverse  [1, 2)
    free     1
    restore  0
    record   [0, 1)
    reverse  [0, 1)
    """

    def __init__(self, slots: int) -> None:
        self.slots = check_slots("OnlinePolicy", slots, "a policy stores at least one state")
        self.t = 0  # steps run so far: the working state is at boundary t
        self.points: list[int] = []  # stored boundaries p_1 < … < p_k
        self.level = 1  # r of NOTE [online placement]
        self._bounds = self._bounds_at(1)

    def _bounds_at(self, r: int) -> list[int]:
        """η(c_i, r − 1) for segments i = 0 … slots, c_i = slots − i + 1."""
        return [math.comb(self.slots - i + r, r - 1) for i in range(self.slots + 1)]

    def forward(self) -> list[Action]:
        """The actions that run step t (not the last one) from boundary t."""
        t, points, s = self.t, self.points, self.slots
        out: list[Action] = []
        if t >= 1:
            k = len(points)
            if k < s:
                points.append(t)
                out.append(Store(t))
            elif t + 1 - points[-1] > self._bounds[k]:
                j = self._freeable(t)
                out += [Free(points[j - 1]), Store(t)]
                del points[j - 1]
                points.append(t)
        out.append(Advance(t, t + 1))
        self.t = t + 1
        return out

    def _freeable(self, t: int) -> int:
        """j such that freeing p_j keeps every segment within its bound, raising the
        level until one exists (NOTE [online placement])."""
        q = [0, *self.points, t]
        gaps = [b - a for a, b in zip(q, q[1:])]
        while True:
            ok = [j for j in range(1, len(q) - 1) if gaps[j - 1] + gaps[j] <= self._bounds[j - 1]]
            if ok:
                return ok[0] if self.level <= 2 else ok[-1]
            self.level += 1
            self._bounds = self._bounds_at(self.level)

    def end(self, n_steps: int) -> Iterator[Action]:
        """The reversal, once the sequence is known to have n_steps = t + 1 steps: the
        marker, the last step recorded straight away, then every segment from the last,
        by binomial in the slots it has free. Does not change the policy."""
        T, points, s = n_steps, list(self.points), self.slots
        if T != self.t + 1:
            raise ValueError(f"OnlinePolicy.end(n_steps={T}): {self.t} steps have run, so the "
                             f"sequence has {self.t + 1} steps; call forward() once per step "
                             "but the last")
        yield EndForward(T)
        yield Record(T - 1, T)
        yield Reverse(T - 1, T)
        bounds = [0, *points, T - 1]
        for i in range(len(bounds) - 2, -1, -1):
            n0, n1 = bounds[i], bounds[i + 1]
            if n1 > n0:
                yield Restore(n0)
                for a in _binomial_actions(n1 - n0, 1, s - i):
                    yield _shift(a, n0)
            if n0:
                yield Free(n0)

    def reversal_forward_steps(self, n_steps: int) -> int:
        """Forward steps `end(n_steps)` will do: 1 + Σ_i L_i + t(L_i, c_i)."""
        bounds = [0, *self.points, n_steps - 1]
        return 1 + sum(n1 - n0 + _t(n1 - n0, self.slots - i + 1)
                       for i, (n0, n1) in enumerate(zip(bounds, bounds[1:])) if n1 > n0)


@dataclass(frozen=True)
class Online(ScheduledStrategy):
    """Build with `online`."""

    slots: int = 8

    def __post_init__(self) -> None:
        object.__setattr__(self, "slots", check_slots(
            "online", self.slots, "with no stored state every step would be rerun from h0"))

    @property
    def name(self) -> str:
        return f"online(slots={self.slots})"

    def policy(self) -> OnlinePolicy:
        """A fresh policy to feed one step at a time (`OnlinePolicy`)."""
        return OnlinePolicy(self.slots)

    def iter_schedule(self, n_steps: int, state_bytes: int | None = None,
                      residual_bytes: int | None = None, link_bytes: int = 0) -> Iterator[Action]:
        """The policy fed n_steps − 1 steps, then told the end: T is read only there.
        Lazy: O(slots) memory whatever T."""
        T = _check_steps("online().schedule", n_steps)
        policy = self.policy()

        def actions() -> Iterator[Action]:
            for _ in range(T - 1):
                yield from policy.forward()
            yield from policy.end(T)

        # runs of one-step advances between stores become one Advance: the executor
        # projects a run's inputs in chunks (NOTE [chunked products] in engine.py)
        return _coalesce(actions())

    def cost(self, n_steps: int, state_bytes: int | None = None,
             residual_bytes: int | None = None, link_bytes: int = 0) -> Cost:
        """`Strategy.cost` by running the placement alone (O(T) steps of bookkeeping, no
        action built): T − 1 advances, then `OnlinePolicy.reversal_forward_steps`;
        min(slots, T − 2) states at the peak, with one step recorded."""
        T = _check_steps("online().cost", n_steps)
        _check_sizes("online().cost", state_bytes, residual_bytes, link_bytes)
        policy = self.policy()
        for _ in range(T - 1):
            policy.forward()
        states = min(self.slots, max(T - 2, 0))
        peak = (None if state_bytes is None or residual_bytes is None
                else states * state_bytes + residual_bytes)
        return Cost(T, T - 1 + policy.reversal_forward_steps(T), T, states, 1, peak, None)

    def stream(self, model: Model, params: Params, steps: Iterable[tuple[np.ndarray, ...]], *,
               h0: State | np.ndarray | None = None, profile: Profile | None = None) -> Result:
        """Exact BPTT over a stream of unknown length: the `Result` once it ends.

        Args:
            steps: iterable of ``(x_t, y_t)`` or ``(x_t, y_t, mask_t)``, x_t (B, n_in).
            profile: a `Profile`, as for `run`; its forward seconds include the pass
                over the stream (drawing its steps too), whose products, made by the
                cell's protocol step, it does not see.

        Each step runs (the cell's plain step) once the next has arrived, so the last one
        is recorded rather than run twice; the policy stores and frees states as it goes
        (`OnlinePolicy`), at most `slots` of them. The inputs, targets and masks are
        kept by reference (as `run` keeps xs and ys) and stacked when the stream ends;
        then the executor reverses from the states the forward pass kept.
        ``stats.peak_bytes`` counts the states and residuals held, as for `run`.

        Warning:
            params are read at every step: do not change them before the stream ends.
        """
        start = time.perf_counter()
        profile = check_profile(profile, f"{self.name}.stream")
        B, dtype, h0_, checked = open_stream(model, params, steps, h0, f"{self.name}.stream")
        first = next(checked)
        cell = model.cell
        sizes = cell.sizes(B, dtype)
        policy = self.policy()
        steps_ = PlainKernels(cell, params, {}, B)  # the protocol's step, checked once
        inputs = [first]
        state, stored = h0_, {}
        log: list[Action] = []  # the forward actions, runs of advances merged
        t0 = time.perf_counter()
        for nxt in checked:
            for a in policy.forward():  # step i − 1 is not the last: run it
                if isinstance(a, Advance):
                    x = inputs[a.n0][0]
                    state = steps_.step(x, state)
                    if log and isinstance(log[-1], Advance):
                        a = Advance(log.pop().n0, a.n1)  # type: ignore[union-attr]
                elif isinstance(a, Store):
                    stored[a.n] = tuple(s.copy() for s in state)
                else:  # Free
                    del stored[a.n]  # type: ignore[union-attr]
                log.append(a)
            inputs.append(nxt)
        if profile is not None:
            profile.forward_seconds += time.perf_counter() - t0
            if profile.products:
                profile.not_measured(f"{self.name}.stream: the pass over the stream runs the "
                                     "cell's protocol step (PlainKernels), whose products are "
                                     "not routed")
        T = len(inputs)
        xs = np.stack([s[0] for s in inputs])  # (T, B, n_in)
        ys = np.stack([s[1] for s in inputs])
        mask = np.stack([s[2] for s in inputs])  # (T, B)
        cost = simulate([*log, *policy.end(T)], n_steps=T, **sizes)
        forward_seconds = time.perf_counter() - start
        # the executor passes over EndForward, and starts where the forward pass stopped
        res = _execute(policy.end(T), model, params, xs, ys, h0_, mask, sizes,
                       resume=(state, stored), profile=profile)
        s = res.stats
        s.forward_steps += T - 1
        # the forward pass ran here: its states are the simulator's to count
        s.peak_bytes = max(s.peak_bytes, cost.peak_states * sizes["state_bytes"])
        s.peak_states = max(s.peak_states, cost.peak_states)
        s.seconds += forward_seconds
        s.extra["plan_cache_bytes"] = plan_cache_bytes()
        return res


def online(slots: int = 8) -> Online:
    """Online checkpointing: exact gradients with `slots` states when T is not known.

    Trades compute for memory like `binomial(slots)` (at most `slots` states and one
    step's residuals), but decides what to keep as the steps arrive: `run` works as for
    every strategy, and `stream` takes an iterator of steps of unknown length. The
    forward steps equal offline binomial's up to (s + 1)(s + 2)/2 steps, s = slots, and
    stay within a few percent beyond (NOTE [online placement]).

    >>> from bptt_memory import binomial_forward_steps, simulate
    >>> [simulate(online(slots=2).schedule(n_steps=T)).forward_steps for T in (6, 10)]
    [13, 26]
    >>> [binomial_forward_steps(T, 2) for T in (6, 10)]   # equal up to (2 + 1)(2 + 2)/2 = 6
    [13, 25]
    """
    return Online(slots)
