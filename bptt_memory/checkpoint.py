"""Checkpointing policies: which states to store so that exact BPTT fits in memory.

`binomial` is Griewank & Walther's binomial checkpointing ("revolve"): with s stored
states it reverses T steps with the provably fewest forward steps,
T + t(T, s + 1), t(n, s) = r·n − C(s + r, s + 1), where r is the smallest integer with
C(s + r, s) >= n. `optimal` is Gruslys et al.'s dynamic programme (BPTT-MSM), which may
also keep whole steps' residuals, and so beats binomial when a budget is in bytes and
residuals cost more than states; beyond the programme's reach it plans binomial over
segments recorded whole, in closed form (NOTE [segment plans]).

References: A. Griewank & A. Walther, "Algorithm 799: Revolve", ACM TOMS 26(1), 2000
(eq. 2 for t(n, s), Prop. 1 for the optimal split); A. Gruslys et al., "Memory-Efficient
Backpropagation Through Time", NeurIPS 2016 (Sec. 3.4, BPTT-MSM).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, NamedTuple

import numpy as np

from .cell import check_size as _check_size
from .cell import run_bytes as _run_bytes
from .schedule import Action, Advance, Cost, Free, Record, Restore, Reverse, Store, simulate
from .strategies import ScheduledStrategy, _check_sizes, _check_steps

__all__ = ["binomial", "optimal", "Binomial", "Optimal", "binomial_forward_steps"]


def _eta(s: int, r: int) -> int:
    """η(s, r) = C(s + r, s): the most steps s snapshots reverse with r repetitions."""
    return math.comb(s + r, s) if r >= 0 else 0


def _repetitions(n: int, s: int) -> int:
    """r: the smallest integer with C(s + r, s) >= n; O(log r) binomials (s = 1 has r = n − 1)."""
    if n <= 1:
        return 0
    hi = 1
    while _eta(s, hi) < n:
        hi *= 2
    lo = hi // 2  # η(s, lo) < n <= η(s, hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _eta(s, mid) < n:
            lo = mid
        else:
            hi = mid
    return hi


def _t(n: int, s: int) -> int:
    """t(n, s) = r·n − C(s + r, s + 1): Griewank's fewest advances to reverse n steps with
    s snapshots (the entry one included), one step's residuals at a time (eq. 2)."""
    r = _repetitions(n, s)
    return r * n - math.comb(s + r, s + 1)


def check_slots(where: str, slots: object, fix: str) -> int:
    """``slots`` as an int >= 1, or a TypeError/ValueError naming ``where(slots=...)``."""
    if isinstance(slots, bool) or not isinstance(slots, (int, np.integer)):
        raise TypeError(f"{where}(slots={slots!r}): slots must be an int")
    if slots < 1:
        raise ValueError(f"{where}(slots={slots}): needs at least 1 slot; {fix}")
    return int(slots)


def binomial_forward_steps(n_steps: int, slots: int) -> int:
    """Forward steps of `binomial(slots)` on n_steps: T + t(T, slots + 1) (Griewank eq. 2).

    >>> binomial_forward_steps(10, 2)   # r = 2: 10 + 2·10 − C(5, 4)
    25
    """
    return n_steps + _t(n_steps, slots + 1)


def _split(n: int, s: int) -> int:
    """How far to advance before the next checkpoint: n >= 2 steps, s >= 1 snapshots.

    NOTE [binomial split] Let r be the repetition number of (n, s). The cost
    m + t(n − m, s − 1) + t(m, s) equals the optimum r·n − C(s + r, s + 1) exactly when
    the left part m lies in the band where t(·, s) has slope r − 1 and the right part
    n − m in the band where t(·, s − 1) has slope r:
        η(s, r − 2) <= m <= η(s, r − 1)  and  η(s − 1, r − 1) <= n − m <= η(s − 1, r).
    Both bands meet because η(s, r − 1) + η(s − 1, r) = η(s, r) >= n (Pascal's rule).
    We take the largest such m: no table, O(r) arithmetic per checkpoint.
    """
    r = _repetitions(n, s)
    return min(_eta(s, r - 1), n - _eta(s - 1, r - 1))


@dataclass(frozen=True)
class Binomial(ScheduledStrategy):
    """Build with `binomial`."""

    slots: int = 8

    def __post_init__(self) -> None:
        object.__setattr__(self, "slots", check_slots(
            "binomial", self.slots, "use full() to store everything"))

    @property
    def name(self) -> str:
        return f"binomial(slots={self.slots})"

    def iter_schedule(self, n_steps: int, state_bytes: int | None = None,
                      residual_bytes: int | None = None, link_bytes: int = 0) -> Iterator[Action]:
        T = _check_steps("binomial().schedule", n_steps)
        return _binomial_actions(T, 1, self.slots)

    def cost(self, n_steps: int, state_bytes: int | None = None,
             residual_bytes: int | None = None, link_bytes: int = 0) -> Cost:
        """`Strategy.cost` in closed form: T + t(T, slots + 1) forward steps,
        min(slots, T − 2) states at the deepest point, while one step is recorded."""
        T = _check_steps("binomial().cost", n_steps)
        _check_sizes("binomial().cost", state_bytes, residual_bytes, link_bytes)
        states = min(self.slots, max(T - 2, 0))
        peak = (None if state_bytes is None or residual_bytes is None
                else states * state_bytes + residual_bytes)
        return Cost(T, binomial_forward_steps(T, self.slots), T, states, 1, peak, None)


