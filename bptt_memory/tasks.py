"""Problems to run strategies on: random sequences, and tasks with a known dependency span.

The adding problem (Hochreiter & Schmidhuber 1997; Le et al. 2015): each step carries a
random number and a marker; the target, read only at the last step, is the sum of the
two marked numbers. Its dependency span is the distance back to the first marker, so a
gradient truncated to fewer steps cannot learn it.
"""

from __future__ import annotations

import numpy as np

from .model import Model

__all__ = ["random_problem", "adding_problem"]


def random_problem(model: Model, n_steps: int, batch: int, rng: np.random.Generator,
                   dtype: np.dtype | type = np.float64) -> tuple[np.ndarray, np.ndarray]:
    """Standard-normal inputs and targets (or uniform labels) of the model's shapes.

    >>> import bptt_memory as bm
    >>> xs, ys = random_problem(bm.Model(bm.gru(3, 4), 2), 5, 2, np.random.default_rng(0))
    >>> xs.shape, ys.shape
    ((5, 2, 3), (5, 2, 2))
    """
    n_in = model.cell.n_in
    if n_in is None:
        raise ValueError(f"random_problem: {model.cell.name} does not say its input size "
                         "(n_in is None); make xs of shape (T, B, n_in) yourself")
    xs = rng.standard_normal((n_steps, batch, n_in)).astype(dtype)
    if model.loss == "cross_entropy":
        ys = rng.integers(0, model.n_out, size=(n_steps, batch))
    else:
        ys = rng.standard_normal((n_steps, batch, model.n_out)).astype(dtype)
    return xs, ys


def adding_problem(n_steps: int, batch: int, rng: np.random.Generator,
                   dtype: np.dtype | type = np.float64
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(xs (T, B, 2), ys (T, B, 1), mask (T, B)): only the last step's loss counts.

    One marker falls in the first half of the sequence, one in the second half, so the
    dependency span is at least T/2 steps.

    >>> xs, ys, mask = adding_problem(10, 3, np.random.default_rng(0))
    >>> xs.shape, ys.shape, float(mask.sum())
    ((10, 3, 2), (10, 3, 1), 3.0)
    """
    if n_steps < 2:
        raise ValueError(f"adding_problem(n_steps={n_steps}): needs at least 2 steps")
    values = rng.uniform(0.0, 1.0, size=(n_steps, batch))
    first = rng.integers(0, n_steps // 2, size=batch)
    second = rng.integers(n_steps // 2, n_steps, size=batch)
    markers = np.zeros((n_steps, batch))
    markers[first, np.arange(batch)] = 1.0
    markers[second, np.arange(batch)] = 1.0
    xs = np.stack([values, markers], axis=-1).astype(dtype)
    ys = np.zeros((n_steps, batch, 1), dtype)
    ys[-1, :, 0] = (values * markers).sum(axis=0)
    mask = np.zeros((n_steps, batch), dtype)
    mask[-1] = 1.0
    return xs, ys, mask
