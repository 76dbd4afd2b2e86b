"""The README's tour runs as written."""

import re
import runpy
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_tour_runs(tmp_path, capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README has no python block"
    script = tmp_path / "tour.py"
    script.write_text("\n".join(blocks))
    ns = runpy.run_path(str(script))
    cell = ns["cell"]  # an LSTM: 7·B·H for the first step, 6·B·H for each linked one
    assert ns["res"].stats.peak_bytes == (7 + 999 * 6) * 16 * 64 * 8
    assert ns["res"].stats.peak_bytes == cell.recorded_bytes(1000, 16, "float64")
    assert ns["cheap"].stats.peak_bytes <= ns["budget"]
    assert abs(ns["cheap"].loss - ns["res"].loss) <= 1e-12 * abs(ns["res"].loss)
    assert ns["update"].t == 200
    assert "restore" in capsys.readouterr().out


def test_readme_quick_start_has_exactly_two_setup_commands():
    text = README.read_text()
    quick = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```bash\n(.*?)```", quick, flags=re.S)
    assert len(commands) == 2
    assert "bptt-memory compare" in commands[0] and "pytest" in commands[1]
