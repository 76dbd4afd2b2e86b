"""The same schedules on PyTorch tensors: a byte budget and exact gradients for any step.

`scan` runs a recurrent ``step(x_t, state) -> state`` over a sequence with the loss
``Σ_t loss_fn(state_{t+1}, y_t)`` and backpropagates it under any strategy of this library.
An exact strategy's schedule (`bptt_memory.schedule`) is walked by `bptt_memory.walk`
with a torch executor: advanced steps run under ``no_grad``, recorded steps keep their
autograd graph, reversed steps are backpropagated with the incoming adjoint. Sizes for
planning are measured from one traced step: the bytes of the tensors autograd saves for
it (saved-tensor hooks) and the state's bytes, so ``optimal(budget_bytes=...)`` means
bytes of torch tensors.

This module is an optional part: ``import bptt_memory`` never imports it, and it needs
``pip install torch==2.13.0``.

References: Gruslys et al. 2016, "Memory-Efficient Backpropagation Through Time";
Griewank & Walther 2000 (revolve); Williams & Peng 1990 (TBPTT); `torch.utils.checkpoint`
(saving and restoring the RNG state for recomputation).
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch
from torch import Tensor, nn

from .model import Stats
from .schedule import Action, Cost, Reverse
from .strategies import Full, Strategy, Truncated
from .walk import Executor, Ledger, walk

__all__ = ["scan", "cost", "measure_step", "StepSizes"]

Step = Callable[[Tensor, Any], Any]
LossFn = Callable[[Any, Any], Tensor]


# NOTE [what a step holds] A recorded step holds the tensors autograd saved for its
# backward (counted once per storage, the storage's bytes, as that is what stays alive),
# except storages shared by every step: the parameters and the caller's xs and ys, which
# are held whatever the strategy (the library's Stats exclude params and inputs too). The
# state entering the step is counted when the step saves it, even though the step before
# may hold it as well: link_bytes = 0, so the plan can only overestimate what is held.
# A stored state holds its tensors' bytes.


@dataclass(frozen=True)
class StepSizes:
    """What one traced step holds: ``state_bytes`` (the state) and ``residual_bytes``
    (the tensors autograd saved for its backward, NOTE [what a step holds])."""

    state_bytes: int
    residual_bytes: int

    def sizes(self) -> dict[str, int]:
        """Keyword arguments for ``strategy.schedule`` and `simulate`."""
        return {"state_bytes": self.state_bytes, "residual_bytes": self.residual_bytes,
                "link_bytes": 0}


def _storage_key(t: Tensor) -> tuple[str, int] | None:
    try:
        s = t.untyped_storage()
    except (RuntimeError, NotImplementedError):  # sparse, nested, meta...: not counted
        return None
    return (str(t.device), s.data_ptr())


class _SavedCounter:
    """Saved-tensor hooks that add up the bytes a step's graph keeps (NOTE [what a step
    holds]): one count per storage, storages in `shared` excluded."""

    def __init__(self, shared: set) -> None:
        self.shared = shared
        self.seen: set = set()
        self.nbytes = 0

    def pack(self, t: Tensor) -> Tensor:
        key = _storage_key(t)
        if key is not None and key not in self.shared and key not in self.seen:
            self.seen.add(key)
            self.nbytes += t.untyped_storage().nbytes()
        return t.detach()  # a saved output keeping its own grad_fn would be a reference cycle

    @staticmethod
    def unpack(t: Tensor) -> Tensor:
        return t

    def hooks(self) -> torch.autograd.graph.saved_tensors_hooks:
        return torch.autograd.graph.saved_tensors_hooks(self.pack, self.unpack)

    def take(self) -> int:
        n, self.nbytes, self.seen = self.nbytes, 0, set()
        return n


# --- the caller's arguments -------------------------------------------------------------


class _Problem:
    """The checked arguments of one `scan` or `cost` call."""

    def __init__(self, where: str, step: Step, xs: object, h0: object, ys: object,
                 loss_fn: object, strategy: object, params: Iterable[Tensor] | None) -> None:
        if not callable(step):
            raise TypeError(f"{where}: step must be a callable step(x_t, state) -> state or an "
                            f"nn.Module, got {type(step).__name__}")
        if not callable(loss_fn):
            raise TypeError(f"{where}: loss_fn must be a callable loss_fn(state_t, y_t) -> scalar "
                            f"tensor, got {type(loss_fn).__name__}")
        if not isinstance(xs, Tensor):
            raise TypeError(f"{where}: xs must be a torch.Tensor of shape (T, ...), got "
                            f"{type(xs).__name__}; stack the inputs with torch.stack")
        if xs.ndim < 1 or xs.shape[0] < 1:
            raise ValueError(f"{where}: xs has shape {tuple(xs.shape)}; needs (T, ...) with T >= 1")
        T = xs.shape[0]
        if ys is not None:
            if not isinstance(ys, Tensor):
                raise TypeError(f"{where}: ys must be a torch.Tensor of shape (T, ...) or None, "
                                f"got {type(ys).__name__}")
            if ys.ndim < 1 or ys.shape[0] != T:
                n = ys.shape[0] if ys.ndim else 0
                raise ValueError(f"{where}: ys has {n} steps but xs has {T}; give one target "
                                 "per step (T first)")
            if ys.requires_grad:
                raise ValueError(f"{where}: ys requires grad; targets are constants here, pass "
                                 "ys.detach() (or put what needs a gradient into xs)")
        if isinstance(h0, Tensor):
            self.tuple_state, state = False, (h0,)
        elif isinstance(h0, tuple) and h0 and all(isinstance(a, Tensor) for a in h0):
            self.tuple_state, state = True, h0
        else:
            raise TypeError(f"{where}: h0 must be a tensor or a non-empty tuple of tensors, got "
                            f"{type(h0).__name__}")
        if not isinstance(strategy, Strategy):
            raise TypeError(f"{where}: strategy must be a bptt_memory strategy such as bm.full() "
                            f"or bm.optimal(budget_bytes=...), got {type(strategy).__name__}")
        if params is None:
            found: dict[int, Tensor] = {}
            for m in (step, loss_fn):
                if isinstance(m, nn.Module):
                    for p in m.parameters():
                        found.setdefault(id(p), p)
            plist = list(found.values())
        else:
            plist = list(params)
            for i, p in enumerate(plist):
                if not isinstance(p, Tensor):
                    raise TypeError(f"{where}: params[{i}] is a {type(p).__name__}, not a tensor")
        self.step, self.loss_fn, self.strategy = step, loss_fn, strategy
        self.xs, self.ys, self.h0, self.T = xs, ys, tuple(state), T
        self.params = tuple({id(p): p for p in plist}.values())
        self.shared = {k for a in (*self.params, xs, *(() if ys is None else (ys,)))
                       if (k := _storage_key(a)) is not None}
        self.devices = sorted({a.device.index or 0 for a in (xs, *state, *self.params)
                               if a.device.type == "cuda"})

    def y(self, t: int) -> Tensor | None:
        return None if self.ys is None else self.ys[t]

    def call(self, x: Tensor, state: tuple[Tensor, ...], check: bool = True) -> tuple[Tensor, ...]:
        """One step on the state as a tuple, checked against the state's structure (the
        first pass checks every step; recomputation repeats them unchecked)."""
        out = self.step(x, state if self.tuple_state else state[0])
        if not check:
            return out if self.tuple_state else (out,)
        if self.tuple_state:
            ok = isinstance(out, tuple) and len(out) == len(state) and all(
                isinstance(o, Tensor) for o in out)
        else:
            ok = isinstance(out, Tensor)
            out = (out,)
        if not ok or any(o.shape != s.shape or o.dtype != s.dtype for o, s in zip(out, state)):
            raise TypeError(
                f"scan: step returned {_describe(out)} for a state "
                f"{_describe(state if self.tuple_state else state[0])}; a step must return "
                "the same structure, shapes and dtypes as the state it took")
        return out

    def loss(self, state: tuple[Tensor, ...], t: int) -> Tensor:
        return self.loss_fn(state if self.tuple_state else state[0], self.y(t))

    def user_state(self, state: tuple[Tensor, ...]) -> Any:
        return state if self.tuple_state else state[0]


def _describe(a: object) -> str:
    if isinstance(a, Tensor):
        return f"a tensor {tuple(a.shape)} {a.dtype}"
    if isinstance(a, tuple):
        return "(" + ", ".join(_describe(b) for b in a) + ")"
    return f"a {type(a).__name__}"


def _leaf(a: Tensor) -> Tensor:
    """A recorded step's input: detached, and a leaf requiring grad when it can carry one."""
    a = a.detach()
    return a.requires_grad_() if a.is_floating_point() or a.is_complex() else a


