"""Every option of every config group composes; shared values are interpolated."""

import pytest
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
        assert list(cfg[group]) == [option]


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
