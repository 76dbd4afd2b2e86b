"""Schedules as data, and the simulator that proves them valid (bptt_memory.schedule).

Golden traces for the small cases are written out by hand from the algorithms (the
reasoning sits beside each), then asserted equal in one line. Every rule `simulate`
enforces has a schedule here that breaks exactly that rule.
"""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import bptt_memory as bm
from bptt_memory import (
    Advance,
    Cost,
    Free,
    Record,
    Restore,
    Reverse,
    ScheduleError,
    Store,
    format_schedule,
    simulate,
)

# -- schedules are data ----------------------------------------------------------------


def test_actions_compare_equal_hash_and_print_readably():
    assert Advance(0, 2) == Advance(0, 2)
    assert Advance(0, 2) != Record(0, 2)  # same fields, different action
    assert Store(3) != Restore(3)
    assert len({Advance(0, 2), Advance(0, 2), Store(1), Store(1), Free(1)}) == 3
    assert repr(Reverse(1, 4)) == "Reverse(n0=1, n1=4)"
    plan = (Advance(0, 1), Store(1), Record(1, 2), Reverse(1, 2), Free(1),
            Restore(0), Record(0, 1), Reverse(0, 1))
    assert format_schedule(plan) == "\n".join([
        "advance  [0, 1)",
        "store    1",
        "record   [1, 2)",
        "reverse  [1, 2)",
        "free     1",
        "restore  0",
        "record   [0, 1)",
        "reverse  [0, 1)",
    ])
    assert format_schedule(iter(plan)) == format_schedule(plan)  # any iterable
    assert format_schedule(()) == ""


def test_actions_are_frozen():
    a = Store(2)
    with pytest.raises(AttributeError):
        a.n = 3  # type: ignore[misc]


def test_equal_schedules_compare_equal_and_hash_equal():
    for strategy in (bm.full(), bm.uniform(every=3), bm.binomial(slots=2)):
        one, two = strategy.schedule(11), strategy.schedule(11)
        assert one == two and one is not two
        assert hash(one) == hash(two)
    lstm_sizes = dict(state_bytes=2, residual_bytes=7)
    assert (bm.optimal(40).schedule(11, **lstm_sizes)
            == bm.optimal(40).schedule(11, **lstm_sizes))
    assert bm.binomial(slots=2).schedule(11) != bm.binomial(slots=3).schedule(11)
    # strategies are data too: equal when built alike, usable as dict keys
    assert bm.binomial(4) == bm.binomial(slots=4) and bm.uniform() == bm.uniform(None)
    assert len({bm.binomial(4), bm.binomial(4), bm.optimal(100), bm.full()}) == 3


@pytest.mark.parametrize("make, n0, n1", [
    (make, n0, n1)
    for make in (Advance, Record, Reverse)
    for n0, n1 in [(1, 1), (2, 1), (-1, 2), (-3, -1)]
])
def test_range_actions_reject_empty_or_negative_ranges(make, n0, n1):
    with pytest.raises(ScheduleError, match=r"0 <= n0 < n1"):
        make(n0, n1)


@pytest.mark.parametrize("make", [Advance, Record, Reverse])
@pytest.mark.parametrize("n0, n1, bad", [(0, 1.0, "n1"), (0.0, 1, "n0"), (True, 2, "n0"),
                                         (0, "3", "n1"), (None, 1, "n0")])
def test_range_actions_reject_non_ints(make, n0, n1, bad):
    with pytest.raises(ScheduleError, match=f"{bad} must be an int"):
        make(n0, n1)


@pytest.mark.parametrize("make", [Store, Restore, Free])
def test_index_actions_reject_negative_and_non_ints(make):
    with pytest.raises(ScheduleError, match=r"n must be >= 0"):
        make(-1)
    for bad in (1.0, True, "1", None):
        with pytest.raises(ScheduleError, match=r"n must be an int"):
            make(bad)


def test_schedule_error_is_a_value_error():
    assert issubclass(ScheduleError, ValueError)


# -- golden traces ---------------------------------------------------------------------


def test_golden_full_T3():
    # Record all three steps going forward, then reverse them all: T forward steps.
    expected = (Record(0, 3), Reverse(0, 3))
    assert bm.full().schedule(n_steps=3) == expected
    cost = simulate(expected)
    assert (cost.forward_steps, cost.peak_states, cost.peak_residuals) == (3, 0, 3)


