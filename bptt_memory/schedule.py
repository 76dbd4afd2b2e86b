"""Checkpointing schedules as data, and the symbolic simulator that checks them.

A schedule is a sequence of small frozen actions over a sequence of T steps. Step i maps
the state at boundary i to the state at boundary i + 1; boundary 0 holds the caller's
h0, which is always available and never stored. Ranges are half-open, [n0, n1).

There is one *working state* (at some boundary) going forward and one *adjoint* going
backward, which starts at boundary T. `simulate` walks the actions with index sets only
(no arrays), rejects invalid schedules with a message saying which action and why, and
counts the work and the memory. The executor (`bptt_memory.strategies`) walks the same
actions with real arrays, so a schedule's cost is known before anything runs.

References: Griewank & Walther, "Algorithm 799: Revolve" (ACM TOMS 2000);
Maddison et al.'s checkpoint_schedules (action vocabulary).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Union

__all__ = [
    "Advance", "Store", "Restore", "Free", "Record", "Reverse", "EndForward", "Action",
    "Cost", "ScheduleError", "simulate", "format_schedule",
]


class ScheduleError(ValueError):
    """An invalid schedule: which action, and why."""


def _check_range(action: object, n0: object, n1: object) -> None:
    if type(n0) is int and type(n1) is int and 0 <= n0 < n1:
        return  # the common case, first: planners make millions of actions
    for name, v in (("n0", n0), ("n1", n1)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise ScheduleError(f"{action!r}: {name} must be an int, got {type(v).__name__}")
    if not 0 <= n0 < n1:  # type: ignore[operator]
        raise ScheduleError(f"{action!r}: needs 0 <= n0 < n1 (a non-empty half-open range)")


def _check_index(action: object, n: object) -> None:
    if type(n) is int and n >= 0:
        return
    if isinstance(n, bool) or not isinstance(n, int):
        raise ScheduleError(f"{action!r}: n must be an int, got {type(n).__name__}")
    if n < 0:
        raise ScheduleError(f"{action!r}: n must be >= 0")


@dataclass(frozen=True)
class Advance:
    """Advance the working state from boundary n0 to n1, keeping nothing."""

    n0: int
    n1: int

    def __post_init__(self) -> None:
        _check_range(self, self.n0, self.n1)

    def __str__(self) -> str:
        return f"advance  [{self.n0}, {self.n1})"


@dataclass(frozen=True)
class Record:
    """Run steps n0 … n1−1 from the working state, keeping each step's residuals."""

    n0: int
    n1: int

    def __post_init__(self) -> None:
        _check_range(self, self.n0, self.n1)

    def __str__(self) -> str:
        return f"record   [{self.n0}, {self.n1})"


@dataclass(frozen=True)
class Reverse:
    """Backpropagate through steps n1−1 down to n0 with their residuals, then drop them."""

    n0: int
    n1: int

    def __post_init__(self) -> None:
        _check_range(self, self.n0, self.n1)

    def __str__(self) -> str:
        return f"reverse  [{self.n0}, {self.n1})"


@dataclass(frozen=True)
class Store:
    """Store a copy of the working state, which is at boundary n."""

    n: int

    def __post_init__(self) -> None:
        _check_index(self, self.n)

    def __str__(self) -> str:
        return f"store    {self.n}"


@dataclass(frozen=True)
class Restore:
    """Make the stored state at boundary n (or h0, for n = 0) the working state."""

    n: int

    def __post_init__(self) -> None:
        _check_index(self, self.n)

    def __str__(self) -> str:
        return f"restore  {self.n}"


@dataclass(frozen=True)
class Free:
    """Drop the stored state at boundary n."""

    n: int

    def __post_init__(self) -> None:
        _check_index(self, self.n)

    def __str__(self) -> str:
        return f"free     {self.n}"


@dataclass(frozen=True)
class EndForward:
    """The forward pass has ended: the sequence has n steps (T = n is known from here on).

    An online policy (`bptt_memory.online`) decides what to keep before it knows T; this
    marker is where it learns T. Everything before it may depend only on the steps seen
    so far. It moves nothing and holds nothing: the executor passes over it.
    """

    n: int

    def __post_init__(self) -> None:
        _check_index(self, self.n)

    def __str__(self) -> str:
        return f"end forward, T = {self.n}"


