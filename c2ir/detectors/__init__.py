"""Detector registry: a method = one class in its own file (typed keyword-only parameters with
defaults) + one entry here + one config file in configs/detectors/ that only overrides defaults."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from c2ir.detectors.ash import ASH
from c2ir.detectors.base import Detector, FitData
from c2ir.detectors.c2ir import C2IR
from c2ir.detectors.dice import DICE
from c2ir.detectors.energy import Energy
from c2ir.detectors.fdbd import FDBD
from c2ir.detectors.entropy import Entropy
from c2ir.detectors.gaia import GAIAA, GAIAZ
from c2ir.detectors.gen import GEN
from c2ir.detectors.gradnorm import GradNorm
from c2ir.detectors.kl_matching import KLMatching
from c2ir.detectors.knn import KNN
from c2ir.detectors.mahalanobis import Mahalanobis
from c2ir.detectors.maxlogit import MaxLogit
from c2ir.detectors.msp import MSP
from c2ir.detectors.nac import NAC
from c2ir.detectors.nci import NCI
from c2ir.detectors.nmd import NMD
from c2ir.detectors.odin import ODIN
from c2ir.detectors.react import ReAct
from c2ir.detectors.scale import SCALE
from c2ir.detectors.vim import ViM
from c2ir.detectors.weiper import WeiPer
from c2ir.errors import C2IRError
from c2ir.validation import check_detector_params

DETECTOR_TYPES: dict[str, type[Detector]] = {
    "msp": MSP, "maxlogit": MaxLogit, "energy": Energy, "odin": ODIN, "nmd": NMD, "c2ir": C2IR,
    "mahalanobis": Mahalanobis, "knn": KNN, "react": ReAct,
    "entropy": Entropy, "gen": GEN, "gradnorm": GradNorm, "ash": ASH, "scale": SCALE,
    "dice": DICE, "kl_matching": KLMatching, "vim": ViM, "gaia_a": GAIAA, "gaia_z": GAIAZ,
    "nac": NAC, "fdbd": FDBD, "nci": NCI, "weiper": WeiPer,
}


def build_detector(name: str, cfg: Mapping[str, Any], **extra: Any) -> Detector:
    """Instantiate detector `name` from its `detectors.<name>` config (`type` + parameter overrides).

    `extra` are values the caller supplies from elsewhere (e.g. the CLI's `ipm=` group); they are
    passed only to detector types whose constructor declares them. A parameter the type does not
    declare is an error that names the valid ones.
    """
    params = dict(cfg)
    kind = params.pop("type", name)
    if kind not in DETECTOR_TYPES:
        raise C2IRError(f"detector {name}: unknown type {kind!r}; choose one of {sorted(DETECTOR_TYPES)}")
    cls = DETECTOR_TYPES[kind]
    valid = cls.parameters()
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise C2IRError(f"detector {name} ({kind}): unknown parameter(s) {', '.join(unknown)}; "
                        f"valid: {', '.join(valid) or 'none'}")
    params = {**{k: v for k, v in extra.items() if k in valid}, **params}  # the detector's own config wins
    try:
        det = cls(name, **params)
    except (TypeError, ValueError) as exc:  # e.g. k='abc': int() of a string
        raise C2IRError(f"detector {name} ({kind}): a parameter has a value of the wrong type ({exc}); "
                        f"valid parameters and defaults: {cls.defaults()}") from None
    check_detector_params(det)
    return det


__all__ = ["Detector", "FitData", "build_detector", "DETECTOR_TYPES"]
