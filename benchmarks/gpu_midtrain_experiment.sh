#!/usr/bin/env bash
# Issue 17's comparison (base, SFT and ReFINE at `seed` and at lifecycle.seeds, NIAH / RULER QA / LongBench,
# docs/results.md) without post-training and TTT, in the least wall time one GPU allows: the base first,
# then the lifecycle's own mid-training stages and evaluations (one `refine stage` each, in order) beside
# `refine experiment --seeds-only` (the further seeds, lifecycle.seed_workers at once), all from that
# base; then `refine report --experiment` over every seed. Not DVC-tracked (the profile is not the
# repository's params.yaml); the Prefect and `dvc repro` doors are gpu_lifecycle_flow.py's.
#
#   bash benchmarks/gpu_midtrain_experiment.sh OUTDIR [--set section.field=value ...]   (PARAMS: the profile)
#
# Every 20 s the runs' summaries and metrics and the evaluations' scores go to OUTDIR/progress (the same
# layout as data/: `refine report --experiment` there rewrites the page from them), each command's log to
# OUTDIR, the page to OUTDIR/results. On the device: device_experiment.sh run-midtrain.
set -u
OUTD=${1:?usage: $0 OUTDIR [--set k=v ...]}
shift
P=${PARAMS:-params-gpu-small.yaml}
mkdir -p "$OUTD/progress" "$OUTD/results"
refine_() { python3 -c "from refine_tasks.pipeline.cli import app; app()" "$@"; }
copy_progress() {
    find data/runs data/eval data/experiment \( -name summary.json -o -name metrics.jsonl -o -name scores.json \) \
        -size -8M 2>/dev/null | tar -cf - -T - 2>/dev/null | tar -xf - -C "$OUTD/progress"
}
(while sleep 20; do copy_progress; done) &
copier=$!
began=$(date +%s)
say() { echo "[$(($(date +%s) - began)) s] $*"; }
say "refine run --until base"
refine_ run -p "$P" "$@" --until base >"$OUTD/base.log" 2>&1 || { tail -40 "$OUTD/base.log"; kill $copier; exit 1; }
say "base done; the lifecycle's stages beside the further seeds"
(
    for stage in eval_niah@base positions midtrain_sft midtrain_refine eval_niah@sft eval_niah@refine \
        eval_qa@base eval_qa@sft eval_qa@refine eval_longbench@base eval_longbench@sft eval_longbench@refine; do
        echo "[$(($(date +%s) - began)) s] stage $stage"
        refine_ stage "$stage" -p "$P" "$@" || exit 1
    done
) >"$OUTD/lifecycle.log" 2>&1 &
lifecycle=$!
refine_ experiment -p "$P" --seeds-only "$@" >"$OUTD/experiment.log" 2>&1
seeds=$?
say "further seeds exit $seeds"
wait $lifecycle
own=$?
say "lifecycle stages exit $own"
refine_ report --experiment -p "$P" "$@" >"$OUTD/report.log" 2>&1
say "report exit $?"
kill $copier 2>/dev/null
copy_progress
results=$(python3 -c "from refine_tasks.config import load_config; import sys; print(load_config(sys.argv[1], []).lifecycle.results_dir)" "$P")
cp "$results"/results.* "$results"/*.png "$OUTD/results/" 2>/dev/null
tail -n 5 "$OUTD/lifecycle.log" "$OUTD/experiment.log"
[ "$seeds" = 0 ] && [ "$own" = 0 ]
