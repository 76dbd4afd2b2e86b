"""Online checkpointing (bptt_memory.online): decided without T, exact, within its slots.

The policy is fed one step at a time and told T only at the end; its schedule must be
valid for `simulate`, cost what `cost` says, equal offline binomial's forward steps up to
(s + 1)(s + 2)/2 steps (NOTE [online placement]), and give full()'s gradients through
`run` and through `stream`, which never sees the length in advance.
"""

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import bptt_memory as bm
from bptt_memory import Advance, EndForward, Free, Record, Restore, Reverse, Store, simulate


def _rel(a, b):
    scale = np.abs(b).max()
    return np.abs(a - b).max() / scale if scale > 0 else np.abs(a).max()


def test_golden_trace_for_two_slots_and_five_steps():
    """At step 3 the last segment would reach 3 > its bound 2: p_1 = 1 goes, since the
    segments [0, 1) and [1, 2) merged fit the first one's bound, and 3 is stored."""
    assert bm.online(2).schedule(5) == (
        Advance(0, 1), Store(1), Advance(1, 2), Store(2), Advance(2, 3),
        Free(1), Store(3), Advance(3, 4),
        EndForward(5), Record(4, 5), Reverse(4, 5),
        Restore(3), Record(3, 4), Reverse(3, 4), Free(3),
        Restore(2), Record(2, 3), Reverse(2, 3), Free(2),
        Restore(0), Advance(0, 1), Record(1, 2), Reverse(1, 2), Restore(0), Record(0, 1),
        Reverse(0, 1),
    )
    assert simulate(bm.online(2).schedule(5)).forward_steps == bm.binomial_forward_steps(5, 2)


def _unit_steps(actions):
    """Advances split into one-step advances: the same work, whatever was merged."""
    for a in actions:
        if isinstance(a, Advance):
            yield from (Advance(t, t + 1) for t in range(a.n0, a.n1))
        else:
            yield a


def test_the_forward_actions_do_not_depend_on_T():
    """Everything before EndForward is the same whatever the sequence's length turns out to be."""
    for slots in (1, 3, 6):
        longest = list(_unit_steps(bm.online(slots).schedule(300)))
        for T in (1, 2, 7, 50, 299):
            plan = bm.online(slots).schedule(T)
            forward = list(_unit_steps(plan[: plan.index(EndForward(T))]))
            assert forward == longest[: len(forward)]
            assert all(isinstance(a, (Advance, Store, Free)) for a in forward)


@settings(max_examples=120, deadline=None)
@given(T=st.integers(1, 400), slots=st.integers(1, 12))
def test_online_is_valid_within_its_slots_and_costs_what_it_says(T, slots):
    sizes = dict(state_bytes=3, residual_bytes=7, link_bytes=2)
    cost = simulate(bm.online(slots).iter_schedule(T), n_steps=T, max_states=slots,
                    max_residuals=1, **sizes)
    priced = bm.online(slots).cost(T, **sizes)
    assert (cost.forward_steps, cost.peak_states, cost.peak_residuals, cost.peak_bytes) == (
        priced.forward_steps, priced.peak_states, priced.peak_residuals, priced.peak_bytes)


@pytest.mark.parametrize("slots", [1, 2, 3, 5, 10, 20])
def test_online_equals_offline_binomial_up_to_s_plus_1_s_plus_2_over_2(slots):
    for T in range(1, (slots + 1) * (slots + 2) // 2 + 1):
        assert bm.online(slots).cost(T).forward_steps == bm.binomial_forward_steps(T, slots), T


@pytest.mark.parametrize("slots", [2, 5, 10])
def test_online_stays_near_offline_binomial_beyond(slots):
    for T in (100, 1000, 5000):
        ratio = bm.online(slots).cost(T).forward_steps / bm.binomial_forward_steps(T, slots)
        assert 1.0 <= ratio <= 1.3, (T, ratio)


@pytest.mark.parametrize("cell", [bm.vanilla(3, 4), bm.lstm(3, 4), bm.gru(3, 4)],
                         ids=["vanilla", "lstm", "gru"])
@pytest.mark.parametrize("T", [1, 2, 9, 40])
def test_run_and_stream_give_fulls_gradients(rng, cell, T):
    model = bm.Model(cell, n_out=2)
    params = model.init(rng)
    xs, ys = rng.standard_normal((T, 3, 3)), rng.standard_normal((T, 3, 2))
    mask = rng.uniform(0.2, 1.5, (T, 3))
    h0 = tuple(0.5 * rng.standard_normal((3, 4)) for _ in cell.state_names)
    ref = bm.full().run(model, params, xs, ys, h0=h0, mask=mask)
    sizes = cell.sizes(3, np.float64)
    for slots in (1, 3):
        strategy = bm.online(slots)
        ran = strategy.run(model, params, xs, ys, h0=h0, mask=mask)
        streamed = strategy.stream(model, params, zip(xs, ys, mask), h0=h0)
        cost = strategy.cost(T, **sizes)
        for res in (ran, streamed):
            assert abs(res.loss - ref.loss) <= 1e-12 * abs(ref.loss)
            for k in params:
                assert _rel(res.grads[k], ref.grads[k]) <= 1e-12, k
            for a, b in zip(res.grad_h0, ref.grad_h0):
                assert _rel(a, b) <= 1e-12
            assert res.stats.forward_steps == cost.forward_steps
            assert res.stats.backward_steps == T
            assert res.stats.peak_bytes == cost.peak_bytes
            assert res.stats.peak_bytes <= slots * sizes["state_bytes"] + sizes["residual_bytes"]


def test_stream_reads_an_iterator_of_unknown_length_once(rng):
    model = bm.Model(bm.lstm(2, 3), n_out=1)
    params = model.init(rng)
    seen = []

    def steps():
        for t in itertools.count():
            if t == 25:
                return
            seen.append(t)
            yield rng.standard_normal((2, 2)), rng.standard_normal((2, 1))

    res = bm.online(4).stream(model, params, steps())
    assert seen == list(range(25)) and res.stats.backward_steps == 25


def test_stream_rejects_an_empty_stream_and_bad_steps(rng):
    model = bm.Model(bm.vanilla(2, 3), n_out=1)
    params = model.init(rng)
    with pytest.raises(ValueError, match="empty"):
        bm.online(2).stream(model, params, iter(()))
    good = (np.zeros((2, 2)), np.zeros((2, 1)))
    with pytest.raises(ValueError, match=r"steps\[1\]: batch 3"):
        bm.online(2).stream(model, params, [good, (np.zeros((3, 2)), np.zeros((3, 1)))])


@pytest.mark.parametrize("slots, error", [(0, ValueError), (-2, ValueError), (1.5, TypeError),
                                          (True, TypeError)])
def test_online_rejects_bad_slots(slots, error):
    with pytest.raises(error, match="online"):
        bm.online(slots)


def test_policy_end_checks_the_length():
    policy = bm.online(2).policy()
    for _ in range(4):
        policy.forward()
    with pytest.raises(ValueError, match="5 steps"):
        list(policy.end(7))


@pytest.mark.parametrize("make", [bm.online, bm.OnlinePolicy])
@pytest.mark.parametrize("bad,error", [(0, ValueError), (-2, ValueError), (2.0, TypeError),
                                       (True, TypeError), ("4", TypeError)])
def test_slots_are_checked_like_binomials(make, bad, error):
    with pytest.raises(error, match=r"\(slots=.*\): (needs at least 1 slot|slots must be an int)"):
        make(bad)
