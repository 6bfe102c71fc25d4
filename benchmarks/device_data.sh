#!/usr/bin/env bash
# The data folder benchmarks/gpu_train_loop.py reads on the device machine (--data .gpu_data):
# the GPU profile's tokenizer, corpus shards and catalog, built here on the CPU (the device machine
# reaches no registry) into .gpu_data/ (git-ignored through .git/info/exclude); carry .gpu_data.
#
#   bash benchmarks/device_data.sh [PARAMS]      # default params-gpu-small.yaml
set -eu
cd "$(dirname "$0")/.."
params=${1:-params-gpu-small.yaml}
grep -qx '/.gpu_data/' .git/info/exclude 2>/dev/null || echo /.gpu_data/ >>.git/info/exclude
data=.gpu_data
settings=(--set "paths.data_dir=$data" --set "paths.corpus_dir=$data/corpus"
          --set "paths.tokenizer_dir=$data/tokenizer" --set "paths.catalog=$data/cache/refine.duckdb"
          --set corpus.retrieval_ratio=0 --set corpus.limit=${LIMIT:-100})
# No generated retrieval documents: only base pretraining reads them, and the train loop does not
# pretrain; without them, and with 100 documents (LIMIT), the folder is small enough to carry beside
# .whl and the kernel cache archive (the device call's working tree has 64 MiB).
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
.venv/bin/refine tokenizer --params "$params" "${settings[@]}"
.venv/bin/refine ingest --params "$params" "${settings[@]}"
du -sh "$data"
