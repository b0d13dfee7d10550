"""What C2IR's data-free choices cost at fit time (issue 21: at most 10% of the fit), measured.

Fit = synthesis + impression statistics (with the tied precision of `ipm=mahalanobis`) + MGI layer weights
+ the detector's own fit. The script times each part once on a fresh synthesis (no cache), then the
detector fit `--repeats` times in alternating order for:

  - `fixed`: C2IR with its configured IPM and Energy weight, no folds (what a fit without images does);
  - `c2ir_paper`: no logit term, nothing chosen, only the threshold's cross-fitted pseudo-real reference;
  - `weight only`: the Energy weight chosen on proxies (issue 14's choice) + the reference;
  - `default`: the IPM and the Energy weight chosen on proxies + the reference (this project's default).

and prints each as a share of the whole fit (synthesis + statistics + MGI + default detector fit).

    python scripts/bench_fit_cost.py experiment=cifar10_resnet20_cpu threads=2 [--repeats 3]
    python scripts/bench_fit_cost.py cache_root=/tmp/cache threads=2        # the embedded digits model (trained once)
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time

import torch
from hydra import compose, initialize_config_dir

from c2ir.config import config_dir, register_resolvers
from c2ir.detectors import FitData, build_detector
from c2ir.extraction import extract_features
from c2ir.impressions import SynthConfig, synthesize_impressions
from c2ir.mgi import impression_importance, normalize_weights
from c2ir.stages.job import cli_job, normalizer
from c2ir.stages.train import classifier, head as head_of
from c2ir.stats import compute_class_stats

VARIANTS = {
    "fixed": {"select_logit_weight": False, "select_ipm": False},
    "c2ir_paper": {"logit_score": "none", "select_ipm": False},
    "weight only": {"select_ipm": False},
    "default": {},
}


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_intermixed_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    register_resolvers()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("config", overrides=["detectors=[c2ir]", *args.overrides])
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    job = cli_job(cfg)
    import sklearn.covariance  # noqa: F401  imported before timing: the first import costs seconds, once per process
    import torchvision.transforms.functional  # noqa: F401
    model, norm, layers, head, dev = classifier(job), normalizer(job), job.layers, head_of(job), job.device
    k = int(cfg.data.num_classes)
    shape = (int(cfg.data.channels), int(cfg.data.image_size), int(cfg.data.image_size))
    synth = SynthConfig.from_cfg(cfg.synth)
    (images, targets), t_synth = timed(lambda: synthesize_impressions(model, norm, k, shape, synth, dev))

    def features():
        bundle = extract_features(model, images, norm, layers, head, batch_size=job.batch_size, device=dev,
                                  spatial_grid=int(cfg.features.spatial_grid), desc="features impressions")
        bundle["labels"] = targets
        return bundle
    bundle, t_feat = timed(features)
    class_stats, t_cs = timed(lambda: compute_class_stats(bundle, targets, layers, k,
                                                          int(cfg.collect_stats.max_spatial_per_class), job.seed))
    t_stats = t_feat + t_cs
    weights, t_mgi = timed(lambda: normalize_weights(impression_importance(
        model, norm, images, targets, layers, job.batch_size, dev)[str(cfg.mgi.method)]))
    fit = FitData(model=model, layers=layers, impressions=bundle, class_stats=class_stats, layer_weights=weights,
                  head=head, impression_images=images, normalizer=norm)
    no_images = FitData(model=model, layers=layers, impressions=bundle, class_stats=class_stats,
                        layer_weights=weights, head=head)
    build_detector("c2ir", {"type": "c2ir"}).fit(fit)   # warm-up (lazy imports, allocator)
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for r in range(args.repeats):
        for name in (list(VARIANTS) if r % 2 == 0 else list(VARIANTS)[::-1]):
            det = build_detector("c2ir", {"type": "c2ir", **VARIANTS[name]})
            _, t = timed(lambda: det.fit(no_images if name == "fixed" else fit))
            times[name].append(t)
    det_t = {v: statistics.median(t) for v, t in times.items()}
    total = t_synth + t_stats + t_mgi + det_t["default"]
    print(f"{len(images)} impressions, {synth.warmup_iterations} warm-up + {synth.iterations} iterations; layers {layers}; threads {torch.get_num_threads()}")
    print("| part | seconds | share of the fit |")
    print("|---|---|---|")
    for name, t in (("synthesis", t_synth), ("statistics: impression features", t_feat),
                    ("statistics: class statistics (incl. the tied precision)", t_cs),
                    ("MGI weights", t_mgi), *((f"C2IR fit: {v}", det_t[v]) for v in VARIANTS)):
        print(f"| {name} | {t:.2f} | {100 * t / total:.2f}% |")
    print(f"| whole fit (synthesis + statistics + MGI + default C2IR fit) | {total:.2f} | 100% |")
    extra = det_t["default"] - det_t["weight only"]
    print(f"\nissue 21's additions to the detector fit beyond issue 14's weight choice (default - weight only): "
          f"{extra:.2f} s = {100 * extra / total:.2f}% of the fit; the whole default C2IR fit: "
          f"{100 * det_t['default'] / total:.2f}%")


if __name__ == "__main__":
    main(sys.argv[1:])
