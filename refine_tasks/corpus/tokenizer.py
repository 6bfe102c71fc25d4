"""Tokenizers: train a byte-level BPE, or bring an existing one; `load_tokenizer` for everyone else.

A tokenizer lives on disk as a Hugging Face tokenizer directory (`tokenizer.json` +
`tokenizer_config.json`), so `AutoTokenizer.from_pretrained(dir)` loads it and checkpoints can
carry it. `load_tokenizer` takes such a directory or a SentencePiece model file
(e.g. the 32,000-piece models shipped in `mistral-common`; needs the optional `sentencepiece`
package). Every loaded tokenizer has bos, eos and pad tokens.
"""

from __future__ import annotations

import hashlib
import itertools
import shutil
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, LlamaTokenizer, PreTrainedTokenizerFast

from refine_tasks.config import TokenizerConfig

BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"


class TokenizerError(ValueError):
    """A tokenizer cannot be trained, loaded or saved; the message names the path and what to do."""


def train_bpe(texts: Iterable[str], vocab_size: int, min_frequency: int = 2) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE (GPT-2 style: every byte is a token, so nothing is unknown)."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[BOS, EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    texts = iter(texts)
    first = next(texts, None)
    if first is None:
        raise TokenizerError("BPE training saw no text: the corpus gave no documents (see its drop counts)")
    bpe.train_from_iterator(itertools.chain([first], texts), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token=BOS, eos_token=EOS, pad_token=PAD)


def _load_sentencepiece(path: Path) -> PreTrainedTokenizerFast:
    try:
        from sentencepiece import sentencepiece_model_pb2
    except ImportError:
        raise TokenizerError(
            f"{path}: reading a SentencePiece model needs the `sentencepiece` package "
            "(pip install 'refine-pipeline[sentencepiece]')"
        ) from None
    proto = sentencepiece_model_pb2.ModelProto()
    try:
        proto.ParseFromString(path.read_bytes())
    except Exception as e:  # protobuf raises its own DecodeError; any failure means "not a model"
        raise TokenizerError(f"{path}: not a SentencePiece model ({e})") from None
    if not proto.pieces:
        raise TokenizerError(f"{path}: not a SentencePiece model (no pieces)")
    kind = sentencepiece_model_pb2.TrainerSpec.ModelType.Name(proto.trainer_spec.model_type)
    if kind != "BPE":
        raise TokenizerError(
            f"{path}: SentencePiece model type {kind} is not supported (BPE only, as in Llama/Mistral); "
            "convert it to a Hugging Face tokenizer directory and give that path"
        )
    # transformers picks the SentencePiece converter by the file suffix; mistral-common's
    # files are named `*.model.v3` etc., so give it a `.model` name.
    with tempfile.TemporaryDirectory() as tmp:
        model_file = Path(tmp) / "tokenizer.model"
        shutil.copyfile(path, model_file)
        return LlamaTokenizer(**LlamaTokenizer.convert_to_native_format(vocab_file=str(model_file)))


MISTRAL_COMMON = "mistral-common:"  # tokenizer.path prefix: a model file shipped in that package


