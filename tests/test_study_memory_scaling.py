"""Smoke test of studies.memory_scaling at toy size, and of its behaviour when interrupted."""

import csv
import json
import math

import matplotlib.figure
import numpy as np
import pytest

import studies.memory_scaling as ms
from studies import _common

FIGURES = ("scaling.png", "timeline.png")
DATA = ("scaling.csv", "slopes.csv", "rss.csv", "timeline.csv")


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    return ms.run(tmp_path_factory.mktemp("reports"), small=True, quiet=True)


@pytest.fixture(scope="module")
def scaling(report):
    return _rows(report.parent / "scaling.csv")


def _measured(rows, cell, family):
    return sorted(((int(r["T"]), int(r["peak_bytes"]), int(r["traced_peak_bytes"]))
                   for r in rows if r["cell"] == cell and r["family"] == family
                   and r["source"] == "measured"))


def test_writes_report_figures_and_data(report):
    d = report.parent
    assert report.name == "report.md" and d.name == "memory_scaling"
    text = report.read_text()
    assert text.startswith("# Memory against sequence length")
    assert "bptt-memory study memory_scaling --small" in text and "Machine:" in text
    heads = [line for line in text.splitlines() if line.startswith("## ")]
    assert heads == ["## Findings", "## Slopes", "## Peak bytes, LSTM",
                     "## Memory over time, fresh processes",
                     f"## Kernel cross-check at T = {ms.SMALL['LONG']['T']}, fresh processes",
                     "## Files", "## Provenance"]
    for name in FIGURES:
        data = (d / name).read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 1000, name
        assert f"]({name})" in text
    for name in DATA:
        assert _rows(d / name), name
    summary = json.loads((d / "summary.json").read_text())
    assert summary["checks"]["mismatches"] == 0
    assert _common.unlisted_files(d) == []  # every file the run wrote is in the report
    assert not list(d.glob("*.tmp")) and not list(d.glob(".*.tmp"))


def test_every_cell_and_strategy_is_measured_and_predicted(scaling):
    s = ms._settings(small=True)
    for cell in s.CELLS:
        for family in ms.FAMILIES:
            rows = [r for r in scaling if r["cell"] == cell and r["family"] == family]
            sources = {r["source"] for r in rows}
            assert "measured" in sources, (cell, family)
            if family != "optimal":  # optimal is neither run nor predicted past OPTIMAL_MAX_T
                assert "predicted" in sources, (cell, family)
            for r in rows:
                if r["source"] == "measured":  # the executor's exact count is simulate's
                    assert r["peak_bytes"] == r["predicted_peak_bytes"], r
                else:
                    assert r["peak_bytes"] == "" and r["traced_peak_bytes"] == "", r


def _full_peak(s, kind, T):
    """full()'s exact peak from the cell's sizes: rb for the first step, rb − lb for each
    linked one after it (NOTE [linked steps])."""
    cell = ms._cell(kind, s.N_IN, s.HIDDEN)
    rb, lb = cell.residual_bytes(s.BATCH, np.float64), cell.link_bytes(s.BATCH, np.float64)
    return rb + (T - 1) * (rb - lb)


def test_full_grows_linearly_in_T(scaling):
    s = ms._settings(small=True)
    for cell in s.CELLS:
        points = _measured(scaling, cell, "full")
        assert len(points) >= 3
        slope = _common.fit_loglog_slope([T for T, _, _ in points], [p for _, p, _ in points])
        assert 0.9 <= slope <= 1.1, (cell, slope)
        for T, peak, _ in points:  # rb − lb per step, not rb
            assert peak == _full_peak(s, cell, T), (cell, T)


def test_truncated_peak_is_constant_once_T_reaches_k2(scaling):
    k2 = ms._settings(small=True).K_TRUNCATED
    for cell in ms._settings(small=True).CELLS:
        peaks = {p for T, p, _ in _measured(scaling, cell, "truncated") if T >= k2}
        assert len(peaks) == 1, (cell, peaks)


def test_exact_peak_never_exceeds_traced(scaling):
    measured = [r for r in scaling if r["source"] == "measured"]
    assert measured
    for r in measured:
        assert 0 < int(r["peak_bytes"]) <= int(r["traced_peak_bytes"]), r


