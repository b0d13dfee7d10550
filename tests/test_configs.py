"""Every option of every config group composes, validates and instantiates; the schema is the defaults."""

from dataclasses import asdict

import re

import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from c2ir.config import config_dir, register_resolvers
from c2ir.errors import C2IRError
from c2ir.validation import validate
from conftest import HAS_JOBLIB_LAUNCHER, labelled_folder, make_cfg, needs_shared

GROUPS = ["model", "data", "ood", "synth", "ipm", "mgi", "detectors", "train", "experiment", "launcher"]


def _options(group):
    """The group's options as Hydra lists them: YAML presets and the schema's ConfigStore entries."""
    register_resolvers()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return sorted(GlobalHydra.instance().config_loader().get_group_options(group))


def _validated(tmp_path, overrides):
    return validate(make_cfg(tmp_path, ["stage=synthesize", *overrides]))


def _instantiate_model(cfg):
    """The architecture of `cfg.model` (published torchvision weights not downloaded), and every one of its
    layer sets resolved to modules of it."""
    from c2ir.extraction import resolve_layers
    from c2ir.models.loading import build_classifier

    if cfg.model.arch == "timm":
        pytest.importorskip("timm")
    if cfg.model.arch == "torchvision":
        cfg.model.weights = None
    model = build_classifier(cfg.model, int(cfg.data.num_classes))
    for name, patterns in cfg.model.layer_sets.items():
        assert resolve_layers(model, list(patterns)), name
    return model


# what each group's option must have to instantiate offline: CIFAR-sized data, no downloaded weights
MODEL_EXTRA = {"small_cnn": []}
DATA_OFFLINE = {"digits"}                      # the other ID sets need a download, the shared archive or a folder
OOD_OFFLINE = {"gaussian_noise", "uniform_noise", "photo_patches", "pixel_shuffled"}
OOD_SHARED = {"tin_crop", "tin_resize", "mnist"}


@pytest.mark.parametrize("option", _options("model"))
def test_every_model_builds_with_every_layer_set(tmp_path, option):
    cfg = _validated(tmp_path, [f"model={option}", *MODEL_EXTRA.get(option, ["data=cifar10"])])
    assert cfg.model.num_classes == cfg.data.num_classes and cfg.model.in_channels == cfg.data.channels
    model = _instantiate_model(cfg)
    logits = model.eval()(torch.zeros(2, cfg.data.channels, cfg.data.image_size, cfg.data.image_size))
    assert logits.shape == (2, cfg.data.num_classes)


@pytest.mark.parametrize("option", _options("data"))
def test_every_data_option_validates_and_the_offline_ones_load(tmp_path, option):
    from c2ir.data import load_id

    extra = [f"data.root={labelled_folder(tmp_path / 'ds', 3, 2)}", "data.num_classes=3", "data.test_split=test",
             "model=resnet20"] if option in ("imagefolder", "imagenet") else []
    cfg = _validated(tmp_path, [f"data={option}", "synth.per_class=1", *extra])  # any size fits (c2ir.sizes)
    assert cfg.data.name and len(cfg.data.mean) == len(cfg.data.std) == cfg.data.channels
    if option in DATA_OFFLINE or extra:
        test = load_id(cfg.data, "test")
        assert len(test) > 0 and test[0][0].shape == (cfg.data.channels, cfg.data.image_size, cfg.data.image_size)


@needs_shared
def test_the_shared_cifar10_jpeg_loads(tmp_path):
    from c2ir.data import load_id

    cfg = _validated(tmp_path, ["data=cifar10_jpeg", "model=resnet20"])
    assert len(load_id(cfg.data, "test")) == 10000


@pytest.mark.parametrize("option", _options("ood"))
def test_every_ood_option_validates_and_the_offline_ones_load(tmp_path, option):
    from c2ir.data import load_id, load_ood
    from c2ir.data.shared import shared_dir

    cfg = _validated(tmp_path, [f"ood=[{option}]", *([f"ood.{option}.root={tmp_path}"] if option == "folder" else [])])
    # an OOD option defines the sets of its top-level keys: one set named like the file, an alias (ood/lsun.yaml
    # selects ood.lsun_crop, named lsun) or a benchmark's sets (ood/openood_*.yaml)
    expected = [k for k in yaml.safe_load((config_dir() / "ood" / f"{option}.yaml").read_text()) if k != "defaults"]
    assert list(cfg.ood) == (expected or ["lsun_crop"])
    key = expected[0] if expected else "lsun_crop"
    if option in OOD_OFFLINE or (option in OOD_SHARED and shared_dir() is not None):
        ds = load_ood(key, cfg.ood[key], cfg.data, load_id(cfg.data, "test"))
        assert len(ds) > 0 and ds[0][0].shape == (1, 8, 8), option


