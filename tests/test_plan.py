"""Planning before running (compare.plan, `bptt-memory plan`): bounded at any T, every
option priced by its own `Strategy.cost`, optimal always planned, strict JSON."""

import json
import time

import numpy as np
import pytest

import bptt_memory as bm
from bptt_memory.cli import main
from bptt_memory.compare import plan


@pytest.mark.parametrize("steps", ["1e5", "1e6", "1000000000"])
def test_plan_answers_any_length_quickly_in_strict_json(steps, capsys):
    start = time.perf_counter()
    assert main(["plan", "--steps", steps, "--budget", "64MiB", "--json"]) == 0
    elapsed = time.perf_counter() - start
    out = capsys.readouterr().out
    data = json.loads(out, parse_constant=lambda c: pytest.fail(f"bare {c} in the JSON"))
    assert data["problem"] == {"T": int(float(steps)), "B": 32, "H": 256, "n_in": 32,
                               "cell": "lstm", "dtype": "float64"}
    names = [o["strategy"] for o in data["options"]]
    assert any(n.startswith("optimal") for n in names)
    best = data["options"][0]
    assert best["exact"] and best["fits"] and best["strategy"].startswith("optimal")
    assert elapsed < 30  # a generous guard against a loop over T, not a timing test


def test_plan_plans_optimal_where_it_used_to_skip_it(capsys):
    """Issue 17: T = 1000 at 200 MiB used to skip optimal as too long and pick uniform."""
    assert main(["plan", "--steps", "1000", "--budget", "200MiB", "--json"]) == 0
    options = json.loads(capsys.readouterr().out)["options"]
    opt = next(o for o in options if o["strategy"].startswith("optimal"))
    assert opt["fits"] and opt["forward_steps"] > 0 and "not planned" not in opt["note"]
    uniform = next(o for o in options if o["strategy"].startswith("uniform"))
    assert opt["forward_steps"] < uniform["forward_steps"]


@pytest.mark.parametrize("cell", [bm.lstm(8, 16), bm.gru(8, 16), bm.vanilla(8, 16)],
                         ids=["lstm", "gru", "vanilla"])
def test_plan_options_cost_what_their_strategies_say(cell):
    T, B = 300, 4
    sizes = cell.sizes(B, np.float64)
    budget = 30 * sizes["residual_bytes"]
    options = plan(cell, T, B, budget)
    by_name = {o.strategy: o for o in options}
    opt = by_name[bm.optimal(budget).name]
    walked = bm.simulate(bm.optimal(budget).iter_schedule(T, **sizes), n_steps=T, **sizes)
    assert (opt.forward_steps, opt.peak_bytes) == (walked.forward_steps, walked.peak_bytes)
    binomial = next(o for o in options if o.strategy.startswith("binomial"))
    assert opt.forward_steps <= binomial.forward_steps
    assert options[0].fits and options[0].exact


def test_plan_below_one_steps_residuals_offers_nothing_that_fits():
    cell = bm.lstm(4, 8)
    options = plan(cell, 50, 2, cell.residual_bytes(2, np.float64) - 1)
    assert [o.strategy for o in options] == ["full()"] and not options[0].fits
