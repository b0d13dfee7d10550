"""Image lists in OpenOOD's layout (c2ir.imglist, `source: imglist`) and OpenOOD's CIFAR test transform."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from c2ir.data.transforms import resize_or_crop
from c2ir.errors import C2IRError
from c2ir.data.folders import imglist_fingerprint as fingerprint
from c2ir.imglist import open_imglist, parse_label, read_imglist


def _tree(root, lines, images=("a/0.png", "a/1.png")):
    for rel in images:
        (root / "images_classic" / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "images_classic" / rel)
    (root / "benchmark_imglist" / "b").mkdir(parents=True, exist_ok=True)
    (root / "benchmark_imglist" / "b" / "test_x.txt").write_text(lines)
    return root


def test_lines_are_path_then_label_split_at_the_first_space(tmp_path):
    _tree(tmp_path, "a/0.png 3\n\na/1.png {'label': -1, 'group': 2}\n")
    lst = open_imglist(tmp_path, "benchmark_imglist/b/test_x.txt", "images_classic", "x", "ood.x.root")
    assert [p.relative_to(tmp_path).as_posix() for p in lst.paths] == ["images_classic/a/0.png", "images_classic/a/1.png"]
    assert lst.labels == (3, -1)
    assert parse_label(" 7 ") == 7 and parse_label("{'label': 4}") == 4
    with pytest.raises((ValueError, SyntaxError)):
        parse_label("cat")


@pytest.mark.parametrize("text,words", [("a/0.png\n", "line 1 of .* is not 'relative/path label'"),
                                        ("/abs/0.png 1\n", "not 'relative/path label'"),
                                        ("a/0.png dog\n", "line 1 of .* has no integer label"),
                                        ("\n\n", "lists no images")])
def test_malformed_lists_are_one_line(tmp_path, text, words):
    _tree(tmp_path, text)
    with pytest.raises(C2IRError, match=words):
        open_imglist(tmp_path, "benchmark_imglist/b/test_x.txt", "images_classic", "x", "ood.x.root")



def test_a_list_that_is_not_utf8_is_one_line(tmp_path):
    _tree(tmp_path, "")
    (tmp_path / "benchmark_imglist" / "b" / "test_x.txt").write_bytes(b"a/0.png 1\na/\xff.png 1\n")
    with pytest.raises(C2IRError, match=r"x: image list .*test_x\.txt is not UTF-8 text \(byte 12\); save it as UTF-8"):
        open_imglist(tmp_path, "benchmark_imglist/b/test_x.txt", "images_classic", "x", "ood.x.root")

def test_missing_list_and_missing_images_name_the_layout_and_the_key(tmp_path):
    with pytest.raises(C2IRError, match=r"x: image list not found: .*test_x\.txt \(expected OpenOOD v1\.5's data folder: "
                                        r"<root>/benchmark_imglist/.*\); set ood\.x\.root to that folder"):
        read_imglist(tmp_path / "benchmark_imglist/b/test_x.txt", tmp_path, "x", "ood.x.root")
    _tree(tmp_path, "a/0.png -1\na/1.png -1\na/2.png -1\n")
    with pytest.raises(C2IRError, match=r"x: 1 of 3 images listed in .*test_x\.txt are missing under .*images_classic "
                                        r"\(first: .*a/2\.png\); expected OpenOOD"):
        open_imglist(tmp_path, "benchmark_imglist/b/test_x.txt", "images_classic", "x", "ood.x.root")
    lst = open_imglist(tmp_path, "benchmark_imglist/b/test_x.txt", "images_classic", "x", "ood.x.root", check=False)
    assert len(lst) == 3  # the fingerprint reads the list without requiring every image


def test_fingerprint_follows_the_list_and_the_image_contents(tmp_path):
    """Image lists follow issue 24's content-key rule of folder data: an image replaced by another of the same
    size with its mtime kept (cp -p, rsync -t) gives a new key, touching one does not; editing the list or
    deleting an image does."""
    from c2ir.data.digests import DigestCache

    _tree(tmp_path, "a/0.png -1\na/1.png -1\n")
    table = DigestCache(tmp_path / "digests")

    def fp():
        return fingerprint(open_imglist(tmp_path, "benchmark_imglist/b/test_x.txt", "images_classic", "x", "k",
                                        check=False), table)

    first = fp()
    assert fp() == first
    img = tmp_path / "images_classic" / "a" / "1.png"
    st = img.stat()
    os.utime(img, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert fp() == first  # touched, same bytes: the same key
    data = img.read_bytes()
    img.write_bytes(data[:-5] + bytes(b ^ 0xFF for b in data[-5:]))  # other bytes of the same size ...
    os.utime(img, ns=(st.st_atime_ns, st.st_mtime_ns))  # ... with the old mtime kept
    assert (img.stat().st_size, img.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    replaced = fp()
    assert replaced != first
    img.unlink()
    deleted = fp()
    assert deleted not in (first, replaced)
    (tmp_path / "benchmark_imglist" / "b" / "test_x.txt").write_text("a/0.png -1\n")
    assert fp() not in (first, replaced, deleted)


def test_id_lists_with_ood_labels_and_ood_sets_load_as_streamed_files(tmp_path, cfg_factory):
    from c2ir.data import load_id, load_ood

    _tree(tmp_path, "a/0.png -1\na/1.png -1\n")
    (tmp_path / "benchmark_imglist" / "b" / "test_id.txt").write_text("a/0.png 0\na/1.png 1\n")
    cfg = cfg_factory(["data=openood_cifar10", f"paths.data_root={tmp_path}",
                       "data.test_split=benchmark_imglist/b/test_id.txt", "ood=[openood_cifar10]",
                       "ood.tin.imglist=benchmark_imglist/b/test_x.txt"])
    ds = load_id(cfg.data, "test")
    assert len(ds) == 2 and ds.labels.tolist() == [0, 1] and ds.image(0).shape == (3, 32, 32)
    ood = load_ood("tin", cfg.ood.tin, cfg.data)
    assert len(ood) == 2 and ood.labels is None
    cfg.data.test_split = "benchmark_imglist/b/test_x.txt"
    with pytest.raises(C2IRError, match="has OOD labels"):
        load_id(cfg.data, "test")


def test_short_side_center_crop_is_openood_cifar_test_transform():
    """Resize(32) (shorter side, bilinear) then CenterCrop(32), as torchvision computes it; a square 32 px image
    passes unchanged, and it differs from the 0.875-ratio ImageNet mode."""
    import torchvision.transforms as T

    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (45, 60, 3), dtype=np.uint8))
    want = T.Compose([T.Resize(32, interpolation=T.InterpolationMode.BILINEAR), T.CenterCrop(32)])(img)
    got = resize_or_crop(img, 32, "short_side_center_crop", None)
    assert got.size == (32, 32) and np.array_equal(np.asarray(got), np.asarray(want))
    assert not np.array_equal(np.asarray(got), np.asarray(resize_or_crop(img, 32, "resize_center_crop", None)))
    square = Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8))
    assert np.array_equal(np.asarray(resize_or_crop(square, 32, "short_side_center_crop", None)), np.asarray(square))
