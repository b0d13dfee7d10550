"""Streamed datasets give exactly the pixels, order, skips, features and cache keys of main's
decode-everything-up-front path (issue 13, section 1; after issue 12's single resize_or_crop)."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from c2ir.cache import make_key
from c2ir.data import BatchStream, ImageSet, load_id, load_ood, materialize
from c2ir.data.folders import MAX_PIXELS, to_8bit
from c2ir.data.sources import _fit_array
from c2ir.extraction import extract_features
from c2ir.models.small_cnn import SmallCNN
from c2ir.stages.features import dataset_spec
from c2ir.stages.job import cli_job
from conftest import labelled_folder, make_cfg


# ----- main's decode-everything implementation (8015947), kept here as the reference the streamed path must reproduce -----
def _old_resize_or_crop(img, size, mode, rng):
    w, h = img.size
    if mode == "resize" or (mode.endswith("crop") and (w < size or h < size)):
        return img if (w, h) == (size, size) else img.resize((size, size), Image.BILINEAR)
    if mode == "center_crop":
        left, top = (w - size) // 2, (h - size) // 2
    else:
        left, top = int(rng.integers(0, w - size + 1)), int(rng.integers(0, h - size + 1))
    return img.crop((left, top, left + size, top + size))


def _old_decode(path, size, channels, mode, seed):
    try:
        with Image.open(path) as img:
            if img.width * img.height > MAX_PIXELS:
                raise ValueError("bomb")
            img = to_8bit(img).convert("L" if channels == 1 else "RGB")
            rng = np.random.default_rng([seed, zlib.crc32(path.name.encode())])
            arr = np.asarray(_old_resize_or_crop(img, size, mode, rng), dtype=np.uint8)
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def _old_fit_array(images, size, channels, mode, seed):
    """main's sources._to_input with folders.resize_or_crop_batch: image i's crop seeded by (seed, i)."""
    t = torch.from_numpy(np.ascontiguousarray(images))
    if t.shape[1] != channels and channels == 1:
        t = t.float().mean(1, keepdim=True).round().to(torch.uint8)
    n, c, h, w = t.shape
    if (h, w) != (size, size):
        out = torch.empty((n, c, size, size), dtype=torch.uint8)
        for i, img in enumerate(t.numpy()):
            pil = Image.fromarray(img[0] if c == 1 else img.transpose(1, 2, 0))
            arr = np.array(_old_resize_or_crop(pil, size, mode, np.random.default_rng([seed, i])), dtype=np.uint8)
            out[i] = torch.from_numpy(arr[None] if arr.ndim == 2 else np.ascontiguousarray(arr.transpose(2, 0, 1)))
        t = out
    if t.shape[1] != channels:
        t = t.expand(len(t), channels, size, size).contiguous()
    return t.contiguous()
# ------------------------------------------------------------------------------------------------------


def _mixed_folder(root, n=11):
    """Images of several sizes (odd margins, smaller than the target, grayscale) and two unreadable files."""
    rng = np.random.default_rng(1)
    root.mkdir(parents=True)
    for i in range(n):
        w, h = [(45, 39), (40, 40), (20, 50), (33, 61), (32, 32)][i % 5]
        arr = rng.integers(0, 255, (h, w) if i % 4 == 3 else (h, w, 3), dtype=np.uint8)
        Image.fromarray(arr).save(root / f"img{i:02d}.png")
    (root / "img03x.png").write_bytes(b"\x89PNG broken")
    (root / "img07x.jpg").write_bytes(b"not a jpeg")
    return root


def _data_cfg(**kw):
    base = dict(name="t", source="imagefolder", root=None, archive=None, subdir=None, num_classes=3, channels=3,
                image_size=32, seed=0, train_split="train", test_split="test", max_train_samples=None, max_test_samples=None)
    return OmegaConf.create({**base, **kw})


@pytest.mark.parametrize("mode", ["resize", "center_crop", "random_crop"])
def test_folder_stream_equals_former_decoding(tmp_path, mode):
    root = _mixed_folder(tmp_path / "f")
    cfg = OmegaConf.create({"source": "folder", "root": str(root), "resize": mode, "seed": 3, "max_samples": 10})
    listed = load_ood("f", cfg, _data_cfg())
    from c2ir.data.folders import list_images
    from c2ir.data.imageset import subsample

    paths = list_images(root)
    paths = [paths[i] for i in subsample(len(paths), 10, 3).tolist()]  # the former fixed-seed subset
    old = [a for a in (_old_decode(p, 32, 3, mode, 3) for p in paths) if a is not None]
    new = materialize(listed, batch_size=3, num_workers=2)
    assert new.skipped == len(paths) - len(old) >= 1
    assert torch.equal(new.images, torch.from_numpy(np.stack(old)))  # same pixels, same order


def test_labelled_folder_stream_and_features_equal_former(tmp_path):
    labelled_folder(tmp_path / "ds", 3, 5, (40, 36, 3))
    (tmp_path / "ds" / "test" / "c1" / "2.png").write_bytes(b"broken")
    ds = load_id(_data_cfg(root=str(tmp_path / "ds")), "test")
    paths = ds.paths
    old = [(_old_decode(p, 32, 3, "resize", 0), y) for p, y in zip(paths, ds.labels.tolist())]
    old_x = torch.from_numpy(np.stack([a for a, _ in old if a is not None]))
    old_y = torch.tensor([y for a, y in old if a is not None])
    torch.manual_seed(0)
    model = SmallCNN(3, 3, 8).eval()
    kw = dict(layers=["act1", "act2"], head=model.fc, batch_size=4)
    ref = extract_features(model, ImageSet("old", old_x, old_y), _norm(), **kw)
    stream = BatchStream(ds, 4, num_workers=2)
    got = extract_features(model, stream, _norm(), **kw)
    assert stream.skipped == 1 and sum(stream.counts) == 14
    assert torch.equal(got["labels"], ref["labels"])
    assert set(got) == set(ref)
    for k in ref:  # bit for bit: same pixels in the same memory layout (channels-last, as np.stack made them)
        if k == "logits":   # the head's matmul over batches of other sizes (the stream drops the broken image
            # from its batch) may round differently on some CPUs (1.5e-8 seen): equal to float32 rounding
            torch.testing.assert_close(got[k], ref[k], rtol=1e-6, atol=1e-7)
        else:
            assert torch.equal(got[k], ref[k]), k


def _norm():
    from c2ir.data.imageset import Normalizer

    return Normalizer([0.5] * 3, [0.25] * 3)


@pytest.mark.parametrize("mode,channels,size", [("resize", 3, 32), ("random_crop", 3, 20), ("center_crop", 1, 21),
                                                 ("resize", 1, 28), ("random_crop", 1, 17), ("resize", 3, 40)])
def test_array_set_items_equal_main_whole_array_fit(mode, channels, size):
    rng = np.random.default_rng(0)
    src = rng.integers(0, 255, (9, 3 if channels == 1 else 1, 28, 28), dtype=np.uint8)
    ds = _fit_array(src, np.arange(9), size, channels, mode, 5, "a")
    got = materialize(ds, batch_size=4, num_workers=2)
    assert torch.equal(got.images, _old_fit_array(src, size, channels, mode, 5))
    assert torch.equal(got.labels, torch.arange(9))


def test_embedded_default_batches_are_the_former_slices(tmp_path):
    cfg = make_cfg(tmp_path)
    te = load_id(cfg.data, "test")
    assert isinstance(te, ImageSet)  # small sets stay tensors: no worker processes, the same slices
    stream = BatchStream(te, 100, num_workers=2)
    batches = list(stream)
    assert torch.equal(torch.cat([b.images for b in batches]), te.images)
    assert [len(b.images) for b in batches] == [100] * (len(te) // 100) + [len(te) % 100]


def test_dataset_specs_of_unchanged_sets_are_unchanged(tmp_path):
    """Cache keys: the dataset part of the features keys equals the one of the former code
    (hashes printed by main at 8015947 for the default config), so existing caches stay valid."""
    folder = tmp_path / "oodset"
    folder.mkdir()
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(folder / "a.png")
    cfg = make_cfg(tmp_path, ["ood=[pixel_shuffled,gaussian_noise,folder]", f"ood.folder.root={folder}"])
    job = cli_job(cfg)
    got = {"id_test": dataset_spec(job, "id_test"), "id_train": dataset_spec(job, "id_train"),
           **{n: dataset_spec(job, f"ood:{n}") for n in ("pixel_shuffled", "gaussian_noise")}}
    assert {k: make_key("spec", v) for k, v in got.items()} == {
        "id_test": "2de5d740075e323c", "id_train": "2163b87c92b1c495",
        "pixel_shuffled": "2e32b7dccc479c50", "gaussian_noise": "bc4d7fe80404976d"}
    # a folder set's spec: its config fields and content fingerprint, nothing new (num_workers is runtime-only)
    spec = dataset_spec(job, "ood:folder")
    own = {k for k in spec if not k.startswith(("data.", "layer_set", "model."))}
    assert own == {"content", "max_samples", "ood", "resize", "root", "seed", "source"}
    cfg2 = make_cfg(tmp_path, ["ood=[pixel_shuffled,gaussian_noise,folder]", f"ood.folder.root={folder}", "num_workers=0"])
    assert dataset_spec(cli_job(cfg2), "ood:folder") == spec


def test_worker_count_does_not_change_a_stream(tmp_path):
    root = _mixed_folder(tmp_path / "f", n=7)
    cfg = OmegaConf.create({"source": "folder", "root": str(root), "resize": "random_crop", "seed": 1})
    ds = load_ood("f", cfg, _data_cfg())
    a = materialize(ds, batch_size=2, num_workers=0)
    b = materialize(ds, batch_size=5, num_workers=2)
    assert torch.equal(a.images, b.images) and a.skipped == b.skipped == 2


def test_sharded_stream_with_short_batches_merges_back(tmp_path):
    """Under torchrun a rank's batch may be short (unreadable files dropped): the per-batch counts
    put every row back in dataset order (stages/features.py via distributed.merge_strided_batches)."""
    from c2ir.distributed import merge_strided_batches

    root = _mixed_folder(tmp_path / "f", n=9)
    ds = load_ood("f", OmegaConf.create({"source": "folder", "root": str(root), "resize": "resize", "seed": 0}),
                  _data_cfg())
    torch.manual_seed(0)
    model = SmallCNN(3, 3, 8).eval()
    kw = dict(layers=["act1"], head=model.fc, batch_size=3)
    whole = extract_features(model, BatchStream(ds, 3), _norm(), **kw)
    world, n_batches = 2, -(-len(ds) // 3)
    streams = [BatchStream(ds, 3, batches=list(range(r, n_batches, world))) for r in range(world)]
    parts = [extract_features(model, s, _norm(), **kw) for s in streams]
    assert sum(s.skipped for s in streams) == 2 and min(c for s in streams for c in s.counts) < 3
    merged = merge_strided_batches(parts, len(ds), 3, [s.counts for s in streams])
    assert merged.keys() == whole.keys()
    for k in whole:
        assert torch.equal(merged[k], whole[k]), k
