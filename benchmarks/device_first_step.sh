#!/usr/bin/env bash
# One fresh device machine, the first-step figures of `refine train` (issue "The GPU path as a
# user meets it"), one after the other, the GPU to each alone:
#   1. `refine train` cold (empty kernel cache, gpu_train_loop.py --runs cold);
#   2. the cold run's cache packed as `dvc push` would store it, restored at another path, and the
#      warm first step, the positions stage and the NTP loop timed on it;
#   3. optionally (REFINE_S set) gpu_refine_step.py at paper-1.3b (its own Triton cache).
# Never side by side: Triton's autotuner times its candidate configurations on the GPU and the
# kernel cache keeps the winners (TRITON_CACHE_AUTOTUNING), so a cold run tuned while another
# process loads the GPU keeps slow choices for good. Measured 2026-12-02 on an H200: the ReFINE
# loop's step ratio was 2.14 on a cache tuned beside the paper-1.3b benchmark, 1.33 on one tuned
# alone (phase-timed, benchmarks/results.jsonl).
#
#   bash benchmarks/device_bg.sh start-script benchmarks/device_first_step.sh    # OUT set
set -u
OUT=${OUT:?OUT must name the folder whose files come back}
mkdir -p "$OUT/cold" "$OUT/warm" "$OUT/refine"
TRAIN_RUNS=cold OUT=$OUT/cold bash benchmarks/device_run.sh "train-loop:${COLD_S:-900}" >"$OUT/cold.log" 2>&1
tail -n 5 "$OUT/cold.log"
if [ -d data/cache/kernels ]; then  # what `dvc push` stores of the kernels stage's output
    tar -cJf /tmp/kernels_after_cold.txz -C data/cache kernels
    SKIP_INSTALL=1 TRAIN_RUNS=warm,ntp TRAIN_RESTORE=/tmp/kernels_after_cold.txz OUT=$OUT/warm \
        bash benchmarks/device_run.sh train-loop:600 >"$OUT/warm.log" 2>&1
    tail -n 8 "$OUT/warm.log"
fi
# The cache as the warm runs left it (cold + positions + warm + NTP): benchmarks/kernel_cache/'s archive.
[ -d /tmp/gpu_train_loop/restored_kernels ] \
    && tar -cJf "$OUT/kernels_final.txz" -C /tmp/gpu_train_loop --transform 's,^restored_kernels,kernels,' restored_kernels
rm -rf data/cache/kernels data/cache/kernels-work  # the cold run's part of it: device_bg.sh would send it back a second time
if [ -n "${REFINE_S:-}" ]; then
    SKIP_INSTALL=1 REFINE_MODES=${REFINE_MODES:-fused_precomputed} OUT=$OUT/refine \
        bash benchmarks/device_run.sh "refine:$REFINE_S" >"$OUT/refine.log" 2>&1
    tail -n 8 "$OUT/refine.log"
fi
