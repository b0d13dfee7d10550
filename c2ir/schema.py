"""The configuration, declared once: dataclasses that are the schema and the defaults.

Each group of the composed config has a dataclass here. Its field types are the types,
its defaults the defaults, and its fields the closed set of keys. The range and the
choices of a field, beyond what its type says, are metadata on the field (`setting`),
checked by the one validator (`c2ir.validation`). `register()` puts these dataclasses
into Hydra's ConfigStore: `c2ir_schema` is the root config's schema (every single-shape
group with its defaults), `synth/default`, `train/default`, the `mgi=` options, and one
base per model architecture (`model/base/<arch>`, `model/small_cnn`, ...). YAML files
under configs/ hold only presets that differ from these defaults. The Python API takes
its keyword defaults from the same classes (`SynthConfig()`, `ScoreConfig.tpr`, ...).

Data sets (`data=`, `ood.<set>`) are presets by nature: their values live in their YAML
files, and `DataConfig` / `OODConfig` declare their keys, types and ranges.

`neutral` marks a field declared after artifacts were cached: at that value the field stays
out of cache keys (so declaring it did not invalidate every cache), at any other value it
enters keys like any field (c2ir.graph).

This module imports neither torch nor Hydra's runtime: a bad value is reported in about a
second.
"""

from __future__ import annotations

from dataclasses import MISSING as NO_DEFAULT
from dataclasses import dataclass, field
from typing import Any

from omegaconf import II, MISSING

RESIZE_MODES = ("resize", "center_crop", "random_crop", "resize_center_crop", "short_side_center_crop")  # = c2ir.data.transforms
OOD_GROUPS = ("near", "far")  # `ood.<set>.group`: OpenOOD's near-OOD / far-OOD means (c2ir.groups)
MGI_METHODS = ("grad_abs", "grad_x_act", "uniform")                          # = c2ir.mgi
UNSET = object()


def setting(default: Any = NO_DEFAULT, *, factory: Any = NO_DEFAULT, lo: float | None = None,
            hi: float | None = None, lo_open: bool = False, hi_open: bool = False, choices: tuple[str, ...] = (),
            length: int | None = None, example: str = "", neutral: Any = UNSET) -> Any:
    """A dataclass field with its valid range (`lo`/`hi`, open ends), `choices`, list `length`, an example
    for error messages and its key-`neutral` value (module docstring)."""
    meta = {"lo": lo, "hi": hi, "lo_open": lo_open, "hi_open": hi_open, "choices": choices, "length": length,
            "example": example, "neutral": neutral}
    if factory is not NO_DEFAULT:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


SEED_MAX = 2**31 - 1   # every seed fits torch's, numpy's and the derived per-batch seeds' integer types