def _binomial_actions(T: int, length: int, slots: int, N: int | None = None,
                      leaf: Callable[[int, int], Iterator[Action]] | None = None
                      ) -> Iterator[Action]:
    """Binomial checkpointing over N segments (default ⌈T/length⌉), [i·length, (i+1)·length)
    but the last, [(N − 1)·length, T), each reversed whole: Record then Reverse, or
    ``leaf(n0, n1)``'s actions, which start and may restore at n0: then every segment's
    entry is stored (or is h0) while its leaf runs (NOTE [block plans]).

    With length 1 this is `binomial(slots)`; with longer segments it is the plan of
    NOTE [segment plans]. Generated lazily from Griewank's closed-form split (NOTE
    [binomial split]) with an O(slots) stack; boundaries are segment indices times
    `length`.
    """
    N = -(-T // length) if N is None else N

    def at(i: int) -> int:
        return T if i >= N else i * length

    # Pending left parts (n0, n1, snapshots, n1 stored?), at most slots + 1 deep.
    stack = [(0, N, slots + 1, False)]
    pos = 0
    while stack:
        n0, n1, snaps, n1_stored = stack.pop()
        if n1_stored:
            yield Free(at(n1))
        if pos != n0:
            yield Restore(at(n0))
        while n1 - n0 > 1:
            m = n0 + _split(n1 - n0, snaps)
            yield Advance(at(n0), at(m))
            # a one-segment right part is recorded straight away, unless a leaf restores it
            store = n1 - m > 1 or leaf is not None
            if store:
                yield Store(at(m))
            stack.append((n0, m, snaps, store))
            n0, snaps = m, snaps - 1
        if leaf is None:
            yield Record(at(n0), at(n1))
            yield Reverse(at(n0), at(n1))
        else:
            yield from leaf(at(n0), at(n1))
        pos = n1


def binomial(slots: int = 8) -> Binomial:
    """Binomial checkpointing (revolve): the fewest recomputations for `slots` states.

    Trades compute for memory: holds at most `slots` states and one step's residuals,
    and does exactly T + t(T, slots + 1) forward steps (h0 is a free extra snapshot).
    With slots >= T − 1 that is 2T − 1: every step once plain and once recording.

    The schedule comes from Griewank's closed-form split (see NOTE [binomial split]),
    generated lazily with an O(slots) stack and O(r) arithmetic per checkpoint: no table
    at all, where a planner that fills the s·n² dynamic-programming table would need
    10¹⁰ entries at T = 10⁴ and 10¹⁴ at T = 10⁶ with 100 slots. Planning time is
    measured by ``python -m studies.checkpoint_benchmark``.

    >>> from bptt_memory import simulate
    >>> cost = simulate(binomial(slots=2).schedule(n_steps=10))
    >>> cost.forward_steps, cost.peak_states, cost.peak_residuals
    (25, 2, 1)
    """
    return Binomial(slots)


# --------------------------------------------------------------------------------------

# Costs are forward-step counts, at most T²/2 for any T the programme can handle;
# int32 halves the memory traffic of the O(T²·m) loop. 3·_INF still fits in int32.
_INF = np.int32(1 << 29)
#: The dynamic programme's memory axis is kept to at most this many units.
MAX_UNITS = 2048
#: Budget columns are processed in blocks this wide (see NOTE [split pruning]).
_BLOCK = 32


def _tables(state_u: int, residual_u: int, linked_u: int, n_cap: int, m_cap: int
            ) -> tuple[np.ndarray, ...]:
    """Cost and choice tables (D, L, E, choice_d, choice_l, choice_e) for n <= n_cap,
    m <= m_cap.

    NOTE [optimal programme] Four subproblems, for n steps and m free memory units:
    C[n]:    the state entering the first step is h0 (the caller's: never stored or freed);
    D[n, m]: it is only the working state;
    L[n, m]: it is the working state, and the step before was just recorded, so recording
             the first step costs only R' = R − (linked units) (NOTE [linked steps]);
    E[n, m]: it is stored by us (its S units already taken from m), and is freed at its
             last use, which frees S units for the rest of the work.
    Their options:
        D: record the first step, then L[n−1, m−R]                cost 1 + L[n−1, m−R]
           store the working state, then E[n, m−S]                cost E[n, m−S]
        L: record the first step, then L[n−1, m−R']               cost 1 + L[n−1, m−R']
           store the working state, then E[n, m−S]                cost E[n, m−S]
        E: free the entry, record the first step, L[n−1, m+S−R]   cost 1 + L[n−1, m+S−R]
           advance y steps, solve D[n−y, m], restore, E[y, m]     cost y + D[n−y, m] + E[y, m]
        C: like E, but h0 is never freed: 1 + L[n−1, M−R] or y + D[n−y, M] + C[y]
    with D[0, m] = L[0, m] = 0. A stored hidden state (S units) or a recorded step (R
    units) are the two kinds of storage of Gruslys et al.'s BPTT-MSM. A record is priced
    as linked only where the step before is certain to be held; where the executor finds
    more links (E's record, when the step before the stored entry happens to be held),
    the plan holds less than the programme counted, never more. Without links (R' = R)
    L is D. D, L and E do not depend on T or on the budget M, so one table answers every
    shorter sequence and smaller budget (memoised); C runs at the budget M only (m never
    changes along the h0 chain), so `_top_column` computes it per budget in O(T²).

    NOTE [split pruning] Every step is run at least once, so D[k, ·] >= k and E[y, ·] >= y,
    and a split at y costs at least y + (n − y) + y = n + y. It can only beat the best
    option found so far, b, when y < b − n. Costs fall as m grows, so for a block of
    budgets the first column bounds the useful y for all of it: with a generous budget
    only short first segments are tried. Work is at most O(n_cap²·m_cap), vectorised.
    """
    S, R, R1 = state_u, residual_u, linked_u
    shape = (n_cap + 1, m_cap + 1)
    D = np.full(shape, _INF, dtype=np.int32)
    L = D if R1 == R else np.full(shape, _INF, dtype=np.int32)
    E = np.full(shape, _INF, dtype=np.int32)
    choice_d = np.zeros(shape, dtype=np.int8)  # 0: record, 1: store
    choice_l = choice_d if L is D else np.zeros(shape, dtype=np.int8)
    choice_e = np.zeros(shape, dtype=np.int32)  # 0: record, y: advance y
    D[0] = L[0] = 0
    ms = np.arange(m_cap + 1)
    # E's record option reads L[n−1, m + S − R]. Only m <= m_cap − S is ever reached
    # (E is entered from D's and L's store option), so clamping the index is harmless.
    freed = np.minimum(ms + S - R, m_cap)
    freed_ok = freed >= 0
    freed = np.maximum(freed, 0)
    record = np.full(m_cap + 1, _INF, dtype=np.int32)
    store = np.full(m_cap + 1, _INF, dtype=np.int32)
    ys = np.arange(1, n_cap + 1, dtype=np.int32)[:, None]
    buf = np.empty((n_cap, _BLOCK), dtype=np.int32)
    for n in range(1, n_cap + 1):
        best = E[n]
        np.add(L[n - 1, freed], 1, out=best)
        best[~freed_ok] = _INF
        np.minimum(best, _INF, out=best)
        for m0 in range(0, m_cap + 1, _BLOCK) if n > 1 else ():
            m1 = min(m0 + _BLOCK, m_cap + 1)
            y_max = min(n - 1, int(best[m0]) - n - 1)
            if y_max < 1:
                break  # and for every larger budget too: best only falls with m
            split = buf[:y_max, : m1 - m0]  # (y, m): advance y = 1 … y_max first
            np.add(D[n - 1 : n - 1 - y_max : -1, m0:m1], E[1 : y_max + 1, m0:m1], out=split)
            split += ys[:y_max]
            arg = split.argmin(axis=0)
            cost = np.take_along_axis(split, arg[None], axis=0)[0]
            better = cost < best[m0:m1]
            best[m0:m1][better] = cost[better]
            choice_e[n, m0:m1][better] = arg[better] + 1
        np.minimum(best, _INF, out=best)
        if S <= m_cap:
            store[S:] = E[n, : m_cap + 1 - S]
        for table, choice, r in ((D, choice_d, R), (L, choice_l, R1))[: 1 if L is D else 2]:
            record[:] = _INF
            record[r:] = L[n - 1, : m_cap + 1 - r]
            record[r:] += 1
            np.minimum(record, _INF, out=record)
            use_store = store < record
            table[n] = np.where(use_store, store, record)
            choice[n] = use_store
    return D, L, E, choice_d, choice_l, choice_e


def _top_column(D: np.ndarray, L: np.ndarray, T: int, R: int, M: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """C[n] and its choices at budget M, for n <= T: the h0 chain of NOTE [optimal programme]."""
    C = np.full(T + 1, _INF, dtype=np.int64)
    choice = np.zeros(T + 1, dtype=np.int64)
    col = D[:, M].astype(np.int64)
    for n in range(1, T + 1):
        C[n] = 1 + L[n - 1, M - R] if M >= R else _INF
        if n > 1:
            split = np.arange(1, n) + col[n - 1 : 0 : -1] + C[1:n]  # advance y = 1 … n−1
            y = int(split.argmin())
            if split[y] < C[n]:
                C[n], choice[n] = split[y], y + 1
        C[n] = min(C[n], _INF)
    return C, choice


def _round_up(x: int, step: int) -> int:
    return -(-x // step) * step


def _table_bytes(n_cap: int, m_cap: int, linked: bool) -> int:
    """Bytes of `_tables`' arrays: D, E and choice_e (int32), choice_d (int8), and L
    (int32) with choice_l (int8) when linked steps make L differ from D."""
    return (n_cap + 1) * (m_cap + 1) * (13 + (5 if linked else 0))


#: The exact programme runs where its work n_cap²·m_cap stays below this (about a second
#: on one core, so that `bptt-memory plan` answers in two); elsewhere the segment plans of
#: NOTE [segment plans] are used.
EXACT_WORK = 500_000_000
#: The memo of the programme's tables holds at most this many bytes (`plan_cache_bytes`).
TABLE_CACHE_BYTES = 64 << 20


class _TableMemo:
    """Memo of `_tables` per (state units, residual units, linked residual units),
    bounded in bytes.

    Any table computed so far answers every shorter sequence and smaller budget than
    its own, so a sweep over budgets (largest first, or within one rounding step) runs
    the programme once. A miss builds just the table asked for: merging it with a cached
    one of another shape would build their product (a long sequence at a small budget
    after a short one at a large budget). The oldest tables go first once the memo
    would hold more than `max_bytes`. A pure function's cache: what it returns never
    depends on what was asked before; `clear_plan_caches` empties it.
    """

    def __init__(self, max_bytes: int = TABLE_CACHE_BYTES) -> None:
        self.max_bytes = max_bytes
        self._entries: list[tuple[tuple[int, int, int], tuple[np.ndarray, ...]]] = []

    def get(self, state_u: int, residual_u: int, linked_u: int, n: int, m: int
            ) -> tuple[np.ndarray, ...]:
        key = (state_u, residual_u, linked_u)
        for k, tables in self._entries:
            if k == key and tables[0].shape[0] > n and tables[0].shape[1] > m:
                return tables
        n_cap, m_cap = _round_up(n, 256), _round_up(m, 64)
        need = _table_bytes(n_cap, m_cap, residual_u != linked_u)
        if need > self.max_bytes:
            raise ValueError(
                f"optimal(): the exact programme for n_steps={n} at {m} budget units needs "
                f"{need} bytes of tables, over the memo's {self.max_bytes}; plan it with "
                "Optimal.iter_schedule, which uses segment plans there (NOTE [segment plans])"
            )
        while self._entries and self.nbytes() + need > self.max_bytes:
            del self._entries[0]
        tables = _tables(state_u, residual_u, linked_u, n_cap, m_cap)
        self._entries.append((key, tables))
        return tables

    def nbytes(self) -> int:
        """Bytes of every array held (L is D, and choice_l is choice_d, without links)."""
        seen: dict[int, int] = {}
        for _, tables in self._entries:
            for a in tables:
                seen[id(a)] = a.nbytes
        return sum(seen.values())

    def clear(self) -> None:
        self._entries = []


_MEMO = _TableMemo()


class _Exact(NamedTuple):
    """A plan of the exact programme: its forward steps, the h0 chain and the choices."""

    forward_steps: int
    choices: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # choice_c, _d, _l, _e
    units: tuple[int, int, int, int]  # S, R, R', M


class _Segments(NamedTuple):
    """A segment plan (NOTE [segment plans]): binomial with `slots` over N segments of
    `length` steps but the last, which ends at T, each recorded whole."""

    forward_steps: int
    length: int
    slots: int
    N: int

    def peak(self, T: int, sb: int, rb: int, lb: int) -> tuple[int, int, int]:
        """(states, recorded steps, bytes) at the peak: binomial's deepest point, min(slots,
        N − 2) states, while the longest segment is recorded."""
        states = min(self.slots, max(self.N - 2, 0))
        longest = max(self.length, T - (self.N - 1) * self.length)
        return states, longest, states * sb + _run_bytes(longest, rb, lb)


# NOTE [segment plans] The exact programme (NOTE [optimal programme]) is O(T²·m) in work
# and O(T·m) in tables: it cannot plan T = 10⁵. Beyond EXACT_WORK, `optimal` picks the
# best of a family with closed-form costs: binomial checkpointing over N segments
# [i·ℓ, (i+1)·ℓ) (the last one ends at T), each segment recorded whole when reversed.
# What the planner relies on, each tested directly (tests/test_checkpoint.py):
#   1. forward steps T + ℓ·t(N, s + 1): every step is recorded once, and binomial over
#      N segments advances whole segments t(N, s + 1) times (Griewank eq. 2), never the
#      last one, which is recorded straight away; so the last may be longer than ℓ;
#   2. peak: min(s, N − 2) states (binomial's deepest point) while the longest segment
#      is recorded, min(s, N − 2)·S + run(max(ℓ, last)) bytes, linked steps included;
#   3. the family holds binomial (ℓ = 1), uniform (s >= N − 2) and full (N = 1), so
#      the plan never does more forward steps than binomial at the same bytes;
#   4. a lower bound for every exact schedule: the working state only moves forward
#      from h0 or stored states, so steps run for the first time in order, and none is
#      reversed before step T − 1 has run. Every step recorded on its first run is then
#      still held when step T − 1 first runs, so there are at most K of them, K the most
#      steps whose residuals fit the budget in one run; every other step runs twice at
#      least: forward steps >= 2T − K. Where the budget holds many steps (K >> s), the
#      segment plan comes within ℓ of that bound: a segment plan's forward steps over
#      2T − K bound its distance to the optimum from above, and reports/long_sequences
#      gives that ratio (at most 1.0002 at 1, 5 and 20% of full()'s bytes, T >= 10⁵).
# Where the budget holds only a few states (r >= 3), residuals help less, segment plans
# are binomial-like, and the bound is loose; there the family was measured against the
# exact programme on T <= 600 (up to 21% more forward steps, reports/long_sequences).
# Search: the segment count N, every N up to 64 and a 2% geometric grid beyond, then
# near the best; a few thousand closed forms, independent of T but for O(log T) binomials.


def _fit(room: int, rb: int, lb: int) -> int:
    """The most steps recorded in one run within `room` bytes (0 when not even one)."""
    return 0 if room < rb else 1 + (room - rb) // (rb - lb)


def _segment_cost(T: int, N: int, budget: int, sb: int, rb: int, lb: int
                  ) -> tuple[tuple[int, int], _Segments] | None:
    """((forward steps, peak bytes), plan) of the best equal-segment plan with about N
    segments, or None when one segment's residuals do not fit."""
    length = -(-T // N)
    N = -(-T // length)  # the segments that length really makes
    spare = budget - _run_bytes(length, rb, lb)
    if spare < 0:
        return None
    slots = min(spare // sb, max(N - 2, 0))  # binomial never holds more than N − 2
    plan = _Segments(T + length * _t(N, slots + 1), length, slots, N)
    return (plan.forward_steps, plan.peak(T, sb, rb, lb)[2]), plan


def _long_last_cost(T: int, N: int, budget: int, sb: int, rb: int, lb: int
                    ) -> tuple[tuple[int, int], _Segments] | None:
    """Like `_segment_cost` with a state stored at every segment boundary (no segment is
    advanced twice: T + length·(N − 1) forward steps) and the last segment as long as the
    room left allows, since it is recorded straight away, never advanced."""
    if N < 2:
        return None
    room = _fit(budget - (N - 2) * sb, rb, lb)
    last = min(room, T - (N - 1))
    if last < 1:
        return None
    length = -(-(T - last) // (N - 1))
    if length > room or T - (N - 1) * length < 1:
        return None
    plan = _Segments(T + length * (N - 1), length, N - 2, N)
    return (plan.forward_steps, plan.peak(T, sb, rb, lb)[2]), plan


def _best_segments(T: int, budget: int, sb: int, rb: int, lb: int) -> _Segments:
    """The segment plan with the fewest forward steps (then the least peak) over a search
    of the segment count N: every N up to 64, a geometric grid beyond, then every N (or a
    fine grid) near the best. Closed forms only: O(log T) binomials per candidate."""
    def best_of(ns) -> tuple[tuple[int, int], _Segments] | None:
        found = None
        for n in ns:
            for c in (_segment_cost(T, n, budget, sb, rb, lb),
                      _long_last_cost(T, n, budget, sb, rb, lb)):
                if c is not None and (found is None or c[0] < found[0]):
                    found = c
        return found

    coarse = set(range(1, min(T, 64) + 1))
    n = 64.0
    while n < T:
        n *= 1.02
        coarse.add(min(T, int(n)))
    best = best_of(sorted(coarse))
    assert best is not None  # budget >= residual_bytes: one-step segments always fit
    N = best[1].N
    lo, hi = max(1, int(N / 1.03)), min(T, int(N * 1.03) + 1)
    step = max(1, (hi - lo) // 2000)
    near = best_of(range(lo, hi + 1, step))
    if near is not None and near[0] < best[0]:
        best = near
    return best[1]


# NOTE [block plans] Where the budget holds only a few states, recording whole segments
# wastes what the exact programme knows: mixing states and residuals pays most on short
# stretches. A block plan is binomial with `slots` over N segments like a segment plan,
# but each segment is reversed by the exact programme's plan for it (the h0 chain of
# NOTE [optimal programme], at most LEAF_STEPS steps in LEAF_UNITS units, the segment's
# entry standing for h0). So that the leaf may restore its entry, every segment's entry
# is stored while its leaf runs (`_binomial_actions` with a leaf). Forward steps:
#     ℓ·t(N, s + 1) + (N − 1)·C[ℓ] + C[last]   (C: the leaf programme's h0 chain);
# peak: the most states the top holds at a leaf, entry included, times S, plus what that
# leaf holds: min(s + 1, N − 1) at the first descent's (last) leaf, counted by running
# the descent, and min(s + 1, N − 2) at the others, or s for s + 3 <= N <= 2s + 2 (tested
# against `simulate`). `optimal` looks for one only where the best segment plan is more
# than 0.1% over the lower bound 2T − K (NOTE [segment plans] 4), i.e. where it may gain.
#: Block plans' leaves have at most this many steps ...
LEAF_STEPS = 512
#: ... and are planned by the exact programme in at most this many units.
LEAF_UNITS = 256


class _Blocks(NamedTuple):
    """A block plan (NOTE [block plans])."""

    forward_steps: int
    length: int
    slots: int
    N: int
    leaf: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # choice_c, _d, _l, _e
    units: tuple[int, int, int, int]  # the leaves' S, R, R', M
    peak: tuple[int, int, int]  # states, recorded steps, bytes

    def leaf_actions(self, n0: int, n1: int) -> Iterator[Action]:
        """The exact programme's plan for the segment [n0, n1), its entry as h0."""
        for a in _coalesce(_walk(*self.leaf, n1 - n0, *self.units)):
            yield _shift(a, n0)


def _shift(a: Action, n0: int) -> Action:
    """The action a of a plan over [0, L) moved to [n0, n0 + L)."""
    if isinstance(a, (Advance, Record, Reverse)):
        return type(a)(a.n0 + n0, a.n1 + n0)
    return type(a)(a.n + n0)  # type: ignore[union-attr, call-arg]


def _leaf_units(sb: int, rb: int, lb: int) -> tuple[int, int, int, int]:
    """(unit, S, R, R') for the leaves: exact units unless a step would take more than 64
    of them; then sizes are rounded up (a leaf can only hold less than counted)."""
    unit = math.gcd(sb, rb, rb - lb)
    if rb // unit > 64:
        unit = -(-rb // 64)
    return unit, -(-sb // unit), -(-rb // unit), -(-(rb - lb) // unit)


def _full_leaf_depth(N: int, slots: int) -> int:
    """The most states the top holds at a leaf other than the last, its entry included
    (NOTE [block plans])."""
    if N < 2:
        return 0
    if slots + 3 <= N <= 2 * slots + 2:
        return slots
    return min(slots + 1, N - 2)


def _last_leaf_depth(N: int, slots: int) -> int:
    """States the top holds at the last segment's leaf: one per split of the first descent."""
    n0, snaps, depth = 0, slots + 1, 0
    while N - n0 > 1:
        n0, snaps, depth = n0 + _split(N - n0, snaps), snaps - 1, depth + 1
    return depth


def _best_blocks(T: int, budget: int, sb: int, rb: int, lb: int) -> _Blocks | None:
    """The block plan with the fewest forward steps, over leaf lengths 1 … LEAF_STEPS and
    a dozen leaf budgets; None where no leaf budget fits."""
    unit, S, R, R1 = _leaf_units(sb, rb, lb)
    m_max = min(budget // unit, LEAF_UNITS)
    if m_max < R:
        return None
    n_cap = min(T, LEAF_STEPS)
    D, L, _, choice_d, choice_l, choice_e = _MEMO.get(S, R, R1, n_cap, m_max)
    found = None
    for M in sorted({R + round((m_max - R) * f) for f in (0, .05, .1, .15, .2, .3, .4, .5,
                                                           .65, .8, 1)}):
        C, choice_c = _top_column(D, L, n_cap, R, M)
        top = (budget - M * unit) // sb  # states the top may hold at a leaf, entry included
        for length in range(1, n_cap + 1):
            N = -(-T // length)
            if N == 1:
                slots, cost = 0, int(C[T])
            elif top < 1:
                continue
            else:
                slots = min(top - 1, N - 2)
                cost = (length * _t(N, slots + 1) + (N - 1) * int(C[length])
                        + int(C[T - (N - 1) * length]))
            if found is None or cost < found[0]:
                found = (cost, length, slots, N, M, choice_c)
    if found is None:
        return None
    cost, length, slots, N, M, choice_c = found
    plan = _Blocks(cost, length, slots, N, (choice_c, choice_d, choice_l, choice_e),
                   (S, R, R1, M), (0, 0, 0))
    peaks = []
    last = T - (N - 1) * length
    for n, depth in ((last, _last_leaf_depth(N, slots)), (length, _full_leaf_depth(N, slots))):
        if n == last or N >= 2:
            c = simulate(plan.leaf_actions(0, n), n_steps=n, state_bytes=sb, residual_bytes=rb,
                         link_bytes=lb)
            peaks.append((depth + c.peak_states, c.peak_residuals,
                          depth * sb + (c.peak_bytes or 0)))
    peak = (max(p[0] for p in peaks), max(p[1] for p in peaks), max(p[2] for p in peaks))
    return plan._replace(peak=peak)


@dataclass(frozen=True)
class Optimal(ScheduledStrategy):
    """Build with `optimal`."""

    budget_bytes: int = 1 << 20

    def __post_init__(self) -> None:
        b = self.budget_bytes
        if isinstance(b, bool) or not isinstance(b, (int, np.integer)):
            raise TypeError(
                f"optimal(budget_bytes={b!r}): needs an int number of bytes, e.g. 64 * 2**20"
            )
        if b < 1:
            raise ValueError(f"optimal(budget_bytes={b}): needs a positive number of bytes")
        object.__setattr__(self, "budget_bytes", int(b))

    @property
    def name(self) -> str:
        return f"optimal(budget_bytes={self.budget_bytes})"

    def units(self, state_bytes: int, residual_bytes: int, link_bytes: int = 0
              ) -> tuple[int, int, int]:
        """(state units, residual units, budget units) the exact programme works in.

        The unit is gcd(state_bytes, residual_bytes, residual_bytes − link_bytes), so
        costs are exact, unless the budget would then exceed `MAX_UNITS` units: then the
        unit grows and item sizes are rounded *up*, so a plan can only hold less than the
        budget, never more.
        """
        S, R, _, M = self._units(state_bytes, residual_bytes, link_bytes)
        return S, R, M

    def _units(self, sb: int, rb: int, lb: int) -> tuple[int, int, int, int]:
        """(S, R, R', M): `units`, with R' the units of a step linked to the one before."""
        unit = math.gcd(sb, rb, rb - lb)
        if self.budget_bytes // unit > MAX_UNITS:
            unit = -(-self.budget_bytes // MAX_UNITS)
        return -(-sb // unit), -(-rb // unit), -(-(rb - lb) // unit), self.budget_bytes // unit

    def _sizes(self, state_bytes: int | None, residual_bytes: int | None,
               link_bytes: int = 0) -> tuple[int, int, int]:
        if state_bytes is None or residual_bytes is None:
            raise ValueError(
                "optimal().schedule: needs state_bytes and residual_bytes, e.g. "
                "**cell.sizes(B, dtype)"
            )
        _check_size("optimal().schedule", "state_bytes", state_bytes)
        _check_size("optimal().schedule", "residual_bytes", residual_bytes)
        if (isinstance(link_bytes, bool) or not isinstance(link_bytes, (int, np.integer))
                or not 0 <= link_bytes < residual_bytes):
            raise ValueError(
                f"optimal().schedule(link_bytes={link_bytes!r}): needs an int from 0 to below "
                "residual_bytes, e.g. cell.link_bytes(B, dtype)"
            )
        if self.budget_bytes < residual_bytes:
            raise ValueError(
                f"optimal(budget_bytes={self.budget_bytes}): below the minimum of {residual_bytes} "
                "bytes (one step's residuals for this cell, batch and dtype); raise the budget "
                f"to at least {residual_bytes}"
            )
        return int(state_bytes), int(residual_bytes), int(link_bytes)

    def _fits_all(self, T: int, rb: int, lb: int) -> bool:
        """Whether the budget holds all T steps' residuals, recorded in one run (full())."""
        return _run_bytes(T, rb, lb) <= self.budget_bytes

    def forward_steps(self, n_steps: int, state_bytes: int, residual_bytes: int,
                      link_bytes: int = 0) -> int:
        """Forward steps of this policy's plan, from the planner alone (no schedule)."""
        T = _check_steps("optimal().forward_steps", n_steps)
        sb, rb, lb = self._sizes(state_bytes, residual_bytes, link_bytes)
        if self._fits_all(T, rb, lb):
            return T
        return self._plan(T, sb, rb, lb).forward_steps

    def _exact_feasible(self, T: int, sb: int, rb: int, lb: int) -> bool:
        """Whether the exact programme runs for T here: its work and its tables are bounded
        (EXACT_WORK, TABLE_CACHE_BYTES) and one step's residuals fit in rounded units."""
        S, R, R1, M = self._units(sb, rb, lb)
        n_cap, m_cap = _round_up(T, 256), _round_up(M, 64)
        return (R <= M and n_cap * n_cap * m_cap <= EXACT_WORK
                and _table_bytes(n_cap, m_cap, R1 != R) <= _MEMO.max_bytes)

    def _plan(self, T: int, sb: int, rb: int, lb: int) -> _Exact | _Segments | _Blocks:
        """The exact programme's plan where it runs and beats every segment plan, else
        `_structured`'s; binomial is the segment plan of length 1, so no plan ever does
        more forward steps than binomial at the same bytes."""
        if not self._exact_feasible(T, sb, rb, lb):
            return self._structured(T, sb, rb, lb)
        segments = _best_segments(T, self.budget_bytes, sb, rb, lb)
        S, R, R1, M = units = self._units(sb, rb, lb)
        D, L, _, choice_d, choice_l, choice_e = _MEMO.get(S, R, R1, T, M)
        C, choice_c = _top_column(D, L, T, R, M)
        if int(C[T]) < segments.forward_steps:
            return _Exact(int(C[T]), (choice_c, choice_d, choice_l, choice_e), units)
        return segments

    def _structured(self, T: int, sb: int, rb: int, lb: int) -> _Segments | _Blocks:
        """The plan beyond the exact programme: the best segment plan (NOTE [segment
        plans]), or a block plan (NOTE [block plans]) where the segment plan is more than
        0.1% over the lower bound and a block plan does better."""
        segments = _best_segments(T, self.budget_bytes, sb, rb, lb)
        bound = 2 * T - _fit(self.budget_bytes, rb, lb)
        if segments.forward_steps * 1000 <= bound * 1001:
            return segments  # within 0.1% of the optimum already
        blocks = _best_blocks(T, self.budget_bytes, sb, rb, lb)
        if blocks is not None and blocks.forward_steps < segments.forward_steps:
            return blocks
        return segments

    def cost(self, n_steps: int, state_bytes: int | None = None,
             residual_bytes: int | None = None, link_bytes: int = 0) -> Cost:
        """`Strategy.cost`: closed forms for full() and segment plans; `simulate` walks
        the exact programme's plans (at most a few thousand steps, EXACT_WORK)."""
        T = _check_steps("optimal().cost", n_steps)
        sb, rb, lb = self._sizes(state_bytes, residual_bytes, link_bytes)
        if self._fits_all(T, rb, lb):
            return Cost(T, T, T, 0, T, _run_bytes(T, rb, lb), 2)
        plan = self._plan(T, sb, rb, lb)
        if isinstance(plan, _Exact):
            return simulate(self.iter_schedule(T, sb, rb, lb), n_steps=T, state_bytes=sb,
                            residual_bytes=rb, link_bytes=lb)
        if isinstance(plan, _Blocks):
            return Cost(T, plan.forward_steps, T, *plan.peak, None)
        states, longest, peak = plan.peak(T, sb, rb, lb)
        return Cost(T, plan.forward_steps, T, states, longest, peak, None)

    def iter_schedule(self, n_steps: int, state_bytes: int | None = None,
                      residual_bytes: int | None = None, link_bytes: int = 0) -> Iterator[Action]:
        T = _check_steps("optimal().schedule", n_steps)
        sb, rb, lb = self._sizes(state_bytes, residual_bytes, link_bytes)
        if self._fits_all(T, rb, lb):
            return iter((Record(0, T), Reverse(0, T)))
        plan = self._plan(T, sb, rb, lb)
        if isinstance(plan, _Segments):
            return _binomial_actions(T, plan.length, plan.slots, plan.N)
        if isinstance(plan, _Blocks):
            return _binomial_actions(T, plan.length, plan.slots, plan.N, plan.leaf_actions)
        return _coalesce(_walk(*plan.choices, T, *plan.units))


def _walk(choice_c: np.ndarray, choice_d: np.ndarray, choice_l: np.ndarray,
          choice_e: np.ndarray, T: int, S: int, R: int, R1: int, M: int) -> Iterator[Action]:
    """Turn the programme's choices into actions, with an explicit stack (no recursion)."""
    pos = 0
    # tasks: ("C"|"D"|"L"|"E", n0, n, m) subproblems, or a Reverse to emit
    tasks: list = [("C", 0, T, M)]
    while tasks:
        task = tasks.pop()
        if not isinstance(task, tuple):  # a Reverse: the working state stays where it is
            yield task
            continue
        kind, n0, n, m = task
        if n == 0:
            continue
        if kind in "DL":
            if (choice_d if kind == "D" else choice_l)[n, m]:
                yield Store(n0)
                tasks.append(("E", n0, n, m - S))
                continue
        else:  # C or E: n0 can be restored
            if pos != n0:
                yield Restore(n0)
                pos = n0
            y = int(choice_c[n] if kind == "C" else choice_e[n, m])
            if y:
                yield Advance(n0, n0 + y)
                pos = n0 + y
                # the left part restores n0 itself once D(n0 + y) is done
                tasks += [(kind, n0, y, m), ("D", n0 + y, n - y, m)]
                continue
            if kind == "E":  # the entry's last use: free it before recording
                yield Free(n0)
                m += S
        yield Record(n0, n0 + 1)
        pos = n0 + 1
        tasks += [Reverse(n0, n0 + 1), ("L", n0 + 1, n - 1, m - (R1 if kind == "L" else R))]


def _coalesce(actions: Iterable[Action]) -> Iterator[Action]:
    """Merge runs like Record(0, 1), Record(1, 2) into Record(0, 2): same work, same peak."""
    pending: Action | None = None
    for a in actions:
        if pending is not None and type(a) is type(pending):
            if isinstance(a, (Advance, Record)) and a.n0 == pending.n1:  # type: ignore[union-attr]
                pending = type(a)(pending.n0, a.n1)  # type: ignore[union-attr]
                continue
            if isinstance(a, Reverse) and a.n1 == pending.n0:  # type: ignore[union-attr]
                pending = Reverse(a.n0, pending.n1)  # type: ignore[union-attr]
                continue
        if pending is not None:
            yield pending
        pending = a
    if pending is not None:
        yield pending


def optimal(budget_bytes: int = 1 << 20) -> Optimal:
    """Gruslys et al.'s BPTT-MSM: the fewest forward steps within a byte budget.

    Trades compute for memory like `binomial`, but may keep whole steps' residuals as
    well as states, whichever mix needs the fewest forward steps, so for an LSTM (a
    step's residuals cost 3.5 states, 3 when linked to the step before) it beats
    binomial at intermediate budgets. Never more forward steps than binomial at the same
    budget; exactly T once the budget holds every step's residuals (full()'s bytes,
    ``cell.recorded_bytes(T, B, dtype)``); peak_bytes <= budget_bytes always.

    The budget must hold at least one step's residuals. The exact programme is O(T²·m)
    in T and the budget in units (see `Optimal.units`), memoised across budgets (bounded
    in bytes, `plan_cache_bytes`); it runs where that work stays under `EXACT_WORK`.
    Longer sequences get the best segment plan (NOTE [segment plans]): binomial over
    segments each recorded whole, priced in closed form, generated lazily with O(slots)
    memory, so T = 10⁶ plans in milliseconds. Where the budget holds many steps, such a
    plan is provably within a hair of the optimum (forward steps >= 2T − K for every
    exact schedule); where it holds only a few states it can do more forward steps than
    the exact programme would (reports/long_sequences), never more than binomial.

    Give it the cell's `link_bytes` as well (``**cell.sizes(B, dtype)``), as `run` does,
    and it plans with what consecutive recorded steps share (NOTE [linked steps]).

    >>> from bptt_memory import simulate
    >>> plan = optimal(budget_bytes=100).schedule(n_steps=6, state_bytes=10, residual_bytes=35)
    >>> simulate(plan, state_bytes=10, residual_bytes=35).peak_bytes <= 100
    True
    """
    return Optimal(budget_bytes)