@pytest.mark.parametrize("option", _options("synth"))
def test_every_synth_option_is_a_synth_config(tmp_path, option):
    from c2ir.schema import SynthConfig, SynthSettings

    cfg = _validated(tmp_path, [f"synth={option}"])
    settings = SynthSettings(**OmegaConf.to_container(cfg.synth, resolve=True))   # every key is a field
    api, cli = asdict(SynthConfig.from_cfg(cfg.synth)), asdict(settings)
    assert api == {k: tuple(v) if k == "betas" else v for k, v in cli.items() if k in api}   # the API's settings are the CLI's, less how it computes


@pytest.mark.parametrize("option", _options("ipm"))
def test_every_ipm_option_builds_c2ir(tmp_path, option):
    from c2ir.detectors import build_detector
    from c2ir.stages.fit import ipm_overrides

    cfg = _validated(tmp_path, [f"ipm={option}"])
    det = build_detector("c2ir", dict(cfg.detectors.c2ir), **ipm_overrides(cfg))
    assert det.ipm == option


@pytest.mark.parametrize("option", _options("mgi"))
def test_every_mgi_option_weights_layers(tmp_path, option):
    from c2ir.mgi import mgi_weights

    cfg = _validated(tmp_path, [f"mgi={option}"])
    acts = [torch.ones(2, 3, 4, 4), torch.ones(2, 5, 2, 2)]
    w = mgi_weights(acts, [a * (i + 1) for i, a in enumerate(acts)], str(cfg.mgi.method))
    assert w.shape == (2,) and float(w.sum()) == pytest.approx(1.0)


@pytest.mark.parametrize("option", _options("detectors"))
def test_every_detector_option_builds(tmp_path, option):
    from c2ir.detectors import build_detector, detector_types
    from c2ir.stages.fit import ipm_overrides

    cfg = _validated(tmp_path, [f"detectors=[{option}]"])
    assert list(cfg.detectors) == [option]
    det = build_detector(option, dict(cfg.detectors[option]), **ipm_overrides(cfg))
    assert type(det) is detector_types()[cfg.detectors[option].type]


@pytest.mark.parametrize("option", _options("train"))
def test_every_train_option_is_a_train_config(tmp_path, option):
    from c2ir.schema import TrainConfig

    extra = []
    if option == "finetune":   # fine-tuning needs weights to start from (validation.check_training)
        torch.save({}, tmp_path / "start.pt")
        extra = [f"model.checkpoint={tmp_path / 'start.pt'}"]
    cfg = _validated(tmp_path, [f"train={option}", *extra])
    tc = TrainConfig(**OmegaConf.to_container(cfg.train, resolve=True))
    assert tc.crop_pad(32) == (4 if tc.pad is None else tc.pad)


@pytest.mark.parametrize("option", _options("experiment"))
def test_every_experiment_validates_and_builds_its_model(tmp_path, option):
    cfg = _validated(tmp_path, [f"experiment={option}", "model.checkpoint=null", "model.require_checkpoint=null"])
    assert cfg.ood and cfg.detectors
    _instantiate_model(cfg)


@pytest.mark.parametrize("option", _options("launcher"))
def test_every_launcher_composes(tmp_path, option):
    if not HAS_JOBLIB_LAUNCHER:
        pytest.skip("launcher plugins not installed (pip install 'c2ir[cluster]')")
    register_resolvers()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("config", overrides=[f"launcher={option}", f"cache_root={tmp_path}"], return_hydra_config=True)
    assert "launcher" in cfg.hydra


def test_the_schema_is_the_defaults(tmp_path):
    """The composed defaults are the dataclasses' (no YAML restates them), and every preset YAML of a group
    with a schema default changes at least one value, and only values that differ from the default."""
    from c2ir.schema import C2IRConfig, TrainConfig

    cfg = make_cfg(tmp_path)
    root = OmegaConf.to_container(OmegaConf.structured(C2IRConfig), resolve=False)
    for group in ("synth", "train", "ipm", "mgi", "features", "collect_stats", "evaluate", "report", "score"):
        assert OmegaConf.to_container(cfg[group]) == root[group], group
    assert OmegaConf.to_container(cfg.train) == asdict(TrainConfig())
    for group in ("synth", "train"):
        default = OmegaConf.to_container(make_cfg(tmp_path, [f"{group}=default"])[group], resolve=True)
        for option in _options(group):
            preset = OmegaConf.to_container(make_cfg(tmp_path, [f"{group}={option}"])[group], resolve=True)
            changed = {k for k in preset if preset[k] != default[k]}
            text = (config_dir() / group / f"{option}.yaml")
            assert (option == "default") == (not changed) and (option == "default") == (not text.is_file()), option


