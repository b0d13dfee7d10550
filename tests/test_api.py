"""The public API (c2ir.C2IR, c2ir.detector): same scores as the CLI, exact save/load, the model untouched."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import c2ir
from c2ir.detectors import build_detector, detector_config, detector_types
from c2ir.errors import C2IRError, NotFittedError
from c2ir.extraction import auto_layers
from c2ir.impressions import SynthConfig
from c2ir.models.small_cnn import SmallCNN
from c2ir.threshold import shifted_level
from conftest import needs_shared

TINY_SYNTH = {"per_class": 3, "batch_size": 30, "iterations": 8, "jitter": 1, "flip": False}
DIGITS = {"num_classes": 10, "input_shape": (1, 8, 8), "mean": [0.3], "std": [0.4]}


def _model() -> nn.Module:
    torch.manual_seed(0)
    m = SmallCNN(1, 10, 4)
    with torch.no_grad():  # non-trivial running statistics, as a trained model has
        for bn in (m.bn1, m.bn2, m.bn3):
            bn.running_mean.uniform_(0.0, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
    return m


def _loader(n: int = 60, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 8, 8, generator=g)
    return [(x[i:i + 20], torch.arange(i, i + 20) % 10) for i in range(0, n, 20)]


PARITY = ["c2ir", "energy", "mahalanobis_imp", "odin"]


def test_the_api_and_the_cli_fit_the_same_detectors(cfg_factory, tmp_path):
    """The CLI's config (fast synthesis, short training) and the API with its defaults on the same model: the
    same scores on the ID test set, the same thresholds, and the same saved files (`c2ir score`'s artifact is
    what `save` writes, and it loads with c2ir.load_detector)."""
    from c2ir.data import load_id, materialize
    from c2ir.graph import resolve
    from c2ir.stages.evaluate import EVALUATE
    from c2ir.stages.fit import FITTED, FitRequest, ipm_overrides
    from c2ir.stages.job import cli_job, normalizer
    from c2ir.stages.train import classifier

    cfg = cfg_factory(["synth=fast", "train.epochs=2", "data.max_test_samples=300", f"detectors=[{','.join(PARITY)}]",
                       "ood=[gaussian_noise]"])
    job = cli_job(cfg)
    cli_scores = resolve(EVALUATE, job, tuple(PARITY)).artifact.tensors("scores.safetensors")
    model = classifier(job)
    test = materialize(load_id(cfg.data, "test")).images
    for name in PARITY:
        cli_fit = resolve(FITTED, job, FitRequest.of(name, dict(cfg.detectors[name]), ipm_overrides(cfg), 0.95))
        api = c2ir.detector(name, model, num_classes=10, input_shape=(1, 8, 8), mean=[0.3], std=[0.4], head="fc",
                            layers=job.layer_patterns, synth=SynthConfig.from_cfg(cfg.synth)).fit()
        assert api.threshold == cli_fit.value.threshold and api.threshold_source == cli_fit.value.threshold_source, name
        api.save(tmp_path / name)
        for f in ("detector.json", "state.safetensors"):
            assert (tmp_path / name / f).read_bytes() == cli_fit.artifact.file(f).read_bytes(), (name, f)
        loaded = c2ir.load_detector(cli_fit.artifact.path, model)
        if name == "odin":  # scores pixels, not model inputs: compared on the uint8 images the CLI scored
            got = api.detector.score_images(model, normalizer(job), test)
        else:
            x = normalizer(job)(test)
            got = api.score(x).numpy()
            assert torch.equal(loaded.score(x), api.score(x)), name
        np.testing.assert_allclose(got, cli_scores[f"{name}/digits-test"].numpy(), rtol=1e-9, atol=1e-9, err_msg=name)


def test_another_detector_fits_on_the_same_impressions_without_a_second_synthesis(monkeypatch):
    from c2ir.stages import synthesize

    model = _model()
    det = c2ir.C2IR(model, **DIGITS, synth=TINY_SYNTH).fit()
    assert det.impressions.images.shape == (30, 1, 8, 8) and det.class_stats.layers == det.layers
    assert len(det.layer_weights) == len(det.layers) and set(det.impression_features) >= {"logits", "layer/act1"}

    def no_synthesis(*args, **kwargs):
        raise AssertionError("synthesised again")

    monkeypatch.setattr(synthesize, "synthesize_batch", no_synthesis)
    vim = c2ir.detector("vim_imp", model, **DIGITS, synth=TINY_SYNTH).fit(impressions=det.impressions)
    assert torch.equal(vim.impressions.images, det.impressions.images) and vim.threshold is not None
    shared = c2ir.detector("knn_imp", model, **DIGITS, synth=TINY_SYNTH, store=det.store).fit()   # one store: a hit
    assert torch.equal(shared.impressions.images, det.impressions.images)


def test_fit_score_predict_save_load_exact(tmp_path):
    model = _model()
    det = c2ir.C2IR(model, **DIGITS, synth=TINY_SYNTH).fit()
    x = torch.randn(9, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    s = det.score(x)
    assert s.shape == (9,) and s.dtype == torch.float64 and torch.isfinite(s).all()
    assert torch.equal(det.predict(x), s > det.threshold)
    det.save(tmp_path / "fitted")
    assert sorted(p.name for p in (tmp_path / "fitted").iterdir()) == ["detector.json", "state.safetensors"]
    det2 = c2ir.C2IR.load(tmp_path / "fitted", model)
    assert torch.equal(det2.score(x), s)
    assert det2.threshold == det.threshold and det2.layers == det.layers


def test_data_free_threshold_keeps_tpr_of_its_reference_and_calibrate_keeps_tpr_of_id():
    model = _model()
    det = c2ir.C2IR(model, **DIGITS, synth={**TINY_SYNTH, "per_class": 4, "batch_size": 40}, tpr=0.9).fit()
    assert det.threshold_source == "pseudo_real_shifted"         # 4 per class: two folds of 2
    reference = det.detector.reference                          # softened held-back impressions, cross-fitted
    assert len(reference) == 40 and det.threshold_info.reference == 40
    level = shifted_level(0.9, det.detector.reference_shift_used)   # the quantile a real 90% is taken to sit at
    assert det.threshold_info.level == pytest.approx(level) and level < 0.9
    assert float((reference <= det.threshold).mean()) == pytest.approx(level, abs=1 / 40 + 1e-9)
    loader = _loader(200)
    det.calibrate(loader, tpr=0.8)
    flagged = torch.cat([det.predict(x) for x, _ in loader]).float().mean().item()
    assert flagged == pytest.approx(0.2, abs=0.01)


def test_caller_model_is_returned_unchanged():
    model = _model().to(memory_format=torch.channels_last)
    model.train()
    model.bn2.eval()
    model.conv1.weight.requires_grad_(False)
    model.fc.weight.grad = torch.ones_like(model.fc.weight)
    modes = [m.training for m in model.modules()]
    flags = [p.requires_grad for p in model.parameters()]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    det = c2ir.C2IR(model, **DIGITS, synth=TINY_SYNTH).fit()
    det.score(torch.randn(4, 1, 8, 8))
    c2ir.detector("odin", model, mean=[0.3], std=[0.4]).fit().score(torch.randn(4, 1, 8, 8))
    assert [m.training for m in model.modules()] == modes
    assert [p.requires_grad for p in model.parameters()] == flags
    assert torch.equal(model.fc.weight.grad, torch.ones_like(model.fc.weight))
    assert all(p.grad is None for n, p in model.named_parameters() if n != "fc.weight")
    assert model.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    for k, v in model.state_dict().items():  # BN running statistics included: no train-mode forward
        assert torch.equal(v, state[k]), k


def test_every_zoo_detector_through_the_api(tmp_path):
    model = _model()
    x = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    names = c2ir.detector_names()
    assert {build_detector(n, detector_config(n)).__class__ for n in names} == set(detector_types().values())
    tiny = {**TINY_SYNTH, "per_class": 1, "batch_size": 10, "iterations": 3}
    for name in names:
        det = c2ir.detector(name, model, **DIGITS, synth=tiny).fit(_loader())
        s = det.score(x)
        assert s.shape == (6,) and torch.isfinite(s).all(), name
        assert det.predict(x).dtype == torch.bool, name
        det.save(tmp_path / name)
        assert torch.equal(c2ir.load_detector(tmp_path / name, model).score(x), s), name


def test_detectors_without_synthesis_inputs():
    model = _model()
    x = torch.randn(5, 1, 8, 8)
    energy = c2ir.detector("energy", model)
    assert torch.equal(energy.fit().score(x), -torch.logsumexp(model.eval()(x).double(), 1))
    with pytest.raises(NotFittedError, match="calibrate"):
        energy.predict(x)
    maha = c2ir.detector("mahalanobis", model).fit(_loader())
    assert maha.threshold is not None and maha.threshold_source == "fit_data"
    with pytest.raises(C2IRError, match="full-access.*fit\\(id_loader\\)"):
        c2ir.detector("knn", model).fit()
    with pytest.raises(C2IRError, match="num_classes, input_shape, mean, std"):
        c2ir.detector("knn_imp", model).fit()
    with pytest.raises(C2IRError, match=r"tpr=1.5 is not valid: it must be a number > 0 and < 1"):
        c2ir.detector("energy", model, tpr=1.5)
    with pytest.raises(C2IRError, match=r"mgi='foo' is not valid: it must be one of grad_abs"):
        c2ir.detector("c2ir", model, mgi="foo")


def test_bad_arguments_are_one_clear_error():
    model = _model()
    with pytest.raises(C2IRError, match="unknown parameter.*temperatur.*valid: fit_on, temperature"):
        c2ir.detector("energy", model, temperatur=2.0)
    with pytest.raises(C2IRError, match="unknown detector 'energi'.*energy"):
        c2ir.detector("energi", model)
    with pytest.raises(C2IRError, match=r"unknown config key synth.iteration \(did you mean iterations\?\); valid keys of synth: per_class"):
        c2ir.C2IR(model, **DIGITS, synth={"iteration": 3})
    with pytest.raises(C2IRError, match="predicts 10 classes"):
        c2ir.C2IR(model, 7, (1, 8, 8), [0.3], [0.4])
    plain = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 10))
    with pytest.raises(C2IRError, match="C2IR needs a model with BatchNorm layers.*Sequential has none"):
        c2ir.C2IR(plain, **DIGITS)
    assert c2ir.detector("energy", plain).fit().score(torch.randn(3, 1, 8, 8)).shape == (3,)  # needs no BN


def test_unknown_detector_parameter_in_config_is_an_error():
    with pytest.raises(C2IRError, match=r"unknown parameter\(s\) normalise; valid: fit_on, ipm"):
        build_detector("c2ir", {"type": "c2ir", "normalise": "none"})


def test_a_number_or_flag_of_the_wrong_type_names_the_parameter():
    """A string or a bool where a number belongs, or a non-bool flag, is one line naming the parameter (float(True)
    would otherwise run as 1.0, bool('no') as True); null where the detector allows it passes."""
    for key, value, want in (("blurred_tolerance", "abc", "a number or null"), ("blurred_tolerance", True, "a number or null"),
                             ("logit_weight", "2", "a number"), ("select_ipm", "no", "true or false")):
        with pytest.raises(C2IRError, match=f"detector c2ir: {key}=.* is not valid: it must be {want}; "
                                            f"its default is"):
            build_detector("c2ir", {"type": "c2ir", key: value})
    with pytest.raises(C2IRError, match=r"detector c2ir_paper \(c2ir\): logit_weight='2' .*API: c2ir.detector\('c2ir_paper'"):
        build_detector("c2ir_paper", {"type": "c2ir", "logit_weight": "2"})   # a config name that is not its type
    assert build_detector("c2ir", {"type": "c2ir", "blurred_tolerance": None, "logit_weight": 2}).blurred_tolerance is None
    with pytest.raises(C2IRError, match="temperature='hot' is not valid: it must be a number"):
        build_detector("energy", {"type": "energy", "temperature": "hot"})
    with pytest.raises(C2IRError, match="k=5.7 is not valid: it must be a whole number"):
        build_detector("knn", {"type": "knn", "k": 5.7})
    assert build_detector("knn", {"type": "knn", "k": np.int64(5)}).k == 5   # numpy scalars (np.arange sweeps) pass
    assert build_detector("energy", {"type": "energy", "temperature": np.float32(2)}).temperature == 2.0


def test_detector_yaml_only_overrides_the_typed_defaults():
    for name in c2ir.detector_names():
        cfg = detector_config(name)
        defaults = detector_types()[cfg.pop("type")].defaults()
        for key, value in cfg.items():
            assert key in defaults and value != defaults[key], (name, key)


def test_automatic_layers():
    from c2ir.models.cifar_resnet import CifarResNet

    assert auto_layers(CifarResNet(20)) == ["layer2.0", "layer2.1", "layer2.2", "layer3.0"]  # the measured best set
    assert auto_layers(SmallCNN(1, 10, 4)) == ["act1", "act2", "act3"]
    with pytest.raises(C2IRError, match="no BatchNorm"):
        auto_layers(nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU()))


def test_data_free_threshold_is_reported_as_such(caplog):
    caplog.set_level("INFO")
    det = c2ir.C2IR(_model(), **DIGITS, synth=TINY_SYNTH).fit()   # 3 per class: too few for the folds
    assert det.threshold_source == "pseudo_real" and np.isfinite(det.threshold)
    text = det.threshold_info.describe()
    assert "set by rule pseudo_real: 95% of 30 softened impressions below it; expected ID TPR 81-99%" in text
    assert "calibrate(id_loader) is exact" in text and text in caplog.text
    energy = c2ir.detector("energy", _model(), **DIGITS, synth=TINY_SYNTH).fit()
    assert energy.threshold_source == "pseudo_real"
    energy.calibrate(_loader())
    assert energy.threshold_source == "calibration" and "calibrate" not in energy.threshold_info.describe()


@needs_shared
def test_the_issue_snippet_on_the_shared_resnet20(tmp_path):
    """The documented snippet, with the model's real mean/std (configs/model/base/cifar_resnet.yaml), on the shared fine-tuned ResNet-20 (tiny synthesis)."""
    from omegaconf import OmegaConf

    from c2ir.data.shared import shared_model
    from c2ir.models import build_model, load_checkpoint

    spec = OmegaConf.create({"arch": "cifar_resnet", "depth": 20, "num_classes": 10, "in_channels": 3,
                             "name": "resnet20", "trust_checkpoint": False})
    model = build_model(spec)
    load_checkpoint(model, spec, str(shared_model("cifar10jpeg-resnet20.pt")))
    model.eval()
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    det = c2ir.C2IR(model, num_classes=10, input_shape=(3, 32, 32), mean=(0.485, 0.456, 0.406),  # its training
                    std=(0.229, 0.224, 0.225), synth={"per_class": 1, "batch_size": 10, "iterations": 2})  # normalisation
    assert det.layers == ["layer2.0", "layer2.1", "layer2.2", "layer3.0"]
    det.fit()
    s = det.score(x)
    assert s.shape == (4,) and det.predict(x).shape == (4,)
    det.save(tmp_path / "fitted")
    assert torch.equal(c2ir.C2IR.load(tmp_path / "fitted", model).score(x), s)
    e = c2ir.detector("energy", model)
    assert e.fit().score(x).shape == (4,)
    m = c2ir.detector("mahalanobis", model).fit([(torch.randn(40, 3, 32, 32), torch.arange(40) % 10)])
    assert torch.isfinite(m.score(x)).all()