# --- RNG: replay a step's random draws bit-exactly ----------------------------------------

# NOTE [rng replay] A step may draw random numbers (dropout). Recomputation runs steps
# n0 … n1−1 again from a stored state at n0, so the generators are put back where they were
# at boundary n0 first: the state at boundary 0 and every stored state carry the CPU and
# CUDA generator states of their boundary (as torch.utils.checkpoint saves them per
# segment), and a run from a restored state starts by restoring them. Steps therefore draw
# in the same order as the first forward pass, which draws like the plain loop does. The
# backward pass puts the generators back as it found them. loss_fn must not draw (it is
# run in the first pass and again when a step is recorded): checked on the first step.


def _rng_get(devices: Sequence[int]) -> tuple[Tensor, list[Tensor]]:
    return torch.get_rng_state(), [torch.cuda.get_rng_state(d) for d in devices]


def _rng_set(snapshot: tuple[Tensor, list[Tensor]], devices: Sequence[int]) -> None:
    torch.set_rng_state(snapshot[0])
    for d, s in zip(devices, snapshot[1]):
        torch.cuda.set_rng_state(s, d)


@dataclass(frozen=True)
class _Working:
    """The working state, with the generators' states at its boundary when it was
    stored (NOTE [rng replay]); None for a state just computed."""

    state: tuple[Tensor, ...]
    rng: tuple[Tensor, list[Tensor]] | None = None


