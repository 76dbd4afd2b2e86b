"""Collection for the whole repository (tests/conftest.py holds the test fixtures).

bptt_memory/_fused.py imports numba, the optional `fast` extra; without it, its doctests are
not collected, as tests/test_fused.py skips (NOTE [fused float32 LSTM] in bptt_memory/cells.py).
Likewise bptt_memory/torch.py imports torch, the optional `compare` extra.
"""

import importlib.util

collect_ignore = [] if importlib.util.find_spec("numba") else ["bptt_memory/_fused.py"]
if not importlib.util.find_spec("torch"):
    collect_ignore.append("bptt_memory/torch.py")
