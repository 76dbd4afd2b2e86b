import json

import pytest

from bptt_memory.cli import main


def test_compare_json_parses_and_covers_every_strategy(capsys):
    assert main(["compare", "--cell", "gru", "--steps", "20", "--batch", "2", "--hidden", "4",
                 "--inputs", "3", "--repeats", "1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    rows = {r["strategy"].split("(")[0]: r for r in out["rows"]}
    assert set(rows) == {"full", "truncated", "uniform", "binomial", "optimal"}
    for name in ("full", "uniform", "binomial", "optimal"):  # exact strategies
        assert rows[name]["grad_rel_error"] < 1e-12
        assert rows[name]["peak_bytes"] <= rows["full"]["peak_bytes"]
        assert rows[name]["peak_bytes"] <= rows[name]["traced_peak_bytes"]
    assert rows["full"]["time_ratio"] == 1.0
    for r in rows.values():  # NOTE [cpu time]
        assert r["cpu_seconds"] >= 0 and r["page_faults"] >= 0
    assert rows["truncated"]["grad_rel_error"] > 0  # k = √20 < T: biased


def test_compare_table_lists_requested_strategies(capsys):
    assert main(["compare", "--cell", "vanilla", "--steps", "9", "--batch", "1", "--hidden", "3",
                 "--inputs", "2", "--repeats", "1", "--strategies", "binomial", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "binomial(slots=3)" in out and "optimal" not in out
    assert out.splitlines()[1].split()[-7:-4] == ["time", "range", "cpu"]


@pytest.mark.parametrize("fused", [True, False])
def test_compare_says_when_steps_ran_on_the_compiled_kernels(capsys, monkeypatch, fused):
    from bptt_memory import cells
    monkeypatch.setattr(cells, "_FUSED", fused)  # as if numba were (not) installed
    args = ["compare", "--cell", "lstm", "--steps", "9", "--batch", "2", "--hidden", "3",
            "--inputs", "2", "--repeats", "1", "--strategies", "full", "--quiet"]
    if fused:
        pytest.importorskip("numba")
    assert main(args + ["--dtype", "float32"]) == 0
    assert ("compiled float32 LSTM kernels" in capsys.readouterr().out) == fused
    assert main(args + ["--dtype", "float32", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["fused_kernels"] == fused
    assert main(args) == 0  # float64: numpy's kernels
    assert "compiled" not in capsys.readouterr().out


def test_plan_json_best_exact_fits(capsys):
    assert main(["plan", "--steps", "1e5", "--budget", "64MiB", "--cell", "lstm", "--batch", "32",
                 "--hidden", "256", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["budget_bytes"] == 64 * 2**20
    best = out["options"][0]
    assert best["exact"] and best["fits"] and best["peak_bytes"] <= 64 * 2**20
    assert best["strategy"].startswith("binomial")
    full = next(o for o in out["options"] if o["strategy"] == "full()")
    assert not full["fits"]


def test_plan_human_output_names_the_best(capsys):
    assert main(["plan", "--steps", "200", "--budget", "2MiB", "--cell", "lstm", "--batch", "8",
                 "--hidden", "32"]) == 0
    assert "Best exact strategy:" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [
    ["plan", "--steps", "100", "--budget", "lots"],
    ["plan", "--steps", "0", "--budget", "1MiB"],
    ["compare", "--steps", "-3"],
    ["compare", "--strategies", "nope"],
])
def test_bad_arguments_exit_with_usage(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert "error" in capsys.readouterr().err


def test_study_command_writes_report(tmp_path, capsys):
    assert main(["study", "what_is_stored", "--small", "--quiet", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "what_is_stored" / "report.md").exists()


@pytest.mark.parametrize("faults_per_run,named", [(3, False), (5000, True)])
def test_compare_names_strategies_that_fault_in_fresh_memory(capsys, monkeypatch, faults_per_run,
                                                             named):
    import itertools

    import bptt_memory.timing as timing

    calls = itertools.count()  # each run is measured by two readings
    monkeypatch.setattr(timing, "resource", object())
    monkeypatch.setattr(timing, "_usage", lambda: (0.0, (next(calls) + 1) // 2 * faults_per_run))
    assert main(["compare", "--cell", "vanilla", "--steps", "9", "--batch", "1", "--hidden", "3",
                 "--inputs", "2", "--repeats", "1", "--strategies", "binomial", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert ("page faults per run" in out) == named
    if named:
        assert f"binomial(slots=3) {faults_per_run:,}" in out
