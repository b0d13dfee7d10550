"""Checks of what the Python API and the detectors are given: one `C2IRError` line naming the argument and the fix.

Why: the CLI checks every config value before any compute (`c2ir.validation`, torch-free); the API and the detector
classes take values from user code, where a bad shape, dtype or parameter otherwise surfaces as a raw
torch error deep inside a forward pass, or, worse, as NaN scores that `predict` calls in-distribution.
Every function here is pure (no I/O but `check_writable_folder`), so it is tested on tiny inputs;
`c2ir/api.py` and `detectors/` call them in one line each.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import math
import numbers
import operator
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from c2ir.errors import C2IRError

log = logging.getLogger(__name__)

_OPS = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le}
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


# ----- numbers and detector parameters ---------------------------------------------------------------
def check_limit(what: str, value: Any, rule: str, fix: str = "") -> None:
    """`value` must satisfy `rule`, e.g. "> 0" or ">= 1" (and be a finite number)."""
    op, bound = rule.split()
    ok = (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
          and _OPS[op](value, float(bound)))
    if not ok:
        raise C2IRError(f"{what}={value!r} is not valid: it must be a number {rule}{f'; {fix}' if fix else ''}")


def param_type_problem(param: inspect.Parameter, value: Any) -> str:
    """What a value of a number or flag parameter must be, if it is not that ("" when fine or not checked): a
    string or a bool for a number (`float(True)` would pass silently), anything but a bool for a flag."""
    ann = str(param.annotation).replace(" ", "")
    kinds = set(ann.split("|"))
    if value is None:   # null: each detector says what it means (or refuses it) itself
        return ""
    flag = isinstance(value, (bool, np.bool_))
    if kinds & {"float", "int"} and not kinds & {"str", "bool", "Any"}:
        if flag or not isinstance(value, numbers.Real):   # numpy scalars are numbers too
            return "a number" + (" or null" if "None" in kinds else "")
        if "float" not in kinds and not float(value).is_integer():   # int(5.7) would run as 5
            return "a whole number"
    if kinds == {"bool"} and not flag:
        return "true or false"
    return ""


def check_detector_params(det: Any) -> None:
    """Every float parameter of a detector is finite, and each declared limit (`Detector.limits`, e.g.
    `{"temperature": "> 0"}`) holds: a NaN weight or a zero temperature is refused before any compute,
    instead of yielding NaN scores that metrics would turn into AUROC 0 / FPR95 100."""
    defaults = type(det).defaults()
    for name, value in det.params.items():
        fix = (f"its default is {defaults.get(name)!r} (CLI: ++detectors.{det.name}.{name}=..., "
               f"API: c2ir.detector({det.name!r}, model, {name}=...))")
        if isinstance(value, float) and not math.isfinite(value):
            raise C2IRError(f"detector {det.name}: {name}={value!r} is not valid: it must be a finite number; {fix}")
        rule = getattr(det, "limits", {}).get(name)
        if rule is not None and value is not None:
            check_limit(f"detector {det.name}: {name}", value, rule, fix)


# ----- API arguments ---------------------------------------------------------------------------------
API_LIMITS = {"num_classes": ">= 1", "batch_size": ">= 1", "spatial_grid": ">= 0", "max_spatial_per_class": ">= 0",
              "seed": ">= 0"}


def check_api_numbers(**values: Any) -> dict[str, int]:
    """Integer arguments of the API (`batch_size=256`, ...) within `API_LIMITS`, as ints."""
    out = {}
    for name, value in values.items():
        if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
                or float(value) != int(value)):
            raise C2IRError(f"{name}={value!r} is not valid: it must be an integer {API_LIMITS[name]}")
        check_limit(name, value, API_LIMITS[name])
        out[name] = int(value)
    return out


def first_layer(model: nn.Module) -> nn.Module | None:
    """The model's first convolution or Linear layer (None if it has neither)."""
    for m in model.modules():
        if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)):
            return m
    return None


def model_input_channels(model: nn.Module) -> int | None:
    """Input channels of the model's first convolution (None if it starts with something else)."""
    m = first_layer(model)
    return int(m.in_channels) if isinstance(m, nn.modules.conv._ConvNd) else None


