"""bptt_memory: what must be kept to backpropagate through time, and what keeping less costs.

Cells (`vanilla`, `lstm`, `gru`, any of them stacked, and any cell written against the
`Cell` protocol) with PyTorch's equations, a `Model` (cell + linear readout + loss), and
interchangeable backward strategies with one call shape,
``strategy.run(model, params, xs, ys, *, h0=None, mask=None)`` (``profile=bm.Profile()``
says where a run's time went):

- `full`: store every step's residuals (exact, O(T) memory);
- `truncated`: TBPTT(k1, k2) on a ring buffer (biased, O(k2) memory);
- `uniform`, `binomial`, `optimal`: checkpointing schedules (exact, less memory, more
  forward steps), run by one executor and checked by one simulator.

Every result carries `Stats` with the exact bytes the strategy held for the backward pass.
"""

from . import compare, tasks, timing  # noqa: F401  (bm.tasks.adding_problem, bm.compare.plan, ...)
from .cell import Cell, CellError, Kernels, PlainKernels
from .cells import CELLS, gru, lstm, stack, vanilla
from .checkpoint import Binomial, Optimal, binomial, binomial_forward_steps, optimal
from .engine import execute
from .model import LOSSES, LossFn, Model, Result, Stats
from .online import Online, OnlinePolicy, online
from .profile import Profile
from .reference import reference_gradients
from .schedule import (
                       Action,
                       Advance,
                       Cost,
                       EndForward,
                       Free,
                       Record,
                       Restore,
                       Reverse,
                       ScheduleError,
                       Store,
                       format_schedule,
                       simulate,
)
from .strategies import (
                       Full,
                       ScheduledStrategy,
                       Strategy,
                       Truncated,
                       Uniform,
                       Update,
                       best_uniform,
                       clear_plan_caches,
                       full,
                       plan_cache_bytes,
                       truncated,
                       uniform,
)

__version__ = "0.1.0"

#: Every strategy factory by name, so studies and the CLI can loop without branching.
STRATEGIES = {
    "full": full,
    "truncated": truncated,
    "uniform": uniform,
    "binomial": binomial,
    "optimal": optimal,
    "online": online,
}

__all__ = [
    "Cell", "CellError", "Kernels", "PlainKernels", "CELLS", "vanilla", "lstm", "gru", "stack",
    "Model", "Result", "Stats", "LOSSES", "LossFn", "Profile",
    "Strategy", "ScheduledStrategy", "STRATEGIES",
    "full", "truncated", "uniform", "binomial", "optimal", "online", "best_uniform",
    "Full", "Truncated", "Uniform", "Binomial", "Optimal", "Online", "OnlinePolicy", "Update",
    "Action", "Advance", "Record", "Reverse", "Store", "Restore", "Free",
    "EndForward", "Cost", "ScheduleError", "simulate", "format_schedule", "execute",
    "plan_cache_bytes", "clear_plan_caches",
    "binomial_forward_steps", "reference_gradients", "compare", "tasks", "timing",
]
