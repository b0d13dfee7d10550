"""Any c2ir detector as an OpenOOD v1.5 postprocessor (Zhang et al., "OpenOOD v1.5: Enhanced
Benchmark for Out-of-Distribution Detection", 2023; github.com/Jingkang50/OpenOOD).

    from openood.evaluation_api import Evaluator
    from c2ir.integrations.openood import C2IRPostprocessor
    post = C2IRPostprocessor("c2ir", num_classes=10, input_shape=(3, 32, 32), mean=MEAN, std=STD)
    Evaluator(net, id_name="cifar10", postprocessor=post).eval_ood()

The interface is OpenOOD's `BasePostprocessor` (`openood/postprocessors/base_postprocessor.py`):
`setup(net, id_loader_dict, ood_loader_dict)` fits once, `postprocess(net, data) -> (pred, conf)`
scores a batch with higher `conf` = more in-distribution (c2ir's score, higher = more OOD, negated),
and `inference(net, loader)` returns numpy `(pred, conf, label)` over a loader of
`{"data", "label"}` batches. Full-access detectors fit on `id_loader_dict["train"]`; data-free ones
synthesise impressions from `net` and read no loader. OOD loaders are never read at setup, and
OpenOOD's automatic parameter search (which tunes on its OOD validation split) is off
(`APS_mode = False`): the detectors keep their papers' defaults. When OpenOOD is installed the class
derives from its `BasePostprocessor`, so the Evaluator's type check passes; OpenOOD is not on the
package index, so without it a stand-in base with the same methods is used.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

import c2ir

try:
    from openood.postprocessors import BasePostprocessor as _Base
except ImportError:
    class _Base:  # type: ignore[no-redef]
        """Stand-in for OpenOOD's BasePostprocessor (same constructor and attribute)."""

        def __init__(self, config: Any = None) -> None:
            self.config = config


class _Pairs:
    """OpenOOD's `{"data", "label"}` batches as the `(x, y)` pairs c2ir's `fit` reads."""

    def __init__(self, loader: Iterable[dict]) -> None:
        self.loader = loader

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for batch in self.loader:
            yield batch["data"], batch["label"]


def _device(net: nn.Module) -> torch.device:
    return next((p.device for p in net.parameters()), torch.device("cpu"))


class C2IRPostprocessor(_Base):
    """A c2ir detector (any config name of `c2ir.detector_names()`) behind OpenOOD's postprocessor interface.

    Args:
        name: the c2ir detector, e.g. `c2ir`, `knn` (fits on the ID train loader), `nac_imp` (data-free).
        config: OpenOOD's config object, kept as `self.config` (unused).
        **kwargs: as `c2ir.detector` (num_classes, input_shape, mean, std for impressions and a data-free
            threshold; the detector's own parameters).
    """

    APS_mode = False              # no automatic parameter search on OpenOOD's OOD validation split
    hyperparam_search_done = True
    args_dict: dict = {}

    def __init__(self, name: str = "c2ir", config: Any = None, **kwargs: Any) -> None:
        super().__init__(config)
        self.name, self.kwargs = name, kwargs
        self.detector: Any = None
        self.setup_flag = False

    def setup(self, net: nn.Module, id_loader_dict: dict, ood_loader_dict: dict, **_: Any) -> None:
        """Fit once on `id_loader_dict["train"]` (full access) or on impressions of `net` (data-free)."""
        if self.setup_flag:
            return
        train = id_loader_dict.get("train") if id_loader_dict else None
        self.detector = c2ir.detector(self.name, net, **self.kwargs)
        self.detector.fit(None if train is None else _Pairs(train))
        self.setup_flag = True

    def postprocess(self, net: nn.Module, data: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """(predicted class, confidence) of a batch; higher confidence = more in-distribution."""
        if self.detector is None:
            raise c2ir.C2IRError(f"{self.name}: call setup(net, id_loader_dict, ood_loader_dict) before postprocess")
        with torch.no_grad():
            pred = net(data).argmax(dim=1)
        conf = -self.detector.score(data)
        return pred, conf.to(pred.device)

    def inference(self, net: nn.Module, data_loader: Iterable[dict], progress: bool = True
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(pred, conf, label) numpy arrays over a loader of `{"data", "label"}` batches, as OpenOOD's."""
        preds, confs, labels = [], [], []
        for batch in tqdm(data_loader, desc=self.name, disable=not progress or not sys.stderr.isatty()):
            pred, conf = self.postprocess(net, batch["data"].to(_device(net)))
            preds.append(pred.cpu())
            confs.append(conf.double().cpu())
            labels.append(torch.as_tensor(batch["label"]).cpu())
        return (torch.cat(preds).numpy().astype(int), torch.cat(confs).numpy(),
                torch.cat(labels).numpy().astype(int))

    def set_hyperparam(self, hyperparam: list) -> None:
        """OpenOOD's search hook: nothing is searched (`APS_mode = False`)."""

    def get_hyperparam(self) -> dict:
        return dict(self.kwargs)


__all__ = ["C2IRPostprocessor"]
