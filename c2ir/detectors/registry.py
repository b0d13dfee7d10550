"""Where detectors are found: each class registers itself in its own file, configs name them.

    @register_detector("energy")
    class Energy(Detector): ...

`detector_types()` imports every module of the `c2ir.detectors` package, so a new detector is
one file (with the decorator) plus one `configs/detectors/<name>.yaml` that selects it by
`type` and holds only overrides of its typed defaults; nothing else lists detectors
(docs/ARCHITECTURE.md, "Add a detector"). `detector_names()` are the config names (what
`detectors=[...]`, `c2ir.detector(name)` and the reports use), each checked against a
registered type.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any, TypeVar

from omegaconf import OmegaConf

from c2ir.config import config_dir
from c2ir.detectors.base import Detector
from c2ir.errors import C2IRError
from c2ir.inputs import check_detector_params, param_type_problem

D = TypeVar("D", bound=type[Detector])
_TYPES: dict[str, type[Detector]] = {}


def register_detector(name: str) -> Callable[[D], D]:
    """Class decorator: `name` is the `type:` a detector config selects it by."""
    def add(cls: D) -> D:
        known = _TYPES.get(name)
        if known is not None and (known.__module__, known.__qualname__) != (cls.__module__, cls.__qualname__):
            raise C2IRError(f"detector type {name!r} is registered twice ({known.__module__} and {cls.__module__})")
        _TYPES[name] = cls
        cls.type_name = name
        return cls
    return add


@lru_cache(maxsize=1)
def _discover() -> None:
    """Import every module of the package once: their decorators fill the registry."""
    import c2ir.detectors as package

    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        importlib.import_module(f"{package.__name__}.{info.name}")


def detector_types() -> dict[str, type[Detector]]:
    """{type name: class} of every registered detector (discovered from the package's modules)."""
    _discover()
    return dict(sorted(_TYPES.items()))


def _config_files() -> dict[str, Any]:
    return {p.stem: p for p in sorted((config_dir() / "detectors").glob("*.yaml"))}


def detector_names() -> list[str]:
    """Config names of the zoo's detectors (`configs/detectors/*.yaml`)."""
    return sorted(_config_files())


def detector_config(name: str) -> dict[str, Any]:
    """The overrides `configs/detectors/<name>.yaml` sets, with its `type`."""
    path = _config_files().get(name)
    if path is None:
        raise C2IRError(f"unknown detector {name!r}; choose one of: {', '.join(detector_names())}")
    cfg = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    if not isinstance(cfg, dict) or not isinstance(cfg.get(name), dict):
        raise C2IRError(f"{path} must hold one mapping named {name!r} (its type and parameter overrides)")
    return dict(cfg[name])


def build_detector(name: str, cfg: Mapping[str, Any], **extra: Any) -> Detector:
    """Instantiate detector `name` from its `detectors.<name>` config (`type` + parameter overrides).

    `extra` are values the caller supplies from elsewhere (e.g. the CLI's `ipm=` group); they are
    passed only to detector types whose constructor declares them. A parameter the type does not
    declare is an error that names the valid ones.
    """
    params = dict(cfg)
    kind = params.pop("type", name)
    types = detector_types()
    if kind not in types:
        raise C2IRError(f"detector {name}: unknown type {kind!r}; choose one of {sorted(types)}")
    cls = types[kind]
    who = name if name == kind else f"{name} ({kind})"   # "c2ir_paper (c2ir)", but not "c2ir (c2ir)"
    valid = cls.parameters()
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise C2IRError(f"detector {who}: unknown parameter(s) {', '.join(unknown)}; "
                        f"valid: {', '.join(valid) or 'none'}")
    params = {**{k: v for k, v in extra.items() if k in valid}, **params}  # the detector's own config wins
    for key, value in params.items():
        problem = param_type_problem(valid[key], value)
        if problem:
            raise C2IRError(f"detector {who}: {key}={value!r} is not valid: it must be {problem}; its default "
                            f"is {valid[key].default!r} (CLI: ++detectors.{name}.{key}=..., "
                            f"API: c2ir.detector({name!r}, model, {key}=...))")
    try:
        det = cls(name, **params)
    except (TypeError, ValueError) as exc:  # e.g. k='abc': int() of a string
        raise C2IRError(f"detector {who}: a parameter has a value of the wrong type ({exc}); "
                        f"valid parameters and defaults: {cls.defaults()}") from None
    check_detector_params(det)
    return det
