#!/usr/bin/env bash
# Feature cache across sweeps (issue 13): one `c2ir evaluate` vs an `ipm=` multirun over every IPM option and
# vs a `layer_set=` multirun over every layer set of the model, each started from a fresh cache seeded with
# the upstream artifacts (impressions, statistics, MGI weights of every layer set) of SRC but no features.
#   scripts/bench_feature_cache.sh [SRC_CACHE=outputs/cache_final] [EXPERIMENT=cifar10_resnet20_cpu] [OVERRIDE...]
# Extra OVERRIDEs go to every command (e.g. synth.iterations=10: evaluate's cost does not depend on it).
# Prints the wall time of each, the ratios to one evaluate and the number of feature passes of each.
set -euo pipefail
SRC=${1:-outputs/cache_final}
EXP=${2:-cifar10_resnet20_cpu}
shift $(( $# > 2 ? 2 : $# ))
EXTRA=("$@")
D="detectors=[msp,energy,c2ir,mahalanobis_imp,knn_imp,react_imp,nmd]"
OUT=outputs/bench_feature_cache
read -r LSETS IPMS < <(python - "$EXP" <<'EOF'
import sys
from hydra import compose, initialize_config_dir
from c2ir.config import config_dir, register_resolvers
register_resolvers()
with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
    cfg = compose("config", overrides=[f"experiment={sys.argv[1]}"])
print(",".join(cfg.model.layer_sets), ",".join(sorted(p.stem for p in (config_dir() / "ipm").glob("*.yaml"))))
EOF
)
echo "layer sets: $LSETS; IPMs: $IPMS"
# upstream of every layer set (untimed; cache hits when SRC has them)
c2ir collect-stats -m "experiment=$EXP" "layer_set=$LSETS" cache_root="$SRC" "${EXTRA[@]}" > "$SRC.upstream.log" 2>&1
c2ir weight-layers -m "experiment=$EXP" "layer_set=$LSETS" cache_root="$SRC" "${EXTRA[@]}" >> "$SRC.upstream.log" 2>&1
for c in one ipm lsets; do
  rm -rf "$OUT/$c"; mkdir -p "$OUT/$c"
  cp -r "$SRC/synthesize" "$SRC/collect_stats" "$SRC/weight_layers" "$OUT/$c/"
  [ -d "$SRC/train" ] && cp -r "$SRC/train" "$OUT/$c/"
done
timed() {  # timed NAME ARGS...: wall seconds of `c2ir ARGS` into $T, log in $OUT/NAME/log.txt
  local name=$1; shift
  local t0; t0=$(date +%s.%N)
  c2ir "$@" cache_root="$OUT/$name" hydra.sweep.dir="$OUT/$name/multirun" hydra.run.dir="$OUT/$name/run" \
    "${EXTRA[@]}" > "$OUT/$name/log.txt" 2>&1
  T=$(python3 -c "print($(date +%s.%N) - $t0)")
}
timed one evaluate "experiment=$EXP" "$D"; one=$T
timed ipm evaluate -m "experiment=$EXP" "$D" "ipm=$IPMS"; ipm=$T
timed lsets evaluate -m "experiment=$EXP" "$D" "layer_set=$LSETS"; lsets=$T
passes() { grep -c 'cache miss: computing features' "$OUT/$1/log.txt" || true; }
n_ipm=$(tr ',' '\n' <<< "$IPMS" | wc -l); n_ls=$(tr ',' '\n' <<< "$LSETS" | wc -l)
python3 - <<EOF
one, ipm, ls = $one, $ipm, $lsets
print(f"load average at the end: {open('/proc/loadavg').read().split()[:3]}")
print(f"one evaluate:                   {one:7.1f} s  feature passes {$(passes one)}")
print(f"ipm= multirun ({$n_ipm} settings):    {ipm:7.1f} s  feature passes {$(passes ipm)}  ratio {ipm / one:.2f}")
print(f"layer_set= multirun ({$n_ls} sets): {ls:7.1f} s  feature passes {$(passes lsets)}  ratio {ls / one:.2f}")
EOF
