"""Whether the code runs under a tracer or compiler: the one test the networks use to take their traceable form
of a step whose eager form depends on data (a loop over masks, a scale computed in Python)."""

import torch


def exporting() -> bool:
    """Whether the code runs under a tracer or compiler, where a branch on data (a count) would be frozen."""
    return torch.jit.is_tracing() or torch.compiler.is_exporting() or torch.compiler.is_compiling()
