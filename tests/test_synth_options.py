"""Issue 20's synthesis options: schedules, plateau stop, cost, progress totals, fused BN statistics,
the synth=deepinversion preset (bit-equal to the code before the options, same cache key) and their checks."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from c2ir.adam import TensorAdam
from c2ir.data.imageset import Normalizer
from c2ir.errors import C2IRError
from c2ir.impressions import (BNStatLoss, SynthConfig, batch_targets, channel_mean_var_reference, last_values,
                              stack_curves, synthesize_batch, total_variation)
from c2ir.models.small_cnn import SmallCNN
from c2ir.models.state import frozen_eval
from c2ir.synth_schedule import lr_values, plateaued, progress_plan, synthesis_cost
from conftest import make_cfg


def _model() -> tuple[torch.nn.Module, Normalizer]:
    """An untrained SmallCNN with non-trivial BN statistics (a few training-mode passes)."""
    torch.manual_seed(0)
    model = SmallCNN(1, 10, 8)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(32, 1, 8, 8) * 1.5 + 0.3)
    return model.eval(), Normalizer([0.3], [0.4])


# ----------------------------------------------------------------------------- pure functions

@pytest.mark.parametrize("iterations,lr", [(1, 0.1), (7, 0.3), (300, 0.1), (30, 0.25)])
def test_cosine_is_torch_cosine_annealing_exactly(iterations, lr):
    x = torch.zeros(1, requires_grad=True)
    opt = torch.optim.Adam([x], lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=iterations, eta_min=0.0)
    seen = []
    for _ in range(iterations):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lr_values("cosine", lr, iterations) == seen  # bit for bit: synth=deepinversion depends on it


def test_linear_and_constant_schedules():
    assert lr_values("linear", 0.4, 4) == pytest.approx([0.4, 0.3, 0.2, 0.1])
    assert lr_values("constant", 0.2, 3) == [0.2, 0.2, 0.2]
    assert lr_values("cosine", 1.0, 4) == pytest.approx([1.0, (1 + math.cos(math.pi / 4)) / 2, 0.5,
                                                         (1 + math.cos(3 * math.pi / 4)) / 2])
    with pytest.raises(ValueError, match="step"):
        lr_values("step", 0.1, 3)


def test_tensor_adam_is_torch_adam_bit_for_bit():
    """Known answer: the first Adam step moves every element by lr (m / sqrt(v) = sign(g) after bias
    correction, up to eps); later steps, with the lr changed every step, equal torch.optim.Adam exactly."""
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(3, 2, 4, 4, generator=g)
    grads = [torch.randn(3, 2, 4, 4, generator=g) for _ in range(6)]
    ours, ref = x0.clone().requires_grad_(True), x0.clone().requires_grad_(True)
    adam, opt = TensorAdam(ours, (0.5, 0.9)), torch.optim.Adam([ref], lr=0.0, betas=(0.5, 0.9), eps=1e-8)
    for i, grad in enumerate(grads):
        lr = 0.3 / (i + 1)
        ours.grad, ref.grad = grad.clone(), grad.clone()
        adam.step(lr)
        opt.param_groups[0]["lr"] = lr
        opt.step()
        if i == 0:
            assert torch.allclose(ours.detach() - x0, -0.3 * grad.sign(), atol=1e-6)
        assert torch.equal(ours, ref)
    adam.zero_grad()
    with pytest.raises(ValueError, match="no gradient"):
        adam.step(0.1)


def test_plateau_detection():
    falling = [10.0, 8.0, 6.0, 5.0, 4.0]
    assert not plateaued(falling, patience=2, tol=0.01)
    flat = [10.0, 5.0, 4.99, 5.01, 4.995]
    assert plateaued(flat, patience=3, tol=0.01)           # best of the last 3 (4.99) vs 5.0 before: 0.2% < 1%
    assert not plateaued(flat, patience=3, tol=0.001)      # ... but > 0.1%
    assert not plateaued(flat, patience=0, tol=0.5)        # patience 0: never
    assert not plateaued(flat[:3], patience=3, tol=0.5)    # not enough history yet
    assert plateaued([1.0, 2.0, 3.0], patience=1, tol=0.0)  # getting worse is no improvement


def test_cost_counts_images_iterations_and_quarter_cost_half_resolution():
    assert synthesis_cost([200, 200], [300, 300]) == 120_000  # synth=deepinversion: 400 impressions x 300
    assert synthesis_cost([200, 100], [20, 10], [40, 0]) == 200 * (20 + 10) + 100 * 10
    with pytest.raises(ValueError):
        synthesis_cost([200], [1, 2])


def test_progress_totals_count_resumed_batches_as_done():
    plan = progress_plan([200, 200, 100], [True, False, False], 30)
    assert (plan.total_iterations, plan.done_iterations) == (90, 30)
    assert (plan.total_impressions, plan.done_impressions) == (500, 200)
    fresh = progress_plan([50, 50], [False, False], 7)
    assert (fresh.done_iterations, fresh.done_impressions, fresh.total_iterations) == (0, 0, 14)


def test_curves_of_early_stopped_batches_are_nan_padded():
    c = stack_curves([{"bn": torch.tensor([3.0, 2.0, 1.0])}, {"bn": torch.tensor([5.0, 4.0])}])
    assert c["bn"].shape == (2, 3) and math.isnan(c["bn"][1, 2])
    assert torch.equal(last_values(c["bn"]), torch.tensor([1.0, 4.0]))


# ----------------------------------------------------------------------------- fused BN statistics

def test_fused_bn_statistics_loss_and_gradient_equal_the_reference():
    """The BN term and its input gradient through the whole model equal hooks + the textbook formula."""
    from c2ir.fused_bn import FusedBNStatLoss

    model, _ = _model()
    x0 = torch.randn(12, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 + 0.5
    out = {}
    with frozen_eval(model):
        for name in ("fused", "reference"):
            x = x0.clone().requires_grad_(True)
            loss_cm = (FusedBNStatLoss(model, 10.0, "mean") if name == "fused"
                       else BNStatLoss(model, 10.0, "mean", channel_mean_var_reference))
            with loss_cm as bn:
                logits = model(x)
                loss = F.cross_entropy(logits, torch.arange(12) % 10) + 3.0 * bn.pop()
            loss.backward()
            out[name] = (logits.detach(), loss.detach(), x.grad)
    for a, b in zip(out["fused"], out["reference"]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert all("forward" not in vars(m) for m in model.modules()), "BN layers get their own forward back"


def test_fused_bn_needs_frozen_parameters():
    from c2ir.fused_bn import FusedBNStatLoss

    model, _ = _model()
    with pytest.raises(C2IRError, match="frozen"), FusedBNStatLoss(model, 1.0, "sum"):
        model(torch.randn(4, 1, 8, 8))
    assert all("forward" not in vars(m) for m in model.modules())


def test_synthesis_with_fused_statistics_follows_the_hooked_one():
    model, norm = _model()
    t = batch_targets(10, 3, 30, 0)
    runs = {s: synthesize_batch(model, norm, t, (1, 8, 8), SynthConfig(iterations=8, jitter=1, bn_stats=s, warmup_iterations=0), seed=2)
            for s in ("hooks", "fused")}
    for k in ("total", "bn", "ce"):
        torch.testing.assert_close(runs["fused"].curves[k], runs["hooks"].curves[k], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(runs["fused"].images, runs["hooks"].images, rtol=0, atol=1e-4)


# ----------------------------------------------------------------------------- options in the loop

def test_plateau_stop_shortens_a_batch_and_reports_its_iterations():
    model, norm = _model()
    t = batch_targets(10, 2, 20, 0)
    full = synthesize_batch(model, norm, t, (1, 8, 8), SynthConfig(iterations=60, lr=0.05, warmup_iterations=0), seed=0)
    cut = synthesize_batch(model, norm, t, (1, 8, 8), SynthConfig(iterations=60, lr=0.05, warmup_iterations=0, stop_patience=5,
                                                                 stop_tol=0.5),
                           seed=0)
    assert full.iterations == 60 and 5 < cut.iterations < 60
    assert torch.equal(cut.curves["total"], full.curves["total"][:cut.iterations])  # same path until it stops


def test_warmup_iterations_run_at_half_resolution_first():
    model, norm = _model()
    t = batch_targets(10, 2, 20, 0)
    cfg = SynthConfig(iterations=4, warmup_iterations=6, warmup_min_size=4)  # 8 px images: 4 px at half size
    res = synthesize_batch(model, norm, t, (1, 8, 8), cfg, seed=0)
    assert res.low_iterations == 6 and res.iterations == 10 and res.images.shape == (20, 1, 8, 8)


def test_images_too_small_to_halve_run_the_warmups_cost_at_full_resolution():
    from c2ir.synth_schedule import phase_iterations

    assert phase_iterations(32, 15, 60, 16) == (60, 15)   # CIFAR: 16 px at half size
    assert phase_iterations(8, 15, 60, 16) == (0, 30)     # digits: a quarter of the 60 at full size
    assert phase_iterations(8, 15, 0, 16) == (0, 15)
    model, norm = _model()
    t = batch_targets(10, 2, 20, 0)
    small = synthesize_batch(model, norm, t, (1, 8, 8), SynthConfig(iterations=3, warmup_iterations=8), seed=0)
    plain = synthesize_batch(model, norm, t, (1, 8, 8), SynthConfig(iterations=5, warmup_iterations=0), seed=0)
    assert small.low_iterations == 0 and torch.equal(small.images, plain.images)


def test_schedules_change_the_impressions():
    model, norm = _model()
    t = batch_targets(10, 2, 20, 0)
    imgs = {s: synthesize_batch(model, norm, t, (1, 8, 8), SynthConfig(iterations=5, lr_schedule=s, warmup_iterations=0), seed=0).images
            for s in ("cosine", "linear", "constant")}
    assert not torch.equal(imgs["cosine"], imgs["linear"]) and not torch.equal(imgs["linear"], imgs["constant"])


# ----------------------------------------------------------------------------- synth=deepinversion

def _synthesize_before_issue_20(model, normalizer, targets, shape, cfg, seed):
    """The synthesis loop of the code before issue 20 (commit a9756d9), kept verbatim minus logging and the
    progress bar: the reference that synth=deepinversion must reproduce bit for bit."""
    with frozen_eval(model):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn((len(targets), *shape), generator=g).requires_grad_(True)
        lo, hi = normalizer.bounds()
        opt = torch.optim.Adam([x], lr=cfg.lr, betas=cfg.betas, eps=1e-8)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(cfg.iterations, 1), eta_min=0.0)
        rolls = torch.randint(-cfg.jitter, cfg.jitter + 1, (cfg.iterations, 2), generator=g) if cfg.jitter else None
        flips = torch.rand(cfg.iterations, generator=g) < 0.5
        curve = torch.zeros(cfg.iterations)
        with BNStatLoss(model, cfg.first_bn_multiplier, cfg.bn_reduce) as bn_loss:
            for it in range(cfg.iterations):
                inp = x
                if rolls is not None:
                    inp = torch.roll(inp, shifts=(int(rolls[it, 0]), int(rolls[it, 1])), dims=(2, 3))
                if cfg.flip and bool(flips[it]):
                    inp = torch.flip(inp, dims=(3,))
                ce = F.cross_entropy(model(inp).float(), targets)
                bn = bn_loss.pop().float()
                tv = total_variation(x)
                l2 = torch.linalg.vector_norm(x.flatten(1), dim=1).mean()
                loss = cfg.ce_weight * ce + cfg.bn_weight * bn + cfg.tv_weight * tv + cfg.l2_weight * l2
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                with torch.no_grad():
                    x.data = torch.maximum(torch.minimum(x.data, hi), lo)
                curve[it] = loss.detach().float()
        return normalizer.to_pixels(x.detach()).clamp_(0, 1), curve


def test_deepinversion_preset_reproduces_the_former_default_bit_for_bit(tmp_path):
    cfg = SynthConfig.from_cfg(make_cfg(tmp_path, ["synth=deepinversion"]).synth)
    assert (cfg.per_class, cfg.batch_size, cfg.iterations, cfg.lr, cfg.lr_schedule, cfg.warmup_iterations,
            cfg.stop_patience, cfg.bn_stats, cfg.bn_reduce) == (40, 200, 300, 0.1, "cosine", 0, 0, "hooks", "mean")
    small = SynthConfig(**{**cfg.__dict__, "iterations": 12})  # every preset value, fewer iterations
    model, norm = _model()
    t = batch_targets(10, 3, 20, 1)  # the second batch: 10 impressions
    new = synthesize_batch(model, norm, t, (1, 8, 8), small, seed=5)
    old_images, old_curve = _synthesize_before_issue_20(model, norm, t, (1, 8, 8), small, seed=5)
    assert torch.equal(new.images, old_images)
    assert torch.equal(new.curves["total"], old_curve)


def test_deepinversion_keeps_the_cache_key_of_the_former_default(tmp_path):
    """The former synth=default had none of issue 20's fields: at their deepinversion values (their key-neutral
    values in c2ir.schema) they stay out of the key, so impressions cached before issue 20 are found again;
    changed, each enters it."""
    from c2ir.graph import key_fields, key_of
    from c2ir.stages.job import cli_job
    from c2ir.stages.synthesize import SYNTH_RULE, SYNTHESIZE

    new = ("lr_schedule", "warmup_iterations", "warmup_min_size", "stop_patience", "stop_tol", "bn_stats")
    cfg = make_cfg(tmp_path, ["synth=deepinversion"])
    assert not {f"synth.{n}" for n in new} & set(key_fields(cfg, SYNTH_RULE))
    changed = ["synth.lr_schedule=linear", "synth.warmup_iterations=4", "synth.warmup_min_size=4",
               "synth.stop_patience=3", "synth.stop_tol=0.1", "synth.bn_stats=fused"]
    for name, override in zip(new, changed):
        assert f"synth.{name}" in key_fields(make_cfg(tmp_path, ["synth=deepinversion", override]), SYNTH_RULE)
    assert key_of(SYNTHESIZE, cli_job(make_cfg(tmp_path, []))) != key_of(SYNTHESIZE, cli_job(cfg))


def test_a_full_size_warm_up_does_not_share_the_key_of_a_half_resolution_one(tmp_path):
    """Before issue 20 a warm-up always ran at half resolution; on the 8 px digits it now runs at full size
    (same config values, another computation), so its key is not the key those values gave before."""
    from c2ir.cache import make_key
    from c2ir.graph import key_fields, key_of
    from c2ir.stages.job import cli_job
    from c2ir.stages.synthesize import SYNTH_RULE, SYNTHESIZE
    from c2ir.stages.train import MODEL

    def keys(overrides: list[str]) -> tuple[str, str]:
        job = cli_job(make_cfg(tmp_path, ["synth=deepinversion", *overrides]))
        assert job.cfg.data.image_size == 8
        former = make_key("synthesize", {"v": SYNTHESIZE.version, **key_fields(job.cfg, SYNTH_RULE)},
                          {"model": key_of(MODEL, job)})
        return key_of(SYNTHESIZE, job), former

    marked, former = keys(["synth.warmup_iterations=8"])
    assert marked != former
    assert len(set(keys([]))) == 1  # no warm-up: the key is the former one
    assert len(set(keys(["synth.warmup_iterations=8", "synth.warmup_min_size=4"]))) == 1  # half size runs

@pytest.mark.parametrize("override,named", [
    ("synth.lr_schedule=step", "synth.lr_schedule='step'"),
    ("synth.stop_patience=-1", "synth.stop_patience=-1"),
    ("synth.stop_tol=2", "synth.stop_tol=2"),
    ("synth.bn_stats=welford", "synth.bn_stats='welford'"),
    ("synth.warmup_iterations=1.5", "synth.warmup_iterations=1.5"),
    ("synth.warmup_min_size=0", "synth.warmup_min_size=0"),
])
def test_bad_synthesis_options_are_one_line_errors(tmp_path, override, named):
    from c2ir.validation import explain, validate

    try:   # a wrong type fails while Hydra composes the structured config, a bad range in validate
        validate(make_cfg(tmp_path, [override]))
        message = None
    except C2IRError as exc:
        message = str(exc)
    except Exception as exc:  # noqa: BLE001 - OmegaConf's ValidationError, reported by the CLI through explain
        message = explain(exc)
    assert message is not None and named in message and "\n" not in message


def test_impression_grid_is_torchvisions_make_grid_layout():
    """One row per class, white 1-pixel borders, grey images as RGB (torchvision's make_grid, without importing it)."""
    from torchvision.utils import make_grid

    from c2ir.impressions import impression_grid

    x = torch.rand(23, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.arange(23) % 3
    rows = [torch.cat([x[t == c][:10], torch.zeros(10 - min(10, int((t == c).sum())), 1, 8, 8)]) for c in range(3)]
    assert torch.equal(impression_grid(x, t, 3), make_grid(torch.cat(rows), nrow=10, padding=1, pad_value=1.0))


def test_progress_bar_covers_the_whole_synthesis_and_counts_resumed_batches(tmp_path, monkeypatch):
    """One bar for all batches: total = batches x iterations, a resumed batch starts it further on, and the
    description counts impressions done of the total."""
    from c2ir.graph import Step
    from c2ir.stages import synthesize
    from c2ir.stages.job import cli_job

    job = cli_job(make_cfg(tmp_path, ["synth=fast", "train.epochs=1", "synth.per_class=3", "synth.batch_size=10",
                                      "synth.iterations=4", "synth.warmup_iterations=0"]))
    work = tmp_path / "work"
    step = Step(job, synthesize.SYNTHESIZE, None, "k", {}, {}, work=work)
    synthesize.compute_batches(step)  # 3 batches of 10
    (work / "batch_00001.safetensors").unlink()
    bars = []

    class Bar:
        def __init__(self, **kw):
            self.kw, self.n, self.descs = kw, kw.get("initial", 0), []
            bars.append(self)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def update(self, k=1):
            self.n += k

        def set_description_str(self, s):
            self.descs.append(s)

    monkeypatch.setattr(synthesize, "tqdm", Bar)
    synthesize.compute_batches(step)
    (bar,) = bars
    assert (bar.kw["total"], bar.kw["initial"]) == (12, 8) and bar.n == 12
    assert bar.kw["desc"] == "synthesize 20/30 impressions" and bar.descs == ["synthesize 30/30 impressions"]
