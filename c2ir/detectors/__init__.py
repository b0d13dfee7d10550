"""The detectors: one class per file, each registered by `@register_detector` where it is written."""

from c2ir.detectors.base import Detector, FitData
from c2ir.detectors.registry import (build_detector, detector_config, detector_names, detector_types,
                                     register_detector)

__all__ = ["Detector", "FitData", "build_detector", "detector_config", "detector_names", "detector_types",
           "register_detector"]
