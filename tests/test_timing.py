"""The one timing harness: interleaved rounds, warm-up, pinned threads, medians, spread."""

import pytest
from threadpoolctl import threadpool_info

from bptt_memory import timing
from bptt_memory.timing import Timing, interleaved, pinned_threads, round_orders


def _blas_threads() -> set[int]:
    return {i["num_threads"] for i in threadpool_info() if i.get("user_api") == "blas"}


@pytest.mark.parametrize("n", [0, 1, 2, 3, 4, 7])
def test_round_orders_vary_who_runs_first_and_who_runs_before_whom(n):
    """NOTE [round order]: every round runs every name once; round r starts with name
    r (mod n); from two rounds on, no name always follows the same one (rotation alone
    would keep every predecessor)."""
    names = [f"s{i}" for i in range(n)]
    for rounds in range(1, 2 * n + 3):
        orders = round_orders(names, rounds)
        assert len(orders) == rounds and all(sorted(o) == names for o in orders)
        assert [o[0] for o in orders if o] == [names[r % n] for r in range(rounds) if n]
        if n >= 2 and rounds >= 2:
            for name in names:
                before = {o[o.index(name) - 1] if o.index(name) else None for o in orders}
                assert len(before) > 1, (name, orders)


def test_interleaved_warms_up_then_runs_each_round_in_round_order():
    ran = []
    runners = {n: (lambda n=n: ran.append(n) or n.upper()) for n in "abc"}
    t = interleaved(runners, rounds=4, threads=None)
    assert ran[:3] == ["a", "b", "c"]  # the warm-up, untimed
    assert [ran[3 + 3 * r: 6 + 3 * r] for r in range(4)] == round_orders("abc", 4)
    assert {n: len(x.wall) for n, x in t.items()} == {"a": 4, "b": 4, "c": 4}
    assert t["b"].value == "B"
    assert not interleaved(runners, rounds=1, warmup=False, threads=None)["a"].value


def test_interleaved_runs_on_pinned_blas_threads():
    if not _blas_threads():
        pytest.skip("numpy has no BLAS threadpool here")
    seen = []
    interleaved({"a": lambda: seen.append(_blas_threads())}, rounds=2, threads=1)
    assert seen == [{1}] * 3
    with pinned_threads(2):
        assert _blas_threads() == {2}
        interleaved({"a": lambda: seen.append(_blas_threads())}, rounds=1, threads=None)
    assert seen[-1] == {2}  # None leaves the process's setting


def test_timing_summaries_and_round_by_round_ratios():
    a = Timing(wall=(1.0, 4.0, 2.0), cpu=(1.0, 1.0, 1.0), faults=(0, 9, 3))
    base = Timing(wall=(2.0, 2.0, 1.0), cpu=None, faults=None)
    assert a.median == 2.0 and a.spread == (1.0, 4.0) and a.faults_median == 3
    assert a.ratios(base) == [0.5, 2.0, 2.0]  # each round against the same round
    assert a.ratios(base, cpu=True) == []  # no CPU times for the baseline


def test_interleaved_needs_a_round_and_pinning_a_thread():
    with pytest.raises(ValueError, match="at least one timed round"):
        interleaved({"a": lambda: None}, rounds=0)
    with pytest.raises(ValueError, match="at least 1 thread"):
        with pinned_threads(0):
            pass


def test_blas_threads_line_says_what_ran():
    assert timing.blas_threads_line(1) == "BLAS pinned to 1 thread (threadpoolctl)"
    assert "not pinned" in timing.blas_threads_line(None)