def test_golden_uniform_every2_T5():
    # Segments [0, 2) [2, 4) [4, 5). Going forward, store the state entering every
    # segment but the first (h0) and the last (the working state is already there).
    # Then reverse segment by segment, last first, recording each from its start.
    expected = (
        Advance(0, 2), Store(2), Advance(2, 4),
        Record(4, 5), Reverse(4, 5),
        Restore(2), Record(2, 4), Reverse(2, 4), Free(2),
        Restore(0), Record(0, 2), Reverse(0, 2),
    )
    assert bm.uniform(every=2).schedule(n_steps=5) == expected
    cost = simulate(expected)
    # T + k·(m − 1) = 5 + 2·2; m − 2 = 1 state; min(k, T) = 2 residuals
    assert (cost.forward_steps, cost.peak_states, cost.peak_residuals) == (9, 1, 2)


def test_golden_binomial_slots1_T3():
    # One slot plus h0 is 2 snapshots: t(3, 2) = 2 extra steps, the fewest possible
    # (storing boundary 2 instead is useless: step 2 is recorded from the working state,
    # so the schedule would pay t(3, 1) = 3). Store 1, run to 2, reverse step 2,
    # restore 1 for step 1, then h0 for step 0.
    expected = (
        Advance(0, 1), Store(1), Advance(1, 2),
        Record(2, 3), Reverse(2, 3),
        Restore(1), Record(1, 2), Reverse(1, 2), Free(1),
        Restore(0), Record(0, 1), Reverse(0, 1),
    )
    assert bm.binomial(slots=1).schedule(n_steps=3) == expected
    cost = simulate(expected, max_states=1, max_residuals=1)
    assert cost.forward_steps == 3 + 2 == _brute_t(3, 2) + 3
    assert (cost.backward_steps, cost.peak_states, cost.peak_residuals) == (3, 1, 1)


def test_golden_binomial_slots2_T4():
    # 3 snapshots for 4 steps: C(3 + 1, 3) = 4 >= 4, so r = 1, each step is advanced at
    # most once: t(4, 3) = 4 − C(4, 4) = 3. Store 1 and 2 on the way (boundary 3 needs
    # no slot: step 3 is recorded straight from the working state there).
    expected = (
        Advance(0, 1), Store(1), Advance(1, 2), Store(2), Advance(2, 3),
        Record(3, 4), Reverse(3, 4),
        Restore(2), Record(2, 3), Reverse(2, 3), Free(2),
        Restore(1), Record(1, 2), Reverse(1, 2), Free(1),
        Restore(0), Record(0, 1), Reverse(0, 1),
    )
    assert bm.binomial(slots=2).schedule(n_steps=4) == expected
    cost = simulate(expected, max_states=2, max_residuals=1)
    assert cost.forward_steps == 4 + 3 == _brute_t(4, 3) + 4
    assert (cost.peak_states, cost.peak_residuals) == (2, 1)


def _brute_t(n, s):
    """Griewank's t(n, s) by exhaustive split, tiny n only (see test_checkpoint)."""
    if n == 1:
        return 0
    if s == 1:
        return n * (n - 1) // 2
    return min(m + _brute_t(n - m, s - 1) + _brute_t(m, s) for m in range(1, n))


# -- simulate: counts ------------------------------------------------------------------


def test_simulate_counts_work_and_bytes():
    plan = (Advance(0, 2), Store(2), Record(2, 4), Reverse(2, 4), Free(2),
            Restore(0), Record(0, 2), Reverse(0, 2))
    cost = simulate(plan, state_bytes=10, residual_bytes=3)
    assert cost == Cost(n_steps=4, forward_steps=6, backward_steps=4, peak_states=1,
                        peak_residuals=2, peak_bytes=10 + 2 * 3, actions=8)
    assert cost.recompute_factor == 1.5
    assert simulate(plan).peak_bytes is None


