#!/usr/bin/env bash
# Device work longer than one call: `start` runs device_run.sh in a session of its own (it outlives
# the call while the machine stays warm), then every call waits up to WAIT seconds and returns the
# log and an archive of what the steps wrote so far (out.tgz, in parts; at the end also kernels.txz, the
# product's kernel cache, data/cache/kernels).
#
#   bash benchmarks/device_bg.sh start STEP[:SECONDS] ...     # the first call (on the device, OUT set)
#   bash benchmarks/device_bg.sh start-script SCRIPT ARG ...  # or a script of several device_run.sh calls
#   bash benchmarks/device_bg.sh wait                         # each later call, right after the last
# Give each call a limit of at least WAIT + ARCHIVE_S + 30 s (the archives below are written after WAIT).
set -u
OUT=${OUT:?OUT must name the folder whose files come back}
WORK=/tmp/device_bg
WAIT=${WAIT:-570}
if [ "${1:-}" = start ] || [ "${1:-}" = start-script ]; then
    what=benchmarks/device_run.sh
    [ "$1" = start-script ] && { what=$2; shift; }
    shift
    rm -rf "$WORK" && mkdir -p "$WORK/out"
    OUT=$WORK/out setsid nohup bash "$what" "$@" >"$WORK/log" 2>&1 </dev/null &
    echo $! >"$WORK/pid"
fi
if [ ! -f "$WORK/pid" ]; then
    # 2026-12-03: a `wait` answered by a fresh machine (the one that ran `start` had been given back).
    echo "device_bg: nothing was started on this machine (a fresh one?): the run that \`start\` began is lost" >&2
    exit 3
fi
began=$(date +%s)
while kill -0 "$(cat "$WORK/pid")" 2>/dev/null && [ $(($(date +%s) - began)) -lt "$WAIT" ]; do sleep 5; done
if kill -0 "$(cat "$WORK/pid")" 2>/dev/null; then
    echo "device_bg: still running after ${WAIT}s of this call"
else
    echo "device_bg: finished"
    # The product's kernel cache, unless the script brought its own (device_experiment.sh works in a copy).
    # Bounded (ARCHIVE_S, default 90 s): a call that runs past its limit brings nothing back.
    if [ ! -f "$WORK/out/kernels.txz" ] && [ -d data/cache/kernels ]; then
        bash benchmarks/pack_kernel_cache.sh data/cache/kernels "$WORK/out/kernels.txz" "${ARCHIVE_S:-90}" \
            || echo "device_bg: kernel archive left out (over ${ARCHIVE_S:-90} s)"
    fi
fi
tail -n 40 "$WORK/log"
cp "$WORK/log" "$OUT/log.txt"
# In parts of 15 MB (a file that comes back is at most 16 MiB): cat out.tgz.part-* | tar -xz
tar -czf - -C "$WORK/out" . | split -b 15M - "$OUT/out.tgz.part-"
