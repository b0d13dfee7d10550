"""SGD with Nesterov momentum and weight decay for the training loop on CPU, without `torch.optim`.

Why not `torch.optim.SGD` there: building or stepping any `torch.optim.Optimizer` imports `torch._dynamo`,
about 2 s of CPU in a fresh process on a 2-core machine, which is more than the embedded default's whole
20-epoch training and about 8% of a cold `c2ir run` (docs/BENCHMARKS.md section 23). The update is
Sutskever et al.'s Nesterov momentum ("On the importance of initialization and momentum in deep
learning", ICML 2013, eq. 3-4, in the reformulation of Bengio et al. 2013 that torch uses: the step
is g + mu * b with b = mu * b + g, g including weight decay), written in the operation order of torch's
single-tensor SGD (`torch.optim.sgd._single_tensor_sgd`, the CPU default), so a trained model is bit for bit
`torch.optim.SGD`'s (tests/test_training_sgd.py checks both, resume included). `state_dict()["state"]` has
torch's layout (the momentum buffers by parameter index, all an epoch's resume file holds), so a resume file is
the same either way; its `param_groups` hold only `lr` and `params`. `c2ir.adam` does the same for the
synthesis.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


class NesterovSGD:
    """`torch.optim.SGD(params, lr, momentum, nesterov=True, weight_decay)`'s surface as the training loop
    uses it: `param_groups[0]["lr"]` (set per step by the schedule), `zero_grad`, `step`, `state_dict`,
    `load_state_dict`. One parameter group; dampening 0."""

    def __init__(self, params: Iterable[torch.nn.Parameter], lr: float, momentum: float, weight_decay: float = 0.0):
        self.params = list(params)
        if not 0.0 < momentum < 1.0:   # Nesterov needs a momentum (torch refuses 0 as well)
            raise ValueError(f"NesterovSGD: momentum must be in (0, 1), got {momentum}")
        self.momentum, self.weight_decay = float(momentum), float(weight_decay)
        self.param_groups = [{"lr": float(lr)}]
        self.buffers: list[torch.Tensor | None] = [None] * len(self.params)

    @torch.no_grad()
    def step(self) -> None:
        lr = float(self.param_groups[0]["lr"])
        for i, p in enumerate(self.params):
            if p.grad is None:   # as torch: a parameter without a gradient is skipped and keeps no state
                continue
            grad = p.grad
            if self.weight_decay != 0:
                grad = grad.add(p, alpha=self.weight_decay)
            buf = self.buffers[i]
            if buf is None:
                buf = grad.detach().clone()
                self.buffers[i] = buf
            else:
                buf.mul_(self.momentum).add_(grad)
            p.add_(grad.add(buf, alpha=self.momentum), alpha=-lr)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.detach_().zero_()

    def state_dict(self) -> dict:
        """torch's layout: `state[i]["momentum_buffer"]` for every parameter index that has one."""
        return {"state": {i: {"momentum_buffer": b} for i, b in enumerate(self.buffers) if b is not None},
                "param_groups": [{**self.param_groups[0], "params": list(range(len(self.params)))}]}

    def load_state_dict(self, state_dict: dict) -> None:
        self.buffers = [None] * len(self.params)
        for i, st in state_dict["state"].items():
            i = int(i)
            if not 0 <= i < len(self.params):
                raise ValueError(f"NesterovSGD: state for parameter {i}, but there are {len(self.params)}")
            buf = st.get("momentum_buffer")
            if buf is not None:
                p = self.params[i]
                if buf.shape != p.shape:
                    raise ValueError(f"NesterovSGD: momentum of parameter {i} has shape {tuple(buf.shape)}, "
                                     f"the parameter {tuple(p.shape)}")
                self.buffers[i] = buf.detach().to(device=p.device, dtype=p.dtype).clone()