def test_simulate_peak_bytes_is_the_peak_of_the_sum_not_the_sum_of_peaks():
    # 2 states are held early, 2 residuals late, never both: peak 2·max(sb, rb), not 2·sb + 2·rb.
    plan = (Advance(0, 1), Store(1), Advance(1, 2), Store(2), Advance(2, 3), Record(3, 4),
            Reverse(3, 4), Free(2), Free(1), Restore(0), Record(0, 3), Reverse(0, 3))
    cost = simulate(plan, state_bytes=5, residual_bytes=4)
    assert (cost.peak_states, cost.peak_residuals) == (2, 3)
    assert cost.peak_bytes == max(2 * 5 + 4, 3 * 4)


def test_simulate_prices_linked_steps():
    # NOTE [linked steps]: a step recorded while the step before is held keeps link_bytes less
    plan = (Advance(0, 2), Store(2), Record(2, 5), Reverse(2, 5), Restore(0), Record(0, 2),
            Reverse(0, 2), Free(2))
    cost = simulate(plan, state_bytes=10, residual_bytes=7, link_bytes=3)
    assert cost.peak_bytes == 10 + 3 * 7 - 2 * 3  # steps 3 and 4 link; 2 does not
    assert simulate(plan, state_bytes=10, residual_bytes=7).peak_bytes == 10 + 3 * 7
    # steps 0 and 1 recorded separately in order link; 2 recorded before 1 does not
    # link to it, even once 1 is recorded: the rule looks back at the record only
    in_order = (Record(0, 1), Record(1, 2), Reverse(1, 2), Reverse(0, 1))
    assert simulate(in_order, state_bytes=1, residual_bytes=7, link_bytes=3).peak_bytes == 11
    out_of_order = (Advance(0, 2), Record(2, 3), Restore(0), Advance(0, 1), Record(1, 2),
                    Reverse(1, 3), Restore(0), Record(0, 1), Reverse(0, 1))
    cost = simulate(out_of_order, state_bytes=1, residual_bytes=7, link_bytes=3)
    assert cost.peak_bytes == 2 * 7
    # the budget sees the linked bytes
    assert simulate(in_order, state_bytes=1, residual_bytes=7, link_bytes=3,
                    budget_bytes=11).peak_bytes == 11
    with pytest.raises(ScheduleError, match="over budget_bytes=10"):
        simulate(in_order, state_bytes=1, residual_bytes=7, link_bytes=3, budget_bytes=10)


def test_simulate_walks_any_iterable_once_when_n_steps_is_given():
    walked = []

    def actions():
        for a in bm.binomial(slots=2).schedule(9):
            walked.append(a)
            yield a

    cost = simulate(actions(), n_steps=9)
    assert tuple(walked) == bm.binomial(slots=2).schedule(9)
    assert cost.actions == len(walked)


@settings(max_examples=60, deadline=None)
@given(T=st.integers(1, 120), every=st.integers(1, 130))
def test_uniform_counts_match_its_docstring(T, every):
    cost = simulate(bm.uniform(every=every).schedule(T), state_bytes=3, residual_bytes=5)
    m = math.ceil(T / every)
    assert cost.forward_steps == T + every * (m - 1)
    assert cost.backward_steps == T
    assert cost.peak_residuals == min(every, T)
    assert cost.peak_states == max(m - 2, 0)


@pytest.mark.parametrize("T", [1, 2, 3, 7, 12, 13, 30, 100, 101])
def test_uniform_default_segment_is_round_sqrt_T(T):
    k = round(math.sqrt(T))
    assert bm.uniform().segment(T) == k == bm.uniform(every=None).segment(T)
    assert bm.uniform().schedule(T) == bm.uniform(every=k).schedule(T)


# -- simulate: every rule, broken once -------------------------------------------------

# h0 → 1 → 2: a valid 2-step schedule to break one action at a time.
_VALID = (Advance(0, 1), Store(1), Record(1, 2), Reverse(1, 2), Restore(0),
          Record(0, 1), Reverse(0, 1), Free(1))


def test_the_base_schedule_is_valid():
    assert simulate(_VALID).forward_steps == 3


