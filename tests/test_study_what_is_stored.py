import csv
import json

import numpy as np

from studies import _common, what_is_stored


def test_small_run_writes_a_consistent_report(tmp_path):
    path = what_is_stored.run(tmp_path, small=True, quiet=True)
    d = tmp_path / "what_is_stored"
    text = path.read_text()
    assert path == d / "report.md" and text.startswith("# What must be kept")
    heads = [line for line in text.splitlines() if line.startswith("## ")]
    assert heads == ["## Measured: full()'s memory grows with T, the weights do not",
                     f"## What each strategy keeps instead (LSTM, "
                     f"T={what_is_stored.SMALL['STRATEGY_STEPS']}, exact counts from the "
                     "simulator)", "## Files", "## Provenance"]
    assert _common.unlisted_files(d) == []  # every file the run wrote is in the report
    assert (d / "bytes_per_step.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads((d / "data.json").read_text())
    ratios = {r["cell"]: r["residuals_per_state"] for r in data["per_cell"]}
    assert ratios == {"vanilla (tanh)": 2.0, "lstm": 3.5, "gru": 5.0}
    with open(d / "residual_arrays.csv", newline="") as f:
        arrays = list(csv.DictReader(f))
    # a linked step shares its entering h (vanilla) or c (LSTM) with the step before's h' or c'
    linked = {(a["cell"], a["array"], a["linked to"]) for a in arrays if a["linked to"]}
    assert linked == {("vanilla (tanh)", "h_prev", "the step before's h"),
                      ("lstm", "c_prev", "the step before's c")}
    for r in data["per_cell"]:
        cell = r["cell"]
        assert r["residual_bytes"] == sum(int(a["bytes"]) for a in arrays if a["cell"] == cell)
        assert r["link_bytes"] == sum(int(a["bytes"]) for a in arrays
                                      if a["cell"] == cell and a["linked to"])
        assert r["bytes_per_step_in_run"] == r["residual_bytes"] - r["link_bytes"]
        assert r["steps_to_match_weights"] == r["weight_bytes"] / r["bytes_per_step_in_run"]
        # full()'s exact peak grows by bytes_per_step_in_run a step, after one whole step;
        # tracemalloc sees at least that
        pts = [g for g in data["growth"] if g["cell"] == cell]
        assert len(pts) >= 2
        run = r["bytes_per_step_in_run"]
        assert all(g["peak_bytes"] == r["residual_bytes"] + (g["T"] - 1) * run for g in pts), pts
        assert all(g["traced_peak_bytes"] >= g["peak_bytes"] for g in pts)
        assert len({g["weight_bytes"] for g in pts}) == 1
    # the strategies' table: full()'s peak is its recorded run, truncated's its unlinked ring
    cfg, lstm = data["config"], next(r for r in data["per_cell"] if r["cell"] == "lstm")
    T = cfg["STRATEGY_STEPS"]
    kept = {k["strategy"].split("(")[0]: k for k in data["strategies"]}
    full, ring = kept["full"], kept["truncated"]
    assert full["peak_bytes"] == lstm["residual_bytes"] + (T - 1) * lstm["bytes_per_step_in_run"]
    assert ring["peak_bytes"] == ring["recorded steps (peak)"] * lstm["residual_bytes"]
    cell = what_is_stored.bm.lstm(cfg["INPUTS"], cfg["HIDDEN"])
    assert full["peak_bytes"] == cell.recorded_bytes(T, cfg["BATCH"], np.float64)
    for k in kept.values():
        assert 0 < k["peak_bytes"] <= full["peak_bytes"], k
    assert not list(d.glob("*.tmp")) and not list(d.glob(".*"))