def packaged_model(name: str) -> Path:
    """The SentencePiece model `name` shipped in the `mistral-common` package (its `data` folder),
    e.g. `tokenizer.model.v1`: the 32,000-piece vocabulary of Mistral 7B, the paper models' size."""
    import importlib.util

    spec = importlib.util.find_spec("mistral_common")  # its files only: importing it pulls in much more
    if spec is None or spec.origin is None:
        raise TokenizerError(
            f"tokenizer.path = {MISTRAL_COMMON}{name}: the `mistral-common` package is not installed "
            "(pip install 'refine-pipeline[mistral]')"
        )
    data = Path(spec.origin).parent / "data"
    if not (data / name).is_file():
        shipped = sorted(p.name for p in data.glob("*.model*"))
        raise TokenizerError(
            f"tokenizer.path = {MISTRAL_COMMON}{name}: no such model in {data}; it ships {', '.join(shipped)}"
        )
    return data / name


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerFast:
    """A tokenizer directory, a `tokenizer.json` file or a SentencePiece model file (or
    `mistral-common:<file>`, a model shipped in that package), with a pad token."""
    if str(path).startswith(MISTRAL_COMMON):
        path = packaged_model(str(path)[len(MISTRAL_COMMON) :])
    path = Path(path)
    if not path.exists():
        raise TokenizerError(
            f"tokenizer {path} does not exist: run `refine tokenizer` to train one, "
            "or set tokenizer.path to a tokenizer directory or SentencePiece model"
        )
    if path.is_dir():
        if not (path / "tokenizer.json").exists() and not any(path.glob("*.model")):
            raise TokenizerError(f"{path}: no tokenizer.json or SentencePiece .model in this directory")
        try:
            tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        except (OSError, ValueError) as e:
            raise TokenizerError(f"{path}: not a loadable tokenizer directory ({e})") from e
    elif path.suffix == ".json":
        # A bare tokenizer.json does not say which tokens are bos/eos/pad; its directory does.
        raise TokenizerError(f"{path}: give the tokenizer directory {path.parent}, not a JSON file inside it")
    else:
        tok = _load_sentencepiece(path)
    if tok.eos_token is None:
        raise TokenizerError(f"{path}: the tokenizer has no eos token; set one and save it again")
    if tok.pad_token is None:
        # Padding is always masked out; reusing eos keeps the vocabulary (and the model) unchanged.
        tok.pad_token = tok.eos_token
    return tok


def tokenizer_id(tok: PreTrainedTokenizerFast) -> str:
    """A content hash of the tokenizer (vocabulary, merges, normaliser, special tokens)."""
    digest = hashlib.sha256(tok.backend_tokenizer.to_str().encode()).hexdigest()
    return f"sha256:{digest[:16]}"


def save_tokenizer(tok: PreTrainedTokenizerFast, out_dir: Path) -> None:
    """Write `tok` as a tokenizer directory, replacing `out_dir` only once the new one is complete."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the tokenizer is for everyone
    try:
        tok.save_pretrained(str(tmp))
        old = out_dir.with_name(f".{out_dir.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        if out_dir.exists():
            out_dir.rename(old)
        tmp.rename(out_dir)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@dataclass
class TokenizerReport:
    out_dir: Path
    tokenizer_id: str
    vocab_size: int
    origin: str  # "trained on N documents" or the imported path
    seconds: float

    def summary_rows(self) -> list[tuple[str, str]]:
        return [
            ("tokenizer", str(self.out_dir)),
            ("origin", self.origin),
            ("vocab size", f"{self.vocab_size:,}"),
            ("id", self.tokenizer_id),
            ("seconds", f"{self.seconds:.2f}"),
        ]


def build_tokenizer(cfg: TokenizerConfig, out_dir: Path, texts: Iterable[str]) -> TokenizerReport:
    """Train a BPE on `texts` (consumed only when training) or import `cfg.path`, and save to `out_dir`."""
    start = time.perf_counter()
    if cfg.path is not None:
        tok = load_tokenizer(cfg.path)
        origin = f"imported from {cfg.path}"
    else:
        counted = _Counted(texts)
        tok = train_bpe(counted, cfg.vocab_size, cfg.min_frequency)
        origin = f"byte-level BPE trained on {counted.n:,} documents"
    save_tokenizer(tok, out_dir)
    return TokenizerReport(Path(out_dir), tokenizer_id(tok), len(tok), origin, time.perf_counter() - start)


class _Counted:
    """Iterates `texts` once, counting them (the trainer takes any iterator)."""

    def __init__(self, texts: Iterable[str]) -> None:
        self.texts, self.n = texts, 0

    def __iter__(self):
        for text in self.texts:
            self.n += 1
            yield text
