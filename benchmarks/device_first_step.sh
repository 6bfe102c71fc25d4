#!/usr/bin/env bash
# One fresh device machine, the first-step figures of `refine train` (issue "The GPU path as a
# user meets it") and the paper-1.3b step ratio, in the least device time (about 25 minutes):
#   1. side by side: `refine train` cold (empty kernel cache, gpu_train_loop.py --runs cold) and
#      gpu_refine_step.py at paper-1.3b (its own Triton cache). Both spend their first minutes
#      compiling on the CPUs with the GPU mostly idle; the cold run's figure is its own process's.
#   2. then alone: the cold run's cache packed as `dvc push` would store it, restored at another
#      path, and the warm first step, the positions stage and the NTP loop timed on it.
#
#   bash benchmarks/device_bg.sh start-script benchmarks/device_first_step.sh    # OUT set
set -u
OUT=${OUT:?OUT must name the folder whose files come back}
COLD_S=${COLD_S:-1150}
mkdir -p "$OUT/cold" "$OUT/refine" "$OUT/warm"
TRAIN_RUNS=cold OUT=$OUT/cold bash benchmarks/device_run.sh "train-loop:$COLD_S" >"$OUT/cold.log" 2>&1 &
cold=$!
sleep 60  # the wheels are installed by then: the second runner does not install them again
SKIP_INSTALL=1 REFINE_MODES=${REFINE_MODES:-fused_precomputed} OUT=$OUT/refine \
    bash benchmarks/device_run.sh "refine:${REFINE_S:-900}" >"$OUT/refine.log" 2>&1 &
wait  # both: the warm and NTP runs below are timed with the GPU to themselves
tail -n 5 "$OUT/cold.log"
tail -n 8 "$OUT/refine.log"
if [ -d data/cache/kernels ]; then  # what `dvc push` stores of the kernels stage's output
    tar -cJf /tmp/kernels_after_cold.txz -C data/cache kernels
    SKIP_INSTALL=1 TRAIN_RUNS=warm,ntp TRAIN_RESTORE=/tmp/kernels_after_cold.txz OUT=$OUT/warm \
        bash benchmarks/device_run.sh train-loop:600 >"$OUT/warm.log" 2>&1
    tail -n 8 "$OUT/warm.log"
fi
# The cache as the warm runs left it (cold + positions + warm + NTP): benchmarks/kernel_cache/'s archive.
[ -d /tmp/gpu_train_loop/restored_kernels ] \
    && tar -cJf "$OUT/kernels_final.txz" -C /tmp/gpu_train_loop --transform 's,^restored_kernels,kernels,' restored_kernels
rm -rf data/cache/kernels  # the cold run's part of it: device_bg.sh would send it back a second time
