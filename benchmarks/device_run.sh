#!/usr/bin/env bash
# One device-machine call: install the carried wheels, restore the Triton cache, run the named
# benchmark steps in order (each under its own time limit), then return the grown Triton cache.
#
#   bash benchmarks/device_run.sh STEP[:SECONDS] ...      # on the device machine, OUT set
#
# Steps (each writes under $OUT/<step>/; a failed or timed-out step does not stop the others):
#   dn-check     gpu_deltanet.py --phases $DN_PHASES       (default check,check32,chain: fla parity,
#                                                           forward_branched vs separate, state-chain kernels)
#   dn-all       gpu_deltanet.py                           (every DeltaNet figure)
#   refine       gpu_refine_step.py --shapes paper-1.3b    (ReFINE / NTP step ratios; $REFINE_MODES)
#   refine-small gpu_refine_step.py --shapes small         (with the bf16 branched-vs-naive check)
#   refine-torch, refine-small-torch  the same with --state-chain torch (the chain's torch path)
#   profile      profile_refine_step.py                     (phases + top ops; $PROFILE_MODES, $PROFILE_SHAPE;
#                                                             PROFILE_TRACE=1: Chrome traces with Python frames)
#   train-loop   gpu_train_loop.py: `refine train` at params-gpu-small.yaml on .gpu_data (carried: tokenizer,
#                corpus, catalog), its own kernel cache (data/cache/kernels; $TRAIN_RUNS, default cold,warm,ntp;
#                $TRAIN_RESTORE: a kernel cache archive the warm runs restore, e.g. benchmarks/kernel_cache/*.txz)
#   posttrain-ttt gpu_posttrain_ttt.py: small preset, 4K prompts (ttt_overhead_x, ttt_overhead_naive_x,
#                posttrain_step_over_sft; $PT_REPS reps, default 3)
#   fsdp         gpu_fsdp.py, paper-1.3b at 16K: FSDP2 (world size 1) over plain, peak memory with and without
#                activation checkpointing, the longest length that fits (searched within the step's limit)
#                (2026-12-04 17:00, H200: the plain run's first step compiled for 542 s on a machine with the
#                `small` lifecycle's kernels only; give it 1,200 s, or carry the kernels-partial.txz that
#                device_bg.sh brings back in .kc/: 2026-12-04 19:50, carried in a call of its own (.kc
#                and .whl together are over 64 MiB), the first step took 7.3 s and the comparison
#                ended 374 s in, the time going to each run's start and its 1.3B checkpoint)
#   lact         gpu_lact.py --phases $LACT_PHASES         (default all: LaCT's kernels, fast-weight layer, attention,
#                                                           paper-760m; its paths are config fields, not variables)
# The steps that use the product's kernel cache (fsdp, posttrain-ttt) restore it once a machine (see
# restore_product_cache) and return it grown as $OUT/kernels.txz; leave a step's limit ARCHIVE_S (90 s)
# short of the call's so that packing fits.
# Carry: .whl (benchmarks/device_wheels.py: the wheels the image lacks; the experiment adds .whl_exp1,
# .whl_exp2, one folder a call: a call carries at most 64 MiB) and the Triton cache tarball folders
# named in TC_DIRS (default .tc; git-ignored).
set -u
OUT=${OUT:?OUT must name the folder whose files come back}
if [ -z "${SKIP_INSTALL:-}" ]; then  # SKIP_INSTALL=1: a second runner beside one that installed them
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        $(ls .whl*/*.whl | sort -u) || exit 1  # every carried wheel folder (.whl, .whl_exp1, ...)
fi
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
export TRITON_CACHE_DIR=$PWD/.triton_cache
mkdir -p "$TRITON_CACHE_DIR"
for tarball in $(for d in ${TC_DIRS:-.tc}; do ls "$d"/*.txz; done); do  # TC_DIRS: cache tarball folders
    [ -f "$tarball" ] && tar -xJf "$tarball" -C "$TRITON_CACHE_DIR"
done
sleep 1; marker=$(mktemp /tmp/cache_marker.XXXX)
before=$(find "$TRITON_CACHE_DIR" -type f | wc -l)
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader

product_before=
restore_product_cache() {  # the product's kernel cache (paths.kernel_cache) for the steps that use it:
    # the tracked archive, then every carried archive in $KC_DIRS (default .kc; git-ignored: e.g. the
    # kernels.txz a previous call brought back), once a machine: a later call on it keeps what grew
    if [ ! -d data/cache/kernels ]; then
        mkdir -p data/cache
        for archive in benchmarks/kernel_cache/nvidia-h200-triton3.6.0.txz $(for d in ${KC_DIRS:-.kc}; do
                ls "$d"/*.txz 2>/dev/null; done); do
            tar -xJf "$archive" -C data/cache && echo "restored $archive into data/cache"
        done
    fi
    # counted once a call, also on a warm machine: what this call's steps add comes back
    [ -n "$product_before" ] || product_before=$(find data/cache/kernels data/cache/kernels-work -type f 2>/dev/null | wc -l)
}

run_step() {
    local step=$1 limit=$2 dir=$OUT/$1
    local chain=auto  # the *-torch steps time the state chain's torch path
    mkdir -p "$dir"
    echo "==== $step (limit ${limit}s) $(date -u +%H:%M:%S)"
    case $step in
        dn-check) timeout "$limit" python3 benchmarks/gpu_deltanet.py --out "$dir" --phases "${DN_PHASES:-check,check32,chain}" ;;
        dn-all) timeout "$limit" python3 benchmarks/gpu_deltanet.py --out "$dir" ;;
        refine|refine-torch) [ "$step" = refine-torch ] && chain=torch
            timeout "$limit" python3 benchmarks/gpu_refine_step.py --out "$dir" --shapes paper-1.3b --state-chain $chain \
            --check-tokens 0 --budget-s $((limit - 60)) ${REFINE_MODES:+--modes $REFINE_MODES} ;;
        refine-small|refine-small-torch) [ "$step" = refine-small-torch ] && chain=torch
            timeout "$limit" python3 benchmarks/gpu_refine_step.py --out "$dir" --shapes small --state-chain $chain \
            --check-tokens "${CHECK_TOKENS:-2048}" --budget-s $((limit - 60)) --reps 20 ${REFINE_MODES:+--modes $REFINE_MODES} ;;
        profile) timeout "$limit" python3 benchmarks/profile_refine_step.py --out "$dir" --shape "${PROFILE_SHAPE:-paper-1.3b}" \
            --modes "${PROFILE_MODES:-ntp,fused_precomputed,fused-eager_precomputed}" --warmup 1 ${PROFILE_TRACE:+--trace} ;;
        train-loop) env -u TRITON_CACHE_DIR timeout "$limit" python3 benchmarks/gpu_train_loop.py --out "$dir" \
            --data .gpu_data --params params-gpu-small.yaml ${TRAIN_RUNS:+--runs $TRAIN_RUNS} \
            ${TRAIN_RESTORE:+--restore $TRAIN_RESTORE} ;;
        posttrain-ttt) restore_product_cache
            env -u TRITON_CACHE_DIR timeout "$limit" python3 benchmarks/gpu_posttrain_ttt.py --out "$dir" \
            --reps "${PT_REPS:-3}" ;;
        fsdp) restore_product_cache
            env -u TRITON_CACHE_DIR timeout "$limit" python3 benchmarks/gpu_fsdp.py --out "$dir" --data .gpu_data \
            --set model.preset=paper-1.3b --set train.device=cuda --budget-s $((limit - 90)) ;;
        lact) timeout "$limit" python3 benchmarks/gpu_lact.py --out "$dir" --budget-s $((limit - 60)) ${LACT_PHASES:+--phases $LACT_PHASES} ;;
        *) echo "unknown step $step" ;;
    esac
    echo "==== $step exit $? $(date -u +%H:%M:%S)"
}

for spec in "$@"; do  # RESULTS.md copies are dropped below: results.jsonl is imported instead
    run_step "${spec%%:*}" "$([[ $spec == *:* ]] && echo "${spec##*:}" || echo 300)"
done

find "$OUT" -name RESULTS.md -delete
find "$OUT" -name "trace_*.json" -exec xz -T4 {} \;  # PROFILE_TRACE's Chrome traces, compressed
after=$(find "$TRITON_CACHE_DIR" -type f | wc -l)
echo "Triton cache: $before files before, $after after"
if [ -n "$product_before" ] && [ "$(find data/cache/kernels data/cache/kernels-work -type f 2>/dev/null | wc -l)" -gt "$product_before" ]; then
    # what the steps compiled into the product's cache comes back even when a step ran out of time:
    # carry it (in $KC_DIRS) to the next machine, or copy it over the tracked archive
    bash benchmarks/pack_kernel_cache.sh data/cache/kernels "$OUT/kernels.txz" "${ARCHIVE_S:-90}"
fi
if [ "$after" -gt "$before" ]; then
    (cd "$TRITON_CACHE_DIR" && find . -newer "$marker" -type f -print0 \
        | tar -cJf "$OUT/triton_cache_new.txz" --null -T -)
    ls -la "$OUT/triton_cache_new.txz"
fi
