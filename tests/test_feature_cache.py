"""One cached forward pass per dataset serves every layer set and IPM of a sweep (issue 13, section 3)."""

import torch

from c2ir.data import load_id
from c2ir.extraction import extract_features
from c2ir.models import build_model
from conftest import make_cfg


def _job(tmp_path, overrides):
    from c2ir.stages.job import cli_job

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
    return cli_job(make_cfg(tmp_path, ["ood=[gaussian_noise]", f"model.checkpoint={ck}", *overrides]))


def test_sliced_features_equal_a_direct_pass_over_the_subset(tmp_path):
    """layer_set=last with spatial vectors, read from a pass that captured every layer: the same tensors
    as a pass over `act3` alone, on the miss path and on the cache-hit path."""
    from c2ir.graph import resolve
    from c2ir.stages import features
    from c2ir.stages.job import normalizer
    from c2ir.stages.train import classifier, head

    job = _job(tmp_path, ["layer_set=last"])
    assert job.layers == ["act3"] and job.capture_layers == ["act1", "act2", "act3"]
    data = load_id(job.cfg.data, "test")
    direct = extract_features(classifier(job), data, normalizer(job), ["act3"], head(job), batch_size=job.batch_size,
                              spatial_grid=4)
    miss = resolve(features.FEATURES, job, features.Pass("id_test", 4))
    fresh = _job(tmp_path, ["layer_set=last"])       # a new job: the cache, not this process's memory
    fresh.memo[("dataset", "id_test")] = None        # reading the data set again would fail
    hit = resolve(features.FEATURES, fresh, features.Pass("id_test", 4))
    stored = miss.artifact.tensors("features.safetensors")
    assert {"layer/act1", "layer/act2", "spatial/act1"} <= set(stored)  # the capture holds every layer set
    assert hit.key == miss.key
    for got in (miss.value, hit.value):
        assert set(got) == set(direct)
        for k in direct:
            assert torch.equal(got[k], direct[k]), k
    # a run that does not need spatial vectors (but whose detectors may, in a sweep) reads the same artifact
    pooled = resolve(features.FEATURES, fresh, features.Pass("id_test", 0, True))
    assert pooled.key == miss.key
    assert not any(k.startswith("spatial/") for k in pooled.value) and torch.equal(pooled.value["layer/act3"],
                                                                                   direct["layer/act3"])


def test_layer_set_and_ipm_share_the_features_key_unless_capture_is_configured(tmp_path):
    from c2ir.graph import key_of
    from c2ir.stages import features

    def key(overrides, reuse=True):
        return key_of(features.FEATURES, _job(tmp_path, overrides), features.Pass("id_test", 0, reuse))

    base = key([])
    assert key(["layer_set=last"]) == base
    assert key(["ipm=wasserstein"]) == base
    assert key(["features.capture=configured", "layer_set=last"]) != key(["features.capture=configured"])
    assert key(["features.capture=configured"], reuse=True) == key(["features.capture=configured"], reuse=False)


def test_layer_set_and_ipm_sweep_reuses_one_pass_and_scores_match_a_configured_pass(tmp_path):
    """(default, mean_l2) then (last, wasserstein): one pass per dataset for both; the second run's scores
    equal those of a run whose pass captures only what it needs (`features.capture=configured`)."""
    from safetensors.torch import load_file

    from c2ir.graph import resolve
    from c2ir.stages.evaluate import EVALUATE

    tiny = ["synth.per_class=4", "synth.batch_size=40", "synth.iterations=3", "batch_size=200",
            "detectors=[energy,c2ir,nmd]", "data.max_test_samples=200", "ood.gaussian_noise.max_samples=200"]

    def run(overrides):
        art = resolve(EVALUATE, _job(tmp_path, [*tiny, *overrides]), ("energy", "c2ir", "nmd")).artifact
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
