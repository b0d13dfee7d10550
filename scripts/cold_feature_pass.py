"""Cold decode + features of the CIFAR-10 test split with the code on PYTHONPATH (former, streamed or graph).

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
import c2ir.stages.evaluate as ev
import c2ir.stages.features as feats

register_resolvers()
with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
    cfg = compose("config", overrides=["experiment=cifar10_resnet20_cpu", "threads=1", f"cache_root={sys.argv[1]}",
                                       f"output_dir={sys.argv[1]}/out", *sys.argv[2:]])
torch.set_num_threads(1)
t0 = time.perf_counter()
if hasattr(feats, "FEATURES"):  # the artifact graph
    from c2ir.graph import resolve
    from c2ir.stages.job import cli_job

    job = cli_job(cfg)
    p = ev.passes(job, ev.build_detectors(job))[f"{cfg.data.name}-test"]
    spatial, bundle = p.spatial_grid, resolve(feats.FEATURES, job, p).value
else:
    import c2ir.stages.common as common

    ctx = common.RunContext(cfg) if hasattr(common, "RunContext") else common.Context(cfg)
    dets = ev.build_detectors(ctx)
    spatial = int(cfg.features.spatial_grid) if any(SPATIAL in d.needs for d in dets.values()) else 0
    if hasattr(common, "RunContext"):  # streamed code (a9756d9)
        reuse = any(SPATIAL in d.may_need for d in dets.values())
        art, bundle = feats.ensure(ctx, "cifar10-test", ctx.data_spec("test"), lambda: load_id(cfg.data, "test"), spatial,
                                   reuse)
    else:  # former code (6c067d2)
        art, bundle = feats.ensure_features(ctx, "cifar10-test", ctx.data_spec("test"), lambda: load_id(cfg.data, "test"),
                                            spatial)
print(f"images {len(bundle['logits'])} tensors {len(bundle)} spatial {spatial} in-process wall {time.perf_counter() - t0:.1f} s")
