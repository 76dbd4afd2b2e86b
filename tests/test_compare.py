import numpy as np
import pytest

import bptt_memory as bm
import bptt_memory.timing as timing
from bptt_memory.compare import (
    compare,
    default_strategies,
    format_bytes,
    grad_error,
    parse_bytes,
    parse_count,
    plan,
    round_orders,
)
from bptt_memory.tasks import random_problem


def test_default_strategies_cover_the_registry_and_fit_their_sizes():
    cell = bm.lstm(3, 4)
    strategies = default_strategies(cell, 100, 2)
    assert set(strategies) == set(bm.STRATEGIES)
    assert strategies["binomial"].slots == 10
    assert strategies["truncated"].k1 == strategies["truncated"].k2 == 10
    full_bytes = (7 + 99 * 6) * 2 * 4 * 8  # full()'s: LSTM steps after the first link
    assert strategies["optimal"].budget_bytes == int(0.05 * full_bytes)


def test_grad_error_is_zero_for_equal_and_detects_scaling():
    g = {"a": np.array([1.0, 2.0]), "b": np.array([[3.0]])}
    assert grad_error(g, g) == (0.0, pytest.approx(1.0))
    half = {k: v * 0.5 for k, v in g.items()}
    rel, cos = grad_error(half, g)
    assert rel == pytest.approx(0.5) and cos == pytest.approx(1.0)
    flipped = {k: -v for k, v in g.items()}
    assert grad_error(flipped, g)[1] == pytest.approx(-1.0)


def test_compare_rows_measure_against_full(rng):
    model = bm.Model(bm.vanilla(2, 3), 2)
    params = model.init(rng)
    xs, ys = random_problem(model, 12, 2, rng)
    rows = compare(model, params, xs, ys,
                   {"binomial": bm.binomial(2), "truncated": bm.truncated(2)}, repeats=1)
    assert [r.strategy for r in rows] == ["binomial(slots=2)", "truncated(k1=2, k2=2)"]
    b, t = rows
    assert b.grad_rel_error < 1e-12 and b.forward_steps == bm.binomial_forward_steps(12, 2)
    assert t.grad_rel_error > 1e-6 and t.forward_factor == 1.0
    assert b.memory_fraction < 1 and b.traced_peak_bytes >= b.peak_bytes


def test_compare_reports_median_cpu_time_and_page_faults_per_run(rng, monkeypatch):
    # NOTE [cpu time]: each timed run is measured by the difference of two readings
    per_run = {"full": [(2.0, 10), (4.0, 30), (2.5, 10)],
               "binomial": [(5.0, 0), (6.0, 0), (5.0, 2)]}
    readings, totals = [], [0.0, 0]
    for k, order in enumerate(round_orders(["full", "binomial"], 3)):
        for name in order:
            readings.append(tuple(totals))
            totals = [totals[0] + per_run[name][k][0], totals[1] + per_run[name][k][1]]
            readings.append(tuple(totals))
    it = iter(readings)
    monkeypatch.setattr(timing, "resource", object())  # present, whatever the platform
    monkeypatch.setattr(timing, "_usage", lambda: next(it))
    monkeypatch.setattr(timing, "_system", lambda: 0.0)
    model = bm.Model(bm.vanilla(2, 3), 2)
    params = model.init(rng)
    xs, ys = random_problem(model, 6, 2, rng)
    f, b = compare(model, params, xs, ys, {"full": bm.full(), "binomial": bm.binomial(2)},
                   repeats=3, trace_memory=False)
    assert (f.cpu_seconds, f.page_faults, f.cpu_ratio) == (2.5, 10, 1.0)
    assert (b.cpu_seconds, b.page_faults, b.cpu_ratio) == (5.0, 0, 2.0)
    assert next(it, None) is None  # two readings per timed run, none elsewhere