def takes_vectors(model: nn.Module) -> bool:
    """The model starts with a Linear layer: its inputs are feature vectors (N, ..., F), not (N, C, H, W) images
    (a tabular or embedding classifier, as pytorch-ood and OpenOOD users also wrap)."""
    return isinstance(first_layer(model), nn.Linear)


def _positive_ints(values: Any) -> tuple[int, ...] | None:
    try:
        shape = tuple(int(v) for v in values)
        return shape if all(v >= 1 and float(v) == float(w) for v, w in zip(shape, values)) else None
    except (TypeError, ValueError):
        return None


def check_input_shape(input_shape: Any, model: nn.Module) -> tuple[int, ...]:
    """(C, H, W) of one input: three positive integers, C equal to the first convolution's input channels; for a
    model that starts with a Linear layer (`takes_vectors`), positive integers ending in its input features or
    holding that many values (a Flatten before the Linear layer)."""
    shape = _positive_ints(input_shape)
    if takes_vectors(model):
        features = int(first_layer(model).in_features)  # type: ignore[union-attr]
        if not shape or features not in (shape[-1], math.prod(shape)):
            raise C2IRError(f"input_shape={input_shape!r} is not valid: the model starts with a Linear layer of "
                            f"{features} input features; pass input_shape=({features},)")
        return shape
    valid = shape is not None and len(shape) == 3
    if not valid:
        raise C2IRError(f"input_shape={input_shape!r} is not valid: it must be (channels, height, width) of one "
                        "input, three positive integers, e.g. input_shape=(3, 32, 32)")
    assert shape is not None
    channels = model_input_channels(model)
    if channels is not None and shape[0] != channels:
        raise C2IRError(f"input_shape={shape} has {shape[0]} channel(s) but the model's first convolution takes "
                        f"{channels}; pass input_shape=({channels}, {shape[1]}, {shape[2]})")
    return shape  # type: ignore[return-value]


def check_normalization(mean: Any, std: Any, channels: int | None) -> tuple[list[float], list[float]]:
    """Per-channel mean and std: one finite number per input channel, every std > 0."""
    out = []
    for what, values in (("mean", mean), ("std", std)):
        try:
            vals = [float(v) for v in values]
        except (TypeError, ValueError):
            raise C2IRError(f"{what}={values!r} is not valid: it must be a list of numbers, one per input "
                            "channel, e.g. [0.5, 0.5, 0.5]") from None
        if channels is not None and len(vals) != channels:
            raise C2IRError(f"{what} has {len(vals)} value(s) but the input has {channels} channel(s) "
                            f"(input_shape); pass {channels} value(s) for {what}")
        if not vals or not all(math.isfinite(v) for v in vals):
            raise C2IRError(f"{what}={values!r} is not valid: every value must be a finite number")
        out.append(vals)
    if not all(v > 0 for v in out[1]):
        raise C2IRError(f"std={std!r} is not valid: every value must be > 0 (inputs are divided by it)")
    return out[0], out[1]


