"""The shared CIFAR-10 ResNet-20 checkpoints load with the right architecture and normalisation."""

import pytest
import torch
from omegaconf import OmegaConf

from c2ir.data import load_id, materialize
from c2ir.data.imageset import Normalizer
from c2ir.models import build_model, load_checkpoint
from c2ir.models.checkpoints import read_checkpoint
from c2ir.models.checkpoints import load_into
from conftest import needs_shared

MODEL = OmegaConf.create({"arch": "cifar_resnet", "depth": 20, "num_classes": 10, "in_channels": 3,
                          "name": "resnet20", "trust_checkpoint": False})
DATA = OmegaConf.create({"name": "cifar10-jpeg", "source": "shared", "archive": "cifar10-jpeg.tar.gz", "subdir": "cifar10",
                         "root": None, "num_classes": 10, "channels": 3, "image_size": 32, "seed": 0,
                         "test_split": "test", "max_test_samples": 1000})


@pytest.fixture(scope="module")
def jpeg_slice():
    return materialize(load_id(DATA, "test"))


def _accuracy(filename, data):
    from c2ir.data.shared import shared_model

    model = build_model(MODEL)
    load_checkpoint(model, MODEL, str(shared_model(filename)))
    norm = Normalizer([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    with torch.no_grad():
        pred = torch.cat([model.eval()(norm(data.images[s:s + 250])).argmax(1) for s in range(0, len(data), 250)])
    return (pred == data.labels).float().mean().item()


@needs_shared
def test_finetuned_resnet20_accuracy(jpeg_slice):
    assert len(jpeg_slice) == 1000
    assert _accuracy("cifar10jpeg-resnet20.pt", jpeg_slice) >= 0.85


@needs_shared
def test_original_resnet20_loads_exactly_and_is_accurate(jpeg_slice):
    from c2ir.data.shared import shared_model

    state = read_checkpoint(shared_model("cifar10-resnet20-12fca82f.th"))  # old-style pickle, `module.` prefix
    own = build_model(MODEL).state_dict()
    relevant = {k for k in own if not k.endswith("num_batches_tracked")}
    assert set(state) == relevant  # no missing or unexpected keys
    load_into(build_model(MODEL), state, "original", "resnet20")
    assert _accuracy("cifar10-resnet20-12fca82f.th", jpeg_slice) >= 0.78
