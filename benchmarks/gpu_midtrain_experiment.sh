#!/usr/bin/env bash
# Issue 17's comparison (base, SFT and ReFINE at `seed` and at lifecycle.seeds, NIAH / RULER QA / LongBench,
# docs/results.md) without post-training and TTT: `refine run --until eval_longbench@refine` (one process,
# so its kernels load once), then `refine experiment --seeds-only` and `refine report --experiment`. Not
# DVC-tracked (the profile is not the repository's params.yaml); the Prefect and `dvc repro` doors are
# gpu_lifecycle_flow.py's. One process at a time: processes sharing the GPU time-slice it (on an H200,
# 2026-12-04, the lifecycle's stages beside two seeds trained 15x slower; device_experiment.sh's header).
#
#   bash benchmarks/gpu_midtrain_experiment.sh OUTDIR [--set section.field=value ...]   (PARAMS: the profile)
#
# Every 20 s the runs' summaries and metrics and the evaluations' scores and samples (every prediction;
# files under 8 MB) go to OUTDIR/progress/data (the layout of data/: `refine report --experiment` over a
# copy rewrites the page from them), each command's log to OUTDIR, the page to OUTDIR/results, the
# kernel cache after `refine run` to OUTDIR/kernels.txz. On the device: device_experiment.sh run-midtrain.
set -u
OUTD=${1:?usage: $0 OUTDIR [--set k=v ...]}
shift
P=${PARAMS:-params-gpu-small.yaml}
mkdir -p "$OUTD/progress" "$OUTD/results"
refine_() { python3 -c "from refine_tasks.pipeline.cli import app; app()" "$@"; }
copy_progress() {
    find data/runs data/eval data/experiment \( -name summary.json -o -name metrics.jsonl -o -name scores.json \
        -o -name samples.parquet \) \
        -size -8M 2>/dev/null | tar -cf - -T - 2>/dev/null | tar -xf - -C "$OUTD/progress"
}
(while sleep 20; do copy_progress; done) &
copier=$!
began=$(date +%s)
say() { echo "[$(($(date +%s) - began)) s] $*"; }
code=0
steps=("run --until eval_longbench@refine" "experiment --seeds-only" "report --experiment")
# ABLATIONS=1, after a finished comparison in the same folder (device_experiment.sh keeps data/ then):
# the seeds' stages are done and skipped, then the ablations run as lifecycle.ablate says. Not
# `refine experiment` alone: on a params file that is not the repository's params.yaml nothing is
# DVC-tracked, so it would run the whole lifecycle again, base included.
[ "${ABLATIONS:-0}" = 1 ] && steps=("experiment --seeds-only" "report --experiment")
for step in "${steps[@]}"; do
    log="$OUTD/${step%% *}.log"
    say "refine $step"
    # shellcheck disable=SC2086  # the step's words
    refine_ $step -p "$P" "$@" >"$log" 2>&1 || { code=$?; say "refine $step exit $code"; tail -n 40 "$log"; break; }
    # What the lifecycle compiled (the tracked folder and its work folder, merged) comes back before
    # the seeds begin, so a lease that ends during them still brings it: copy it over
    # benchmarks/kernel_cache/nvidia-h200-triton3.6.0.txz.
    if [ "${step%% *}" = run ]; then bash benchmarks/pack_kernel_cache.sh data/cache/kernels "$OUTD/kernels.txz"; fi
done
kill $copier 2>/dev/null
copy_progress
results=$(python3 -c "from refine_tasks.config import load_config; import sys; print(load_config(sys.argv[1], []).lifecycle.results_dir)" "$P")
cp "$results"/results.* "$results"/*.png "$OUTD/results/" 2>/dev/null
say "done"
exit $code