Action = Union[Advance, Record, Reverse, Store, Restore, Free, EndForward]
_ACTIONS = (Advance, Record, Reverse, Store, Restore, Free, EndForward)


def format_schedule(actions: Iterable[Action]) -> str:
    """One action a line, readable aloud.

    >>> print(format_schedule([Advance(0, 1), EndForward(2), Record(1, 2), Reverse(1, 2),
    ...                        Restore(0), Record(0, 1), Reverse(0, 1)]))
    advance  [0, 1)
    end forward, T = 2
    record   [1, 2)
    reverse  [1, 2)
    restore  0
    record   [0, 1)
    reverse  [0, 1)
    """
    return "\n".join(str(a) for a in actions)


@dataclass(frozen=True)
class Cost:
    """What a schedule does and holds, from `simulate`.

    ``peak_bytes`` is the peak of states·state_bytes + residuals·residual_bytes −
    linked·link_bytes taken at every moment (not the sum of separate peaks), where
    `linked` counts the recorded steps that were recorded while the step before them was
    held (NOTE [linked steps] in bptt_memory/cells/_gated.py); None when the byte sizes
    were not given.
    """

    n_steps: int
    forward_steps: int
    backward_steps: int
    peak_states: int
    peak_residuals: int
    peak_bytes: int | None
    actions: int | None  # None where a closed form prices a strategy without counting them

    @property
    def recompute_factor(self) -> float:
        """forward_steps / n_steps: 1.0 means nothing was recomputed."""
        return self.forward_steps / self.n_steps


