import csv
import json
import math

import numpy as np
import pytest

from bptt_memory.compare import OPTIMAL_FRACTION
from studies import _common
from studies import long_dependency_training as ldt


@pytest.mark.parametrize("cell", sorted(ldt.CELL_FACTORIES))
def test_optimal_budget_is_a_fraction_of_fulls_bytes(cell):
    s = ldt._settings(small=False)
    s.CELL = cell
    model = ldt._model(s)
    sizes = model.cell.sizes(s.BATCH, np.float64)  # full()'s bytes, linked steps priced
    full = ldt.bm.simulate(ldt.bm.full().schedule(s.T, **sizes), n_steps=s.T, **sizes)
    budget = ldt.strategies(s)["optimal"].budget_bytes
    assert budget == int(OPTIMAL_FRACTION * full.peak_bytes) >= sizes["residual_bytes"]


def test_small_run_writes_a_consistent_report(tmp_path):
    path = ldt.run(tmp_path, small=True, quiet=True)
    d = tmp_path / "long_dependency_training"
    assert path == d / "report.md"
    assert path.read_text().startswith("# Training on a long dependency")
    for png in ("learning_curves.png", "memory_time.png"):
        data = (d / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    assert not list(d.glob("*.tmp")) and not list(d.glob(".*"))
    # the one report layout (NOTE [one report layout]), every file the run wrote listed
    heads = [line for line in path.read_text().splitlines() if line.startswith("## ")]
    assert heads == ["## Findings", "## Memory, time and accuracy",
                     "## Over seeds: is truncation worse, or only slower?",
                     "## Where the error is: test MSE by how far back each marker lies",
                     "## Exact strategies against full(), over the whole run",
                     "## Files", "## Provenance"]
    assert _common.unlisted_files(d) == []

    saved = json.loads((d / "summary.json").read_text())
    s, table = saved["settings"], {r["strategy"]: r for r in saved["table"]}
    assert 0.1 < saved["baseline_mse"] < 0.3  # Var(U + U) = 1/6 on a small test set
    with open(d / "curves.csv") as f:
        rows = list(csv.DictReader(f))
    curves: dict[str, list[float]] = {}
    for r in rows:
        curves.setdefault(r["strategy"], []).append(float(r["train_mse"]))
    assert set(curves) == set(table)
    for k, c in curves.items():  # exact runs stop at UPDATES; biased ones may go on
        assert len(c) == table[k]["updates"]
        assert (len(c) == s["UPDATES"]) if table[k]["exact"] else (
            s["UPDATES"] <= len(c) <= s["MAX_UPDATES"])
    assert all(math.isfinite(x) for c in curves.values() for x in c)

    exact = [k for k, r in table.items() if r["exact"]]
    assert {"full", "uniform", "binomial", "optimal"} <= set(exact)
    assert len(exact) == len(table) - len(s["SHORT_K"])
    for k in exact:  # same gradient, same Adam, same batches: the same curve
        assert all(abs(a - b) <= 1e-8 * abs(b) for a, b in zip(curves[k], curves["full"]))
        assert table[k]["grad_rel_error_at_init"] <= 1e-10
    diffs = {r["strategy"]: r for r in saved["exact_curve_differences"]}
    assert set(diffs) == set(exact) - {"full"}
    assert all(r["max_rel_loss_diff"] <= 1e-8 for r in diffs.values())
    for k, r in table.items():
        assert r["peak_bytes"] > 0 and r["seconds_per_update"] > 0
        if not r["exact"]:  # truncation keeps less than full() and gets a biased gradient
            assert r["peak_bytes"] < table["full"]["peak_bytes"]
            assert r["grad_rel_error_at_init"] > 1e-6
    assert table["binomial"]["peak_bytes"] < table["full"]["peak_bytes"]
    assert table["optimal"]["peak_bytes"] <= 0.1 * table["full"]["peak_bytes"]

    # over seeds: full() and the truncated ones, each from SEED and every extra seed
    with open(d / "seeds.csv") as f:
        seeds = {r["strategy"]: r for r in csv.DictReader(f)}
    assert set(seeds) == {"full"} | {k for k, r in table.items() if not r["exact"]}
    for r in seeds.values():
        assert int(r["seeds"]) == 1 + len(s["EXTRA_SEEDS"])
        lo, mid, hi = (float(r[k]) for k in ("final_test_mse_min", "final_test_mse_median",
                                             "final_test_mse_max"))
        assert lo <= mid <= hi
    # SEED's run is the one in the main table
    assert float(seeds["full"]["final_test_mse_min"]) <= table["full"]["final_test_mse"] <= float(
        seeds["full"]["final_test_mse_max"])
    text = path.read_text()
    assert "## Over seeds" in text and ("is worse" in text or "is only slower" in text)


def test_worse_or_slower_compares_ranges_over_seeds():
    full = dict(strategy="full", final_test_mse_min=0.01, final_test_mse_max=0.02,
                plateaued=True)
    worse = dict(strategy="truncated(20, 20)", final_test_mse_min=0.03,
                 final_test_mse_max=0.05, plateaued=True)
    level = dict(strategy="truncated(50, 50)", final_test_mse_min=0.015,
                 final_test_mse_max=0.04, plateaued=False)
    said = ldt.worse_or_slower([full, worse, level])
    assert said[0].startswith("`truncated(20, 20)` is worse")
    assert said[1].startswith("`truncated(50, 50)` is only slower")
    assert "provisional" in said[1] and "provisional" not in said[0]


def test_a_run_plateaus_when_its_last_quarter_moves_little_relatively_or_at_the_tasks_scale():
    s = ldt._settings(small=True)
    baseline = 0.2

    def run(label, third, last):  # evals at updates 5, 6 (third quarter) and 7, 8 (last)
        return dict(label=label, evals=[dict(update=u, test_mse=m) for u, m in
                                         zip((1, 2, 5, 6, 7, 8), (1, 1, third, third, last, last))])

    rows = ldt.over_seeds(s, [run("halving near zero", 2e-4, 1e-4),  # 100% of itself, 0.05% of 0.2
                              run("still learning", 0.1, 0.05),  # 100% of itself, 25% of 0.2
                              run("flat", 0.05, 0.045)], threshold=0.02, baseline=baseline)
    by = {r["strategy"]: r for r in rows}
    assert by["halving near zero"]["plateaued"] and not by["still learning"]["plateaued"]
    assert by["flat"]["plateaued"]
    assert np.isclose(by["still learning"]["largest_late_change"], 1.0)
    assert np.isclose(by["still learning"]["largest_late_change_of_baseline"], 0.25)


@pytest.mark.parametrize("flat", [False, True])
def test_a_biased_run_goes_on_until_it_plateaus_and_an_exact_one_stops(flat):
    s = ldt._settings(small=True)
    # never flat: nothing is below -1; always flat: every change is below 10**9
    s.PLATEAU = s.PLATEAU_ABS = 1e9 if flat else -1.0
    short = f"truncated({s.SHORT_K[0]}, {s.SHORT_K[0]})"
    biased, exact = ldt.train(s, short), ldt.train(s, "full")
    assert exact["updates"] == len(exact["losses"]) == s.UPDATES
    want = s.UPDATES if flat else s.MAX_UPDATES
    assert biased["updates"] == len(biased["losses"]) == len(biased["grad_norms"]) == want
    assert biased["evals"][-1]["update"] == want  # judged on an evaluation at its last update
    if not flat:  # going on changes nothing before: its first UPDATES are the stopped run's
        s.PLATEAU = s.PLATEAU_ABS = 1e9
        stopped = ldt.train(s, short)
        assert stopped["updates"] == s.UPDATES
        assert biased["losses"][:s.UPDATES] == stopped["losses"]
