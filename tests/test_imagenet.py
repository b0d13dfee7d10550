"""`experiment=imagenet_resnet50` end to end at toy size on CPU (issue 13, section 2): the same configs,
transform, folder layouts, checkpoint path and multi-resolution synthesis, with a random-initialised
torchvision ResNet-18 at 64 px, 4 classes and a few iterations, so the ImageNet path cannot rot."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from PIL import Image

from c2ir.errors import C2IRError
from c2ir.stages.job import cli_job
from conftest import make_cfg

OOD_DIRS = {"inaturalist": "iNaturalist/images", "sun": "SUN/images", "places": "Places/images",
            "dtd": "dtd/images/banded"}


def _jpegs(folder, n, rng, size=(90, 75)):
    folder.mkdir(parents=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(folder / f"{i}.JPEG")


def _toy_imagenet(tmp_path, classes=4):
    rng = np.random.default_rng(0)
    root = tmp_path / "data"
    for c in range(classes):
        _jpegs(root / "imagenet" / "val" / f"n0{c:07d}", 3, rng)
    for d in OOD_DIRS.values():
        _jpegs(root / "imagenet_ood" / d, 4, rng, size=(70, 100))
    import torchvision

    torch.manual_seed(0)
    ckpt = tmp_path / "resnet18-random.pth"
    torch.save(torchvision.models.resnet18(num_classes=classes).state_dict(), ckpt)  # as torchvision's .pth files
    return root, ckpt


def _cfg(tmp_path, root, ckpt, *extra):
    return make_cfg(tmp_path, ["experiment=imagenet_resnet50", f"paths.data_root={root}", "model.name=resnet18",
                               f"model.checkpoint={ckpt}", "data.num_classes=4", "data.image_size=64",
                               "synth.per_class=1", "synth.batch_size=4", "synth.iterations=2",
                               "synth.warmup_iterations=2", "detectors=[msp,energy,c2ir]", "batch_size=8",
                               "num_workers=2", "evaluate.max_train_samples=8", *extra])


def test_imagenet_experiment_end_to_end_toy(tmp_path):
    """synthesize -> collect-stats -> weight-layers -> evaluate (the report pages are the generic ones): every
    toy image decoded through the ImageNet transform, the multi-resolution schedule run, every score finite."""
    from c2ir.graph import resolve
    from c2ir.stages.evaluate import EVALUATE
    from c2ir.stages.synthesize import SYNTHESIZE
    from c2ir.stages.train import uses_training

    start, cpu = time.perf_counter(), _cpu_seconds()
    root, ckpt = _toy_imagenet(tmp_path)
    cfg = _cfg(tmp_path, root, ckpt)
    assert cfg.synth.lr == 0.25 and cfg.synth.bn_weight == 0.01 and cfg.synth.jitter == 30
    assert cfg.data.resize == "resize_center_crop" and cfg.model.weights == "IMAGENET1K_V1"
    job = cli_job(cfg)
    assert not uses_training(job.cfg)  # a checkpoint (or the published weights) is used as it is
    evaluation = resolve(EVALUATE, job, ("msp", "energy", "c2ir"))
    results = evaluation.value
    assert results["ood_sets"] == ["inaturalist", "sun", "places", "textures"]
    assert results["id_set"] == "imagenet-test"
    assert results["counts"] == {"imagenet-test": 12, "inaturalist": 4, "sun": 4, "places": 4, "textures": 4}
    scores = evaluation.artifact.tensors("scores.safetensors")
    assert len(scores) == 3 * 5 and all(torch.isfinite(v).all() and len(v) == results["counts"][k.split("/")[1]]
                                        for k, v in scores.items())
    assert set(results["layer_auroc"]["c2ir"]["auroc"]) == set(results["ood_sets"])
    synth = resolve(SYNTHESIZE, job)
    assert synth.value.images.shape == (4, 3, 64, 64)   # one impression per class at the configured size
    assert synth.artifact.tensors("curves.safetensors")["total"].shape == (1, 4)  # 2 warm-up + 2 full-size iterations
    print(f"toy ImageNet pipeline: {time.perf_counter() - start:.1f} s wall, {_cpu_seconds() - cpu:.1f} s CPU")


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (the loader's workers): the run time on a
    shared machine, where wall time depends on the other load."""
    import resource

    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def test_imagenet_missing_folders_name_layout_and_key(tmp_path):
    from c2ir.data import load_id, load_ood

    root, ckpt = _toy_imagenet(tmp_path)
    cfg = _cfg(tmp_path, root, ckpt, f"ood.sun.root={tmp_path / 'nowhere'}")
    with pytest.raises(C2IRError, match=r"sun: image folder not found: .*nowhere \(expected layout: <root>/images/\*\.jpg"
                                         r".*\); set ood\.sun\.root to the folder"):
        load_ood("sun", cfg.ood.sun, cfg.data)
    cfg = _cfg(tmp_path, root, ckpt, f"data.root={tmp_path / 'no-imagenet'}")
    with pytest.raises(C2IRError, match=r"folder not found: .*no-imagenet/val \(expected layout: <data.root>/val/<wnid>/"
                                         r"\*\.JPEG.*set data.root"):
        load_id(cfg.data, "test")
    from c2ir.stages.run import check_folders

    with pytest.raises(C2IRError, match="no-imagenet"):  # the config check says so before any stage starts
        cli_job(cfg)
    with pytest.raises(C2IRError, match=r"folder not found: .*/val "):  # root there, split not: `c2ir run` lists it first
        check_folders(cli_job(_cfg(tmp_path, root, ckpt, f"data.root={tmp_path}")))
