"""The boring reference: one plain loop forward, one reversed loop backward.

Deliberately written apart from the executor (no buffers, no chunking, no schedules, no
in-place tricks): it calls only the cell's protocol methods (`Cell.record`, `Cell.vjp`)
and the readout's maths, stores everything, and walks back once, so every strategy is
checked against code that shares nothing with it but the cell. The built-in cells'
equations are checked on their own against PyTorch and central differences.
"""

from __future__ import annotations

import numpy as np

from .model import Model, check_model

__all__ = ["reference_gradients"]


def reference_gradients(model: Model, params: dict, xs: np.ndarray, ys: np.ndarray,
                        h0: tuple | None = None, mask: np.ndarray | None = None,
                        ) -> tuple[float, dict, tuple]:
    """Loss, grads and grad_h0 of the whole sequence by plain BPTT; stores everything.

    Works for any protocol cell (`bptt_memory.Cell`).

    >>> import numpy as np, bptt_memory as bm
    >>> model = bm.Model(bm.lstm(2, 3), n_out=2)
    >>> params = model.init(np.random.default_rng(0))
    >>> xs, ys = np.ones((4, 1, 2)), np.zeros((4, 1, 2))
    >>> loss, grads, _ = reference_gradients(model, params, xs, ys)
    >>> abs(loss - bm.full().run(model, params, xs, ys).loss) < 1e-12
    True
    """
    check_model(model, "reference_gradients")
    xs, ys, h0, mask = model.check(params, xs, ys, h0, mask)
    cell, T, B = model.cell, xs.shape[0], xs.shape[1]
    W_out, b_out = params["weight_out"], params["bias_out"]

    # ---- forward: keep every step's residuals and output in lists
    state, residuals, hs = h0, [], []
    for t in range(T):
        state, res = cell.record(params, xs[t], state)
        residuals.append(res)
        hs.append(np.array(cell.output(state)))

    # ---- loss: o_t = h_t·W_outᵀ + b_out
    loss, dos = 0.0, []
    for t in range(T):
        o = hs[t] @ W_out.T + b_out
        step_loss, do = model.step_loss(o, ys[t], mask[t] / B)
        loss += step_loss
        dos.append(do)

    # ---- backward: one reversed loop
    grads = {k: np.zeros_like(v) for k, v in params.items()}
    dstate = tuple(np.zeros_like(a) for a in h0)
    for t in reversed(range(T)):
        grads["weight_out"] += dos[t].T @ hs[t]
        grads["bias_out"] += dos[t].sum(axis=0)
        dstate = cell.output_vjp(dos[t] @ W_out, dstate)
        dstate, dparams = cell.vjp(params, xs[t], residuals[t], dstate)
        for k, v in dparams.items():
            grads[k] += v
    return loss, grads, dstate
