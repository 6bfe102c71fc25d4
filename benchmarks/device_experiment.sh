#!/usr/bin/env bash
# Issue 17's GPU run (benchmarks/gpu_lifecycle_flow.py: the lifecycle as a Prefect flow run of
# refine-lifecycle/gpu-small, the further seeds and the results page, then `dvc repro` and `refine run`)
# on one fresh device machine, in calls that each carry at most 64 MiB of working tree.
#
# Here first:  .venv/bin/python benchmarks/device_wheels.py && .venv/bin/python benchmarks/device_wheels.py experiment
#              .venv/bin/python benchmarks/device_wheels.py check   (nothing the device run loads is missing)
#              mkdir -p .shared_data && tar -cJf .shared_data/data.txz -C ../shared data   (git-ignored)
# A CPU rehearsal of the whole path (the copy, both flow runs, dvc repro, refine run, the archives; 6 min on
# 2 cores), before spending a lease: the tiny overrides of tests/benchmarks/test_gpu_experiment_dry.py plus
# train.device=cpu evaluate.device=cpu lifecycle.ablate=never, each as --set, after
#   OUT=/tmp/out RUN_DIR=/tmp/run PATH=$PWD/.venv/bin:$PATH bash benchmarks/device_experiment.sh run
# Then, one call each, back to back (a machine left idle for idle_release_s, 30 s on 2026-12-03, is taken
# back, and whatever a call installed or unpacked under /tmp goes with it):
#   carry [.whl]          bash benchmarks/device_experiment.sh prepare
#   carry [.whl_exp1]     bash benchmarks/device_experiment.sh prepare      (and so on, one .whl_expN a call;
#                                                                         the last small one beside .shared_data)
#   carry [.whl_exp3, .shared_data]  bash benchmarks/device_experiment.sh prepare && \
#                         WAIT=500 bash benchmarks/device_bg.sh start-script benchmarks/device_experiment.sh run
#   carry []              WAIT=530 bash benchmarks/device_bg.sh wait   (limit 595 s; again until it says
#                                                                         finished, each the moment the last returns)
# (device_bg.sh archives what came out every minute and after WAIT: a call cut at its limit brings
# back the last minute's archive)
# The kernel cache comes from benchmarks/kernel_cache/ (tracked); a stale one costs minutes, not results.
# Measured on the H200, 2026-12-03 (flow run 6d956ac8, its machine taken back as ReFINE started): the flow
# run began 85 s after `run` (Prefect server, deployments, worker); tokenizer and corpus 22 s; kernels
# 245 s (from the previous archive, 941 files compiled); base 2,000 steps 344 s; SFT 200 steps 39 s;
# positions 123 s (one sequence a pass).
# 2026-12-04 (flow run 'dazzling-earthworm', machine taken back 16 min in, during eval_qa@base): flow run
# 117 s after `run`; kernels 30 s (the complete archive); base 285 s (89,059 tokens/s); SFT 25 s;
# positions 136 s (batched; the first batch's share is in its summary since); ReFINE 200 steps 49 s;
# eval_niah 35-37 s a model (17 s of generation); eval_qa@base still compiling fla's norm kernels after
# 210 s (a new row count each batch: fixed in refine_tasks/kernels/norms.py). Post-training, TTT,
# LongBench, seeds 1 and 2 and the doors are unmeasured: the lease's 30 minutes are the whole budget,
# so issue the calls back to back and give no thought between them.
# 2026-12-04 06:00 (flow run a62998b7 'groovy-sambar', Completed, 1,492 s from the flow run's start,
# itself 123 s after `run`; Prefect task times): tokenizer and corpus 10 s; kernels 170 s (1,452 files
# added); base 281 s (2,000 x 8 x 4,096, 307,558 tokens/s); SFT 34 s; positions 97 s (0.8 s of it
# the first batch); ReFINE 63 s; eval_niah 38/26/26 s; eval_qa 8/5/6 s; eval_longbench 116/18/18 s
# (the base's compiling); qa_data 18 s; posttrain 72/14/27 s; eval_qa_post 8/8/7 s; eval_qa_ttt
# 190/159 s.
# Then `dvc repro` failed: no `refine` on PATH (fixed below) and the kernels stage's output changed
# by later compiles (fixed: refine_tasks/pipeline/kernel_cache.py's work folder). The seeds never began.
# 2026-12-04 09:09 (flow run 'worthy-stallion', the retrieval corpus of params-gpu-small.yaml): the flow run
# began 147 s after `run`; tokenizer and corpus 31 s (14,921 documents, 50,044,147 tokens); kernels 19 s
# (0 files added: the archive is complete); base 275 s (315,650 tokens/s, 1.35 passes, last loss 0.4760,
# held-out loss 0.313, next-token accuracy 0.937); SFT 30 s. The machine was taken back during ReFINE: a
# `wait` call came later than idle_release_s after the one before.
# `run-midtrain` (gpu_midtrain_experiment.sh), then with the lifecycle's stages beside both further seeds
# (3 processes on the GPU, through a lifecycle.seed_workers option since removed): base 324 s after `run` (301,667 tokens/s, the same last loss), then SFT 6,228
# tokens/s, positions 254 s, the base's NIAH evaluation no batch in 10 min; the lease ended there. The
# script now runs one process at a time.
# 2026-12-04 11:03 (`run-midtrain --set lifecycle.ablate=never`, one process at a time; the lease ended
# 1,760 s in, during seed 1's evaluations): `refine run --until eval_longbench@refine` 676 s: kernels
# 13.7 s (0 files added), base 2,000 steps at 310,551 tokens/s (last loss 0.4760, as before), positions
# 64.5 s, SFT 78,767 tokens/s, ReFINE 43,298 tokens/s; NIAH 12/7/6 s, RULER QA 8/4/4 s, LongBench
# 94/13/15 s a model. The base scores 0 on every NIAH cell (1K-8K). Then `refine experiment
# --seeds-only`: seed 1's positions, SFT and ReFINE each compiled for 140 / 197 / 297 s before their
# first step: torch._dynamo's import had written torch's default TORCHINDUCTOR_CACHE_DIR, taken for the
# user's, so no process after the lifecycle's got the archive's kernels (fixed in kernel_cache.py).
# 2026-12-04 14:00 (`run-midtrain`, the fix in): `refine run --until eval_longbench@refine` 514 s (kernels
# 10.4 s, base 345,260 tokens/s, last loss 0.4643; positions 2.3 s; SFT 91,713 and ReFINE 42,865
# tokens/s; NIAH 7/7/6 s, RULER QA 4/4/4 s, LongBench 12/12/11 s a model), then seeds 1 and 2 in 356 s
# together (seed 1's positions 8.7 s, SFT 92,188 and ReFINE 44,339 tokens/s: no compiling), report 17 s.
# The run's own cache comes back in the out archive (kernels.txz): copy it over that archive.
# 2026-12-04 16:40 (`run-midtrain --set lifecycle.ablate=always`): `refine run --until eval_longbench@refine`
# 573 s (base 294,520 tokens/s, last loss 0.4663; the base's NIAH 0 again), then the machine was taken
# back during the seeds: the second `wait` call came more than idle_release_s after the first (its WAIT
# was being worked out). Every wait call alike now: WAIT=530, limit 595 s, issued at once; device_bg.sh
# writes its archive every minute, so a call the budget cuts short still brings back what came out.
# Next (2026-12-04 20:20): the seeds' run and the ablations' do not fit one lease together (573 + 356 +
# ~1,000 s against ~1,620 s of command time), so the ablations run from a base of their own:
#   ... run-midtrain --set 'lifecycle.seeds=[]' --set lifecycle.ablate=always      (about 1,400 s)
# then here, with that run's outputs (mid/progress) and the seeds' (.device_results/h200-20261204-1400):
#   copy the seeds' data/ into a checkout, then  refine report --experiment -p params-gpu-small.yaml \
#       --ablations-from <that run's progress folder>
# The doors (`run`: the Prefect flow run, `dvc repro`) are a lease of their own (about 1,250 s).
# 2026-12-04 23:50: the base now logs the recall probe at every validation (val/recall_use,
# val/retrieval_gain; the same weights as before), so any lease that trains a base shows whether and when
# retrieval began (curves_base.png). 32.6% of the uses it reads have their statement in an earlier
# window; --set train.synthetic_windows=aligned removes that, but tiny CPU bases learnt less retrieval
# so (benchmarks/base_windows_cpu.py): a GPU base with it is a lease's question of its own.
set -u
case "${1:-}" in
prepare)
    wheels=$(ls .whl*/*.whl 2>/dev/null)
    if [ -n "$wheels" ]; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
            $wheels || exit 1
        echo "installed $(echo "$wheels" | wc -w) wheels into /tmp/site"
    fi
    # pip --target --upgrade replaces the whole bin/ folder with the last call's: write every installed
    # distribution's console scripts again from its entry points.
    [ -d /tmp/site ] && python3 - <<'PY'
import configparser, pathlib
site = pathlib.Path("/tmp/site"); (site / "bin").mkdir(exist_ok=True)
for ep in site.glob("*.dist-info/entry_points.txt"):
    cp = configparser.ConfigParser(delimiters=("=",)); cp.optionxform = str; cp.read(ep)
    for name, target in (cp["console_scripts"].items() if cp.has_section("console_scripts") else []):
        module, _, attr = target.strip().partition(":")
        script = site / "bin" / name
        script.write_text(f"#!/usr/bin/env python3\nimport sys\nfrom {module} import {attr.split('.')[0]} as _f\n"
                          f"sys.exit(_f{''.join('.' + a for a in attr.split('.')[1:])}())\n")
        script.chmod(0o755)
print("console scripts in /tmp/site/bin:", len(list((site / "bin").iterdir())))
PY
    for archive in .shared_data/*.txz; do
        [ -f "$archive" ] || continue
        mkdir -p /tmp/shared && tar -xJf "$archive" -C /tmp/shared && echo "unpacked $archive into /tmp/shared"
    done
    ;;
run | run-midtrain)
    OUT=${OUT:?OUT must name the folder whose files come back}
    # Each device call copies this session's working tree over the repository root again, so a run there
    # would have the files it rewrites reset under it by the next `wait` call (2026-12-03: params.yaml,
    # which gpu_lifecycle_flow.py writes from the profile, came back as the CPU defaults, and the stages
    # that started after the first call's end trained the CPU lifecycle). The run works in a copy of
    # its own, which outlives the calls while the machine stays warm.
    RUN=${RUN_DIR:-/tmp/refine-run}
    # KEEP_DATA=1 (implied by ABLATIONS=1) keeps the run's data/ (base, runs, evaluations) of an earlier
    # call on this warm machine and refreshes the code only. 2026-12-04 14:10: `ABLATIONS=1 ...
    # run-midtrain` after a finished comparison found data/ wiped by this copy, retrained the base and
    # spent the lease's last 540 s on it, no ablation reached.
    if [ "${KEEP_DATA:-${ABLATIONS:-0}}" = 1 ] && [ -d "$RUN/data" ]; then
        find "$RUN" -mindepth 1 -maxdepth 1 ! -name data -exec rm -rf {} + || exit 1
        echo "keeping $RUN/data of an earlier call"
    else
        rm -rf "$RUN" && mkdir -p "$RUN" || exit 1
    fi
    tar -cf - --exclude='./.whl*' --exclude=./.shared_data --exclude=./.gpu_data . | tar -xf - -C "$RUN" || exit 1
    cd "$RUN" || exit 1
    echo "running in $RUN, a copy of $OLDPWD"
    # The project is this copy, not an installed wheel, so its console scripts (`refine`, which every
    # dvc.yaml stage runs) are written from pyproject.toml into a folder of the run's own; without them
    # `dvc repro` failed with "refine: not found" (2026-12-04, flow run a62998b7).
    export PYTHONPATH=/tmp/site:$PWD PATH=$RUN-bin:/tmp/site/bin:$PATH PYTHONUNBUFFERED=1
    rm -rf "$RUN-bin" && mkdir -p "$RUN-bin" && BIN="$RUN-bin" python3 - <<'PY' || exit 1
import os, pathlib, tomllib
for name, target in tomllib.loads(pathlib.Path("pyproject.toml").read_text())["project"]["scripts"].items():
    module, _, attr = target.partition(":")
    script = pathlib.Path(os.environ["BIN"]) / name
    script.write_text(f"#!/usr/bin/env python3\nimport sys\nfrom {module} import {attr} as _f\nsys.exit(_f())\n")
    script.chmod(0o755)
    print("console script", script)
PY
    export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1
    # The evaluation data where the configuration looks for it (../shared/data, beside the checkout).
    if [ ! -d ../shared/data ] && [ -d /tmp/shared/data ]; then mkdir -p ../shared && ln -s /tmp/shared/data ../shared/data; fi
    mkdir -p data/cache && tar -xJf benchmarks/kernel_cache/nvidia-h200-triton3.6.0.txz -C data/cache
    nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
    # The kernel cache comes back as soon as the `kernels` stage has committed it (dvc.lock names the
    # stage), so a later failure or a lost machine does not cost the next session those minutes again.
    (until grep -q '^  kernels:' dvc.lock 2>/dev/null; do sleep 10; done
     bash benchmarks/pack_kernel_cache.sh data/cache/kernels "$OUT/kernels-after-stage.txz") &
    packer=$!
    if [ "$1" = run-midtrain ]; then  # the comparison alone, no Prefect or DVC (gpu_midtrain_experiment.sh)
        bash benchmarks/gpu_midtrain_experiment.sh "$OUT/mid" "${@:2}"
    else
        python3 benchmarks/gpu_lifecycle_flow.py --out "$OUT/flow" "${@:2}"
    fi
    code=$?
    echo "$1 exit $code"
    kill "$packer" 2>/dev/null
    bash benchmarks/pack_kernel_cache.sh data/cache/kernels "$OUT/kernels.txz" && rm -f "$OUT/kernels-after-stage.txz"
    exit $code
    ;;
*) echo "usage: $0 prepare | run [gpu_lifecycle_flow.py options] | run-midtrain [--set k=v ...]" >&2; exit 2 ;;
esac
