"""scripts/c2ir_select.py: the proxy outliers and folds of the data-free selection, on tiny tensors."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def sel():
    sys.path.insert(0, str(ROOT / "scripts"))
    spec = importlib.util.spec_from_file_location("c2ir_select", ROOT / "scripts" / "c2ir_select.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_patch_permutation_keeps_the_patches(sel):
    x = torch.arange(2 * 1 * 8 * 8, dtype=torch.float32).reshape(2, 1, 8, 8)
    y = sel.patch_permuted(x, grid=4, seed=0)
    assert not torch.equal(x, y)
    for i in range(2):   # same 2x2 patches, in another order
        tiles = lambda t: sorted(tuple(t[0, r:r + 2, c:c + 2].flatten().tolist())
                                 for r in range(0, 8, 2) for c in range(0, 8, 2))
        assert tiles(x[i]) == tiles(y[i])


def test_mixed_pairs_other_classes_and_folds_split_each_class(sel):
    x = torch.rand(12, 1, 4, 4)
    y = torch.arange(12) % 3
    m = sel.mixed(x, y, seed=0)
    partner = [[j for j in range(12) if torch.allclose(2 * m[i] - x[i], x[j])] for i in range(12)]
    assert all(p and y[p[0]] != y[i] for i, p in enumerate(partner))
    a, b = sel.folds(y)
    assert len(a) == len(b) == 6 and set(a.tolist()).isdisjoint(b.tolist())
    assert torch.bincount(y[a]).tolist() == [2, 2, 2]
    assert sel.blurred(x).shape == x.shape
