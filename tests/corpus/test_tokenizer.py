"""refine_tasks.corpus.tokenizer: BPE training, tokenizer directories, SentencePiece models, errors."""

from __future__ import annotations

import random
from pathlib import Path

import mistral_common
import pytest
import sentencepiece as spm
from transformers import AutoTokenizer

from refine_tasks.config import TokenizerConfig
from refine_tasks.corpus.tokenizer import (
    BOS,
    EOS,
    PAD,
    TokenizerError,
    build_tokenizer,
    load_tokenizer,
    save_tokenizer,
    tokenizer_id,
    train_bpe,
)

MISTRAL_V1 = Path(mistral_common.__file__).parent / "data" / "tokenizer.model.v1"
PROSE = [
    "The state of the Union is strong, and the Congress has acted on the budget.",
    "We shall pay our debts; every citizen deserves a fair trial and an honest government.",
    "Exports rose by 12 percent in 1998, while the deficit fell to its lowest level since 1969.",
]


def random_text(rng: random.Random, n: int) -> str:
    alphabet = "abcdefghij XYZ.,;\n\t0123456789éüßçœ中文字日本語😀🚀«»—" + chr(0x1F600) + chr(0x10FFFF)
    return "".join(rng.choice(alphabet) for _ in range(n))


def test_trained_bpe_is_lossless_on_random_text(tokenizer_dir: Path) -> None:
    tok = load_tokenizer(tokenizer_dir)
    rng = random.Random(0)
    for _ in range(20):
        text = random_text(rng, rng.randint(1, 300))
        ids = tok.backend_tokenizer.encode(text, add_special_tokens=False).ids
        assert tok.decode(ids) == text
        assert all(0 <= i < len(tok) for i in ids)


def test_saved_directory_loads_with_auto_tokenizer(tokenizer_dir: Path, sotu_texts: list[str]) -> None:
    auto = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    ours = load_tokenizer(tokenizer_dir)
    assert len(auto) == 512
    assert (auto.bos_token, auto.eos_token, auto.pad_token) == (BOS, EOS, PAD)
    assert len({auto.bos_token_id, auto.eos_token_id, auto.pad_token_id}) == 3
    text = sotu_texts[0][:2000]
    assert auto(text, add_special_tokens=False).input_ids == ours(text, add_special_tokens=False).input_ids
    assert tokenizer_id(auto) == tokenizer_id(ours)


def test_tokenizer_id_changes_with_the_vocabulary(sotu_texts: list[str]) -> None:
    small = train_bpe(sotu_texts[:2], vocab_size=300)
    again = train_bpe(sotu_texts[:2], vocab_size=300)
    other = train_bpe(sotu_texts[:2], vocab_size=320)
    assert tokenizer_id(small) == tokenizer_id(again)
    assert tokenizer_id(small) != tokenizer_id(other)


def test_training_on_no_text_is_an_error() -> None:
    with pytest.raises(TokenizerError, match="saw no text"):
        train_bpe(iter(()), vocab_size=300)


def test_save_replaces_only_when_complete(tmp_path: Path, sotu_texts: list[str], monkeypatch) -> None:
    out = tmp_path / "tok"
    first = train_bpe(sotu_texts[:2], vocab_size=300)
    save_tokenizer(first, out)
    second = train_bpe(sotu_texts[:2], vocab_size=320)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(type(second), "save_pretrained", crash)
    with pytest.raises(KeyboardInterrupt):
        save_tokenizer(second, out)
    assert tokenizer_id(load_tokenizer(out)) == tokenizer_id(first)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tok"]  # no temporary directory left
    monkeypatch.undo()
    save_tokenizer(second, out)
    assert len(load_tokenizer(out)) == 320


def test_sentencepiece_model_matches_sentencepiece(tmp_path: Path) -> None:
    tok = load_tokenizer(MISTRAL_V1)
    reference = spm.SentencePieceProcessor(model_file=str(MISTRAL_V1))
    assert len(tok) == reference.get_piece_size() == 32000
    assert tok.eos_token_id == reference.eos_id() and tok.bos_token_id == reference.bos_id()
    assert tok.pad_token == tok.eos_token  # the model has none; eos stands in
    for text in PROSE:
        assert tok.backend_tokenizer.encode(text, add_special_tokens=False).ids == reference.encode(text)
    save_tokenizer(tok, tmp_path / "mistral")
    reloaded = AutoTokenizer.from_pretrained(str(tmp_path / "mistral"))
    assert reloaded(PROSE[0], add_special_tokens=False).input_ids == reference.encode(PROSE[0])


def test_build_tokenizer_imports_a_path_without_reading_the_corpus(tmp_path: Path) -> None:
    def corpus():
        raise AssertionError("the corpus must not be read when tokenizer.path is set")
        yield ""

    report = build_tokenizer(TokenizerConfig(path=str(MISTRAL_V1)), tmp_path / "tok", corpus())
    assert report.vocab_size == 32000 and "imported" in report.origin
    assert tokenizer_id(load_tokenizer(tmp_path / "tok")) == report.tokenizer_id


def test_build_tokenizer_trains_and_counts_documents(tmp_path: Path, sotu_texts: list[str]) -> None:
    report = build_tokenizer(TokenizerConfig(vocab_size=400), tmp_path / "tok", iter(sotu_texts[:3]))
    assert report.origin == "byte-level BPE trained on 3 documents"
    assert len(load_tokenizer(tmp_path / "tok")) == report.vocab_size == 400


def test_bad_tokenizer_paths_say_what_is_wrong(tmp_path: Path, tokenizer_dir: Path) -> None:
    with pytest.raises(TokenizerError, match=r"does not exist: run `refine tokenizer`"):
        load_tokenizer(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TokenizerError, match="no tokenizer.json"):
        load_tokenizer(tmp_path / "empty")
    with pytest.raises(TokenizerError, match="give the tokenizer directory"):
        load_tokenizer(tokenizer_dir / "tokenizer.json")
    junk = tmp_path / "junk.model"
    junk.write_bytes(random.Random(1).randbytes(4096))
    with pytest.raises(TokenizerError, match=r"junk.model: not a SentencePiece model"):
        load_tokenizer(junk)


def test_mistral_common_prefix_loads_the_packaged_32k_model(tmp_path: Path) -> None:
    tok = load_tokenizer("mistral-common:tokenizer.model.v1")
    assert len(tok) == 32000
    assert tokenizer_id(tok) == tokenizer_id(load_tokenizer(MISTRAL_V1))
    report = build_tokenizer(
        TokenizerConfig(path="mistral-common:tokenizer.model.v1"), tmp_path / "t", iter(())
    )
    assert report.vocab_size == 32000
    with pytest.raises(TokenizerError, match=r"no such model in .*ships .*tokenizer.model.v1"):
        load_tokenizer("mistral-common:tokenizer.model.v9")
