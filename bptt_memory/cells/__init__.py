"""The built-in cells, one module each, and `CELLS`, every cell factory by name.

Each module holds one kind's kernels, forward beside VJP, its factory, and a ``CELLS``
dict naming it: `CELLS` here gathers those of every module in this package, so a new
built-in cell is one new module (plus its tests). `stack` builds multi-layer cells from
any protocol cells (`bptt_memory.Cell`).
"""

import importlib
import pkgutil
from typing import Callable

from ._gated import Gated, GatedKernels, sigmoid
from .gru import GRU, gru
from .lstm import LSTM, lstm
from .stack import Layers, Stack, stack
from .vanilla import ACTIVATIONS, Vanilla, vanilla

__all__ = ["CELLS", "vanilla", "lstm", "gru", "stack", "Vanilla", "LSTM", "GRU", "Stack",
           "Layers", "Gated", "GatedKernels", "ACTIVATIONS", "sigmoid"]

#: Every built-in cell factory by name, ``factory(n_in, n_hidden, num_layers=1)``, so the
#: CLI, the studies and the tests loop over cells without a map of their own.
CELLS: dict[str, Callable] = {}
for _module in sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")):
    CELLS.update(vars(importlib.import_module(f".{_module}", __name__)).get("CELLS", {}))
