"""The studies' shared helpers."""

import pytest
from threadpoolctl import threadpool_info, threadpool_limits

from studies import _common


def test_provenance_states_the_blas_threads_the_measurements_used():
    """A report measured under `pinned_blas(1)` must not claim the process's own count."""
    if not any(i.get("user_api") == "blas" for i in threadpool_info()):
        pytest.skip("numpy has no BLAS threadpool here: the line says 'unknown'")
    with threadpool_limits(limits=2, user_api="blas"):
        assert "(2 threads)" in _common.provenance("cmd")
        assert "(1 thread for the measurements, 2 otherwise)" in _common.provenance("cmd", pinned=1)
        assert "(2 threads for the measurements)" in _common.provenance("cmd", pinned=2)
    with threadpool_limits(limits=1, user_api="blas"):
        assert "(1 thread)" in _common.provenance("cmd")


def test_recomputation_ratio_prices_steps_at_full_costs():
    # full()'s own counts cost what full() did
    assert _common.recomputation_ratio(100, 100, 100, 0.3, 0.7) == pytest.approx(1.0)
    # twice the forward steps, forward a quarter of a step's cost: 1 + 1/4
    assert _common.recomputation_ratio(200, 100, 100, 1.0, 3.0) == pytest.approx(1.25)
    # the counts are weighed by each phase's cost per step, not by the step totals alone
    assert _common.recomputation_ratio(300, 100, 100, 0.0, 2.0) == pytest.approx(1.0)
    assert _common.recomputation_ratio(300, 100, 100, 2.0, 0.0) == pytest.approx(3.0)


@pytest.mark.parametrize("args", [(10, 10, 0, 1.0, 1.0), (10, 10, 10, 0.0, 0.0),
                                  (10, 10, 10, -1.0, 2.0)])
def test_recomputation_ratio_rejects_what_cannot_price_a_step(args):
    with pytest.raises(ValueError, match="recomputation_ratio"):
        _common.recomputation_ratio(*args)


def test_study_main_sends_a_smoke_run_to_a_temporary_folder(tmp_path, monkeypatch, capsys):
    """Whatever a study's run() does with `small`, `python -m studies.NAME --small` hands
    it a temporary folder, never the committed reports."""
    import studies

    monkeypatch.chdir(tmp_path)
    got = []
    _common.study_main("toy", lambda out, small, quiet: got.append(out) or out / "r.md", None,
                       ["--small", "--quiet"])
    (out,) = got
    assert out != studies.REPORTS and studies.REPORTS not in out.parents
    assert str(out) in capsys.readouterr().out and not (tmp_path / "reports").exists()
    _common.study_main("toy", lambda out, small, quiet: got.append(out) or out, None,
                       ["--out", str(tmp_path / "mine")])
    assert got[-1] == tmp_path / "mine"


def test_a_report_lays_out_its_parts_in_one_order_and_checks_the_files_it_names(tmp_path):
    r = _common.Report("A study", "What it asks.")
    r.section("Tables", "Some prose.", _common.md_table([{"a": 1.5}]),
              _common.figure("plot.png", "a plot"))
    r.finding("- First.")
    r.file("rows.csv", "one row per run")
    r.run_line("The study took 3 s.")
    with pytest.raises(ValueError, match=r"rows\.csv, plot\.png"):  # nothing written yet
        r.write(tmp_path, "bptt-memory study x")
    assert not (tmp_path / "report.md").exists()
    (tmp_path / "rows.csv").write_text("a\n1.5\n")
    (tmp_path / "plot.png").write_bytes(b"png")
    (tmp_path / "stray.json").write_text("{}")
    text = r.write(tmp_path, "bptt-memory study x", pinned=1).read_text()
    heads = [line for line in text.splitlines() if line.startswith("#")]
    assert heads == ["# A study", "## Findings", "## Tables", "## Files", "## Provenance"]
    assert "- First.\n" in text and "- `rows.csv`: one row per run" in text
    assert "| 1.5 |" in text and "![a plot](plot.png)" in text
    assert "- Command: `bptt-memory study x`" in text
    assert text.endswith("\n- The study took 3 s.\n")
    assert _common.unlisted_files(tmp_path) == ["stray.json"]
