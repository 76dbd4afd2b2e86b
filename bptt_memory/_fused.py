"""Fused float32 LSTM kernels, compiled by numba: one pass over a step's elements.

numpy does an LSTM step's elementwise work as about thirty separate passes over (B, H)
and (4, B, H) blocks, each with its own call overhead, which at small sizes is a large
part of a step (reports/speed_vs_torch times full() on both kernels). Here one compiled
loop does a step's forward
(gates, c', h') and one its VJP (dc, the gates' pre-activation gradients), each
element read once. The matrix products stay numpy's (`cells/lstm.py`), so these kernels
are the LSTM kernels of `cells/lstm.py` with their elementwise middle replaced; the
equations are the same, written per element.

numba calls the C library's scalar tanh, which is several times slower than numpy's
vectorised one, so `_tanh` is a rational approximation that the compiler vectorises
(NOTE [rational tanh]). It is used for every tanh of a fused step, forward and
backward, so a step's recomputation and its reversal agree with its first run bitwise.

This module imports numba; `cells/lstm.py` imports it only when a float32 LSTM runs and
numba is installed (NOTE [fused float32 LSTM] in `cells/_gated.py`). Loops are written for
vectorisation: no fast-math (so every lane rounds as the scalar loop would and
results do not depend on an element's position), and numpy's error model (division
never raises, which lets the division vectorise).

References: Sanathanan & Koerner 1963 (the iterated linear fit of a rational function);
the LSTM equations are in `cells/lstm.py`.
"""

from __future__ import annotations

import numba
import numpy as np

# NOTE [rational tanh] tanh(x) ≈ x·P(x²)/Q(x²) for |x| ≤ 9, P and Q of degree 4, and
# ±9's value beyond (tanh(9) = 1 − 3·10⁻⁸ rounds to 1 in float32). The coefficients
# were fitted for this module: weighted linear least squares on 20,500 points of
# [0, 9], minimising the relative error, iterated with the weights 1/Q of the previous
# fit (Sanathanan–Koerner) until it settled. In float64 arithmetic the fit is within
# 6·10⁻⁸ relative of tanh; evaluated in float32 it is within 7 ulp of the rounded
# tanh at every float32 in [10⁻³⁰, 9.5] (checked exhaustively, worst 5.9; numpy's own
# float32 tanh is within 1.4 on a grid of 2M points), it is odd, and clipped to
# [−1, 1] (tests/test_fused.py checks all three on samples). It is not monotone: past
# |x| = 2.6 it wobbles within that error, by
# up to 7 ulp. Q > 1 for x ≠ 0, so the division is safe.
_P0, _P1, _P2, _P3, _P4 = (np.float32(v) for v in (
    0.9999999873552623, 0.13393024594219252, 0.003509819636287768,
    2.0842554198049612e-05, 1.367688522554913e-08))
_Q1, _Q2, _Q3, _Q4 = (np.float32(v) for v in (
    0.4672634435581625, 0.025931173077303075, 0.0003308877398152939,
    7.908708311726795e-07))
_ONE, _HALF, _CLAMP = np.float32(1.0), np.float32(0.5), np.float32(9.0)

_JIT = dict(cache=True, error_model="numpy", boundscheck=False)


@numba.njit(inline="always", **_JIT)
def _tanh(x):  # type: ignore[no-untyped-def]
    x = _CLAMP if x > _CLAMP else x
    x = -_CLAMP if x < -_CLAMP else x
    s = x * x
    p = (((_P4 * s + _P3) * s + _P2) * s + _P1) * s + _P0
    q = (((_Q4 * s + _Q3) * s + _Q2) * s + _Q1) * s + _ONE
    t = x * p / q
    t = _ONE if t > _ONE else t  # the fit overshoots 1 by up to 4e-7 near |x| = 9
    return -_ONE if t < -_ONE else t


@numba.njit(**_JIT)
def tanh(x, out):  # type: ignore[no-untyped-def]
    """out[k] = `_tanh`(x[k]) over flat arrays: what the kernels compute, for tests."""
    for k in range(x.size):
        out[k] = _tanh(x[k])


@numba.njit(**_JIT)
def lstm_forward(gates, x_i, x_f, x_g, x_o, c, c_new, h_new):  # type: ignore[no-untyped-def]
    """One LSTM step's elementwise forward, in place.

    gates (4, B, H) holds h·W_hhᵀ on entry and the activated gates (i, f, g, o) on exit;
    x_* (B, H) are the step's projections x·W_ihᵀ + b per gate; writes
    c' = f⊙c + i⊙g into c_new and h' = o⊙tanh(c') into h_new. σ(z) = ½·tanh(z/2) + ½
    (NOTE [one tanh for all gates] in `cells/lstm.py`).
    """
    B, H = c.shape
    for b in range(B):
        for j in range(H):
            i = _HALF * _tanh(_HALF * (gates[0, b, j] + x_i[b, j])) + _HALF
            f = _HALF * _tanh(_HALF * (gates[1, b, j] + x_f[b, j])) + _HALF
            g = _tanh(gates[2, b, j] + x_g[b, j])
            o = _HALF * _tanh(_HALF * (gates[3, b, j] + x_o[b, j])) + _HALF
            gates[0, b, j] = i
            gates[1, b, j] = f
            gates[2, b, j] = g
            gates[3, b, j] = o
            c_j = f * c[b, j] + i * g
            c_new[b, j] = c_j
            h_new[b, j] = o * _tanh(c_j)


@numba.njit(**_JIT)
def lstm_output(c, o, h):  # type: ignore[no-untyped-def]
    """h' = o⊙tanh(c') into h, with the forward's tanh: a recorded step's output."""
    B, H = c.shape
    for b in range(B):
        for j in range(H):
            h[b, j] = o[b, j] * _tanh(c[b, j])


@numba.njit(**_JIT)
def lstm_vjp(c_prev, gates, c, dh, dc, d_i, d_f, d_g, d_o, dc_prev):  # type: ignore[no-untyped-def]
    """One LSTM step's elementwise VJP, `cells._lstm_vjp` per element.

    From the residuals (c_prev, gates, c') and dL/dh', dL/dc' (B, H): writes
    dL/d(pre-activation) per gate into d_* (B, H) and dL/dc = dc_total⊙f into dc_prev,
    where dc_total = dL/dc' + dL/dh'⊙o⊙(1 − tanh²c') is all that reaches c'.
    """
    B, H = c.shape
    for b in range(B):
        for j in range(H):
            i, f, g, o = gates[0, b, j], gates[1, b, j], gates[2, b, j], gates[3, b, j]
            tanh_c = _tanh(c[b, j])
            dh_j = dh[b, j]
            dc_total = dc[b, j] + dh_j * o * (_ONE - tanh_c * tanh_c)
            d_i[b, j] = dc_total * g * (i * (_ONE - i))
            d_f[b, j] = dc_total * c_prev[b, j] * (f * (_ONE - f))
            d_g[b, j] = dc_total * i * (_ONE - g * g)
            d_o[b, j] = dh_j * tanh_c * (o * (_ONE - o))
            dc_prev[b, j] = dc_total * f


@numba.njit(**_JIT)
def sum_gates(p, out):  # type: ignore[no-untyped-def]
    """out = p[0] + p[1] + p[2] + p[3] for a (4, B, H) array, added in numpy's order
    (``p.sum(axis=0)``): the VJP's dL/dh = Σ_g dpre_g·W_g."""
    B, H = out.shape
    for b in range(B):
        for j in range(H):
            out[b, j] = ((p[0, b, j] + p[1, b, j]) + p[2, b, j]) + p[3, b, j]
