"""c2ir.sgd.NesterovSGD: torch.optim.SGD's update bit for bit, torch's state layout, and no torch._dynamo."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

from c2ir.sgd import NesterovSGD


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 6 * 6, 4))


def _steps(model: nn.Module, opt, n: int, start: int = 0) -> None:
    g = torch.Generator().manual_seed(start)
    for i in range(start, start + n):
        x, y = torch.randn(5, 1, 8, 8, generator=g), torch.randint(0, 4, (5,), generator=g)
        opt.param_groups[0]["lr"] = 0.2 / (1 + i)   # changed every step, as the training schedule does
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


def test_nesterov_sgd_is_torch_sgd_bit_for_bit_with_a_frozen_parameter():
    ours, ref = _net(), _net()
    for m in (ours, ref):
        m[0].bias.requires_grad_(False)   # no gradient: skipped, no momentum state (torch's rule)
    before = ours[4].weight.detach().clone()
    a = NesterovSGD(ours.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    b = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    _steps(ours, a, 12)
    _steps(ref, b, 12)
    assert not torch.equal(ours[4].weight, before)   # it trained
    for p, q in zip(ours.parameters(), ref.parameters()):
        assert torch.equal(p, q)
    sa, sb = a.state_dict()["state"], b.state_dict()["state"]
    assert sa.keys() == sb.keys() and 1 not in sa   # index 1: the frozen bias
    assert all(torch.equal(sa[i]["momentum_buffer"], sb[i]["momentum_buffer"]) for i in sa)


def test_resume_from_torch_state_continues_identically():
    """A resume file written with torch.optim.SGD's state (earlier versions) continues bit for bit."""
    ours, ref = _net(), _net()
    b = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    _steps(ref, b, 4)
    ours.load_state_dict(ref.state_dict())
    a = NesterovSGD(ours.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    a.load_state_dict(b.state_dict())
    _steps(ours, a, 5, start=4)
    _steps(ref, b, 5, start=4)
    assert all(torch.equal(p, q) for p, q in zip(ours.parameters(), ref.parameters()))


def test_bad_state_is_refused():
    a = NesterovSGD(_net().parameters(), lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match="shape"):
        a.load_state_dict({"state": {0: {"momentum_buffer": torch.zeros(2)}}})
    with pytest.raises(ValueError, match="parameter 99"):
        a.load_state_dict({"state": {99: {"momentum_buffer": torch.zeros(2)}}})
    with pytest.raises(ValueError, match="momentum"):
        NesterovSGD(_net().parameters(), lr=0.1, momentum=0.0)


def test_cpu_training_does_not_import_torch_dynamo(tmp_path):
    """The point of the module: a CPU training (the embedded default's) never imports torch._dynamo."""
    code = f"""
import sys, torch
from pathlib import Path
from c2ir.data.imageset import ImageSet, Normalizer
from c2ir.models.small_cnn import SmallCNN
from c2ir.training import TrainConfig, train_classifier
g = torch.Generator().manual_seed(0)
data = ImageSet("t", torch.randint(0, 255, (16, 1, 8, 8), generator=g, dtype=torch.uint8), torch.arange(16) % 4)
train_classifier(SmallCNN(1, 4, 4), data, data, Normalizer([0.5], [0.25]), TrainConfig(epochs=1, batch_size=8),
                 Path({str(tmp_path)!r}))
print("dynamo" if "torch._dynamo" in sys.modules else "no dynamo")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "no dynamo"


def test_the_training_optimizer_by_device():
    """CPU (str or torch.device): NesterovSGD; any other device type: torch.optim.SGD (parameters may stay on
    CPU here: the choice reads the device only, so no accelerator is needed)."""
    from c2ir.schema import TrainConfig
    from c2ir.training import _optimizer

    model, tc = _net(), TrainConfig()
    assert isinstance(_optimizer(model, tc, "cpu"), NesterovSGD)
    assert isinstance(_optimizer(model, tc, torch.device("cpu")), NesterovSGD)
    for device in ("cuda", torch.device("cuda", 0), "mps"):
        opt = _optimizer(model, tc, device)
        assert isinstance(opt, torch.optim.SGD) and opt.defaults["nesterov"] and opt.defaults["momentum"] == 0.9