# --- measuring one step -------------------------------------------------------------------


def _trace(p: _Problem) -> StepSizes:
    """Run step 0 once with autograd on and count what it saves; check the step's output
    and that loss_fn draws no random numbers. Leaves the generators as they were."""
    before = _rng_get(p.devices)
    counter = _SavedCounter(p.shared)
    try:
        with torch.enable_grad(), counter.hooks():
            x = _leaf(p.xs[0]) if p.xs.requires_grad else p.xs[0].detach()
            s_in = tuple(_leaf(a) for a in p.h0)
            out = p.call(x, s_in)
            mid = _rng_get(p.devices)
            loss = p.loss(out, 0)
            now = _rng_get(p.devices)
            if not all(torch.equal(a, b) for a, b in zip((mid[0], *mid[1]), (now[0], *now[1]))):
                raise ValueError("scan: loss_fn draws random numbers; scan runs it again when it "
                                 "recomputes a step, so draw them inside step instead")
        if not isinstance(loss, Tensor) or loss.numel() != 1:
            raise TypeError(f"scan: loss_fn must return a scalar tensor, got {_describe(loss)}")
        _check_leaves(p, [*out, loss], [x, *s_in])
    finally:
        _rng_set(before, p.devices)
    residual = counter.take()
    state = sum(a.numel() * a.element_size() for a in out)
    return StepSizes(state_bytes=state, residual_bytes=max(residual, 1))


def _check_leaves(p: _Problem, outputs: list[Tensor], own: list[Tensor]) -> None:
    """Refuse a step or loss_fn that uses a leaf requiring grad other than x_t, the state
    and params: its gradient would silently be missing (a plain callable's closure)."""
    known = {id(q) for q in (*p.params, *own)}
    seen, todo = set(), [o.grad_fn for o in outputs if o.grad_fn is not None]
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if type(node).__name__ == "AccumulateGrad":  # a leaf's node: .variable is the leaf
            v = node.variable
            if id(v) not in known:
                raise ValueError(
                    f"scan: step or loss_fn uses a tensor {tuple(v.shape)} that requires grad but "
                    "is not among the parameters; pass params=[...] naming every tensor to "
                    "differentiate (a plain callable's tensors are not found by themselves)")
        else:
            todo.extend(n for n, _ in node.next_functions)


def measure_step(step: Step, xs: Tensor, h0: Any, *, loss_fn: LossFn, ys: Tensor | None = None,
                 params: Iterable[Tensor] | None = None) -> StepSizes:
    """The bytes one step holds, measured from one traced step (NOTE [what a step holds]).

    >>> import torch
    >>> cell = torch.nn.RNNCell(3, 4)
    >>> sizes = measure_step(cell, torch.zeros(5, 2, 3), torch.zeros(2, 4),
    ...                      loss_fn=lambda h, y: h.sum())
    >>> sizes.state_bytes      # (B, H) float32
    32
    """
    p = _Problem("measure_step", step, xs, h0, ys, loss_fn, Full(), params)
    return _trace(p)