def check_batch(x: Any, input_shape: Sequence[int] | None, what: str = "x", vectors: bool = False) -> torch.Tensor:
    """A batch as the model takes it: a float32/16/bf16 tensor (N, C, H, W) with N >= 1 and, when the
    input shape is known, (C, H, W) equal to it (a NumPy array is taken as the tensor it converts to).
    `vectors` (a model that starts with a Linear layer, `takes_vectors`): (N, ..., F) instead of 4-D."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise C2IRError(f"{what} is a {type(x).__name__}, not a torch.Tensor; pass a (N, C, H, W) float tensor "
                        "(e.g. torch.stack(images))")
    if vectors and x.dim() < 2:
        raise C2IRError(f"{what} has shape {tuple(x.shape)}; pass a batch (N, features) (for one input use "
                        f"{what}.unsqueeze(0))")
    if not vectors and x.dim() != 4:
        hint = f"; for one input use {what}.unsqueeze(0)" if x.dim() == 3 else ""
        raise C2IRError(f"{what} has shape {tuple(x.shape)}; pass a batch (N, C, H, W){hint}")
    if x.shape[0] == 0:
        raise C2IRError(f"{what} is an empty batch (shape {tuple(x.shape)}); pass at least one input")
    if x.dtype not in FLOAT_DTYPES:
        hint = ("uint8 pixels must be normalised first: ((x / 255) - mean) / std" if x.dtype == torch.uint8
                else f"convert it with {what}.float()")
        raise C2IRError(f"{what} has dtype {str(x.dtype).replace('torch.', '')}; pass float32 inputs normalised "
                        f"as the model takes them ({hint})")
    if input_shape is not None and tuple(x.shape[1:]) != tuple(input_shape):
        raise C2IRError(f"{what} has inputs of shape {tuple(x.shape[1:])} but the detector was set up for "
                        f"input_shape={tuple(input_shape)}; resize the inputs or fit with that input_shape")
    return x


def nonfinite_rows(x: torch.Tensor) -> torch.Tensor:
    """(N,) bool: inputs holding a NaN or an infinity (scored +inf, i.e. OOD, never ID)."""
    return ~torch.isfinite(x.reshape(len(x), -1)).all(dim=1)


def nonfinite_problem(scores: Any) -> str | None:
    """'3 of 100 scores are NaN' (or inf), or None when every score is finite."""
    s = np.asarray(scores, dtype=np.float64)
    bad = ~np.isfinite(s)
    if not bad.any():
        return None
    nan, inf = int(np.isnan(s).sum()), int(np.isinf(s).sum())
    kinds = " and ".join(k for k, n in (("NaN", nan), ("infinite", inf)) if n)
    return f"{int(bad.sum())} of {s.size} scores are {kinds}"


def check_labels(labels: torch.Tensor, num_classes: int, what: str = "the DataLoader's labels") -> torch.Tensor:
    """Integer class labels in [0, num_classes)."""
    if labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.dim() != 1:
        raise C2IRError(f"{what} have dtype {str(labels.dtype).replace('torch.', '')} and shape "
                        f"{tuple(labels.shape)}; yield (x, y) batches with y a 1-D tensor of integer class indices")
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise C2IRError(f"{what} go from {int(labels.min())} to {int(labels.max())} but the model predicts "
                        f"{num_classes} classes; labels must be class indices 0..{num_classes - 1}")
    return labels.long()


def check_every_class(labels: torch.Tensor, num_classes: int, what: str) -> None:
    """A training set holds every class (a class without examples is never learned)."""
    missing = sorted(set(range(num_classes)) - set(torch.as_tensor(labels).unique().tolist()))
    if missing:
        raise C2IRError(f"{what}: class(es) {missing[:10]} have no training images (of {num_classes} classes); "
                        "add images of every class, or raise data.max_train_samples if a subset dropped them")


def check_layer_pattern(pattern: str) -> re.Pattern[str]:
    """A compiled module-name regex, or one line naming the bad pattern."""
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise C2IRError(f"layer pattern {pattern!r} is not a valid regular expression ({exc}); "
                        r"escape special characters, e.g. layers=['layer1\.0']") from None


def check_writable_folder(path: Path, what: str) -> Path:
    """`path` is (or can be made) a folder this process can write into: tried, not guessed."""
    from c2ir.validation import writable_problem

    problem = writable_problem(Path(path))
    if problem:
        raise C2IRError(f"{what}: {path} {problem}; pass a writable folder")
    return Path(path)


def model_fingerprint(model: nn.Module) -> str:
    """SHA-256 of a model's state (names, dtypes, shapes and bytes of every parameter and buffer): what a
    saved detector records, so it is never loaded onto other weights."""
    return tensors_fingerprint(model.state_dict())


def tensors_fingerprint(tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 of named tensors: names, dtypes, shapes and raw bytes (any dtype, bfloat16 included)."""
    h = hashlib.sha256()
    for name, t in tensors.items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def not_computable_detectors(scores: dict[str, dict[str, np.ndarray]]) -> dict[str, str]:
    """{detector: why} for detectors with a NaN or infinite score on some set: reported as "not computable",
    never as a metric (a NaN ranks as the lowest score: AUROC 0 / FPR95 100 would look measured)."""
    out = {}
    for det, per_set in scores.items():
        problems = [f"{p} on {s}" for s, v in per_set.items() if (p := nonfinite_problem(v))]
        if problems:
            out[det] = "; ".join(problems) + " (check its parameters, e.g. a temperature or weight)"
            log.warning("detector %s is not computable: %s; no metric is reported for it", det, out[det])
    return out
