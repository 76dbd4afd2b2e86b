"""Walking a schedule: the bookkeeping every executor shares.

A schedule (`bptt_memory.schedule`) says what to run, store, restore, record and reverse;
an executor does the work on real arrays (numpy's in `bptt_memory.engine`, PyTorch's in
`bptt_memory.torch`). `walk` keeps the books between the two: where the working state is,
the stored states by boundary, the recorded steps' residuals by step, and the bytes held
for the backward pass with their peak (NOTE [memory accounting] in engine.py). It never
touches an array itself: executors tell it how many bytes each thing they keep holds.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Generic, Iterable, TypeVar

from .schedule import Action, Advance, Free, Record, Restore, Reverse, Store

__all__ = ["Ledger", "Executor", "walk"]

S = TypeVar("S")  # a state: a tuple of arrays or tensors
R = TypeVar("R")  # one recorded step's residuals, whatever the executor keeps


class Ledger(Generic[S, R]):
    """What a run holds for the backward pass, and the bytes it adds up to.

    ``held`` is the running sum of the bytes kept (stored states, recorded residuals),
    ``peak`` its maximum; ``forward_steps`` and ``backward_steps`` count the steps the
    walked actions ran.
    """

    def __init__(self) -> None:
        self.stored: dict[int, S] = {}
        self.residuals: dict[int, R] = {}
        self._bytes: dict[tuple[str, int], int] = {}
        self.held = self.peak = 0
        self.forward_steps = self.backward_steps = 0

    def hold(self, nbytes: int) -> None:
        self.held += nbytes
        if self.held > self.peak:
            self.peak = self.held

    def release(self, nbytes: int) -> None:
        self.held -= nbytes

    def keep(self, t: int, residuals: R, nbytes: int) -> None:
        """Step t's residuals, holding `nbytes` (less than their size where they share
        arrays with the step before: NOTE [linked steps] in bptt_memory/cells/_gated.py)."""
        self.residuals[t] = residuals
        self._bytes["r", t] = nbytes
        self.hold(nbytes)

    def drop(self, t: int) -> R:
        """Step t's residuals, no longer held (the executor has reversed the step)."""
        self.release(self._bytes.pop(("r", t)))
        return self.residuals.pop(t)

    def store(self, n: int, state: S, nbytes: int) -> None:
        self.stored[n] = state
        self._bytes["s", n] = nbytes
        self.hold(nbytes)

    def free(self, n: int) -> S:
        self.release(self._bytes.pop(("s", n)))
        return self.stored.pop(n)


class Executor(ABC, Generic[S, R]):
    """The work an executor does for `walk`: run steps on its arrays.

    `record` must `ledger.keep` every step it records; `reverse` must `ledger.drop`
    every step it reverses, as soon as that step's residuals are dead, so the ledger's
    peak is the run's.
    """

    ledger: Ledger[S, R]

    @abstractmethod
    def advance(self, state: S, n0: int, n1: int) -> S:
        """Run steps [n0, n1) from `state`, keeping nothing; the state at n1."""

    @abstractmethod
    def record(self, state: S, n0: int, n1: int) -> S:
        """Run steps [n0, n1) from `state`, keeping each step's residuals."""

    @abstractmethod
    def reverse(self, n0: int, n1: int, dstate: Any) -> Any:
        """Backpropagate dL/dstate_n1 through steps n1 − 1 … n0; dL/dstate_n0."""

    @abstractmethod
    def copy(self, state: S) -> tuple[S, int]:
        """A copy of `state` to store, and its bytes."""


def walk(actions: Iterable[Action], executor: Executor[S, R], h0: S, dstate: Any,
         start: S | None = None) -> Any:
    """Walk already validated actions (`simulate` has checked them) with `executor`,
    from h0 and the adjoint dL/dstate_T; return dL/dh0. The books are in
    ``executor.ledger``. ``start``: the working state where the actions begin, when it
    is not h0 (a forward pass that ran elsewhere, e.g. on a stream)."""
    ledger = executor.ledger
    state = h0 if start is None else start
    for a in actions:
        if isinstance(a, Advance):
            state = executor.advance(state, a.n0, a.n1)
            ledger.forward_steps += a.n1 - a.n0
        elif isinstance(a, Record):
            state = executor.record(state, a.n0, a.n1)
            ledger.forward_steps += a.n1 - a.n0
        elif isinstance(a, Reverse):
            dstate = executor.reverse(a.n0, a.n1, dstate)
            ledger.backward_steps += a.n1 - a.n0
        elif isinstance(a, Store):
            ledger.store(a.n, *executor.copy(state))
        elif isinstance(a, Restore):
            state = h0 if a.n == 0 else ledger.stored[a.n]
        elif isinstance(a, Free):
            ledger.free(a.n)
        # any other action is a marker for the simulator (EndForward): no work
    return dstate
