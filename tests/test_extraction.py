"""extraction.py: layer selection, hook lifetime, and the rank merge of sharded feature passes."""

import pytest
import torch
from torch import nn

from c2ir.distributed import merge_strided_batches
from c2ir.errors import C2IRError
from c2ir.extraction import ForwardHooks, bn_layers, extract_features, select_layers


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4, track_running_stats=False),
                                       nn.ReLU()),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))


def test_select_layers_is_in_registration_order_without_duplicates():
    model = _net()
    assert select_layers(model, [r"3\.\d", r"2"]) == ["2", "3.0", "3.1", "3.2"]  # model order, not pattern order
    assert select_layers(model, [r"\d", r"3"]) == ["0", "1", "2", "3", "4", "5", "6"]  # each name once
    assert select_layers(model, [r"3"]) == ["3"]  # a full match: "3" does not select "3.0"


def test_select_layers_names_a_pattern_that_matches_nothing():
    with pytest.raises(C2IRError, match=r"layer pattern 'layer9' matches no module.*top-level modules: 0, 1, 2"):
        select_layers(_net(), ["2", "layer9"])


def test_bn_layers_only_those_with_running_statistics():
    assert bn_layers(_net()) == ["1"]


def test_forward_hooks_are_removed_even_when_the_block_raises():
    model, seen = _net(), []
    with pytest.raises(RuntimeError):
        with ForwardHooks([(model[2], lambda _m, _i, out: seen.append(out.shape))]):
            model(torch.rand(2, 1, 5, 5))
            raise RuntimeError("boom")
    model(torch.rand(2, 1, 5, 5))
    assert seen == [torch.Size([2, 4, 5, 5])]  # one call inside the block, none after it
    assert not model[2]._forward_hooks


@pytest.mark.parametrize("n,batch_size,world", [(23, 4, 3), (8, 4, 2), (5, 2, 4), (3, 8, 2)])
def test_sharded_passes_merge_back_into_the_single_pass(n, batch_size, world):
    model, images = _net(), torch.randint(0, 256, (n, 1, 5, 5), dtype=torch.uint8)
    args = dict(normalizer=lambda x: x.float() / 255, layers=["2", "3"], head=model[6], batch_size=batch_size,
                spatial_grid=2)
    whole = extract_features(model, images, **args)
    parts = [extract_features(model, images, shard=(r, world), **args) for r in range(world)]
    merged = merge_strided_batches(parts, n, batch_size)
    assert merged.keys() == whole.keys()
    for k in whole:
        assert torch.equal(merged[k], whole[k]), k
