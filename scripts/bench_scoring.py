"""Scoring cost vs a bare forward pass (paired, repeated, same model and inputs).

(a) bare forward pass of the classifier; (b) c2ir's full scoring: one forward pass with hooks on
the selected layers + every data-free detector scored from that pass (MSP, MaxLogit, Energy, NMD,
C2IR, Mahalanobis/KNN/ReAct on impressions). Prints the throughput ratio b/a (median of pairs);
1.0 is the limit, the target is >= 0.90 on CPU with ResNet-20 at batch 256.

    python scripts/bench_scoring.py [--batch 256] [--repeats 15] [--device cpu] [--arch resnet20]
"""

from __future__ import annotations

import argparse
import statistics

import torch

from bench_common import bench_model, median_ratio, paired
from c2ir.data.imageset import Normalizer
from c2ir.detectors import FitData, build_detector
from c2ir.device import resolve_device
from c2ir.extraction import extract_features, select_layers
from c2ir.models import head_module
from c2ir.stats import compute_class_stats

DATA_FREE = {"msp": {}, "maxlogit": {}, "energy": {}, "nmd": {}, "c2ir": {"fit_on": "impressions"},
             "mahalanobis": {"fit_on": "impressions"}, "knn": {"fit_on": "impressions", "k": 10},
             "react": {"fit_on": "impressions"}}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--device", default="cpu")
    p.add_argument("--arch", default="resnet20")
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    model = bench_model(args.arch, device)
    norm = Normalizer([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    layers = select_layers(model, [r"layer2\.\d+", r"layer3\.0"] if args.arch == "resnet20" else [r"layer3\.\d+", r"layer4\.0"])
    head = head_module(model, None)
    g = torch.Generator().manual_seed(0)
    imp_images = torch.randint(0, 256, (400, 3, 32, 32), dtype=torch.uint8, generator=g)
    imp = extract_features(model, imp_images, norm, layers, head, device=device)
    imp["labels"] = torch.arange(400) % 10
    fit = FitData(model=model, layers=layers, impressions=imp, class_stats=compute_class_stats(imp, imp["labels"], layers, 10),
                  layer_weights=torch.full((len(layers),), 1 / len(layers)), head=head)
    dets = [build_detector(n, {"type": n, **kw}).fit(fit) for n, kw in DATA_FREE.items()]
    x_u8 = torch.randint(0, 256, (args.batch, 3, 32, 32), dtype=torch.uint8, generator=g).to(device)

    @torch.no_grad()
    def bare() -> None:
        model(norm(x_u8))

    def full() -> None:
        feats = extract_features(model, x_u8, norm, layers, head, batch_size=args.batch, device=device)
        for d in dets:
            d.score(feats)

    for _ in range(3):  # warm-up
        bare(), full()
    ta, tb = paired(bare, full, args.repeats, device)
    ratio = median_ratio(ta, tb)  # throughput(b) / throughput(a) = time(a) / time(b)
    print(f"device={device} arch={args.arch} batch={args.batch} threads={torch.get_num_threads()} repeats={args.repeats}")
    print(f"bare forward:        median {1000 * statistics.median(ta):.1f} ms/batch")
    print(f"c2ir full scoring:   median {1000 * statistics.median(tb):.1f} ms/batch "
          f"({len(layers)} layers + BN means; detectors: {', '.join(DATA_FREE)})")
    print(f"throughput ratio full/bare (median of {args.repeats} pairs): {ratio:.3f}")


if __name__ == "__main__":
    main()
