"""The boring reference: one plain loop forward, one reversed loop backward.

Deliberately written apart from `bptt_memory.cells` (min-char-rnn style, maths names,
no buffers, no chunking, no in-place tricks) so that every strategy and every cell
kernel is checked against code that shares nothing with them but the equations.
"""

from __future__ import annotations

import numpy as np

from .model import Model

__all__ = ["reference_gradients"]


def _sig(z: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore", under="ignore"):  # exp(-z) = inf gives σ = 0, rightly
        return 1.0 / (1.0 + np.exp(-z))


def reference_gradients(model: Model, params: dict, xs: np.ndarray, ys: np.ndarray,
                        h0: tuple | None = None, mask: np.ndarray | None = None,
                        ) -> tuple[float, dict, tuple]:
    """Loss, grads and grad_h0 of the whole sequence by plain BPTT; stores everything.

    >>> import numpy as np, bptt_memory as bm
    >>> model = bm.Model(bm.lstm(2, 3), n_out=2)
    >>> params = model.init(np.random.default_rng(0))
    >>> xs, ys = np.ones((4, 1, 2)), np.zeros((4, 1, 2))
    >>> loss, grads, _ = reference_gradients(model, params, xs, ys)
    >>> abs(loss - bm.full().run(model, params, xs, ys).loss) < 1e-12
    True
    """
    xs, ys, h0, mask = model.check(params, xs, ys, h0, mask)
    kind, H, T, B = model.cell.kind, model.cell.n_hidden, xs.shape[0], xs.shape[1]
    W_ih, W_hh, b_ih, b_hh = params["weight_ih"], params["weight_hh"], params["bias_ih"], params["bias_hh"]
    W_out, b_out = params["weight_out"], params["bias_out"]
    act = model.cell.activation

    # ---- forward: keep every intermediate in lists
    h, c = h0[0], (h0[1] if kind == "lstm" else None)
    hs, cs, caches = [h], [c], []
    for t in range(T):
        x = xs[t]
        if kind == "vanilla":
            z = x @ W_ih.T + b_ih + h @ W_hh.T + b_hh
            h = {"tanh": np.tanh, "sigmoid": _sig, "relu": lambda a: np.maximum(a, 0.0)}[act](z)
            caches.append(z)
        elif kind == "lstm":
            a = x @ W_ih.T + b_ih + h @ W_hh.T + b_hh
            i, f, g, o = _sig(a[:, :H]), _sig(a[:, H:2*H]), np.tanh(a[:, 2*H:3*H]), _sig(a[:, 3*H:])
            c = f * c + i * g
            h = o * np.tanh(c)
            caches.append((i, f, g, o))
        else:  # gru
            gi = x @ W_ih.T + b_ih
            gh = h @ W_hh.T + b_hh
            r = _sig(gi[:, :H] + gh[:, :H])
            z = _sig(gi[:, H:2*H] + gh[:, H:2*H])
            n = np.tanh(gi[:, 2*H:] + r * gh[:, 2*H:])
            caches.append((r, z, n, gh[:, 2*H:]))
            h = (1 - z) * n + z * h
        hs.append(h)
        cs.append(c)

    # ---- loss
    loss = 0.0
    dos = []
    for t in range(T):
        o = hs[t + 1] @ W_out.T + b_out
        w = mask[t] / B
        if model.loss == "mse":
            loss += float(np.sum(w * np.mean((o - ys[t]) ** 2, axis=1)))
            dos.append(2 * (o - ys[t]) / model.n_out * w[:, None])
        else:
            with np.errstate(under="ignore"):
                p = np.exp(o - o.max(axis=1, keepdims=True))
            p /= p.sum(axis=1, keepdims=True)
            loss += float(np.sum(w * -np.log(p[np.arange(B), ys[t]])))
            p[np.arange(B), ys[t]] -= 1
            dos.append(p * w[:, None])

    # ---- backward: one reversed loop
    grads = {k: np.zeros_like(v) for k, v in params.items()}
    dh_next = np.zeros_like(h0[0])
    dc_next = np.zeros_like(h0[0])
    for t in reversed(range(T)):
        x, h_prev = xs[t], hs[t]
        grads["weight_out"] += dos[t].T @ hs[t + 1]
        grads["bias_out"] += dos[t].sum(0)
        dh = dos[t] @ W_out + dh_next
        if kind == "vanilla":
            z = caches[t]
            hz = hs[t + 1]
            dz = dh * {"tanh": 1 - hz ** 2, "sigmoid": hz * (1 - hz), "relu": (z > 0) * 1.0}[act]
            da_x = da_h = dz
            dh_next = dz @ W_hh
        elif kind == "lstm":
            i, f, g, o = caches[t]
            tc = np.tanh(cs[t + 1])
            dc = dc_next + dh * o * (1 - tc ** 2)
            da = np.concatenate([dc * g * i * (1 - i), dc * cs[t] * f * (1 - f),
                                 dc * i * (1 - g ** 2), dh * tc * o * (1 - o)], axis=1)
            da_x = da_h = da
            dh_next = da @ W_hh
            dc_next = dc * f
        else:
            r, z, n, ghn = caches[t]
            dn = dh * (1 - z) * (1 - n ** 2)
            dz = dh * (h_prev - n) * z * (1 - z)
            dr = dn * ghn * r * (1 - r)
            da_x = np.concatenate([dr, dz, dn], axis=1)
            da_h = np.concatenate([dr, dz, dn * r], axis=1)
            dh_next = da_h @ W_hh + dh * z
        grads["weight_ih"] += da_x.T @ x
        grads["bias_ih"] += da_x.sum(0)
        grads["weight_hh"] += da_h.T @ h_prev
        grads["bias_hh"] += da_h.sum(0)
    grad_h0 = (dh_next, dc_next) if kind == "lstm" else (dh_next,)
    return loss, grads, grad_h0
