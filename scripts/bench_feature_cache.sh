#!/usr/bin/env bash
# Feature cache across a sweep: one `c2ir evaluate` vs a 4-setting `ipm=` multirun, each started from a
# fresh cache seeded with the upstream artifacts (impressions, statistics, MGI weights) of SRC but no features.
#   scripts/bench_feature_cache.sh [SRC_CACHE=outputs/cache_final] [EXPERIMENT=cifar10_resnet20_cpu]
set -euo pipefail
SRC=${1:-outputs/cache_final}
EXP=${2:-cifar10_resnet20_cpu}
D="detectors=[msp,energy,c2ir,mahalanobis_imp,knn_imp,react_imp,nmd]"
for c in bench_ipm1 bench_ipm4; do
  rm -rf "outputs/$c"; mkdir -p "outputs/$c"
  cp -r "$SRC/synthesize" "$SRC/collect_stats" "$SRC/weight_layers" "outputs/$c/"
done
t0=$(date +%s.%N); c2ir evaluate "experiment=$EXP" "$D" cache_root=outputs/bench_ipm1 > outputs/bench_ipm1/log.txt 2>&1; t1=$(date +%s.%N)
c2ir evaluate -m "experiment=$EXP" "$D" ipm=mean_standardized,mean_l2,mean_l1,wasserstein cache_root=outputs/bench_ipm4 \
  > outputs/bench_ipm4/log.txt 2>&1; t2=$(date +%s.%N)
one=$(python3 -c "print(round($t1 - $t0, 1))"); four=$(python3 -c "print(round($t2 - $t1, 1))")
echo "one evaluate: ${one} s; 4-setting ipm multirun: ${four} s; ratio $(python3 -c "print(round(($t2-$t1)/($t1-$t0), 2))")"
echo "feature passes: one evaluate $(grep -c 'cache miss: computing features' outputs/bench_ipm1/log.txt), multirun $(grep -c 'cache miss: computing features' outputs/bench_ipm4/log.txt)"
