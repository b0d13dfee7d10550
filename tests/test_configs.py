"""Every option of every config group composes; shared values are interpolated."""

import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from c2ir.config import config_dir
from conftest import HAS_JOBLIB_LAUNCHER, make_cfg

GROUPS = ["model", "data", "ood", "synth", "ipm", "mgi", "detectors", "train", "experiment", "launcher"]
HAS_LAUNCHERS = HAS_JOBLIB_LAUNCHER


def _options(group):
    return sorted(p.stem for p in (config_dir() / group).glob("*.yaml"))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in _options(g)])
def test_every_option_composes(tmp_path, group, option):
    if group == "launcher" and not HAS_LAUNCHERS:
        pytest.skip("launcher plugins not installed (pip install 'c2ir[cluster]')")
    value = f"[{option}]" if group in ("ood", "detectors") else option
    extra = []
    if group == "model" and option in ("resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "resnet18",
                                       "resnet34", "wrn28_10", "wrn40_2", "densenet100", "torchvision"):
        extra = ["data=cifar10"]
    cfg = make_cfg(tmp_path, [f"{group}={value}", *extra])
    resolved = OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
    assert resolved["stage"] == "run"
    if group in ("ood", "detectors"):
        # an OOD option defines the sets of its top-level keys: one set named like the file, an alias
        # (ood/lsun.yaml selects ood.lsun_crop, see the alias test below) or a benchmark's sets (ood/openood_*.yaml)
        expected = [k for k in yaml.safe_load((config_dir() / group / f"{option}.yaml").read_text()) if k != "defaults"]
        assert list(cfg[group]) == (expected if group == "ood" else [option])


def test_shared_values_are_interpolated(tmp_path):
    cfg = make_cfg(tmp_path, ["data=cifar10", "model=wrn40_2"])
    assert cfg.model.num_classes == cfg.data.num_classes == 10
    assert cfg.model.in_channels == cfg.data.channels == 3
    assert list(cfg.model.mean) == list(cfg.data.mean)
    assert cfg.synth.flip is True and make_cfg(tmp_path).synth.flip is False  # digits are not flip-invariant


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
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("config")
    assert cfg.model.arch == "small_cnn"


RESNET32_BEFORE_THE_SHARED_BASE = {  # configs/model/resnet32.yaml as it was written out in full
    "arch": "cifar_resnet", "name": "resnet32", "depth": 32, "num_classes": 10, "in_channels": 3,
    "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "head": "linear", "checkpoint": None,
    "trust_checkpoint": False,
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
    assert "base" not in _options("model")  # the base is not a selectable model


def test_synth_and_train_options_change_only_their_values(tmp_path):
    default = _composed(tmp_path, ["synth=default"], "synth")
    assert default["per_class"] == 40 and default["iterations"] == 15 and default["warmup_iterations"] == 60
    deepinversion = _composed(tmp_path, ["synth=deepinversion"], "synth")  # the default before issue 20
    assert deepinversion == {**default, "iterations": 300, "warmup_iterations": 0, "lr": 0.1, "bn_stats": "hooks"}
    for option, base, changed in [("fast", default, {"per_class": 10, "batch_size": 50, "iterations": 30}),
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


def test_lsun_is_an_alias_of_lsun_crop_with_the_same_cache_entry(tmp_path):
    from c2ir.schema import ood_names
    from c2ir.stages import features
    from c2ir.stages.common import RunContext
    from c2ir.stages.evaluate import ood_spec

    alias, crop = make_cfg(tmp_path, ["ood=[lsun]"]), make_cfg(tmp_path, ["ood=[lsun_crop]"])
    assert list(alias.ood) == ["lsun_crop"] and ood_names(alias) == {"lsun_crop": "lsun"}
    a, c = RunContext(alias), RunContext(crop)
    assert features.key(a, ood_spec(a, "lsun_crop"), 0) == features.key(c, ood_spec(c, "lsun_crop"), 0)


def test_declared_null_train_pad_stays_out_of_the_keys(tmp_path):
    from c2ir.stages.common import RunContext, key_fields

    cfg = make_cfg(tmp_path)
    assert cfg.train.pad is None and "train.pad" not in key_fields(cfg, "train")
    assert "train.pad" in key_fields(make_cfg(tmp_path, ["train.pad=3"]), "train")
    assert RunContext(make_cfg(tmp_path, ["train.pad=3"])).train_key != RunContext(cfg).train_key


def test_ipm_keys_are_declared(tmp_path):
    from c2ir.errors import C2IRError
    from c2ir.schema import validate

    assert _composed(tmp_path, ["ipm=sliced_wasserstein"], "ipm") == {"name": "sliced_wasserstein", "seed": 0,
                                                                     "projections": 64}
    with pytest.raises(C2IRError, match="unknown config key ipm.projection"):
        validate(make_cfg(tmp_path, ["+ipm.projection=3"]))
