"""Dataset sources on small generated folders (and the shared archives where quick)."""

import pytest
import torch
from omegaconf import OmegaConf

from c2ir.data import load_id, load_ood, materialize
from c2ir.data.embedded import digits, noise, photo_patches, pixel_shuffled
from c2ir.errors import C2IRError
from conftest import labelled_folder, needs_shared


def _tree(root, classes=3, per_class=4, size=40, mode="RGB"):
    return labelled_folder(root, classes, per_class, (size, size, 3) if mode == "RGB" else (size, size), prefix="class")


def _data_cfg(**kw):
    base = dict(name="t", source="imagefolder", root=None, archive=None, subdir=None, num_classes=3, channels=3,
                image_size=32, seed=0, train_split="train", test_split="test", max_train_samples=None, max_test_samples=None)
    return OmegaConf.create({**base, **kw})


def test_imagefolder_id_set(tmp_path):
    root = _tree(tmp_path / "ds")
    ds = materialize(load_id(_data_cfg(root=str(root)), "train"))
    assert ds.images.shape == (12, 3, 32, 32) and ds.images.dtype == torch.uint8
    assert torch.equal(torch.bincount(ds.labels), torch.tensor([4, 4, 4]))
    sub = load_id(_data_cfg(root=str(root), max_test_samples=5), "test")
    assert len(sub) == 5


def test_imagefolder_class_count_mismatch(tmp_path):
    root = _tree(tmp_path / "ds")
    with pytest.raises(C2IRError, match="3 class folders but data.num_classes=10"):
        load_id(_data_cfg(root=str(root), num_classes=10), "train")


def test_missing_and_empty_folders(tmp_path):
    with pytest.raises(C2IRError, match=r"folder not found: .*nope.*<root>/<split>/<class>"):
        load_id(_data_cfg(root=str(tmp_path / "nope")), "train")
    (tmp_path / "empty" / "train").mkdir(parents=True)
    with pytest.raises(C2IRError, match="no class subfolders"):
        load_id(_data_cfg(root=str(tmp_path / "empty")), "train")
    ood = OmegaConf.create({"source": "folder", "root": str(tmp_path / "missing"), "layout": "<root>/*.jpg"})
    with pytest.raises(C2IRError, match=r"image folder not found.*expected layout: <root>/\*.jpg"):
        load_ood("myset", ood, _data_cfg())
    (tmp_path / "noimg").mkdir()
    (tmp_path / "noimg" / "a.txt").write_text("x")
    with pytest.raises(C2IRError, match="no images"):
        load_ood("myset", OmegaConf.create({"source": "folder", "root": str(tmp_path / "noimg")}), _data_cfg())


def test_corrupt_image_is_skipped_and_counted(tmp_path):
    root = _tree(tmp_path / "ds", classes=1, per_class=5)
    (root / "test" / "class0" / "2.png").write_bytes(b"\x89PNG broken")
    ood = OmegaConf.create({"source": "folder", "root": str(root / "test"), "resize": "resize"})
    listed = load_ood("broken", ood, _data_cfg())
    assert len(listed) == 5 and listed.skipped == 0  # listed, not decoded: unknown until a pass
    ds = materialize(listed, batch_size=2, num_workers=2)
    assert len(ds) == 4 and ds.skipped == 1 and listed.skipped == 1


@pytest.mark.parametrize("mode", ["resize", "center_crop", "random_crop"])
def test_ood_folder_modes_and_grayscale(tmp_path, mode):
    root = _tree(tmp_path / "g", classes=1, per_class=3, size=64, mode="L")
    ood = OmegaConf.create({"source": "folder", "root": str(root / "train"), "resize": mode, "seed": 0})
    ds = materialize(load_ood("gray", ood, _data_cfg()))
    assert ds.images.shape == (3, 3, 32, 32)
    assert torch.equal(ds.images[:, 0], ds.images[:, 1])  # grayscale replicated to 3 channels
    again = materialize(load_ood("gray", ood, _data_cfg()), batch_size=2, num_workers=2)
    assert torch.equal(ds.images, again.images)  # fixed seed


def test_torchvision_missing_files_one_line(tmp_path):
    cfg = _data_cfg(source="torchvision", dataset="cifar10", root=str(tmp_path), download=False, num_classes=10)
    with pytest.raises(C2IRError, match=r"cifar10 not found under .* put the files there or set data.root=DIR .*data=cifar10_jpeg"):
        load_id(cfg, "test")


def test_embedded_sources():
    tr, te = digits("train", 0), digits("test", 0)
    assert len(tr) + len(te) == 1797 and tr.images.shape[1:] == (1, 8, 8)
    assert noise("gaussian", 10, 1, 8, 0).images.shape == (10, 1, 8, 8)
    assert photo_patches(5, 3, 32, 0).images.shape == (5, 3, 32, 32)
    sh = pixel_shuffled(te, 0)
    assert torch.equal(sh.images.flatten(1).sort(1).values, te.images.flatten(1).sort(1).values)


@needs_shared
def test_shared_mnist_as_ood():
    cfg = OmegaConf.create({"source": "folder", "archive": "mnist-test.tar.gz", "subdir": "mnist/test",
                            "resize": "resize", "max_samples": 50, "seed": 0})
    ds = materialize(load_ood("mnist", cfg, _data_cfg()))
    assert ds.images.shape == (50, 3, 32, 32)


@needs_shared
def test_shared_tiny_imagenet_crop_and_resize():
    for mode in ("resize", "random_crop"):
        cfg = OmegaConf.create({"source": "folder", "archive": "tinyimagenet-test.tar.gz",
                                "subdir": "tiny-imagenet-200/test/images", "resize": mode, "max_samples": 20, "seed": 0})
        assert materialize(load_ood("tin", cfg, _data_cfg())).images.shape == (20, 3, 32, 32)
