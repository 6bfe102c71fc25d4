"""Long-document training sequences from the corpus's Arrow shards, resumable by a cursor.

Sequences of exactly `seq_len` tokens:
  truncate  one per document of at least seq_len tokens (its first seq_len); shorter
            documents are skipped. The sequence id is the document id.
  pack      the corpus's documents concatenated in manifest order and cut into consecutive
            windows (a window may span documents; the last partial one is dropped). The
            sequence id is '<doc_id>@<offset>' of the document and token where it starts.
            Generated retrieval documents (`synthetic`) are packed apart, by `synthetic_windows`:
            stream   concatenated and cut as natural documents are. A use then lands in another
                     window than its statement about (distance / seq_len) of the time, where the
                     state starts anew: 32.6% of the uses read at the GPU profile (~3,200-token
                     documents in 4,096-token windows; benchmarks/retrieval_windows.py).
            aligned  every one begins a window, so a record's statement and its uses share one
                     sequence. A window holds whole documents while they fit, then the head of the
                     next one, which begins the next window again (read twice); a document longer
                     than a window gives its first seq_len tokens only. At the GPU profile an epoch
                     has ~1.3x the windows (0.999 a document, not 0.775). Not the default: tiny
                     DeltaNets on the CPU learnt less retrieval so, not more (the recall probe's
                     gain 0.029 / 0.038 against 0.074 / 0.073 nats/token streamed, seeds 0 / 1;
                     benchmarks/base_windows_cpu.py).
Order: a seeded permutation per epoch. The cursor (epoch, index) is all the state there is,
so a resumed run reads exactly the batches an uninterrupted one would have read.

Data parallelism (`rank` of `world` processes): every rank walks the same permutation with the
same cursor; each batch is a global one of world x batch_size sequences, and rank r keeps rows
r*batch_size .. (r+1)*batch_size - 1. So within an epoch no sequence goes to two ranks and none is
lost, the cursor is the same on every rank (a checkpoint is independent of the world size), and
world ranks x batch B read exactly the sequences one process reads with batch world x B.

Held out (`held_out` = N): the N natural sequences with the smallest hash of their sequence id
are set aside for validation and never trained on; chosen by id, not by seed, so every seed of an
experiment and every stage (base, SFT, ReFINE) validates on the same ones. Documents whose
source starts with `SYNTHETIC_PREFIX` (the retrieval documents of
refine_tasks.corpus.retrieval_docs) are read only with `synthetic=True` (base pretraining). With
`midtrain_share` (corpus.midtrain_share) the natural documents are split by id: those kept for
mid-training are read only without `synthetic`, the others only with it. The base (`synthetic`) then
validates on mid-training's held-out sequences too, read for that alone: its own natural documents'
paragraphs are woven into the generated ones (each into a median of 25 at the GPU profile; an H200
base of 2026-12-04 "validated" at next-token accuracy 0.937 on them). So every stage validates on
the same sequences, none of whose text the base or a generated document has read.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from torch import Tensor

from refine_tasks.corpus import CorpusError, shard_paths
from refine_tasks.corpus.clean import SYNTHETIC_PREFIX, for_midtrain
from refine_tasks.corpus.shards import read_shard


@dataclass
class Batch:
    input_ids: Tensor  # [B, T] int64
    doc_ids: list[str]  # one sequence id per row (see the module docstring)


@dataclass(frozen=True)
class Piece:
    doc: int  # index into the loader's document list
    start: int
    stop: int


def reads(source: str, doc_id: str, synthetic: bool, midtrain_share: float) -> bool:
    """Whether the loader of base pretraining (`synthetic`) or of mid-training reads a document:
    generated ones are the base's; with a midtrain_share, each natural one is one side's alone."""
    if source.startswith(SYNTHETIC_PREFIX):
        return synthetic
    return not midtrain_share or for_midtrain(doc_id, midtrain_share) != synthetic


class LongDocumentLoader:
    """Batches of `batch_size` sequences of `seq_len` tokens; `state_dict` / `load_state_dict` resume it."""

    def __init__(
        self,
        corpus_dir: Path,
        seq_len: int,
        batch_size: int,
        packing: str = "truncate",
        seed: int = 0,
        rank: int = 0,
        world: int = 1,
        held_out: int = 0,
        synthetic: bool = False,
        midtrain_share: float = 0.0,
        synthetic_windows: str = "stream",
    ) -> None:
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} is not one of world size {world}'s ranks 0..{world - 1}")
        self.corpus_dir = Path(corpus_dir)
        self.seq_len, self.batch_size, self.seed = seq_len, batch_size, seed
        self.rank, self.world = rank, world
        columns = ["doc_id", "source", "n_tokens", "input_ids"]
        tables = [read_shard(p, columns) for p in shard_paths(self.corpus_dir)]
        self._ids: list[pa.ListArray] = [t["input_ids"].combine_chunks() for t in tables]
        rows = [
            (s, row, doc_id, source, n)
            for s, t in enumerate(tables)
            for row, (doc_id, source, n) in enumerate(
                zip(t["doc_id"].to_pylist(), t["source"].to_pylist(), t["n_tokens"].to_pylist(), strict=True)
            )
        ]
        self._docs = [
            (s, row, d, n) for s, row, d, src, n in rows if reads(src, d, synthetic, midtrain_share)
        ]
        self._reading = len(self._docs)  # self._docs[_reading:]: read for validation only
        if synthetic and midtrain_share and held_out:  # mid-training's documents, for its held-out ones
            self._docs += [
                (s, row, d, n) for s, row, d, src, n in rows if reads(src, d, False, midtrain_share)
            ]
        self._natural = {d for _, _, d, src, _ in rows if not src.startswith(SYNTHETIC_PREFIX)}
        if packing not in ("truncate", "pack"):
            raise ValueError(f"train.packing={packing!r}: expected 'truncate' or 'pack'")
        self.packing = packing
        if synthetic_windows not in ("aligned", "stream"):
            raise ValueError(f"train.synthetic_windows={synthetic_windows!r}: expected 'aligned' or 'stream'")
        self.synthetic_windows = synthetic_windows
        self.sequences = self._sequences(range(self._reading))
        if self._reading < len(self._docs):  # the base validates on mid-training's held-out sequences
            self.held_out = self._hold_out(
                held_out, self._sequences(range(self._reading, len(self._docs))), 0
            )
        else:
            self.held_out = self._hold_out(held_out, self.sequences, batch_size)
        self.held_out_ids = [self._sequence_id(seq) for seq in self.held_out]
        held = set(self.held_out_ids)
        self.sequences = [seq for seq in self.sequences if self._sequence_id(seq) not in held]
        if len(self.sequences) < batch_size * world:
            longest = max((d[3] for d in self._docs), default=0)
            per_step = f"train.batch_size={batch_size}" + (f" x {world} processes" if world > 1 else "")
            raise CorpusError(
                f"{self.corpus_dir}: {len(self.sequences)} training sequences of train.seq_len={seq_len} tokens "
                f"with train.packing={packing!r} (longest document: {longest} tokens), fewer than "
                f"{per_step}: lower seq_len, use packing 'pack', or ingest longer documents"
            )
        self.epoch, self.index = 0, 0
        self._order = self._permutation(0)

    def _sequences(self, docs: range) -> list[list[Piece]]:
        """The sequences of self._docs[docs] (see the module docstring's packings)."""
        if self.packing == "truncate":
            return [[Piece(i, 0, self.seq_len)] for i in docs if self._docs[i][3] >= self.seq_len]
        return self._pack(docs)

    def _hold_out(self, n: int, sequences: list[list[Piece]], spare: int) -> list[list[Piece]]:
        """The n natural sequences (every piece from a natural document) of `sequences` of smallest id
        hash; `spare` more must be left (a batch to train on, when they come from the training ones)."""
        if n == 0:
            return []
        natural = [
            k for k, seq in enumerate(sequences) if all(self._docs[p.doc][2] in self._natural for p in seq)
        ]
        if len(natural) < n + spare:
            where = "training" if spare else "mid-training (corpus.midtrain_share)"
            fill = f" and still fill a batch of train.batch_size={self.batch_size}" if spare else ""
            raise CorpusError(
                f"{self.corpus_dir}: {len(natural)} natural {where} sequences of train.seq_len={self.seq_len} "
                f"tokens, too few to hold out train.val_sequences={n}{fill}: lower train.val_sequences or "
                "ingest more documents"
            )
        digest = {k: hashlib.sha256(self._sequence_id(sequences[k]).encode()).hexdigest() for k in natural}
        return [sequences[k] for k in sorted(natural, key=digest.__getitem__)[:n]]

    def held_out_batches(self) -> list[Batch]:
        """The held-out sequences in batches of at most batch_size (validation; never trained on)."""
        rows = [(self._tokens(seq), self._sequence_id(seq)) for seq in self.held_out]
        return [
            Batch(
                torch.stack([t for t, _ in rows[i : i + self.batch_size]]),
                [d for _, d in rows[i : i + self.batch_size]],
            )
            for i in range(0, len(rows), self.batch_size)
        ]

    def _pack(self, docs: range) -> list[list[Piece]]:
        """Natural documents packed in manifest order, then the generated ones on their own: the
        natural sequences (and so the held-out ones) are the same whether generated ones are read."""
        natural = [i for i in docs if self._docs[i][2] in self._natural]
        synthetic = [i for i in docs if self._docs[i][2] not in self._natural]
        pack_synthetic = self._pack_aligned if self.synthetic_windows == "aligned" else self._pack_docs
        return self._pack_docs(natural) + pack_synthetic(synthetic)

    def _pack_docs(self, docs: list[int]) -> list[list[Piece]]:
        sequences: list[list[Piece]] = []
        current: list[Piece] = []
        need = self.seq_len
        for i in docs:
            n = self._docs[i][3]
            start = 0
            while start < n:
                take = min(need, n - start)
                current.append(Piece(i, start, start + take))
                start += take
                need -= take
                if need == 0:
                    sequences.append(current)
                    current, need = [], self.seq_len
        return sequences

    def _pack_aligned(self, docs: list[int]) -> list[list[Piece]]:
        """Windows that each begin at a document's start (the module docstring's `aligned`)."""
        sequences: list[list[Piece]] = []
        k = 0
        while k < len(docs):
            current: list[Piece] = []
            need, j = self.seq_len, k
            while need and j < len(docs):
                take = min(need, self._docs[docs[j]][3])
                current.append(Piece(docs[j], 0, take))
                need -= take
                j += 1
            if need:  # the last partial window is dropped, as when packing
                break
            sequences.append(current)
            cut = current[-1].stop < self._docs[current[-1].doc][3]
            k = j - 1 if cut and len(current) > 1 else j  # a cut document begins the next window
        return sequences

    def _permutation(self, epoch: int) -> list[int]:
        rng = np.random.default_rng([self.seed, epoch])
        return rng.permutation(len(self.sequences)).tolist()

    def sequence_id(self, k: int) -> str:
        return self._sequence_id(self.sequences[k])

    def _sequence_id(self, seq: list[Piece]) -> str:
        first = seq[0]
        doc_id = self._docs[first.doc][2]
        return doc_id if first.start == 0 and len(seq) == 1 else f"{doc_id}@{first.start}"

    def tokens(self, k: int) -> Tensor:
        return self._tokens(self.sequences[k])

    def _tokens(self, seq: list[Piece]) -> Tensor:
        parts = []
        for piece in seq:
            shard, row, _, _ = self._docs[piece.doc]
            values = self._ids[shard][row].values.to_numpy(zero_copy_only=False)
            parts.append(values[piece.start : piece.stop])
        return torch.from_numpy(np.concatenate(parts).astype(np.int64))

    def next_batch(self) -> Batch:
        """This rank's rows of the next global batch; a new epoch (new permutation) starts when the
        current one runs out."""
        picked = []
        while len(picked) < self.batch_size * self.world:
            if self.index == len(self._order):
                self.epoch, self.index = self.epoch + 1, 0
                self._order = self._permutation(self.epoch)
            picked.append(self._order[self.index])
            self.index += 1
        mine = picked[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]
        return Batch(torch.stack([self.tokens(k) for k in mine]), [self.sequence_id(k) for k in mine])

    def batches_per_epoch(self) -> int:
        """Global batches (one per rank at a time) in an epoch."""
        return len(self.sequences) // (self.batch_size * self.world)

    def passes(self) -> float:
        """Passes over the sequences so far (1.5: every sequence once, half of them twice). Well
        above 1, a small model memorises its data (a base at 15 passes over a 4.2M-token corpus
        ended at loss 0.24 and retrieved nothing in context: H200, 2026-12-04)."""
        return self.epoch + self.index / len(self._order)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "index": self.index, "sequences": len(self.sequences)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state["sequences"] != len(self.sequences):
            raise CorpusError(
                f"{self.corpus_dir}: the checkpoint's data cursor counts {state['sequences']} sequences, the "
                f"corpus now gives {len(self.sequences)}: resume with the corpus and train settings it was made with"
            )
        self.epoch, self.index = state["epoch"], state["index"]
        self._order = self._permutation(self.epoch)
