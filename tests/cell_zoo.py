"""Cells by name for contract tests: every built-in cell kind and vanilla activation, the
README's user cell (IndRNN, taken from the README itself so the code shown is the code
tested), stacks of protocol cells, and PyTorch-style multi-layer cells."""

import re
from pathlib import Path

import bptt_memory as bm
from bptt_memory.cells import ACTIVATIONS

_README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
_block = next(b for b in re.findall(r"```python\n(.*?)```", _README, flags=re.S)
              if "class IndRNN" in b)
_ns: dict = {}
exec(_block.split("\nrng = ")[0], _ns)  # the class, not the demo that follows it
IndRNN = _ns["IndRNN"]

# name -> factory(n_in, n_hidden); one-layer built-ins, built from the library's own
# registry and activation table, so a new cell or activation is tested everywhere.
CELLS = {
    **{f"vanilla-{a}": (lambda i, h, a=a: bm.vanilla(i, h, a)) for a in sorted(ACTIVATIONS)},
    **{name: f for name, f in bm.CELLS.items() if name != "vanilla"},
}

# name -> factory(n_in, n_hidden): cells that only speak the protocol, or are built of others
PROTOCOL_CELLS = {
    "indrnn": IndRNN,
    "stack-lstm-gru": lambda i, h: bm.stack(bm.lstm(i, h + 1), bm.gru(h + 1, h)),
    "stack-indrnn-vanilla": lambda i, h: bm.stack(IndRNN(i, h), bm.vanilla(h, h)),
    "lstm-2-layers": lambda i, h: bm.lstm(i, h, num_layers=2),
    "gru-3-layers": lambda i, h: bm.gru(i, h, num_layers=3),
    "vanilla-2-layers": lambda i, h: bm.vanilla(i, h, num_layers=2, activation="relu"),
}

ALL_CELLS = {**CELLS, **PROTOCOL_CELLS}
