"""An off-by-default profiler for one run: where its time went.

A `Profile` passed as ``profile=`` to a strategy's `run` (or to `execute`, or to
`online(...).stream`) collects that run's seconds in forward steps and in backward
steps, and the time, count and flops of every matrix product the cell's kernels and the
model's readout make: those products are made through `Profile.matmul` instead of
``np.matmul`` (`Kernels.route_products`). Without a profile nothing is timed and no
product passes through a wrapper; with one, the products are the same calls with the
same operands, so the results are bitwise the same.

A product of (…, m, k) by (…, k, n) counts 2·m·n·k flops per matrix of its batch.
"""

from __future__ import annotations

import math
import time
from typing import final

import numpy as np

__all__ = ["Profile", "check_profile"]


@final
class Profile:
    """Where one run's time went: forward steps, backward steps, matrix products.

    Trades a little speed for insight: two clock reads per action, and with
    ``products=True`` two per matrix product (a few hundred nanoseconds each), which
    land in the run's own time. A run clears the profile first, so it always describes
    the last run it was passed to.

    Args:
        products: also time every matrix product (True); False times the phases only.

    Attributes:
        forward_seconds: in forward steps (Advance and Record actions; for `truncated`,
            its recorded steps; for `online(...).stream`, also the pass over the stream).
        backward_seconds: in backward steps (Reverse actions and the weight-gradient
            products that close each gradient window; for `truncated`, its updates).
        product_seconds: inside the matrix products that were seen, in either phase.
        product_count: how many matrix products were seen (a batched product of G
            blocks is one).
        product_flops: their floating-point operations, 2·m·n·k per (m, k)·(k, n) block.
        unmeasured: why some of the run's products were not seen, one line per part of
            the run (a cell whose `Kernels` cannot route its products, `truncated`, the
            forward pass of a stream); empty when every product was seen. With
            ``products=False`` it says that no product was timed.

    >>> import numpy as np, bptt_memory as bm
    >>> model = bm.Model(bm.lstm(2, 3), n_out=1)
    >>> params = model.init(np.random.default_rng(0))
    >>> xs, ys = np.ones((20, 4, 2)), np.zeros((20, 4, 1))
    >>> p = bm.Profile()
    >>> res = bm.full().run(model, params, xs, ys, profile=p)
    >>> p.complete, p.product_count > 0, p.product_seconds <= res.stats.seconds
    (True, True, True)

    Warning:
        Only the built-in cells route their products (`Kernels.route_products`); for a
        cell of one's own, or a stack of cells, ``unmeasured`` says so and the product
        figures cover the readout's products alone.
    """

    def __init__(self, products: bool = True) -> None:
        if not isinstance(products, bool):
            raise TypeError(f"Profile(products={products!r}): products must be True or False")
        self.products = products
        self._clear()

    def _clear(self) -> None:
        self.forward_seconds = self.backward_seconds = self.product_seconds = 0.0
        self.product_count = self.product_flops = 0
        self._unmeasured: list[str] = []
        if not self.products:
            self._unmeasured.append("products=False: no matrix product was timed")

    @property
    def unmeasured(self) -> tuple[str, ...]:
        return tuple(self._unmeasured)

    @property
    def complete(self) -> bool:
        """Whether every matrix product of the run was seen."""
        return not self._unmeasured

    def not_measured(self, why: str) -> None:
        """Note a part of the run whose products this profile does not see (an executor
        calls it; each reason is kept once)."""
        if why not in self._unmeasured:
            self._unmeasured.append(why)

    def matmul(self, a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None
               ) -> np.ndarray:
        """``np.matmul(a, b, out=out)``, timed and counted."""
        t0 = time.perf_counter()
        r = np.matmul(a, b) if out is None else np.matmul(a, b, out=out)
        self.product_seconds += time.perf_counter() - t0
        self.product_count += 1
        self.product_flops += _flops(a.shape, b.shape)
        return r

    def __repr__(self) -> str:
        return (f"Profile(forward_seconds={self.forward_seconds:.6g}, "
                f"backward_seconds={self.backward_seconds:.6g}, "
                f"product_seconds={self.product_seconds:.6g}, "
                f"product_count={self.product_count}, product_flops={self.product_flops}, "
                f"unmeasured={self.unmeasured})")


def _flops(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    """2·m·n·k per matrix of the broadcast batch; a 1-D operand is one row (a) or one
    column (b), as np.matmul reads it."""
    m, k = (1, a[0]) if len(a) == 1 else a[-2:]
    n = 1 if len(b) == 1 else b[-1]
    batch = math.prod(np.broadcast_shapes(a[:-2], b[:-2]))
    return 2 * batch * m * n * k


def check_profile(profile: object, where: str) -> Profile | None:
    """None, or a `Profile` cleared for the run about to start; else a TypeError naming
    the argument and the fix."""
    if profile is None:
        return None
    if not isinstance(profile, Profile):
        raise TypeError(f"{where}(profile={profile!r}): expected a bm.Profile or None; pass "
                        "profile=bm.Profile() and read its fields after the run")
    profile._clear()
    return profile
