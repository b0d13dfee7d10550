"""One cached forward pass per dataset serves every layer set and IPM of a sweep (issue 13, section 3)."""

import torch

from c2ir.data import load_id
from c2ir.extraction import extract_features
from c2ir.models import build_model
from conftest import make_cfg


def _ctx(tmp_path, overrides):
    from c2ir.stages.common import RunContext

    cfg = make_cfg(tmp_path, ["ood=[gaussian_noise]"])
    ck = tmp_path / "ck.pt"
    if not ck.exists():
        torch.manual_seed(0)
        model = build_model(cfg.model)
        for m in model.modules():  # non-trivial BN statistics, so every layer's features differ
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
        torch.save(model.state_dict(), ck)
    return RunContext(make_cfg(tmp_path, ["ood=[gaussian_noise]", f"model.checkpoint={ck}", *overrides]))


def test_sliced_features_equal_a_direct_pass_over_the_subset(tmp_path):
    """layer_set=last with spatial vectors, read from a pass that captured every layer: the same tensors
    as a pass over `act3` alone, on the miss path and on the cache-hit path."""
    from c2ir.stages import features

    ctx = _ctx(tmp_path, ["layer_set=last"])
    assert ctx.layers == ["act3"] and ctx.capture_layers == ["act1", "act2", "act3"]
    data = load_id(ctx.cfg.data, "test")
    direct = extract_features(ctx.model, data, ctx.normalizer, ["act3"], ctx.head, batch_size=ctx.batch_size,
                              spatial_grid=4)
    art, miss = features.ensure(ctx, "test", ctx.data_spec("test"), lambda: data, spatial_grid=4)
    _, hit = features.ensure(ctx, "test", ctx.data_spec("test"), lambda: data, spatial_grid=4)
    stored = art.tensors("features.safetensors")
    assert {"layer/act1", "layer/act2", "spatial/act1"} <= set(stored)  # the capture holds every layer set
    for got in (miss, hit):
        assert set(got) == set(direct)
        for k in direct:
            assert torch.equal(got[k], direct[k]), k
    # a run that does not need spatial vectors (but whose detectors may, in a sweep) reads the same artifact
    art2, pooled = features.ensure(ctx, "test", ctx.data_spec("test"), lambda: 1 / 0, reuse_spatial=True)
    assert art2.key == art.key
    assert not any(k.startswith("spatial/") for k in pooled) and torch.equal(pooled["layer/act3"], direct["layer/act3"])


def test_layer_set_and_ipm_share_the_features_key_unless_capture_is_configured(tmp_path):
    from c2ir.stages import features

    def key(overrides, reuse=True):
        ctx = _ctx(tmp_path, overrides)
        return features.key(ctx, ctx.data_spec("test"), 0, reuse)

    base = key([])
    assert key(["layer_set=last"]) == base
    assert key(["ipm=wasserstein"]) == base
    assert key(["features.capture=configured", "layer_set=last"]) != key(["features.capture=configured"])
    assert key(["features.capture=configured"], reuse=True) == key(["features.capture=configured"], reuse=False)


def test_layer_set_and_ipm_sweep_reuses_one_pass_and_scores_match_a_configured_pass(tmp_path):
    """(default, mean_l2) then (last, wasserstein): one pass per dataset for both; the second run's scores
    equal those of a run whose pass captures only what it needs (`features.capture=configured`)."""
    from safetensors.torch import load_file

    from c2ir.stages import evaluate

    tiny = ["synth.per_class=4", "synth.batch_size=40", "synth.iterations=3", "batch_size=200",
            "detectors=[energy,c2ir,nmd]", "data.max_test_samples=200", "ood.gaussian_noise.max_samples=200"]

    def run(overrides):
        art = evaluate.ensure(_ctx(tmp_path, [*tiny, *overrides]))
        return load_file(str(art.path / "scores.safetensors"))

    def passes():
        return len([d for d in (tmp_path / "cache" / "features").iterdir() if not d.name.startswith(".")])

    run(["layer_set=default", "ipm=mean_l2"])
    assert passes() == 2  # ID test + gaussian_noise
    swept = run(["layer_set=last", "ipm=wasserstein"])
    assert passes() == 2
    own = run(["layer_set=last", "ipm=wasserstein", "features.capture=configured"])
    assert passes() == 4  # its own, smaller passes
    assert swept.keys() == own.keys()
    for k in swept:
        assert torch.equal(swept[k], own[k]), k
