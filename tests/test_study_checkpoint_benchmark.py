"""Smoke test of studies.checkpoint_benchmark at toy size."""

import csv
import json

from studies import _common
from studies import checkpoint_benchmark as study


def test_small_run_writes_report_data_and_figure(tmp_path, capsys):
    path = study.run(tmp_path, small=True, quiet=True)
    d = tmp_path / study.NAME
    assert path == d / "report.md"
    assert capsys.readouterr().out == ""  # quiet
    text = path.read_text()
    assert "bptt-memory study checkpoint_benchmark --small" in text
    assert "not judged (toy sizes)" in text
    assert "**met**" not in text and "**not met**" not in text
    assert (d / "time_memory.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert _common.unlisted_files(d) == []  # every file the run wrote is in the report
    heads = [line for line in text.splitlines() if line.startswith("## ")]
    assert heads == ["## Planning", "## Time and memory relative to full()", "## Files",
                     "## Provenance"]
    timed = text.split("## Time and memory relative to full()\n", 1)[1].split("\n## ", 1)[0]
    assert "**Against recompute_tradeoff.**" in timed and "**Goal**" in timed  # reconciled there
    with open(d / "timing.csv") as f:
        rows = list(csv.DictReader(f))
    summary = json.loads((d / "summary.json").read_text())
    budget = summary["verdict"]["budget"]
    names = [r["strategy"].split("(")[0] for r in rows]
    assert names[0] == "full" and names[-2:] == ["binomial", "optimal"]
    assert set(names[1:-2]) <= {"uniform"}  # when some segment fits the budget
    for r in rows[1:]:  # every checkpointing strategy at the same memory: within the budget
        assert int(r["peak_bytes"]) <= budget
    full = rows[0]
    assert float(full["time"]) == 1.0 and float(full["memory"]) == 1.0
    for r in rows:
        assert float(r["grad_err"]) < 1e-12  # every strategy here is exact
        lo, hi = json.loads(r["spread"])
        assert lo <= float(r["median_s"]) <= hi
    assert summary["settings"]["small"] is True
    assert summary["verdict"]["within_budget"]
    with open(d / "planning.csv") as f:
        plans = list(csv.DictReader(f))
    assert plans[0]["policy"].startswith("binomial") and len(plans) == 1 + len(
        study.SMALL["DP_BUDGET_STATES"])


def test_reconciliation_names_both_ratios_when_the_other_report_is_there(tmp_path):
    s = study._settings(small=True)
    verdict = {"time_ratio": 1.37, "time_ratio_rounds": (1.3, 1.4), "wide_n_out": 32,
               "wide_time_ratio": 1.27, "wide_time_ratio_rounds": (1.25, 1.29),
               "wide_full_over_full": 1.1}
    assert "not compared" in study.reconcile(s, verdict, tmp_path)
    other = tmp_path / "recompute_tradeoff"
    other.mkdir()
    (other / "data.json").write_text(json.dumps({
        "headline": {"fraction": 0.05, "optimal_time_ratio": 1.28, "T": 1000},
        "settings": {"N_OUT": 32, "REPEATS": 7}}))
    text = study.reconcile(s, verdict, tmp_path)
    assert "1.28×" in text and "1.37×" in text and "1.27×" in text
    assert "recompute_tradeoff (n_out = 32" in text and "1.25–1.29" in text
    assert "lowers the ratio, as here." in text and "lies within that figure's range" in text
    verdict.update(wide_time_ratio_rounds=(1.2, 1.35))  # overlaps the narrow readout's rounds
    (other / "data.json").write_text(json.dumps({
        "headline": {"fraction": 0.05, "optimal_time_ratio": 1.4, "T": 1000},
        "settings": {"N_OUT": 32, "REPEATS": 7}}))
    text = study.reconcile(s, verdict, tmp_path)
    assert "within the spread of the rounds" in text and "lies outside" in text