def simulate(schedule: Iterable[Action], *, n_steps: int | None = None,
             state_bytes: int | None = None, residual_bytes: int | None = None,
             link_bytes: int = 0, budget_bytes: int | None = None,
             max_states: int | None = None, max_residuals: int | None = None) -> Cost:
    """Walk a schedule symbolically; return its `Cost` or raise `ScheduleError`.

    Args:
        schedule: actions (a tuple or any iterable; it is walked once).
        n_steps: T. If None, T is the furthest boundary any Advance/Record reaches.
        state_bytes, residual_bytes: sizes for the byte count; both or neither.
        link_bytes: what a step recorded while the step before it is held shares with
            it, ``cell.link_bytes(B, dtype)``; 0 (the default) prices every step alone.
        budget_bytes, max_states, max_residuals: limits the schedule must respect.

    A valid schedule moves the working state only from where it is, stores a state at
    most once, restores only stored states (or h0 at 0), records each step before
    reversing it, reverses T−1 down to 0 exactly once in order, and ends holding nothing.
    An `EndForward(n)` marker, if present, comes once, before any Reverse, with n = T.

    >>> simulate([Advance(0, 1), Record(1, 2), Reverse(1, 2), Restore(0),
    ...           Record(0, 1), Reverse(0, 1)]).forward_steps
    3
    """
    if (state_bytes is None) != (residual_bytes is None):
        raise ValueError("simulate: give both state_bytes and residual_bytes, or neither")
    if budget_bytes is not None and state_bytes is None:
        raise ValueError("simulate(budget_bytes=...): also give state_bytes and residual_bytes")
    actions = list(schedule) if n_steps is None else schedule
    if n_steps is None:
        reach = [a.n1 for a in actions if isinstance(a, (Advance, Record))]  # type: ignore[union-attr]
        reach += [a.n for a in actions if isinstance(a, EndForward)]  # type: ignore[union-attr]
        if not reach:
            raise ScheduleError("schedule: runs no step (no Advance or Record); nothing to reverse")
        n_steps = max(reach)
    if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 1:
        raise ValueError(f"simulate(n_steps={n_steps!r}): needs an int >= 1")
    T = n_steps
    sb, rb = state_bytes or 0, residual_bytes or 0
    if isinstance(link_bytes, bool) or not isinstance(link_bytes, int) or not 0 <= link_bytes <= rb:
        raise ValueError(
            f"simulate(link_bytes={link_bytes!r}): needs an int between 0 and residual_bytes, "
            "e.g. cell.link_bytes(B, dtype)"
        )
    lb = link_bytes

    pos = 0  # boundary of the working state
    adjoint = T  # boundary the adjoint has reached
    stored: set[int] = set()
    recorded: set[int] = set()
    linked: set[int] = set()  # recorded steps that share link_bytes with the step before
    forward = backward = peak_s = peak_r = peak_b = count = 0
    ended = False  # an EndForward marker was seen

    def fail(i: int, a: object, why: str) -> ScheduleError:
        return ScheduleError(f"schedule action #{i} {a!r}: {why}")

    for i, a in enumerate(actions):
        count += 1
        if not isinstance(a, _ACTIONS):
            raise fail(i, a, "not an action; use Advance/Record/Reverse/Store/Restore/Free")
        if isinstance(a, EndForward):
            if ended:
                raise fail(i, a, "the forward pass has already ended; give one EndForward")
            if adjoint != T:
                raise fail(i, a, "comes after a Reverse; the forward pass ends before any step "
                           "is reversed")
            if a.n != T:
                raise fail(i, a, f"says T = {a.n}, but the sequence has {T} steps")
            ended = True
            continue
        if isinstance(a, (Advance, Record)):
            if a.n1 > T:
                raise fail(i, a, f"runs past the last boundary T={T}")
            if a.n0 != pos:
                raise fail(i, a, f"the working state is at {pos}, not {a.n0}; "
                                 f"Restore({a.n0}) first")
            if isinstance(a, Record):
                again = recorded.intersection(range(a.n0, a.n1))
                if again:
                    raise fail(i, a, f"step {min(again)} is already recorded; Reverse it first")
                if lb:  # every step of the run after the first links; the first if n0 − 1 is held
                    linked.update(range(a.n0 if a.n0 - 1 in recorded else a.n0 + 1, a.n1))
                recorded.update(range(a.n0, a.n1))
            pos = a.n1
            forward += a.n1 - a.n0
        elif isinstance(a, Reverse):
            if a.n1 != adjoint:
                raise fail(i, a, f"the adjoint is at {adjoint}: reverse steps in order, "
                                 f"from {adjoint} down")
            missing = set(range(a.n0, a.n1)) - recorded
            if missing:
                raise fail(i, a, f"step {max(missing)} has no residuals; Record it first")
            if lb:
                linked.difference_update(range(a.n0, a.n1))
            recorded.difference_update(range(a.n0, a.n1))
            adjoint = a.n0
            backward += a.n1 - a.n0
        elif isinstance(a, Store):
            if a.n == 0:
                raise fail(i, a, "boundary 0 is the caller's h0, always available; don't store it")
            if a.n >= T:
                raise fail(i, a, f"the state at {a.n} >= T={T} is never needed")
            if a.n != pos:
                raise fail(i, a, f"the working state is at {pos}, not {a.n}")
            if a.n in stored:
                raise fail(i, a, f"the state at {a.n} is already stored")
            stored.add(a.n)
        elif isinstance(a, Restore):
            if a.n != 0 and a.n not in stored:
                raise fail(i, a, f"no state is stored at {a.n}; Store({a.n}) earlier")
            pos = a.n
        else:  # Free
            if a.n not in stored:
                raise fail(i, a, f"no state is stored at {a.n}")
            stored.discard(a.n)
        held = len(stored) * sb + len(recorded) * rb - len(linked) * lb
        peak_s, peak_r = max(peak_s, len(stored)), max(peak_r, len(recorded))
        peak_b = max(peak_b, held)
        if budget_bytes is not None and held > budget_bytes:
            raise fail(i, a, f"holds {held} bytes, over budget_bytes={budget_bytes}")
        if max_states is not None and len(stored) > max_states:
            raise fail(i, a, f"holds {len(stored)} states, over the limit of {max_states}")
        if max_residuals is not None and len(recorded) > max_residuals:
            raise fail(i, a, f"holds {len(recorded)} recorded steps, over the limit of "
                             f"{max_residuals}")
    if adjoint != 0:
        raise ScheduleError(f"schedule: ends with steps [0, {adjoint}) not reversed")
    if stored:
        raise ScheduleError(f"schedule: ends still storing states {sorted(stored)}; Free them")
    if recorded:
        raise ScheduleError(f"schedule: ends with recorded steps {sorted(recorded)} never reversed")
    return Cost(
        n_steps=T, forward_steps=forward, backward_steps=backward, peak_states=peak_s,
        peak_residuals=peak_r, peak_bytes=peak_b if state_bytes is not None else None,
        actions=count,
    )
