"""The shared bookkeeping: any executor that does the work gets the books right."""

import pytest

import bptt_memory as bm
from bptt_memory.walk import Executor, Ledger, walk


class _Scalar(Executor):
    """h' = a·h + x_t with loss Σ_t h_{t+1}: plain floats, residuals a tuple."""

    def __init__(self, xs, a=0.5):
        self.ledger, self.xs, self.a = Ledger(), xs, a

    def advance(self, state, n0, n1):
        for t in range(n0, n1):
            state = self.a * state + self.xs[t]
        return state

    def record(self, state, n0, n1):
        for t in range(n0, n1):
            self.ledger.keep(t, (state,), 8)
            state = self.a * state + self.xs[t]
        return state

    def reverse(self, n0, n1, dstate):
        for t in range(n1 - 1, n0 - 1, -1):
            self.ledger.drop(t)
            dstate = (dstate + 1.0) * self.a  # dL/dh_t: the step's own loss, then back through it
        return dstate

    def copy(self, state):
        return state, 8


@pytest.mark.parametrize("strategy", [bm.full(), bm.uniform(every=3), bm.binomial(slots=2)],
                         ids=lambda s: s.name)
def test_walk_gives_every_schedule_the_same_adjoint_and_the_simulators_books(strategy):
    T, xs = 11, [0.1 * t for t in range(11)]
    plan = strategy.schedule(T)
    ex = _Scalar(xs)
    dh0 = walk(plan, ex, 1.0, 0.0)
    # dL/dh0 = Σ_{k=1..T} a^k
    assert dh0 == pytest.approx(sum(0.5 ** k for k in range(1, T + 1)), rel=1e-15)
    cost = bm.simulate(plan, state_bytes=8, residual_bytes=8)
    assert (ex.ledger.forward_steps, ex.ledger.backward_steps) == (cost.forward_steps, T)
    assert ex.ledger.peak == cost.peak_bytes
    assert ((ex.ledger.peak_states, ex.ledger.peak_residuals)
            == (cost.peak_states, cost.peak_residuals))
    assert ex.ledger.held == 0 and not ex.ledger.stored and not ex.ledger.residuals