@pytest.mark.parametrize("plan, kwargs, message", [
    pytest.param((Restore(1), Record(1, 2), Reverse(1, 2), Restore(0), Record(0, 1), Reverse(0, 1)),
                 {}, r"#0 Restore\(n=1\): no state is stored at 1; Store\(1\) earlier",
                 id="restore-not-stored"),
    pytest.param((Advance(0, 1), Store(1), Free(1), Restore(1), Record(1, 2), Reverse(1, 2),
                  Restore(0), Record(0, 1), Reverse(0, 1)),
                 {}, r"#3 .*no state is stored at 1", id="restore-after-free"),
    pytest.param((Advance(1, 2),), {"n_steps": 2},
                 r"#0 .*the working state is at 0, not 1; Restore\(1\) first",
                 id="advance-from-wrong-position"),
    pytest.param((Record(0, 2), Advance(0, 1)), {"n_steps": 2},
                 r"#1 .*the working state is at 2, not 0", id="advance-without-restore"),
    pytest.param((Record(0, 3),), {"n_steps": 2}, r"runs past the last boundary T=2",
                 id="advance-past-T"),
    pytest.param((Record(0, 2), Reverse(0, 1), Reverse(1, 2)), {},
                 r"#1 .*the adjoint is at 2: reverse steps in order, from 2 down",
                 id="reverse-out-of-order"),
    pytest.param((Record(0, 2), Reverse(1, 2), Reverse(1, 2)), {},
                 r"#2 .*the adjoint is at 1", id="reverse-twice"),
    pytest.param((Advance(0, 1), Record(1, 2), Reverse(0, 2)), {},
                 r"#2 .*step 0 has no residuals; Record it first", id="reverse-without-residuals"),
    pytest.param((Record(0, 1), Restore(0), Record(0, 2)), {},
                 r"#2 .*step 0 is already recorded; Reverse it first", id="record-twice"),
    pytest.param((Store(0), Record(0, 1), Reverse(0, 1)), {},
                 r"#0 Store\(n=0\): boundary 0 is the caller's h0", id="store-h0"),
    pytest.param((Advance(0, 1), Store(1), Store(1)), {"n_steps": 2},
                 r"#2 .*already stored", id="store-twice"),
    pytest.param((Advance(0, 1), Store(2)), {"n_steps": 3},
                 r"#1 .*the working state is at 1, not 2", id="store-elsewhere"),
    pytest.param((Record(0, 2), Store(2), Reverse(0, 2), Free(2)), {},
                 r"#1 .*the state at 2 >= T=2 is never needed", id="store-T"),
    pytest.param((Free(1), Record(0, 1), Reverse(0, 1)), {}, r"#0 .*no state is stored at 1",
                 id="free-not-stored"),
    pytest.param(_VALID, {"state_bytes": 10, "residual_bytes": 3, "budget_bytes": 12},
                 r"#2 Record\(n0=1, n1=2\): holds 13 bytes, over budget_bytes=12",
                 id="over-budget"),
    pytest.param(_VALID, {"max_states": 0}, r"#1 Store\(n=1\): holds 1 states, over the limit of 0",
                 id="over-max-states"),
    pytest.param((Record(0, 2), Reverse(0, 2)), {"max_residuals": 1},
                 r"holds 2 recorded steps, over the limit of 1", id="over-max-residuals"),
    pytest.param(_VALID[:-1], {}, r"ends still storing states \[1\]; Free them",
                 id="states-left-stored"),
    pytest.param((Record(0, 1), Reverse(0, 1), Restore(0), Record(0, 1)), {},
                 r"ends with recorded steps \[0\] never reversed", id="residuals-left-held"),
    pytest.param((Record(0, 2), Reverse(1, 2)), {}, r"ends with steps \[0, 1\) not reversed",
                 id="not-all-reversed"),
    pytest.param((Record(0, 2),), {"n_steps": 3},
                 r"ends with steps \[0, 3\) not reversed", id="short-of-n_steps"),
    pytest.param((Record(0, 1), "reverse 0 1", Reverse(0, 1)), {},
                 r"#1 'reverse 0 1': not an action", id="not-an-action"),
    pytest.param((Record(0, 1), (0, 1)), {"n_steps": 1}, r"#1 \(0, 1\): not an action",
                 id="tuple-not-an-action"),
    pytest.param((Store(1),), {}, r"runs no step", id="no-steps"),
])
def test_simulate_rejects(plan, kwargs, message):
    with pytest.raises(ScheduleError, match=message):
        simulate(plan, **kwargs)


