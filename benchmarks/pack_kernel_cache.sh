#!/usr/bin/env bash
# Pack a kernel cache folder (paths.kernel_cache, data/cache/kernels) into an xz archive whose entries
# begin with kernels/, as benchmarks/kernel_cache/ keeps it (`tar -xJf ARCHIVE -C data/cache` restores it).
#   bash benchmarks/pack_kernel_cache.sh data/cache/kernels "$OUT/kernels.txz" [SECONDS]
# Triton's intermediate text (.ttir, .ttgir, .llir, .ptx, .source) is left out: a cache hit reads only
# the .json metadata and the .cubin (Triton 3.6, compiler.py `compile` -> CompiledKernel; the group
# file's absent members are skipped), so the archive is under half the size (2026-12-03, 6,264 files
# of an H200's cache: 27.7 MB whole, 12.1 MB without them) and fits a device call beside the wheels.
# Bounded by SECONDS (default 120): nothing is written when it runs over, never half an archive.
# With its work folder beside it (KERNEL_CACHE_DIR-work: what every process but the `kernels` stage
# compiles, refine_tasks/pipeline/kernel_cache.py), the archive holds both, merged by hard links.
set -eu
src=${1:?usage: $0 KERNEL_CACHE_DIR ARCHIVE.txz [SECONDS]}
dest=${2:?usage: $0 KERNEL_CACHE_DIR ARCHIVE.txz [SECONDS]}
[ -d "$src" ] || { echo "pack_kernel_cache: $src is not a folder" >&2; exit 2; }
tmp="$dest.tmp-$$"
merged=
trap 'rm -f "$tmp"; [ -z "$merged" ] || rm -rf "$merged"' EXIT
if [ -d "${src%/}-work" ]; then
    merged=$(mktemp -d)
    cp -al "$src" "$merged/kernels"
    cp -aln "${src%/}-work/." "$merged/kernels/"
    src=$merged/kernels
fi
XZ_OPT="-T0 -6" timeout "${3:-120}" tar -cJf "$tmp" -C "$(dirname "$src")" \
    --exclude='*.ttir' --exclude='*.ttgir' --exclude='*.llir' --exclude='*.ptx' --exclude='*.source' \
    --transform "s,^$(basename "$src"),kernels," "$(basename "$src")"
mv "$tmp" "$dest"
echo "pack_kernel_cache: $(find "$src" -type f | wc -l) files of $src into $dest, $(du -h "$dest" | cut -f1)"