# ----- synthesis and training ---------------------------------------------------------------------
@dataclass
class SynthConfig:
    """DeepInversion settings (c2ir.impressions). The defaults are `synth=default` and the Python API's:
    20 impressions per class in batches of 200, 50 full-size iterations per batch, Adam lr 0.25 with a
    cosine decay, fused BN statistics: 0.083 of the forward+backward passes of `synth=deepinversion` (the
    default before issue 20: 40 per class, 300 full-size iterations at lr 0.1, hooked statistics), chosen
    by looking at C2IR's OOD test results on the digits model and (at an earlier C2IR) the CIFAR ResNet-20 and
    -32 among settings of at most a tenth of its cost, then checked once, without tuning, on the ResNet-20, -32
    and -44 before it was adopted: fewer impressions, each optimised longer.
    At today's C2IR (section 20's rules) its mean AUROC is within 0.3 of synth=deepinversion's on the digits model
    and the ResNet-20 and 0.64-0.68 lower (FPR95 +2.7 to +3.4) on the ResNet-32 and -44, and above the former
    rule's deepinversion figures on all four (docs/BENCHMARKS.md sections 16, 19 and 20). With 10 classes it is one
    batch, which torchrun cannot split (`synth.batch_size=100` gives two, a different synthesis). `synth=paper` is
    DeepInversion's CIFAR setting, for GPUs.

    The options that cut the cost: `warmup_iterations` (DeepInversion's multi-resolution start: the model
    sees the images 2x average-pooled; `warmup_min_size` skips it for images too small to halve,
    `synth_schedule.phase_iterations`), `lr_schedule` (cosine | linear | constant, `synth_schedule.lr_values`),
    `stop_patience` / `stop_tol` (stop a batch when its loss stops improving, `synth_schedule.plateaued`),
    `bn_stats` (`hooks`: forward hooks + `torch.var_mean`; `fused`: inside the BatchNorm layer, c2ir.fused_bn).
    Their `neutral` values are the code before them (synth=deepinversion keeps the former default's key)."""

    per_class: int = setting(20, lo=1, example="40")
    batch_size: int = setting(200, lo=1, example="200")
    iterations: int = setting(50, lo=1, example="50")   # full-size iterations per batch (after the warm-up)
    lr: float = setting(0.25, lo=0, lo_open=True, example="0.1")
    betas: tuple[float, float] = setting((0.5, 0.9), lo=0, hi=1, hi_open=True, length=2, example="[0.5,0.9]")  # 1: Adam divides by 1 - beta^t
    ce_weight: float = setting(1.0, lo=0, example="1.0")
    bn_weight: float = setting(10.0, lo=0, example="10.0")
    first_bn_multiplier: float = setting(10.0, lo=0, example="10.0")
    bn_reduce: str = setting("mean", choices=("sum", "mean"))  # mean: BN term averaged over layers (any depth)
    tv_weight: float = setting(2.5e-5, lo=0, example="2.5e-5")
    l2_weight: float = setting(3e-8, lo=0, example="3e-8")
    jitter: int = setting(2, lo=0, example="2")
    flip: bool = True
    seed: int = setting(0, lo=0, hi=SEED_MAX, example="0")
    lr_schedule: str = setting("cosine", choices=("cosine", "linear", "constant"), neutral="cosine")  # = synth_schedule.SCHEDULES
    # >0: DeepInversion's multi-resolution warm-up, this many iterations at half resolution first
    warmup_iterations: int = setting(0, lo=0, neutral=0, example="60")   # synth=multires; DeepInversion's ImageNet setting: 2000
    warmup_min_size: int = setting(16, lo=1, neutral=16, example="16")   # px of the half-size image, at least
    stop_patience: int = setting(0, lo=0, neutral=0, example="20")   # 0: every batch runs all its iterations
    stop_tol: float = setting(0.01, lo=0, hi=1, neutral=0.01, example="0.01")
    bn_stats: str = setting("fused", choices=("hooks", "fused"), neutral="hooks")

    @classmethod
    def from_cfg(cls, cfg: Any) -> "SynthConfig":
        """The settings of a `synth` config node (or mapping); keys this class does not have are ignored."""
        kwargs = {k: cfg[k] for k in cls.__dataclass_fields__ if k in cfg}
        if "betas" in kwargs:
            kwargs["betas"] = tuple(float(b) for b in kwargs["betas"])
        return cls(**kwargs)


@dataclass
class SynthSettings(SynthConfig):
    """`synth=`: SynthConfig with the run's data and seed, plus how (not what) the CLI computes."""

    jitter: int = setting(II("data.jitter"), lo=0, example="2")
    flip: bool = II("data.flip_invariant")
    seed: int = setting(II("seed"), lo=0, hi=SEED_MAX, example="0")   # default: the run's seed (c2ir run -m seed=0,1,2)
    # in the synthesis key except at "none" (lower precision changes the impressions on a GPU: a bf16 run must not
    # be served an fp32 run's artifact, nor the reverse); channels_last and compile only change the speed
    autocast: str = setting("none", choices=("none", "bf16", "fp16"), neutral="none")
    channels_last: bool = False
    compile: bool = False