def test_done_when_values_fail_in_one_line_before_compute(tmp_path):
    for override, needle in (("mgi.method=foo", "mgi.method='foo' is not valid: it must be one of grad_abs"),
                             ("model.width=-3", "model.width=-3 is not valid: it must be an integer >= 1"),
                             ("+model.widht=3", "unknown config key model.widht (did you mean width?); valid keys of model:"),
                             ("score.tpr=1", "score.tpr=1.0 is not valid: it must be a number > 0 and < 1"),
                             ("train.pad=-1", "train.pad=-1 is not valid")):
        with pytest.raises(C2IRError, match=re.escape(needle)):
            validate(make_cfg(tmp_path, [override]))


def test_shared_values_are_interpolated(tmp_path):
    cfg = make_cfg(tmp_path, ["data=cifar10", "model=wrn40_2"])
    assert cfg.model.num_classes == cfg.data.num_classes == 10
    assert cfg.model.in_channels == cfg.data.channels == 3
    assert list(cfg.model.mean) == list(cfg.data.mean)
    assert cfg.synth.flip is True and make_cfg(tmp_path).synth.flip is False  # digits are not flip-invariant
    assert make_cfg(tmp_path, ["seed=7"]).synth.seed == 7 and make_cfg(tmp_path).synth.jitter == 1


def test_ood_is_multi_select(tmp_path):
    cfg = make_cfg(tmp_path, ["ood=[gaussian_noise,uniform_noise,mnist]"])
    assert list(cfg.ood) == ["gaussian_noise", "uniform_noise", "mnist"]


def test_experiments_set_their_setting(tmp_path):
    cfg = make_cfg(tmp_path, ["experiment=cifar10_resnet20_cpu"])
    assert cfg.model.name == "resnet20" and cfg.data.name == "cifar10-jpeg"
    assert list(cfg.ood) == ["tin_resize", "tin_crop", "mnist", "gaussian_noise"]
    assert str(cfg.model.checkpoint).endswith("models/cifar10jpeg-resnet20.pt")
    paper = make_cfg(tmp_path, ["experiment=paper_cifar10_resnet34"])
    assert paper.model.name == "resnet34" and paper.synth.iterations == 2000
    assert set(paper.ood) == {"svhn", "lsun_crop", "lsun_resize", "isun", "tin_crop", "tin_resize"}


def test_configs_compose_from_the_installed_package():
    """The config tree is found via the package, not the working directory."""
    register_resolvers()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("config")
    assert cfg.model.arch == "small_cnn"


RESNET32_BEFORE_THE_SHARED_BASE = {  # configs/model/resnet32.yaml as it was written out in full
    "arch": "cifar_resnet", "name": "resnet32", "depth": 32, "num_classes": 10, "in_channels": 3,
    "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "head": "linear", "checkpoint": None,
    "trust_checkpoint": False, "require_checkpoint": None,   # declared since by every model (runtime-only)
    "layer_sets": {"default": [r"layer2\.\d+", r"layer3\.0"], "all": ["stem_act", r"layer\d+\.\d+"],
                   "blocks": [r"layer\d+\.\d+"], "stage_outputs": ["stem_act", r"layer\d+\.4"],
                   "last_stage": [r"layer3\.\d+"], "bn_relu": ["stem_act", r"layer\d+\.\d+\.act1", r"layer\d+\.\d+"]},
}


def _composed(tmp_path, overrides, node):
    return OmegaConf.to_container(make_cfg(tmp_path, overrides)[node], resolve=True)


