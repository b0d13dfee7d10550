"""Cold decode + features of the CIFAR-10 test split with the code on PYTHONPATH (former or streamed).

    PYTHONPATH=<checkout> python scripts/cold_feature_pass.py CACHE_ROOT [OVERRIDE...]   (fresh CACHE_ROOT each time)
Calls the features stage exactly as `c2ir evaluate experiment=cifar10_resnet20_cpu` does for the ID test set.
"""
import sys
import time

import torch
from hydra import compose, initialize_config_dir

from c2ir.config import config_dir, register_resolvers
from c2ir.detectors.base import SPATIAL
from c2ir.data import load_id
import c2ir.stages.common as common
import c2ir.stages.evaluate as ev
import c2ir.stages.features as feats

register_resolvers()
with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
    cfg = compose("config", overrides=["experiment=cifar10_resnet20_cpu", "threads=1", f"cache_root={sys.argv[1]}",
                                       f"output_dir={sys.argv[1]}/out", *sys.argv[2:]])
torch.set_num_threads(1)
t0 = time.perf_counter()
if hasattr(common, "RunContext"):  # streamed code
    ctx = common.RunContext(cfg)
    dets = ev.build_detectors(ctx)
    spatial = int(cfg.features.spatial_grid) if any(SPATIAL in d.needs for d in dets.values()) else 0
    reuse = any(SPATIAL in d.may_need for d in dets.values())
    art, bundle = feats.ensure(ctx, "cifar10-test", ctx.data_spec("test"), lambda: load_id(cfg.data, "test"), spatial, reuse)
else:  # former code (6c067d2)
    ctx = common.Context(cfg)
    dets = ev.build_detectors(ctx)
    spatial = int(cfg.features.spatial_grid) if any(SPATIAL in d.needs for d in dets.values()) else 0
    art, bundle = feats.ensure_features(ctx, "cifar10-test", ctx.data_spec("test"), lambda: load_id(cfg.data, "test"), spatial)
print(f"images {len(bundle['logits'])} tensors {len(bundle)} spatial {spatial} in-process wall {time.perf_counter() - t0:.1f} s")