def test_slopes_table_matches_the_orders(report, scaling):
    s = ms._settings(small=True)
    fits = _rows(report.parent / "slopes.csv")
    # every family swept is fitted, the O(log T) case among them
    assert {r["family"] for r in fits} == set(ms.FAMILIES) and "binomial_log" in ms.FAMILIES
    for r in fits:  # a floor subtracted never makes a growing figure look flatter
        if r["slope_traced_minus_floor"] not in ("", "nan"):
            assert float(r["slope_traced_minus_floor"]) >= float(r["slope_traced"]) - 1e-9, r
    for r in fits:
        expected, measured = float(r["expected"]), float(r["slope_measured"])
        if r["family"] == "full":  # the slope of rb + (T − 1)(rb − lb) over the same T
            Ts = [T for T, _, _ in _measured(scaling, r["cell"], "full") if T >= s.FIT_MIN_T]
            exact = _common.fit_loglog_slope(Ts, [_full_peak(s, r["cell"], T) for T in Ts])
            assert expected == pytest.approx(exact, rel=1e-12), r
            assert measured == pytest.approx(expected, rel=1e-9), r
        elif r["family"] == "binomial_log":  # ⌈log2 T⌉ states and one step, measured exactly
            cell = ms._cell(r["cell"], s.N_IN, s.HIDDEN)
            sb, rb = cell.state_bytes(s.BATCH, np.float64), cell.residual_bytes(s.BATCH,
                                                                                np.float64)
            points = [(T, p) for T, p, _ in _measured(scaling, r["cell"], "binomial_log")
                      if T >= s.FIT_MIN_T]
            assert points and all(p == min(math.ceil(math.log2(T)), T) * sb + rb
                                  for T, p in points), r
            assert 0 < measured == pytest.approx(expected, rel=1e-9), r  # grows, unlike O(1)
        elif r["family"] == "uniform":  # round(√T) segments: 0.5 only asymptotically
            assert 0.4 <= measured <= 0.65, r
        elif r["family"] == "optimal":  # past its knee, its plans fill the budget to within
            cell = ms._cell(r["cell"], s.N_IN, s.HIDDEN)  # a state or two, so the slope of
            sb = cell.state_bytes(s.BATCH, np.float64)  # two points is at most this
            budget = s.OPTIMAL_BUDGET_STEPS * cell.residual_bytes(s.BATCH, np.float64)
            points = [(T, p) for T, p, _ in _measured(scaling, r["cell"], "optimal")
                      if T >= s.OPTIMAL_FIT_MIN_T]
            assert len(points) == 2 and all(budget - 2 * sb < p <= budget for _, p in points), r
            (T0, _), (T1, _) = points
            assert abs(measured) <= math.log(budget / (budget - 2 * sb)) / math.log(T1 / T0), r
        else:  # a fixed number of steps or states once T is past k2 or slots
            assert expected == 0 and abs(measured) < 1e-9, r


@pytest.mark.parametrize("small", [False, True])
def test_optimal_is_fitted_past_its_knee(small):
    s = ms._settings(small)
    for kind in s.CELLS:
        knee = ms._optimal_knee(s, kind)
        cell = ms._cell(kind, s.N_IN, s.HIDDEN)
        budget = s.OPTIMAL_BUDGET_STEPS * cell.residual_bytes(s.BATCH, np.float64)
        assert _full_peak(s, kind, knee - 1) <= budget < _full_peak(s, kind, knee), kind
        assert knee <= s.OPTIMAL_FIT_MIN_T, kind


def test_fresh_processes_report_the_kernels_view(report):
    s = ms._settings(small=True)
    rss = _rows(report.parent / "rss.csv")
    assert [r["family"] for r in rss] == [*s.TIMELINE_STRATEGIES, *s.LONG_STRATEGIES]
    for r in rss:
        assert int(r["peak_bytes"]) > 0
        assert int(r["maxrss_after"]) >= int(r["rss_before"]) > 0
        # not the study's own peak RSS: see NOTE [fresh process]
        assert int(r["rss_rise"]) < 64 * 2**20, r
    timeline = _rows(report.parent / "timeline.csv")
    for family in s.TIMELINE_STRATEGIES:
        mib = [float(p["rss_mib"]) for p in timeline if p["family"] == family]
        assert mib and all(m > 0 for m in mib), family
    long_full = next(r for r in rss if r["part"] == "long" and r["family"] == "full")
    cell = ms.bm.lstm(s.N_IN, s.HIDDEN)
    assert int(long_full["peak_bytes"]) == cell.recorded_bytes(s.LONG["T"], s.BATCH, np.float64)


class _Interrupted(BaseException):
    """Stands for Ctrl-C or a kill arriving while a file is being written."""


@pytest.mark.parametrize("previous", [None, "# Memory against sequence length\n\nthe last run\n"])
def test_interrupted_study_leaves_no_truncated_report(tmp_path, monkeypatch, previous):
    d = tmp_path / "memory_scaling"
    if previous is not None:
        d.mkdir()
        (d / "report.md").write_text(previous)
    monkeypatch.setitem(ms.SMALL, "CELLS", ("vanilla",))  # a quicker sweep
    monkeypatch.setattr(ms, "fresh_runs", lambda s, quiet: ([], []))  # and no subprocesses

    def savefig_then_die(self, f, *args, **kwargs):
        f.write(b"\x89PNG\r\n\x1a\n half a figure")
        raise _Interrupted

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", savefig_then_die)
    with pytest.raises(_Interrupted):
        ms.run(tmp_path, small=True, quiet=True)
    # files finished before the interruption are whole; the figure being written is not there
    assert _rows(d / "scaling.csv") and _rows(d / "slopes.csv")
    assert not (d / "scaling.png").exists()
    assert not [p for p in d.iterdir() if p.name.endswith(".tmp")]
    if previous is None:
        assert not (d / "report.md").exists()
    else:
        assert (d / "report.md").read_text() == previous


def test_main_parses_the_study_command_line(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(ms, "run", lambda out, small, quiet: calls.append((out, small, quiet))
                        or tmp_path / "report.md")
    ms.main(["--small", "--quiet", "--out", str(tmp_path)])
    assert calls == [(tmp_path, True, True)]


def test_minus_floor_takes_off_what_does_not_grow():
    traced, exact = [150, 250, 1100], [100, 200, 1000]  # a floor of 50, then 100
    assert ms._minus_floor(traced, exact) == [100, 200, 1050]
    assert ms._minus_floor([], []) == []
