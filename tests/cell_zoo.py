"""Every cell kind and every vanilla activation, by name: what contract tests loop over."""

import bptt_memory as bm
from bptt_memory.cells import ACTIVATIONS

# name -> factory(n_in, n_hidden); built from the library's own activation table, so a
# new activation is tested everywhere without editing the tests.
CELLS = {
    **{f"vanilla-{a}": (lambda i, h, a=a: bm.vanilla(i, h, a)) for a in sorted(ACTIVATIONS)},
    "lstm": bm.lstm,
    "gru": bm.gru,
}