def _check_budget(p: _Problem, sizes: StepSizes) -> None:
    budget = getattr(p.strategy, "budget_bytes", None)
    if budget is not None and budget < sizes.residual_bytes:
        raise ValueError(
            f"{p.strategy.name}: below the minimum of {sizes.residual_bytes} bytes, what autograd "
            f"saves for one step of this step function at these shapes; raise budget_bytes to at "
            f"least {sizes.residual_bytes}")


def cost(step: Step, xs: Tensor, h0: Any, *, loss_fn: LossFn, ys: Tensor | None = None,
         strategy: Strategy | None = None, params: Iterable[Tensor] | None = None) -> Cost:
    """What `scan` with `strategy` will do and hold, before running it: forward and backward
    steps and peak bytes (of stored states and recorded steps' saved tensors, NOTE [what a
    step holds]), from one traced step and the schedule simulator.

    >>> import torch, bptt_memory as bm
    >>> cell = torch.nn.GRUCell(3, 8)
    >>> c = cost(cell, torch.zeros(100, 2, 3), torch.zeros(2, 8), loss_fn=lambda h, y: h.sum(),
    ...          strategy=bm.binomial(slots=4))
    >>> c.forward_steps, c.backward_steps
    (416, 100)
    """
    p = _Problem("cost", step, xs, h0, ys, loss_fn, strategy or Full(), params)
    sizes = _trace(p)
    _check_budget(p, sizes)
    return p.strategy.cost(p.T, **sizes.sizes())  # every strategy prices itself


# --- the executor -------------------------------------------------------------------------


# NOTE [pieces] A recorded run is also cut every PIECE_STEPS steps. One backward call over
# a long graph is slower per step than several over its pieces: torch.autograd.grad with
# `inputs` walks and indexes the whole graph it is given, and past a few thousand steps
# that bookkeeping falls out of cache (studies/torch_checkpointing measures scan full()
# against plain autograd). A cut costs a detached alias of the state, no bytes.
PIECE_STEPS = 16


