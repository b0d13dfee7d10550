"""c2ir.proxies: the proxy outliers and folds of C2IR's data-free weight selection, on tiny tensors."""

import pytest
import torch

from c2ir import proxies as sel


def test_patch_permutation_keeps_the_patches():
    x = torch.arange(2 * 1 * 8 * 8, dtype=torch.float32).reshape(2, 1, 8, 8)
    y = sel.patch_permuted(x, grid=4, seed=0)
    assert not torch.equal(x, y)
    for i in range(2):   # same 2x2 patches, in another order
        tiles = lambda t: sorted(tuple(t[0, r:r + 2, c:c + 2].flatten().tolist())
                                 for r in range(0, 8, 2) for c in range(0, 8, 2))
        assert tiles(x[i]) == tiles(y[i])


def test_mixed_pairs_other_classes_and_folds_split_each_class():
    x = torch.rand(12, 1, 4, 4)
    y = torch.arange(12) % 3
    m = sel.mixed(x, y, seed=0)
    partner = [[j for j in range(12) if torch.allclose(2 * m[i] - x[i], x[j])] for i in range(12)]
    assert all(p and y[p[0]] != y[i] for i, p in enumerate(partner))
    a, b = sel.folds(y)
    assert len(a) == len(b) == 6 and set(a.tolist()).isdisjoint(b.tolist())
    assert torch.bincount(y[a]).tolist() == [2, 2, 2]
    assert sel.blurred(x).shape == x.shape


@pytest.mark.parametrize("shape,size,sigma", [((5, 1, 8, 8), 3, 0.5), ((3, 3, 32, 32), 5, 2.0)])
def test_gaussian_blur_is_torchvisions_to_the_bit(shape, size, sigma):
    """Written without torchvision (importing it costs a process seconds); same values as its gaussian_blur."""
    import torchvision.transforms.functional as TF

    from c2ir.proxies import gaussian_blur

    x = torch.rand(*shape, generator=torch.Generator().manual_seed(0))
    assert torch.equal(gaussian_blur(x, size, sigma), TF.gaussian_blur(x, [size, size], [sigma, sigma]))
