"""c2ir: data-free OOD detection by class-conditional impressions reappearing (Chen et al., ICASSP 2023).

The public API (docs/API.md):

    import c2ir
    det = c2ir.C2IR(model, num_classes=10, input_shape=(3, 32, 32), mean=MEAN, std=STD).fit()
    det.score(x), det.predict(x), det.save("fitted/"), c2ir.C2IR.load("fitted/", model)
    c2ir.detector("energy", model), c2ir.detector("mahalanobis", model).fit(id_loader)

The API names load on first use, so `c2ir --help` does not pay for importing torch.
"""

from __future__ import annotations

from typing import Any

from c2ir.version import __version__

_API = {"C2IR", "Impressions", "OODDetector", "detector", "detector_names", "load_detector"}
_ERRORS = {"C2IRError", "NotFittedError"}
__all__ = sorted(_API | _ERRORS) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _API:
        from c2ir import api

        return getattr(api, name)
    if name in _ERRORS:
        from c2ir import errors

        return getattr(errors, name)
    raise AttributeError(f"module 'c2ir' has no attribute {name!r}")