class _TorchExecutor(Executor):
    """Walks a schedule's actions on torch tensors (see `walk.Executor`).

    A recorded step keeps (its input leaves or None where it continues the step before's
    graph, its x leaf, its output, its loss), with their autograd graph; `reverse`
    backpropagates each piece of a recorded run with one `torch.autograd.grad` call
    (NOTE [recorded runs]) and sums the parameters' gradients over the pieces.
    """

    def __init__(self, p: _Problem, needs: tuple[bool, bool, list[bool]], count: bool) -> None:
        self.ledger = Ledger()
        self.p = p
        self.xs_grad, self.h0_grad, self.param_grad = needs
        self.params = [q for q, g in zip(p.params, self.param_grad) if g]
        self.counter = _SavedCounter(p.shared) if count else None
        self.first_pass = True
        self.reached = 0  # steps whose loss the first pass has added up
        self.loss: Tensor | None = None
        self.state_T: tuple[Tensor, ...] | None = None
        self.dparams: list[Tensor | None] = [None] * len(self.params)
        self.dxs: Tensor | None = None
        self.dloss: Tensor | None = None  # dL/dloss, given to the backward pass
        self.cuts: set[int] | None = None  # NOTE [recorded runs]

    def _resume(self, w: _Working) -> tuple[Tensor, ...]:
        if w.rng is not None:
            _rng_set(w.rng, self.p.devices)
        return w.state

    def _add_loss(self, t: int, loss: Tensor) -> None:
        if self.first_pass and t == self.reached:
            self.loss = loss.detach() if self.loss is None else self.loss + loss.detach()
            self.reached += 1

    def _arrive(self, n1: int, state: tuple[Tensor, ...]) -> None:
        if n1 == self.p.T and self.state_T is None:
            self.state_T = state

    def advance(self, w: _Working, n0: int, n1: int) -> _Working:
        p, state = self.p, self._resume(w)
        with torch.no_grad():
            for t in range(n0, n1):
                state = p.call(p.xs[t], state, self.first_pass)
                if self.first_pass and t == self.reached:
                    self._add_loss(t, p.loss(state, t))
        self._arrive(n1, state)
        return _Working(state)

    def record(self, w: _Working, n0: int, n1: int) -> _Working:
        # NOTE [recorded runs] Consecutive recorded steps stay one autograd graph, so a
        # Reverse over them is a few torch.autograd.grad calls, as fast as plain autograd;
        # the graph is cut (the step's input state made a fresh leaf) where a run starts, at
        # every boundary a Reverse stops at (`cuts`, from the whole schedule), so no
        # backward call ever reaches a step it must leave for later, and every PIECE_STEPS
        # steps (NOTE [pieces]). cuts=None cuts at every step.
        p, state, check = self.p, self._resume(w), self.first_pass
        chained: tuple[Tensor, ...] | None = None
        with torch.enable_grad(), (self.counter.hooks() if self.counter else nullcontext()):
            for t in range(n0, n1):
                x = _leaf(p.xs[t]) if self.xs_grad else p.xs[t].detach()
                if (chained is None or self.cuts is None or t in self.cuts
                        or (t - n0) % PIECE_STEPS == 0):
                    s_in: tuple[Tensor, ...] | None = tuple(_leaf(a) for a in state)
                    inp = s_in
                else:
                    s_in, inp = None, chained
                assert inp is not None  # a state where the graph is cut, the chained one else
                out = p.call(x, inp, check)
                loss = p.loss(out, t)
                self.ledger.keep(t, (s_in, x, out, loss),
                                 self.counter.take() if self.counter else 0)
                self._add_loss(t, loss)
                chained, state = out, out
        state = tuple(o.detach() for o in state)
        self._arrive(n1, state)
        return _Working(state)

    def reverse(self, n0: int, n1: int, dstate: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        led, t = self.ledger, n1
        while t > n0:  # one backward call per piece of a recorded run (NOTE [recorded runs])
            start = t - 1
            while led.residuals[start][0] is None:
                start -= 1
            assert start >= n0, "a Reverse stops inside a recorded run: cuts missed it"
            kept = [led.drop(i) for i in range(start, t)]
            dstate = self._reverse_run(start, kept, dstate, self.dloss)
            t = start
        return dstate

    def _reverse_run(self, n0: int, kept: list[tuple], dstate: tuple[Tensor, ...],
                     dloss: Tensor | None, retain: bool = False) -> tuple[Tensor, ...]:
        """Backpropagate through recorded steps n0 … n0 + len(kept) − 1, one graph whose
        first step's input is a leaf, from dL/dstate at its end and dL/dloss for each
        step's loss (None: their losses are not differentiated); dL/dstate_n0."""
        s_in, out = kept[0][0], kept[-1][2]
        outputs = [o for o in out if o.requires_grad]
        grads = [d for o, d in zip(out, dstate) if o.requires_grad]
        if dloss is not None:
            for _, _, _, loss in kept:
                if loss.requires_grad:
                    outputs.append(loss)
                    grads.append(dloss)
        want_s = [a for a in s_in if a.requires_grad]
        want_x = [k[1] for k in kept] if self.xs_grad else []
        inputs = [*want_s, *want_x, *self.params]
        if not outputs or not inputs:
            return tuple(torch.zeros_like(a) for a in s_in)
        g = torch.autograd.grad(outputs, inputs, grads, allow_unused=True, retain_graph=retain)
        it = iter(g[:len(want_s)])
        ds = tuple(_or_zeros(next(it), a) if a.requires_grad else torch.zeros_like(a) for a in s_in)
        if self.xs_grad:
            if self.dxs is None:
                self.dxs = torch.zeros_like(self.p.xs)
            for i, gx in enumerate(g[len(want_s):len(want_s) + len(want_x)]):
                if gx is not None:
                    self.dxs[n0 + i] += gx
        for i, gp in enumerate(g[len(want_s) + len(want_x):]):
            if gp is not None:
                self.dparams[i] = gp if self.dparams[i] is None else self.dparams[i] + gp
        return ds

    def copy(self, w: _Working) -> tuple[_Working, int]:
        nbytes = sum(a.numel() * a.element_size() for a in w.state)
        return _Working(w.state, _rng_get(self.p.devices)), nbytes


def _or_zeros(g: Tensor | None, like: Tensor) -> Tensor:
    return torch.zeros_like(like) if g is None else g


# --- the autograd function ----------------------------------------------------------------

# NOTE [two phases] A schedule is one forward-and-reverse programme. Its actions before the
# first Reverse run every step once, in order, from h0 (storing states and recording the
# last steps as they go): `_Scan.forward` walks them, adding up the loss of each step the
# first time it runs and keeping state_T. `_Scan.backward` walks the rest, starting with
# that first Reverse, from the adjoint dL/dstate_T it is given. So the forward steps in
# Stats are exactly the schedule's: full() runs T of them, as plain autograd does. The one
# traced step that measures the bytes for planning (`_trace`) is not among them.


class _Scan(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, run: "_Run", xs: Tensor, *tensors: Tensor) -> tuple[Tensor, ...]:
        return run.forward(ctx)

    @staticmethod
    def backward(ctx: Any, dloss: Tensor, *dstate: Tensor) -> tuple[Tensor | None, ...]:
        return ctx.run.backward(dloss, dstate)


class _Run:
    """One `scan` call with gradients: the executor and the rest of the schedule."""

    def __init__(self, p: _Problem, sizes: StepSizes, stats: Stats | None) -> None:
        self.p, self.sizes, self.stats = p, sizes, stats
        self.needs = (p.xs.requires_grad, any(a.requires_grad for a in p.h0),
                      [q.requires_grad for q in p.params])
        self.ex = _TorchExecutor(p, self.needs, count=stats is not None)
        self.rest: Iterator[Action] = iter(())
        self.h0 = _Working(tuple(a.detach() for a in p.h0))
        self.seconds = 0.0
        self.backward_done = False

    def forward(self, ctx: Any) -> tuple[Tensor, ...]:
        start = time.perf_counter()
        ctx.run = self
        p, ex = self.p, self.ex
        self.h0 = _Working(self.h0.state, _rng_get(p.devices))
        plan = tuple(p.strategy.schedule(p.T, **self.sizes.sizes()))  # type: ignore[attr-defined]
        ex.cuts = {a.n0 for a in plan if isinstance(a, Reverse)}
        first = next(i for i, a in enumerate(plan) if isinstance(a, Reverse))
        self.rest = iter(plan[first:])
        walk(plan[:first], ex, self.h0, None)
        ex.first_pass = False
        assert ex.loss is not None and ex.state_T is not None and ex.reached == p.T
        self.seconds += time.perf_counter() - start
        self._fill()
        # NOTE [no cycle] apply() gives the tensors forward returns this node as grad_fn,
        # and this run is reachable from the node (ctx.run): returning the executor's own
        # loss would make a reference cycle that keeps the run, and its gradient buffers,
        # alive until the cyclic garbage collector runs. A fresh alias breaks it.
        return (ex.loss.detach(), *(a.detach() for a in ex.state_T))

    def backward(self, dloss: Tensor, dstate: tuple[Tensor, ...]) -> tuple[Tensor | None, ...]:
        self._once()
        start = time.perf_counter()
        p, ex = self.p, self.ex
        ex.dloss = dloss
        outer = _rng_get(p.devices)
        try:
            dh0 = walk(self.rest, ex, self.h0, tuple(dstate))
        finally:
            _rng_set(outer, p.devices)
        self.rest = iter(())
        self.seconds += time.perf_counter() - start
        self._fill()
        return self._release(self._grads(dh0))

    def _release(self, grads: tuple[Tensor | None, ...]) -> tuple[Tensor | None, ...]:
        """Drop what the run held for its backward pass once it has given its gradients:
        the caller may keep the loss, and with it this run (ctx.run), long after."""
        ex = self.ex
        ex.dparams, ex.dxs, ex.loss, ex.state_T = [], None, None, None
        self.h0 = _Working(())
        return grads

    def _once(self) -> None:
        """The schedule's backward part runs once: refuse a second backward pass and
        higher-order gradients, which it cannot give."""
        if torch.is_grad_enabled():
            raise RuntimeError("scan: higher-order gradients (backward with create_graph=True) "
                               "are not supported; run the loop under plain autograd for them")
        if self.backward_done:
            raise RuntimeError("scan: backward through this scan already ran, and its schedule "
                               "freed what it held (retain_graph does not apply); call scan again")
        self.backward_done = True

    def _grads(self, dh0: tuple[Tensor, ...]) -> tuple[Tensor | None, ...]:
        p, ex = self.p, self.ex
        xs_grad, _, param_grad = self.needs
        dxs = (ex.dxs if ex.dxs is not None else torch.zeros_like(p.xs)) if xs_grad else None
        dh = tuple(d if a.requires_grad else None for d, a in zip(dh0, p.h0))
        dps = iter(ex.dparams)
        dparams = tuple((_or_zeros(next(dps), q) if g else None)
                        for q, g in zip(p.params, param_grad))
        return (None, dxs, *dh, *dparams)

    def _fill(self) -> None:
        if self.stats is None:
            return
        led, st = self.ex.ledger, self.stats
        st.peak_bytes = led.peak
        st.forward_steps, st.backward_steps = led.forward_steps, led.backward_steps
        st.peak_states, st.peak_residuals = led.peak_states, led.peak_residuals
        st.state_bytes, st.residual_bytes, st.link_bytes = (self.sizes.state_bytes,
                                                            self.sizes.residual_bytes, 0)
        st.seconds = self.seconds


def scan(step: Step, xs: Tensor, h0: Any, *, loss_fn: LossFn, ys: Tensor | None = None,
         strategy: Strategy | None = None, params: Iterable[Tensor] | None = None,
         stats: bool = False) -> tuple:
    """Run a recurrent step over xs and sum its per-step losses, backpropagating under a
    strategy: trades recomputed forward steps for memory, within a byte budget with
    ``bm.optimal(budget_bytes=...)``, with exact gradients (all but `truncated`).

    Args:
        step: ``step(x_t, state) -> state``, any callable or nn.Module (nn.LSTMCell,
            nn.GRUCell, nn.RNNCell, a stack of them, your own); the state is a tensor or
            a tuple of tensors and the step returns the same structure, shapes and dtypes.
        xs: (T, ...) inputs, x_t = xs[t]; gets a gradient if it requires one.
        h0: the initial state; gets gradients where its tensors require them.
        loss_fn: ``loss_fn(state_{t+1}, y_t) -> scalar tensor``, step t's loss, so outputs
            need not be kept; must not draw random numbers.
        ys: (T, ...) targets or None (then ``loss_fn(state, None)``); constants.
        strategy: any strategy of this library (default `bm.full()`).
        params: the tensors to differentiate besides xs and h0; default: the parameters
            of `step` and `loss_fn` where they are nn.Modules. A plain callable closing
            over tensors must name them here. Their ``.grad`` accumulates as with plain
            autograd.
        stats: also return a `bptt_memory.Stats`, filled in by the forward pass and
            completed by the backward pass: forward and backward steps exactly as the
            schedule's (the traced step that measures the bytes is not counted), and
            peak_bytes of stored states plus recorded steps' saved tensors, counted with
            saved-tensor hooks (NOTE [what a step holds]), which `cost` predicts. Off, the
            executor installs no hooks of its own.

    Returns:
        ``(loss, state_T)``, or ``(loss, state_T, stats)``. loss is the sum of the steps'
        losses. state_T takes part in autograd: a gradient reaching it from a later
        computation is backpropagated through the sequence too (not under `truncated`,
        which refuses it).

    Under ``torch.no_grad()``, or when nothing requires a gradient, scan only runs the
    steps forward and keeps nothing. A step that draws random numbers (dropout) sees the
    same draws when it is recomputed as the first time (NOTE [rng replay]).

    >>> import torch, bptt_memory as bm
    >>> torch.manual_seed(0) and None
    >>> cell = torch.nn.LSTMCell(3, 8).double()
    >>> xs, h0 = torch.randn(50, 2, 3, dtype=torch.float64), (torch.zeros(2, 8).double(),) * 2
    >>> loss, (h, c) = scan(cell, xs, h0, loss_fn=lambda s, y: s[0].square().sum(),
    ...                     strategy=bm.binomial(slots=3))
    >>> loss.backward()
    >>> cell.weight_hh.grad.shape
    torch.Size([32, 8])

    Warning:
        Recomputed steps must compute what they computed the first time: a step must
        not depend on hidden state that changes between calls (other than the random
        generators, which scan restores) nor modify its input state in place.
    """
    p = _Problem("scan", step, xs, h0, ys, loss_fn, strategy or Full(), params)
    needs_grad = torch.is_grad_enabled() and (
        xs.requires_grad or any(a.requires_grad for a in p.h0)
        or any(q.requires_grad for q in p.params))
    st = Stats() if stats else None
    if not needs_grad:
        return _forward_only(p, st)
    sizes = _trace(p)
    _check_budget(p, sizes)
    tensors = (*p.h0, *p.params)
    if isinstance(p.strategy, Truncated):
        out = _Truncated.apply(_TruncatedRun(p, sizes, st), xs, *tensors)
    else:
        out = _Scan.apply(_Run(p, sizes, st), xs, *tensors)
    loss, state_T = out[0], p.user_state(tuple(out[1:]))
    return (loss, state_T, st) if stats else (loss, state_T)


def _forward_only(p: _Problem, st: Stats | None) -> tuple:
    start = time.perf_counter()
    with torch.no_grad():
        state, loss = p.h0, None
        for t in range(p.T):
            state = p.call(p.xs[t], state)
            lt = p.loss(state, t)
            loss = lt if loss is None else loss + lt
    if st is None:
        return loss, p.user_state(state)
    st.forward_steps, st.seconds = p.T, time.perf_counter() - start
    return loss, p.user_state(state), st


# --- truncated ----------------------------------------------------------------------------

# NOTE [truncated in torch] TBPTT(k1, k2) as bm.truncated documents it (NOTE [tbptt window]
# in strategies.py): steps numbered 1 … T; at every multiple t of k1, and at T, the losses
# of the steps since the last update are backpropagated through steps (max(0, t − k2), t];
# the adjoint leaving a window that does not reach h0 is dropped. All updates are at the
# same parameters, so the gradient is the sum of the updates: computed during the forward
# pass on a ring of the last k2 recorded steps (each kept with its graph, so windows that
# overlap reuse it), scaled by dL/dloss in backward.


class _Truncated(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, run: "_TruncatedRun", xs: Tensor, *tensors: Tensor) -> tuple[Tensor, ...]:
        ctx.run = run
        ctx.set_materialize_grads(False)
        return run.forward()

    @staticmethod
    def backward(ctx: Any, dloss: Tensor | None,
                 *dstate: Tensor | None) -> tuple[Tensor | None, ...]:
        return ctx.run.backward(dloss, dstate)


class _TruncatedRun(_Run):
    """One `scan` call under `truncated`: NOTE [truncated in torch]."""

    def __init__(self, p: _Problem, sizes: StepSizes, stats: Stats | None) -> None:
        super().__init__(p, sizes, stats)
        self.dh0_sum: tuple[Tensor, ...] | None = None  # the windows that reach h0

    def forward(self, ctx: Any = None) -> tuple[Tensor, ...]:  # type: ignore[override]
        start = time.perf_counter()
        p, ex, s = self.p, self.ex, self.p.strategy
        assert isinstance(s, Truncated)
        led = ex.ledger
        state, last = self.h0.state, 0
        ex.dloss = None
        for t in range(1, p.T + 1):  # step t runs index t − 1
            if t - 1 - s.k2 >= 0:  # the step leaving the window, before the ring grows
                led.drop(t - 1 - s.k2)
            state = ex.record(_Working(state), t - 1, t).state
            led.forward_steps += 1
            if t % s.k1 == 0 or t == p.T:
                first = max(0, t - s.k2)
                dstate = tuple(torch.zeros_like(a) for a in state)
                one = torch.ones_like(ex.loss)  # type: ignore[arg-type]
                for i in range(t - 1, first - 1, -1):
                    dstate = ex._reverse_run(i, [led.residuals[i]], dstate,
                                             one if i >= last else None, retain=True)
                    led.backward_steps += 1
                if first == 0:
                    self.dh0_sum = dstate if self.dh0_sum is None else tuple(
                        a + b for a, b in zip(self.dh0_sum, dstate))
                last = t
        for i in sorted(led.residuals):
            led.drop(i)
        ex.first_pass = False
        self.seconds += time.perf_counter() - start
        self._fill()
        return (ex.loss.detach(), *(a.detach() for a in state))  # type: ignore[union-attr]

    def backward(self, dloss: Tensor | None,  # type: ignore[override]
                 dstate: tuple) -> tuple[Tensor | None, ...]:
        self._once()
        if any(d is not None and bool(d.ne(0).any()) for d in dstate):
            raise RuntimeError(
                f"scan(strategy={self.p.strategy.name}): a gradient reached state_T from outside "
                "scan; truncated backpropagation drops it by design. Use an exact strategy, or "
                "detach state_T before using it")
        p, ex = self.p, self.ex
        scale = (lambda g: None if g is None else g * dloss) if dloss is not None else (
            lambda g: None if g is None else torch.zeros_like(g))
        ex.dxs = scale(ex.dxs)
        ex.dparams = [scale(g) for g in ex.dparams]
        dh0 = self.dh0_sum or tuple(torch.zeros_like(a) for a in p.h0)
        self.dh0_sum = None
        return self._release(self._grads(tuple(scale(d) for d in dh0)))