def test_cifar_resnets_are_the_shared_base_at_their_depth(tmp_path):
    assert _composed(tmp_path, ["data=cifar10", "model=resnet32"], "model") == RESNET32_BEFORE_THE_SHARED_BASE
    for depth in (20, 44, 56, 110):
        model = _composed(tmp_path, ["data=cifar10", f"model=resnet{depth}"], "model")
        last = (depth - 2) // 6 - 1  # blocks per stage - 1
        expected = {**RESNET32_BEFORE_THE_SHARED_BASE, "name": f"resnet{depth}", "depth": depth,
                    "layer_sets": {**RESNET32_BEFORE_THE_SHARED_BASE["layer_sets"],
                                   "stage_outputs": ["stem_act", rf"layer\d+\.{last}"]}}
        assert model == expected, depth
    assert "base" not in _options("model")  # the bases are not selectable models


def test_synth_and_train_options_change_only_their_values(tmp_path):
    default = _composed(tmp_path, ["synth=default"], "synth")
    assert default["per_class"] == 20 and default["iterations"] == 50 and default["warmup_iterations"] == 0
    deepinversion = _composed(tmp_path, ["synth=deepinversion"], "synth")  # the default before issue 20
    assert deepinversion == {**default, "per_class": 40, "iterations": 300, "lr": 0.1, "bn_stats": "hooks"}
    for option, base, changed in [("fast", default, {"per_class": 10, "batch_size": 50, "iterations": 30}),
                                  # the default between issue 20's two changes (its values: its cache key)
                                  ("multires", default, {"per_class": 40, "iterations": 15, "warmup_iterations": 60}),
                                  ("paper", deepinversion, {"per_class": 100, "batch_size": 256, "iterations": 2000,
                                                            "lr": 0.05, "bn_reduce": "sum"})]:  # DeepInversion sums the BN term
        assert _composed(tmp_path, [f"synth={option}"], "synth") == {**base, **changed}, option
    train = _composed(tmp_path, ["train=default"], "train")
    assert train == {"epochs": 20, "batch_size": 64, "lr": 0.05, "warmup": 0.15, "weight_decay": 5e-4,
                     "finetune": False, "pad": None}
    assert _composed(tmp_path, ["train=cifar"], "train") == {**train, "epochs": 100, "batch_size": 128, "lr": 0.1,
                                                             "warmup": 0.05}
    assert _composed(tmp_path, ["train=finetune"], "train") == {**train, "epochs": 6, "batch_size": 128, "lr": 0.02,
                                                                "warmup": 0.3, "weight_decay": 1e-4, "finetune": True}


# The two presets that keep earlier defaults reproducible, written out in full: they inherit from synth=default,
# so a later change of a SynthConfig default must not move their values (which, with the fields' `neutral`s, make
# their cache keys) unnoticed.
_SHARED_SYNTH = {"batch_size": 200, "betas": [0.5, 0.9], "ce_weight": 1.0, "bn_weight": 10.0, "first_bn_multiplier": 10.0,
                 "bn_reduce": "mean", "tv_weight": 2.5e-05, "l2_weight": 3e-08, "lr_schedule": "cosine",
                 "warmup_min_size": 16, "stop_patience": 0, "stop_tol": 0.01, "autocast": "none",
                 "channels_last": False, "compile": False}
DEEPINVERSION = {**_SHARED_SYNTH, "per_class": 40, "iterations": 300, "lr": 0.1, "warmup_iterations": 0, "bn_stats": "hooks"}
MULTIRES = {**_SHARED_SYNTH, "per_class": 40, "iterations": 15, "lr": 0.25, "warmup_iterations": 60, "bn_stats": "fused"}


@pytest.mark.parametrize("preset,expected", [("deepinversion", DEEPINVERSION), ("multires", MULTIRES)])
def test_earlier_defaults_are_pinned_value_for_value(tmp_path, preset, expected):
    synth = OmegaConf.to_container(make_cfg(tmp_path, [f"synth={preset}"]).synth, resolve=False)
    assert {k: synth.pop(k) for k in ("jitter", "flip", "seed")} == {
        "jitter": "${data.jitter}", "flip": "${data.flip_invariant}", "seed": "${seed}"}
    assert synth == expected


def test_lsun_is_an_alias_of_lsun_crop_with_the_same_cache_entry(tmp_path):
    from c2ir.graph import key_of
    from c2ir.stages.features import FEATURES, Pass
    from c2ir.stages.job import cli_job
    from c2ir.validation import ood_names

    alias, crop = make_cfg(tmp_path, ["ood=[lsun]"]), make_cfg(tmp_path, ["ood=[lsun_crop]"])
    assert list(alias.ood) == ["lsun_crop"] and ood_names(alias) == {"lsun_crop": "lsun"}
    p = Pass("ood:lsun_crop")
    assert key_of(FEATURES, cli_job(alias), p) == key_of(FEATURES, cli_job(crop), p)