@dataclass
class TrainConfig:
    """`train=`: SGD (Nesterov) with a one-cycle learning rate, pad-crop and flip augmentation (c2ir.training)."""

    epochs: int = setting(20, lo=1, example="20")
    batch_size: int = setting(64, lo=1, example="64")
    lr: float = setting(0.05, lo=0, lo_open=True, example="0.05")
    warmup: float = setting(0.15, lo=0, hi=1, example="0.15")
    weight_decay: float = setting(5e-4, lo=0, example="5e-4")
    finetune: bool = False   # with model.checkpoint: fine-tune it and use the result downstream
    pad: int | None = setting(None, lo=0, neutral=None, example="4")   # random-crop padding; null: crop_pad's rule

    def crop_pad(self, image_size: int) -> int:
        """Padding of the random-crop augmentation: `pad`, or max(1, image_size // 8) when it is null."""
        return max(1, int(image_size) // 8) if self.pad is None else int(self.pad)


# ----- detection ------------------------------------------------------------------------------------
@dataclass
class IPMConfig:
    """`ipm=`: which IPM C2IR uses and its random constants (passed to C2IR's parameters)."""

    name: str = setting("mean_standardized", example="mean_standardized")
    seed: int = setting(0, lo=0, hi=SEED_MAX, example="0")
    projections: int | None = setting(None, lo=1, neutral=None, example="64")  # sliced_wasserstein; null: C2IR's


@dataclass
class MGIConfig:
    """`mgi=`: how C2IR weights its layers from gradients on the impressions (c2ir.mgi)."""

    method: str = setting("grad_abs", choices=MGI_METHODS)


@dataclass
class FeaturesConfig:
    spatial_grid: int = setting(4, lo=0, example="4")   # spatial vectors per image (grid x grid), distribution IPMs
    # union: one cached pass per dataset records every layer set of the model (+ spatial vectors when a detector may
    # use them), so layer_set= / ipm= sweeps reuse it; configured: only this run's layers (large data sets)
    capture: str = setting("union", choices=("union", "configured"))


@dataclass
class CollectStatsConfig:
    compare_with_id: bool = False   # also measure the impressions' class means against real ID training data
    max_spatial_per_class: int = setting(512, lo=0, example="512")


@dataclass
class EvaluateConfig:
    max_train_samples: int | None = setting(5000, lo=1, example="5000")  # ID training images full access fits on


@dataclass
class ReportConfig:
    # report.html and its plots in each run directory; false (large sweeps): only results.md/csv/json, the
    # impressions grid and the terminal table (`c2ir report <sweep dir>` reads the tables)
    figures: bool = True
    # a benchmark of c2ir/published/openood_v15.csv (set by experiment=openood_*): its published rows beside
    # the measured ones on report.html, labelled as another model's
    published: str | None = setting(None, example="openood_cifar10")


@dataclass
class MetricsConfig:
    """Which class FPR95 takes as positive: id (ODIN, Mahalanobis, C2IR: OOD false-positive rate at 95% ID
    TPR; default) or ood (OpenOOD v1.5: ID false-positive rate at 95% OOD TPR); named in every header."""

    fpr_positive: str = setting("id", choices=("id", "ood"), neutral="id")


@dataclass
class ScoreConfig:
    """`c2ir score`: the folder, the detector, and `tpr`, the share of ID inputs its data-free threshold aims to keep
    (`c2ir.threshold`: for `c2ir`, a lower quantile of the softened held-back impressions)."""

    input: str | None = setting(None, example="path/to/images")
    detector: str = setting("c2ir", example="c2ir")
    tpr: float = setting(0.95, lo=0, hi=1, lo_open=True, hi_open=True, example="0.95")
    resize: str = setting("resize", choices=("resize", "center_crop"))


@dataclass
class PathsConfig:
    data_root: str = "${oc.env:C2IR_DATA_ROOT,'~/.cache/c2ir/datasets'}"


# ----- models: one base per architecture ------------------------------------------------------------
@dataclass
class ModelConfig:
    """What every model has: the architecture, its classes and input, normalisation, head and weights."""

    arch: str = MISSING
    name: str = MISSING
    num_classes: int = setting(II("data.num_classes"), lo=1, example="10")
    in_channels: int = setting(II("data.channels"), lo=1, example="3")
    mean: list[float] = II("data.mean")
    std: list[float] = setting(II("data.std"), lo=0, lo_open=True, example="[0.25]")
    head: str | None = None           # the classifier module (None: the last Linear)
    checkpoint: str | None = None
    trust_checkpoint: bool = False    # allow checkpoints that need pickle (not weights_only)
    # set by an experiment whose weights cannot be trained here: what checkpoint it needs (an error without one)
    require_checkpoint: str | None = None
    layer_sets: dict[str, list[str]] = MISSING   # name -> module-name regexes, or [auto]; `layer_set=` picks one


@dataclass
class SmallCNNConfig(ModelConfig):
    """Small BatchNorm CNN (embedded default and tests); trained by the `train` stage."""

    arch: str = "small_cnn"
    name: str = "small_cnn"
    width: int = setting(16, lo=1, example="16")
    head: str | None = "fc"
    layer_sets: dict[str, list[str]] = setting(factory=lambda: {"default": ["act1", "act2", "act3"],  # each BN-ReLU
                                                                "last": ["act3"]})


_IMAGENET_MEAN, _IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


@dataclass
class CifarResNetConfig(ModelConfig):
    """CIFAR ResNet-(6n+2) (model/resnet{20,32,44,56,110}.yaml add name, depth, the last block of each stage)."""

    arch: str = "cifar_resnet"
    depth: int = setting(MISSING, lo=8, example="20")
    mean: list[float] = setting(factory=lambda: list(_IMAGENET_MEAN))
    std: list[float] = setting(factory=lambda: list(_IMAGENET_STD), lo=0, lo_open=True)
    head: str | None = "linear"
    # default chosen by measurement (docs/BENCHMARKS.md): the middle stage's blocks + the first block of the last
    # stage; the last stage's output is inverted for OOD (OOD inputs sit closer to class means) and is left out
    layer_sets: dict[str, list[str]] = setting(factory=lambda: {
        "default": [r"layer2\.\d+", r"layer3\.0"], "all": ["stem_act", r"layer\d+\.\d+"],
        "blocks": [r"layer\d+\.\d+"], "last_stage": [r"layer3\.\d+"],
        "bn_relu": ["stem_act", r"layer\d+\.\d+\.act1", r"layer\d+\.\d+"]})


@dataclass
class ResNetConfig(ModelConfig):
    """ResNet-18/34, CIFAR layout (3x3 stem, layer1..4, linear); key-compatible with the Mahalanobis release
    (model/openood_resnet18_32x32.yaml: OpenOOD v1.5's ResNet18_32x32, the same layout)."""

    arch: str = setting(MISSING, choices=("resnet18", "resnet34", "openood_resnet18_32x32"))
    mean: list[float] = setting(factory=lambda: [0.4914, 0.4824, 0.4467])   # the release's CIFAR statistics
    std: list[float] = setting(factory=lambda: [0.2471, 0.2435, 0.2616], lo=0, lo_open=True)
    head: str | None = "linear"
    layer_sets: dict[str, list[str]] = setting(factory=lambda: {
        "default": [r"layer3\.\d+", r"layer4\.0"],   # by analogy with the measured CIFAR ResNet-20 choice
        "all": ["stem_act", r"layer\d+\.\d+"], "blocks": [r"layer\d+\.\d+"],
        "stage_outputs": ["stem_act", r"layer1\.\d+", r"layer4\.\d+"], "last_stage": [r"layer4\.\d+"]})


@dataclass
class WideResNetConfig(ModelConfig):
    """WideResNet-depth-k (Outlier Exposure / Energy-OOD layout)."""

    arch: str = "wide_resnet"
    depth: int = setting(MISSING, lo=10, example="28")
    widen_factor: int = setting(MISSING, lo=1, example="10")
    drop_rate: float = setting(0.0, lo=0, hi=1, hi_open=True, neutral=0.0, example="0.3")
    head: str | None = "fc"
    layer_sets: dict[str, list[str]] = setting(factory=lambda: {
        "default": ["conv1", r"block\d\.layer\.\d+", "relu"], "blocks": [r"block\d\.layer\.\d+"]})


@dataclass
class DenseNetConfig(ModelConfig):
    """DenseNet-BC (ODIN / Energy-OOD `DenseNet3` layout); the defaults are DenseNet-BC-100, growth 12."""

    arch: str = "densenet"
    name: str = "densenet100"
    depth: int = setting(100, lo=10, example="100")
    growth: int = setting(12, lo=1, example="12")
    reduction: float = setting(0.5, lo=0, hi=1, lo_open=True, example="0.5")
    head: str | None = "fc"
    layer_sets: dict[str, list[str]] = setting(factory=lambda: {
        "default": ["conv1", "block1", "trans1", "block2", "trans2", "block3", "relu"],
        "transitions": ["trans1", "trans2", "relu"]})


@dataclass
class TorchvisionConfig(ModelConfig):
    """Any torchvision classifier by name: model=torchvision model.name=resnet50. `weights`: a torchvision
    weights name (DEFAULT downloads when online), or null with model.checkpoint."""

    arch: str = "torchvision"
    name: str = "resnet50"
    weights: str | None = "DEFAULT"
    mean: list[float] = setting(factory=lambda: list(_IMAGENET_MEAN))
    std: list[float] = setting(factory=lambda: list(_IMAGENET_STD), lo=0, lo_open=True)
    layer_sets: dict[str, list[str]] = setting(factory=lambda: {
        "default": ["relu", r"layer\d\.\d+"], "blocks": [r"layer\d\.\d+"]})   # torchvision ResNets


@dataclass
class TimmConfig(ModelConfig):
    """Any timm classifier by name: model=timm model.name=<timm model> (`pip install 'c2ir[timm]'`). Weights
    come from model.checkpoint (nothing is downloaded); mean/std: timm's ImageNet default, set the
    normalisation the weights were trained with; layers chosen without data (`[auto]`)."""

    arch: str = "timm"
    name: str = "resnet18"
    mean: list[float] = setting(factory=lambda: list(_IMAGENET_MEAN))
    std: list[float] = setting(factory=lambda: list(_IMAGENET_STD), lo=0, lo_open=True)
    layer_sets: dict[str, list[str]] = setting(factory=lambda: {"default": ["auto"]})


MODEL_SCHEMAS: dict[str, type[ModelConfig]] = {
    "small_cnn": SmallCNNConfig, "cifar_resnet": CifarResNetConfig, "resnet18": ResNetConfig, "resnet34": ResNetConfig,
    "openood_resnet18_32x32": ResNetConfig, "wide_resnet": WideResNetConfig, "densenet": DenseNetConfig,
    "torchvision": TorchvisionConfig, "timm": TimmConfig}


# ----- data sets (presets in YAML) ------------------------------------------------------------------
@dataclass
class DataConfig:
    """Keys of a `data=` option (its values are its YAML preset); which are used depends on `source`."""

    name: str = ""
    source: str = setting("", choices=("sklearn_digits", "torchvision", "imagefolder", "shared", "imglist"))
    dataset: str | None = None
    root: str | None = None
    data_dir: str | None = None        # imglist: the images' folder under root (OpenOOD's layout, c2ir.imglist)
    download: bool = True
    archive: str | None = None
    subdir: str | None = None
    layout: str | None = None
    num_classes: int = setting(10, lo=1, example="10")
    channels: int = setting(3, lo=1, hi=3, example="3")
    image_size: int = setting(32, lo=1, example="32")
    resize: str = setting("resize", choices=RESIZE_MODES)
    mean: list[float] = setting(factory=list, example="[0.5,0.5,0.5]")
    std: list[float] = setting(factory=list, lo=0, lo_open=True, example="[0.25,0.25,0.25]")
    flip_invariant: bool = True
    jitter: int = setting(2, lo=0, example="2")
    seed: int = setting(0, lo=0, hi=SEED_MAX, example="0")
    train_split: str = "train"
    test_split: str = "test"
    max_train_samples: int | None = setting(None, lo=1, example="1000")
    max_test_samples: int | None = setting(None, lo=1, example="1000")


@dataclass
class OODConfig:
    """Keys of one `ood.<set>` (its values are its YAML preset); which are used depends on `source`."""

    source: str = setting("", choices=("folder", "imglist", "torchvision", "noise", "photo_patches", "pixel_shuffled"))
    name: str | None = setting(None, example="textures")   # the column in the results (default: the set's key)
    group: str | None = setting(None, choices=OOD_GROUPS)  # near / far: the set's mean row in the reports
    root: str | None = None
    imglist: str | None = None         # imglist: the list file under root
    data_dir: str | None = None
    archive: str | None = None
    subdir: str | None = None
    dataset: str | None = None
    split: str | None = None
    download: bool = False
    url: str | None = None
    md5: str | None = None
    layout: str | None = None
    resize: str = setting("resize", choices=RESIZE_MODES)
    kind: str = setting("gaussian", choices=("gaussian", "uniform"))
    max_samples: int | None = setting(None, lo=1, example="2000")
    seed: int = setting(0, lo=0, hi=SEED_MAX, example="0")


# ----- the root --------------------------------------------------------------------------------------
@dataclass
class C2IRConfig:
    """The composed config. Groups chosen by the defaults list of configs/config.yaml fill model, data,
    ood, detectors; the others have their defaults here."""

    stage: str = "run"                  # set by `c2ir <stage>`
    seed: int = setting(0, lo=0, hi=SEED_MAX, example="0")
    device: str = setting("auto", example="cpu")            # auto | cpu | cuda | cuda:N
    threads: int | None = setting(None, lo=1, example="4")  # torch CPU threads (null: torch's default)
    batch_size: int = setting(256, lo=1, example="256")     # forward-pass batch size (features, MGI, ODIN)
    # image-decoding processes of file/array datasets (null: one per CPU, at most 8; 0: in-process)
    num_workers: int | None = setting(None, lo=0, example="2")
    layer_set: str = setting("default", example="default")  # a key of model.layer_sets
    cache_root: str = setting("${oc.env:C2IR_CACHE_ROOT,outputs/cache}", example="outputs/cache")
    output_dir: str | None = setting(None, example="outputs/runs/latest")  # report folder outside Hydra (tests)
    paths: PathsConfig = setting(factory=PathsConfig)
    model: Any = MISSING
    data: Any = MISSING
    ood: dict[str, Any] = setting(factory=dict)
    synth: SynthSettings = setting(factory=SynthSettings)
    ipm: IPMConfig = setting(factory=IPMConfig)
    mgi: MGIConfig = setting(factory=MGIConfig)
    detectors: dict[str, Any] = setting(factory=dict)
    train: TrainConfig = setting(factory=TrainConfig)
    features: FeaturesConfig = setting(factory=FeaturesConfig)
    collect_stats: CollectStatsConfig = setting(factory=CollectStatsConfig)
    evaluate: EvaluateConfig = setting(factory=EvaluateConfig)
    report: ReportConfig = setting(factory=ReportConfig)
    metrics: MetricsConfig = setting(factory=MetricsConfig)
    score: ScoreConfig = setting(factory=ScoreConfig)


def register() -> None:
    """Put the schemas and the default options into Hydra's ConfigStore (idempotent)."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="c2ir_schema", node=C2IRConfig)
    cs.store(group="synth", name="default", node=SynthSettings)
    cs.store(group="train", name="default", node=TrainConfig)
    for method in MGI_METHODS:
        cs.store(group="mgi", name=method, node=MGIConfig(method=method))
    cs.store(group="model", name="small_cnn", node=SmallCNNConfig)
    cs.store(group="model", name="densenet100", node=DenseNetConfig)
    cs.store(group="model", name="torchvision", node=TorchvisionConfig)
    cs.store(group="model", name="timm", node=TimmConfig)
    for name, base in {"cifar_resnet": CifarResNetConfig, "resnet": ResNetConfig, "wide_resnet": WideResNetConfig}.items():
        cs.store(group="model/base", name=name, node=base)   # the YAML presets build on these (`base/<arch>@_here_`)