def test_simulate_budget_is_inclusive():
    # _VALID peaks at one state and one step's residuals: 13 bytes fit a 13-byte budget.
    cost = simulate(_VALID, state_bytes=10, residual_bytes=3, budget_bytes=13)
    assert cost.peak_bytes == 13
    assert simulate(_VALID, max_states=1, max_residuals=1).peak_states == 1


@pytest.mark.parametrize("kwargs, error, message", [
    ({"state_bytes": 8}, ValueError, "give both state_bytes and residual_bytes"),
    ({"residual_bytes": 8}, ValueError, "give both state_bytes and residual_bytes"),
    ({"budget_bytes": 100}, ValueError, "also give state_bytes and residual_bytes"),
    ({"n_steps": 0}, ValueError, r"simulate\(n_steps=0\): needs an int >= 1"),
    ({"n_steps": 2.0}, ValueError, r"needs an int >= 1"),
    ({"n_steps": True}, ValueError, r"needs an int >= 1"),
    ({"state_bytes": 1, "residual_bytes": 4, "link_bytes": 5}, ValueError,
     r"simulate\(link_bytes=5\): needs an int between 0 and residual_bytes"),
    ({"state_bytes": 1, "residual_bytes": 4, "link_bytes": -1}, ValueError, "link_bytes=-1"),
    ({"state_bytes": 1, "residual_bytes": 4, "link_bytes": 1.0}, ValueError, "link_bytes=1.0"),
])
def test_simulate_rejects_bad_arguments(kwargs, error, message):
    with pytest.raises(error, match=message):
        simulate(_VALID, **kwargs)


@settings(max_examples=80, deadline=None)
@given(T=st.integers(2, 30), data=st.data())
def test_simulate_rejects_any_schedule_missing_one_reverse(T, data):
    """Dropping any one Reverse from a valid schedule is always caught."""
    plan = list(bm.binomial(slots=data.draw(st.integers(1, 5))).schedule(T))
    reverses = [i for i, a in enumerate(plan) if isinstance(a, Reverse)]
    del plan[data.draw(st.sampled_from(reverses))]
    with pytest.raises(ScheduleError):
        simulate(plan, n_steps=T)


@settings(max_examples=80, deadline=None)
@given(T=st.integers(2, 30), data=st.data())
def test_simulate_rejects_any_schedule_missing_one_store(T, data):
    """Dropping a Store leaves a Restore (or Free) of a state that was never kept."""
    plan = list(bm.binomial(slots=data.draw(st.integers(1, 5))).schedule(T))
    stores = [i for i, a in enumerate(plan) if isinstance(a, Store)]
    if not stores:
        return
    del plan[data.draw(st.sampled_from(stores))]
    with pytest.raises(ScheduleError, match="no state is stored"):
        simulate(plan, n_steps=T)


# -- the end-of-forward marker ------------------------------------------------------------


def test_end_forward_reads_aloud_and_is_a_frozen_value():
    from bptt_memory import EndForward

    assert str(EndForward(7)) == "end forward, T = 7"
    assert EndForward(7) == EndForward(7) and hash(EndForward(7)) == hash(EndForward(7))


def test_simulate_accepts_one_end_forward_before_any_reverse_and_reads_T_from_it():
    from bptt_memory import Advance, EndForward, Record, Restore, Reverse, simulate

    plan = [Advance(0, 1), EndForward(2), Record(1, 2), Reverse(1, 2), Restore(0),
            Record(0, 1), Reverse(0, 1)]
    assert simulate(plan).n_steps == 2 and simulate(plan).forward_steps == 3


def test_simulate_rejects_a_misplaced_end_forward():
    from bptt_memory import EndForward, Record, Reverse, ScheduleError, simulate

    with pytest.raises(ScheduleError, match="says T = 3"):
        simulate([Record(0, 2), EndForward(3), Reverse(0, 2)], n_steps=2)
    with pytest.raises(ScheduleError, match="after a Reverse"):
        simulate([Record(0, 2), Reverse(1, 2), EndForward(2), Reverse(0, 1)], n_steps=2)
    with pytest.raises(ScheduleError, match="already ended"):
        simulate([Record(0, 2), EndForward(2), EndForward(2), Reverse(0, 2)], n_steps=2)