def test_key_neutral_fields_stay_out_of_keys_at_their_neutral_value(tmp_path):
    """Fields declared after caches existed (train.pad, synth.warmup_iterations, ipm.projections,
    model.drop_rate) enter keys only away from their declared neutral value."""
    from c2ir.graph import key_fields, key_of
    from c2ir.stages.evaluate import EVAL_RULE
    from c2ir.stages.job import cli_job
    from c2ir.stages.synthesize import SYNTH_RULE
    from c2ir.stages.train import TRAIN, TRAIN_RULE

    cfg = make_cfg(tmp_path)
    assert cfg.train.pad is None and "train.pad" not in key_fields(cfg, TRAIN_RULE)
    assert "train.pad" in key_fields(make_cfg(tmp_path, ["train.pad=3"]), TRAIN_RULE)
    assert key_of(TRAIN, cli_job(make_cfg(tmp_path, ["train.pad=3"]))) != key_of(TRAIN, cli_job(cfg))
    assert cfg.synth.warmup_iterations == 0 and "synth.warmup_iterations" not in key_fields(cfg, SYNTH_RULE)
    warm = make_cfg(tmp_path, ["synth.warmup_iterations=60"])
    assert key_fields(warm, SYNTH_RULE)["synth.warmup_iterations"] == 60
    assert "synth.warmup_iterations" not in key_fields(make_cfg(tmp_path, ["synth=imagenet"]), SYNTH_RULE)  # 0: neutral
    assert "ipm.projections" not in key_fields(cfg, EVAL_RULE)
    assert key_fields(make_cfg(tmp_path, ["ipm=sliced_wasserstein"]), EVAL_RULE)["ipm.projections"] == 64
    wrn = make_cfg(tmp_path, ["data=cifar10", "model=wrn40_2"])
    assert wrn.model.drop_rate == 0.0 and "model.drop_rate" not in key_fields(wrn, TRAIN_RULE)
    # synth.autocast: lower precision changes a GPU's impressions, so bf16 gets its own synthesis (was runtime-only)
    assert "synth.autocast" not in key_fields(cfg, SYNTH_RULE)
    from c2ir.stages.synthesize import SYNTHESIZE
    bf16 = make_cfg(tmp_path, ["synth.autocast=bf16"])
    assert key_fields(bf16, SYNTH_RULE)["synth.autocast"] == "bf16"
    assert key_of(SYNTHESIZE, cli_job(bf16)) != key_of(SYNTHESIZE, cli_job(cfg))


def test_ipm_keys_are_declared(tmp_path):
    assert _composed(tmp_path, ["ipm=sliced_wasserstein"], "ipm") == {"name": "sliced_wasserstein", "seed": 0,
                                                                     "projections": 64}
    with pytest.raises(C2IRError, match="unknown config key ipm.projection"):
        validate(make_cfg(tmp_path, ["+ipm.projection=3"]))


def test_cli_validation_composes_a_plain_run_once_and_each_sweep_value(tmp_path, monkeypatch):
    """A plain run's validation composes once (the composition with Hydra's config is the one validated: one
    composition less on every warm `c2ir run`); a sweep composes every value; a bad value is still one line."""
    import hydra

    from c2ir import cli

    calls = []
    real = hydra.compose
    monkeypatch.setattr(hydra, "compose", lambda *a, **k: calls.append(k.get("overrides")) or real(*a, **k))
    base = [f"cache_root={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'run'}",
            f"hydra.sweep.dir={tmp_path / 'sweep'}", "stage=run"]
    cli.validate_overrides(base)
    assert len(calls) == 1
    calls.clear()
    cli.validate_overrides([*base, "seed=0,1"], multirun=True)
    assert len(calls) == 4   # the sweep folder's, the plain one, and one per value
    calls.clear()
    with pytest.raises(C2IRError, match="synth.iterations"):
        cli.validate_overrides([*base, "synth.iterations=-1"])
    assert len(calls) == 1
    calls.clear()
    with pytest.raises(C2IRError, match="hydra.run.dir"):   # an interpolation that cannot resolve: one line
        cli.validate_overrides([*base, "hydra.run.dir=/x_${nope}"])
    with pytest.raises(C2IRError, match="hydra.job.name"):  # the job's config has no hydra node to point into
        cli.validate_overrides([*base, "data.name=${hydra.job.name}"])
