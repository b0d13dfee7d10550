"""Adam for the one tensor a synthesis batch optimises (its images), without `torch.optim`.

Why not `torch.optim.Adam`: building any `torch.optim.Optimizer` imports `torch._dynamo` on first use,
about 1.7 s of CPU in a fresh process, more than the whole rest of the default synthesis on the digits
model (60 iterations of about 20 ms). The update is Adam's (Kingma & Ba, "Adam: A Method for Stochastic
Optimization", ICLR 2015, Algorithm 1, with the bias corrections applied to the step size and to the
square root of the second moment as in their Section 2), written in the operation order of torch's
single-tensor Adam, so the impressions are bit for bit those of `torch.optim.Adam`
(tests/test_synth_options.py checks both).
"""

from __future__ import annotations

import torch


class TensorAdam:
    """Adam on `x` (a leaf tensor that requires grad): `step(lr)` applies one update from `x.grad`;
    the learning rate is passed per step (the synthesis schedules set it every iteration)."""

    def __init__(self, x: torch.Tensor, betas: tuple[float, float], eps: float = 1e-8):
        self.x = x
        self.beta1, self.beta2 = float(betas[0]), float(betas[1])
        self.eps = float(eps)
        self.m = torch.zeros_like(x, memory_format=torch.preserve_format)  # first moment
        self.v = torch.zeros_like(x, memory_format=torch.preserve_format)  # second (uncentred) moment
        self.steps = 0

    @torch.no_grad()
    def step(self, lr: float) -> None:
        g = self.x.grad
        if g is None:
            raise ValueError("TensorAdam.step: x has no gradient (call backward() first)")
        self.steps += 1
        self.m.lerp_(g, 1 - self.beta1)
        self.v.mul_(self.beta2).addcmul_(g, g, value=1 - self.beta2)
        step = float(self.steps)
        correction1 = 1 - self.beta1 ** step
        correction2_sqrt = (1 - self.beta2 ** step) ** 0.5
        denom = (self.v.sqrt() / correction2_sqrt).add_(self.eps)
        self.x.addcdiv_(self.m, denom, value=-(lr / correction1))

    def zero_grad(self) -> None:
        self.x.grad = None