def test_compare_times_strategies_in_round_order(rng, monkeypatch):
    model = bm.Model(bm.vanilla(2, 3), 2)
    params = model.init(rng)
    xs, ys = random_problem(model, 6, 2, rng)
    ran, tags = [], {}

    class Spy(bm.Full):
        def run(self, *args, **kwargs):
            ran.append(tags[id(self)])
            return super().run(*args, **kwargs)

    spies = {tag: Spy() for tag in "abc"}
    tags.update({id(s): tag for tag, s in spies.items()})
    monkeypatch.setattr(bm.compare, "full", lambda: spies["a"])  # the baseline is "a"
    compare(model, params, xs, ys, {"b": spies["b"], "c": spies["c"]}, repeats=4,
            trace_memory=False)
    timed = ran[3:]  # after one warm-up run each
    assert [timed[i:i + 3] for i in range(0, 12, 3)] == round_orders("abc", 4)


@pytest.mark.parametrize("text,expected", [("64MiB", 64 * 2**20), ("1.5 GB", 1_500_000_000),
                                           ("1e6", 10**6), (2048, 2048), ("3kib", 3072)])
def test_parse_bytes(text, expected):
    assert parse_bytes(text) == expected


@pytest.mark.parametrize("text", ["", "12 parsecs", "-5MiB", "0.1"])
def test_parse_bytes_rejects(text):
    with pytest.raises(ValueError, match="budget"):
        parse_bytes(text)


def test_parse_count():
    assert parse_count("2M") == 2_000_000 and parse_count(7) == 7
    for bad in ("0", "1.5", "many"):
        with pytest.raises(ValueError):
            parse_count(bad)


def test_format_bytes():
    assert format_bytes(100) == "100 B" and format_bytes(1536) == "1.5 KiB"


def test_plan_options_are_consistent_with_the_simulator():
    cell = bm.lstm(4, 8)
    T, B = 300, 2
    sb, rb = cell.state_bytes(B, np.float64), cell.residual_bytes(B, np.float64)
    budget = 20 * rb
    options = plan(cell, T, B, budget)
    fitting = [o for o in options if o.fits and o.exact]
    assert fitting and all(o.peak_bytes <= budget for o in fitting)
    assert fitting == sorted(fitting, key=lambda o: o.forward_steps)
    by_name = {o.strategy.split("(")[0]: o for o in options}
    slots = (budget - rb) // sb
    assert by_name["binomial"].forward_steps == bm.binomial_forward_steps(T, slots)
    assert by_name["optimal"].forward_steps <= by_name["binomial"].forward_steps
    assert not by_name["full"].fits
    assert by_name["truncated"].note.startswith("biased")


def test_plan_with_room_for_everything_picks_full():
    cell = bm.gru(2, 3)
    options = plan(cell, 10, 1, 10 * cell.residual_bytes(1, np.float64))
    assert options[0].strategy in ("full()", "optimal(budget_bytes=2400)")
    assert options[0].forward_steps == 10


def test_plan_prices_full_and_uniform_with_linked_steps():
    """full() and a uniform segment record consecutive steps, which share their h or c
    (NOTE [linked steps]); plan's figures must be what a run holds."""
    cell, T, B = bm.vanilla(2, 3), 12, 1
    full_bytes = cell.recorded_bytes(T, B, np.float64)
    assert full_bytes < T * cell.residual_bytes(B, np.float64)
    options = {o.strategy.split("(")[0]: o for o in plan(cell, T, B, full_bytes)}
    assert options["full"].fits and options["full"].peak_bytes == full_bytes
    model = bm.Model(cell, n_out=1)
    params = model.init(np.random.default_rng(0))
    xs, ys = np.ones((T, B, 2)), np.zeros((T, B, 1))
    k = int(options["uniform"].strategy.split("=")[1].rstrip(")"))
    stats = bm.uniform(every=k).run(model, params, xs, ys).stats
    assert stats.peak_bytes == options["uniform"].peak_bytes <= full_bytes
    assert stats.forward_steps == options["uniform"].forward_steps
