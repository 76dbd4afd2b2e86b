"""The reference: its whole-sequence gradient against central differences of its own loss.

Random projections in float64: for a random direction v over every parameter and every
h0 component, <grad, v> must match (L(θ + εv) − L(θ − εv)) / 2ε. With a mask (zeros and
fractional weights) and a non-zero h0, so grad_h0 and the mask's weighting are checked too.
"""

import numpy as np
import pytest

import bptt_memory as bm
from cell_zoo import CELLS

T, B, N_IN, H, N_OUT = 5, 2, 2, 3, 3
EPS = 1e-6
RTOL = 1e-7


def _problem(rng, cell_name, loss):
    model = bm.Model(CELLS[cell_name](N_IN, H), n_out=N_OUT, loss=loss)
    # Larger than PyTorch's init so every gate and the recurrence matter.
    params = {k: rng.uniform(-1.0, 1.0, v.shape) for k, v in model.init(rng).items()}
    xs = rng.standard_normal((T, B, N_IN))
    ys = (rng.standard_normal((T, B, N_OUT)) if loss == "mse"
          else rng.integers(0, N_OUT, size=(T, B)))
    mask = rng.uniform(0.3, 1.5, size=(T, B))
    mask[1, 0] = 0.0  # a dropped example ...
    mask[3] = 0.0  # ... and a whole dropped step, whose loss must not count
    h0 = tuple(rng.standard_normal((B, H)) for _ in model.cell.state_names)
    return model, params, xs, ys, mask, h0


def _dot(a, b):
    return float(np.sum(a * b))


@pytest.mark.parametrize("loss", bm.LOSSES)
@pytest.mark.parametrize("cell_name", sorted(CELLS))
def test_gradient_matches_central_differences(rng, cell_name, loss):
    model, params, xs, ys, mask, h0 = _problem(rng, cell_name, loss)
    loss_value, grads, grad_h0 = bm.reference_gradients(model, params, xs, ys, h0=h0, mask=mask)
    assert grads.keys() == params.keys()
    assert len(grad_h0) == len(h0)

    def L(p, h):
        return bm.reference_gradients(model, p, xs, ys, h0=h, mask=mask)[0]

    assert L(params, h0) == loss_value
    blocks = [f"param:{k}" for k in params] + [f"h0:{n}" for n in model.cell.state_names] + ["all"]
    for block in blocks:
        vp = {k: (rng.standard_normal(v.shape) if block in (f"param:{k}", "all")
                  else np.zeros_like(v))
              for k, v in params.items()}
        vh = tuple(rng.standard_normal((B, H)) if block in (f"h0:{n}", "all") else np.zeros((B, H))
                   for n in model.cell.state_names)

        def shifted(sign):
            return L({k: params[k] + sign * EPS * vp[k] for k in params},
                     tuple(a + sign * EPS * v for a, v in zip(h0, vh)))

        numeric = (shifted(+1) - shifted(-1)) / (2 * EPS)
        analytic = (sum(_dot(grads[k], vp[k]) for k in params)
                    + sum(_dot(g, v) for g, v in zip(grad_h0, vh)))
        assert abs(numeric - analytic) <= RTOL * max(abs(analytic), 1e-2), (
            block, numeric, analytic)


@pytest.mark.parametrize("loss", bm.LOSSES)
@pytest.mark.parametrize("cell_name", sorted(CELLS))
def test_masked_out_steps_contribute_nothing(rng, cell_name, loss):
    """Changing the target of a masked-out step changes neither the loss nor any gradient."""
    model, params, xs, ys, mask, h0 = _problem(rng, cell_name, loss)
    before = bm.reference_gradients(model, params, xs, ys, h0=h0, mask=mask)
    ys2 = ys.copy()
    ys2[3] = ys2[3] + 1 if loss == "mse" else (ys2[3] + 1) % N_OUT
    after = bm.reference_gradients(model, params, xs, ys2, h0=h0, mask=mask)
    assert after[0] == before[0]
    assert all(np.array_equal(after[1][k], before[1][k]) for k in params)


@pytest.mark.parametrize("loss", bm.LOSSES)
def test_loss_is_the_mask_weighted_mean_of_per_step_losses(rng, loss):
    """L = Σ_t Σ_b mask[t, b]·ℓ(o_tb, y_tb) / B, written out here independently for one case."""
    model, params, xs, ys, mask, h0 = _problem(rng, "vanilla-tanh", loss)
    (h,) = h0
    expected = 0.0
    for t in range(T):
        h = np.tanh(xs[t] @ params["weight_ih"].T + params["bias_ih"] + h @ params["weight_hh"].T
                    + params["bias_hh"])
        o = h @ params["weight_out"].T + params["bias_out"]
        if loss == "mse":
            per_example = np.mean((o - ys[t]) ** 2, axis=1)
        else:
            logp = o - np.log(np.sum(np.exp(o), axis=1, keepdims=True))
            per_example = -logp[np.arange(B), ys[t]]
        expected += float(np.sum(mask[t] * per_example)) / B
    got = bm.reference_gradients(model, params, xs, ys, h0=h0, mask=mask)[0]
    assert abs(got - expected) <= 1e-13 * abs(expected)


def test_no_mask_and_no_h0_mean_ones_and_zeros(rng):
    model, params, xs, ys, _, h0 = _problem(rng, "lstm", "mse")
    ones = np.ones((T, B))
    zeros = tuple(np.zeros_like(a) for a in h0)
    a = bm.reference_gradients(model, params, xs, ys)
    b = bm.reference_gradients(model, params, xs, ys, h0=zeros, mask=ones)
    assert a[0] == b[0]
    assert all(np.array_equal(a[1][k], b[1][k]) for k in params)
    assert all(np.array_equal(x, y) for x, y in zip(a[2], b[2]))
