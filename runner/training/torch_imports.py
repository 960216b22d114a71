"""torch._dynamo (torch.compile's machinery), imported at a moment of gpujob's choosing.

gpujob's own code never imports it without train.compile, but torch does, on the first call of
any function it wraps in `torch._compile._disable_dynamo`: `Optimizer.add_param_group` (so
building any optimizer), and the dispatch of the meta-device forward that counts a step's FLOPs.
That import takes seconds (6.4 s on a busy 2-core machine, issue 29), and where it fell, the
start-up diagnosis blamed "building the model" for an nn.Linear(1, 1). Imported here, timed, it
is a start-up phase of its own in timing.json (`phases.dynamo_imported_s`).
"""

from __future__ import annotations

import time


def import_dynamo(started: float) -> float:
    """Import torch._dynamo now; returns when it was done, in seconds since `started` (perf_counter)."""
    import torch._dynamo  # noqa: F401

    return time.perf_counter() - started
