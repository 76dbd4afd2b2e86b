import csv
import json

import numpy as np
import pytest

import bptt_memory as bm
from studies import _common, recompute_tradeoff

PNG = b"\x89PNG\r\n\x1a\n"


def _csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_small_run_writes_a_consistent_report(tmp_path):
    path = recompute_tradeoff.run(tmp_path, small=True, quiet=True)
    d = tmp_path / "recompute_tradeoff"
    assert path == d / "report.md" and path.read_text().startswith("# Recompute against memory")
    for fig in ("frontier.png", "time.png"):
        assert (d / fig).read_bytes()[:8] == PNG
    assert not list(d.glob("*.tmp")) and not list(d.glob(".*"))
    assert _common.unlisted_files(d) == []  # every file the run wrote is in the report
    heads = [line for line in path.read_text().splitlines() if line.startswith("## ")]
    T0 = recompute_tradeoff.SMALL["TIMED_STEPS"]
    assert heads == ["## Findings",
                     f"## Gruslys et al.'s headline: T = {T0}, 5% of full()'s memory",
                     "## Forward steps against memory",
                     f"## Wall time against memory (T = {T0})",
                     "## Setup", "## Files", "## Provenance"]

    rows = _csv(d / "frontier.csv")
    for r in rows:
        for k in ("T", "forward_steps", "peak_bytes", "budget_bytes", "predicted_forward_steps"):
            r[k] = int(r[k])
        for k in ("budget_fraction", "memory_fraction", "recompute_factor"):
            r[k] = float(r[k])
    steps = sorted({r["T"] for r in rows})
    assert steps == list(recompute_tradeoff.SMALL["STEPS"])
    by = {}
    for r in rows:
        by.setdefault((r["T"], r["strategy"]), {})[r["budget_fraction"]] = r
    s = recompute_tradeoff._settings(small=True)
    cell = bm.lstm(s.N_IN, s.HIDDEN)
    B, dt = s.BATCH, recompute_tradeoff.DTYPE
    sb, rb, lb = (cell.sizes(B, dt)[k] for k in ("state_bytes", "residual_bytes", "link_bytes"))
    BH = B * s.HIDDEN * np.dtype(dt).itemsize  # bytes of one (B, H) array
    assert (sb, rb, lb) == (2 * BH, 7 * BH, BH)  # (h, c); (h_prev, c_prev, gates, c'); c_prev
    for T in steps:  # full() records all T steps in one run: every one but the first linked
        full_bytes = cell.recorded_bytes(T, B, dt)
        assert full_bytes == (7 + 6 * (T - 1)) * BH
        assert by[(T, "full")][1.0]["peak_bytes"] == full_bytes
        for r in (r for r in rows if r["T"] == T):  # fractions of full()'s real bytes
            assert r["memory_fraction"] == pytest.approx(r["peak_bytes"] / full_bytes)
            if r["strategy"] != "full":
                assert r["budget_bytes"] == int(r["budget_fraction"] * full_bytes)
        for r in by[(T, "uniform")].values():  # max(m − 2, 0) states + one linked segment
            k = int(r["value"])
            m = -(-T // k)
            assert r["peak_bytes"] == max(m - 2, 0) * sb + cell.recorded_bytes(k, B, dt)
    for (T, name), pts in by.items():
        fwd = [pts[f]["forward_steps"] for f in sorted(pts)]
        assert fwd == sorted(fwd, reverse=True), (T, name, fwd)  # weakly fewer as budget grows
        for r in pts.values():
            assert r["recompute_factor"] >= 1 and r["peak_bytes"] <= r["budget_bytes"]
            assert r["forward_steps"] == r["predicted_forward_steps"]
            if name == "binomial":  # Griewank's closed form T + t(T, s + 1)
                assert r["forward_steps"] == bm.binomial_forward_steps(T, int(r["value"]))
        if name in ("full", "uniform", "optimal"):  # nothing recomputed with all the memory
            assert pts[1.0]["recompute_factor"] == 1.0 and pts[1.0]["memory_fraction"] == 1.0
        else:  # states only: every step once plain and once recording, at best
            assert pts[1.0]["forward_steps"] == 2 * T - 1
    for T in steps:
        opt, binom = by[(T, "optimal")], by[(T, "binomial")]
        common = set(opt) & set(binom)
        assert common
        assert all(opt[f]["forward_steps"] <= binom[f]["forward_steps"] for f in common)
        assert any(opt[f]["forward_steps"] < binom[f]["forward_steps"] for f in common)

    timed = _csv(d / "timing.csv")
    assert {r["strategy"] for r in timed} == {"full", "uniform", "binomial", "optimal"}
    for r in timed:
        assert float(r["time_ratio"]) > 0 and float(r["grad_rel_error"]) < 1e-10
        match = by[(recompute_tradeoff.SMALL["TIMED_STEPS"], r["strategy"])].get(
            float(r["budget_fraction"]))
        if match:  # the executor did what the simulator counted
            assert int(r["forward_steps"]) == match["forward_steps"]
            assert int(r["peak_bytes"]) == match["peak_bytes"]
    assert [float(r["time_ratio"]) for r in timed if r["strategy"] == "full"] == [1.0]

    data = json.loads((d / "data.json").read_text())
    assert data["violations"] == []
    assert set(data["headline"]) >= {"optimal_time_ratio", "optimal_recompute_factor", "met"}
    assert data["headline"]["optimal_memory_fraction"] <= recompute_tradeoff.HEADLINE_FRACTION
    curve = _csv(d / "binomial_curve.csv")
    assert all(int(c["forward_steps"]) == bm.binomial_forward_steps(int(c["T"]), int(c["slots"]))
               for c in curve)
