#!/usr/bin/env bash
# Device work longer than one call: `start` runs device_run.sh in a session of its own (it outlives
# the call while the machine stays warm), then every call waits up to WAIT seconds and returns the
# log and an archive of what the steps wrote so far (out.tgz, in parts; at the end also kernels.txz, the
# product's kernel cache, data/cache/kernels).
#
#   bash benchmarks/device_bg.sh start STEP[:SECONDS] ...     # the first call (on the device, OUT set)
#   bash benchmarks/device_bg.sh start-script SCRIPT ARG ...  # or a script of several device_run.sh calls
#   bash benchmarks/device_bg.sh wait                         # each later call, right after the last
# The kernel archive is written after WAIT (ARCHIVE_S, default 90 s): a limit of WAIT + ARCHIVE_S + 30 s
# brings it back; a shorter one still brings back the last minute's archive.
# Every SNAP_S seconds (default 60) of a call the archive is written again, so a call that the lease's
# budget cuts short still brings back what came out up to a minute before (2026-12-04: a wait call sized
# after the fact lost the machine to idle_release_s; size every wait call alike, WAIT=530 with a 595 s
# limit, and issue it the moment the one before returns). A run still going after WAIT also brings
# back the product's kernel cache so far (kernels-partial.txz; carry it in .kc/ to the next machine:
# 2026-12-04, paper-1.3b's first FSDP-benchmark step compiled for 542 s and none of it came back).
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
# The archive of what came out so far, in parts of 15 MB (a file that comes back is at most 16 MiB):
# cat out.tgz.part-* | tar -xz. Written beside, then moved over the last one's parts.
snapshot() {
    local next="$OUT/snapshot-next"
    rm -rf "$next" && mkdir -p "$next" || return 1
    cp "$WORK/log" "$OUT/log.txt"
    # files under 64 MB only: 2026-12-04, a benchmark's 1.3B checkpoint under out/ made the archive outlast
    # the call, and the call brought back half of it
    (cd "$WORK/out" && find . -type f -size -64M -print0 | tar -czf - --null -T -) \
        | split -b 15M - "$next/out.tgz.part-" || { rm -rf "$next"; return 1; }
    rm -f "$OUT"/out.tgz.part-* && mv "$next"/out.tgz.part-* "$OUT/" && rmdir "$next"
}
began=$(date +%s)
last=$began
while kill -0 "$(cat "$WORK/pid")" 2>/dev/null && [ $(($(date +%s) - began)) -lt "$WAIT" ]; do
    sleep 5
    if [ $(($(date +%s) - last)) -ge "${SNAP_S:-60}" ]; then snapshot; last=$(date +%s); fi
done
# The product's kernel cache (data/cache/kernels and its work folder), unless the script brought its own
# (device_experiment.sh works in a copy). Bounded (ARCHIVE_S, default 90 s): nothing half-written.
kernels=data/cache/kernels
if kill -0 "$(cat "$WORK/pid")" 2>/dev/null; then
    echo "device_bg: still running after ${WAIT}s of this call"
    if [ -d "$kernels" ]; then
        bash benchmarks/pack_kernel_cache.sh "$kernels" "$WORK/out/kernels-partial.txz" "${ARCHIVE_S:-90}" \
            || echo "device_bg: partial kernel archive left out (over ${ARCHIVE_S:-90} s)"
    fi
else
    echo "device_bg: finished"
    if [ ! -f "$WORK/out/kernels.txz" ] && [ -d "$kernels" ]; then
        bash benchmarks/pack_kernel_cache.sh "$kernels" "$WORK/out/kernels.txz" "${ARCHIVE_S:-90}" \
            || echo "device_bg: kernel archive left out (over ${ARCHIVE_S:-90} s)"
        rm -f "$WORK/out/kernels-partial.txz"
    fi
fi
tail -n 40 "$WORK/log"
snapshot
