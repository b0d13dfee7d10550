#!/usr/bin/env bash
# Times the ImageNet setting on a GPU (issue 13): DeepInversion synthesis at paper scale (synth=imagenet:
# ResNet-50, 224 px, batch 256, 2,000 iterations, 10 impressions per class = 40 batches) and the ImageNet
# evaluation (50,000 val images + the four OOD sets). Expected figures: scripts/gpu_benchmark.expected.md.
#
#   bash scripts/gpu_benchmark.sh                       # generated stand-in data, random weights
#   DATA_ROOT=/data RESNET50_CKPT=/ckpt/resnet50-0676ba61.pth bash scripts/gpu_benchmark.sh
#
# The synthesis is timed on SYNTH_ITERS iterations of every batch of synth.per_class=1 (4 batches) and
# extrapolated to the paper scale (time per iteration x 2,000 iterations x 40 batches); the evaluation
# is timed on EVAL_N images per set when DATA_ROOT is not set (generated 500x375 JPEGs, ImageNet's
# typical size) and extrapolated to the real set sizes. Timings do not depend on the weights' values.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${WORK:-/tmp/c2ir-gpu-benchmark}
SYNTH_ITERS=${SYNTH_ITERS:-100}
EVAL_N=${EVAL_N:-5000}
WORKERS=${WORKERS:-$(nproc)}
mkdir -p "$WORK"
python - <<'PY' || { echo "c2ir: error: no CUDA GPU visible; this benchmark needs one" >&2; exit 2; }
import torch, sys
sys.exit(0 if torch.cuda.is_available() else 1)
PY
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
CKPT=${RESNET50_CKPT:-$WORK/resnet50-random.pth}
if [ ! -f "$CKPT" ]; then
  python -c "import torch, torchvision; torch.manual_seed(0); torch.save(torchvision.models.resnet50().state_dict(), '$CKPT')"
fi
if [ -z "${DATA_ROOT:-}" ]; then
  DATA_ROOT=$WORK/data
  python - "$DATA_ROOT" "$EVAL_N" <<'PY'
import sys, numpy as np
from pathlib import Path
from PIL import Image
root, n = Path(sys.argv[1]), int(sys.argv[2])
if not (root / ".complete").is_file():
    rng = np.random.default_rng(0)
    def img(path):
        low = rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)
        Image.fromarray(low).resize((500, 375), Image.BILINEAR).save(path, quality=90)
    for i in range(n):
        d = root / "imagenet" / "val" / f"n{i % 1000:08d}"; d.mkdir(parents=True, exist_ok=True); img(d / f"{i}.JPEG")
    for sub in ("iNaturalist/images", "SUN/images", "Places/images", "dtd/images/banded"):
        d = root / "imagenet_ood" / sub; d.mkdir(parents=True, exist_ok=True)
        for i in range(n // 5): img(d / f"{i}.jpg")
    (root / ".complete").write_text("ok")
PY
fi
COMMON=(experiment=imagenet_resnet50 "paths.data_root=$DATA_ROOT" "model.checkpoint=$CKPT" device=cuda
        "num_workers=$WORKERS" "cache_root=$WORK/cache")

echo "== synthesis: synth=imagenet, per_class=1 (4 batches of 256), $SYNTH_ITERS iterations each"
start=$(date +%s.%N)
python -m c2ir synthesize "${COMMON[@]}" synth.per_class=1 "synth.iterations=$SYNTH_ITERS" "hydra.run.dir=$WORK/runs/synth"
end=$(date +%s.%N)
python - "$start" "$end" "$SYNTH_ITERS" <<'PY'
import sys
s, e, it = float(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
per_iter = (e - s) / (4 * it)  # includes model load and start-up: an upper bound
print(f"synthesis: {e - s:.0f} s for 4 x {it} iterations = {per_iter * 1000:.0f} ms per iteration (batch 256)")
print(f"paper scale (40 batches x 2,000 iterations, 10,000 impressions): {per_iter * 80000 / 3600:.1f} h (extrapolated)")
PY

echo "== evaluation: msp, energy, c2ir on ImageNet val + iNaturalist, SUN, Places, Textures"
start=$(date +%s.%N)
python -m c2ir evaluate "${COMMON[@]}" synth.per_class=1 "synth.iterations=$SYNTH_ITERS" "detectors=[msp,energy,c2ir]" \
  "hydra.run.dir=$WORK/runs/eval"
end=$(date +%s.%N)
python - "$start" "$end" "$DATA_ROOT" <<'PY'
import sys
from pathlib import Path
s, e, root = float(sys.argv[1]), float(sys.argv[2]), Path(sys.argv[3])
n = sum(1 for p in root.rglob("*") if p.suffix.lower() in (".jpeg", ".jpg"))
print(f"evaluation: {e - s:.0f} s for {n} images = {n / (e - s):.0f} images/s (decode + features + scores)")
print(f"full ImageNet setting (50,000 val + 35,640 OOD images): {85640 / (n / (e - s)) / 60:.1f} min (extrapolated)")
PY
