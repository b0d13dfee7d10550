"""Borrowing a caller's model without changing it.

Library code needs the model in eval mode with frozen parameters (synthesis optimises the
input, not the weights; MGI and ODIN need gradients with respect to activations and inputs
only). `frozen_eval` sets that up and gives the model back exactly as it came: every
module's training flag and every parameter's `requires_grad` are restored, and no
parameter's `.grad` is touched because no parameter requires a gradient inside.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


@contextmanager
def frozen_eval(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and `requires_grad=False` inside the block; the caller's settings restored after."""
    modes = [(m, m.training) for m in model.modules()]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for m, training in modes:
            m.training = training
        for p, requires_grad in flags:
            p.requires_grad_(requires_grad)
