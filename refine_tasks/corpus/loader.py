"""Long-document training sequences from the corpus's Arrow shards, resumable by a cursor.

Sequences of exactly `seq_len` tokens:
  truncate  one per document of at least seq_len tokens (its first seq_len); shorter
            documents are skipped. The sequence id is the document id.
  pack      the corpus's documents concatenated in manifest order and cut into consecutive
            windows (a window may span documents; the last partial one is dropped). The
            sequence id is '<doc_id>@<offset>' of the document and token where it starts.
Order: a seeded permutation per epoch. The cursor (epoch, index) is all the state there is,
so a resumed run reads exactly the batches an uninterrupted one would have read.

Data parallelism (`rank` of `world` processes): every rank walks the same permutation with the
same cursor; each batch is a global one of world x batch_size sequences, and rank r keeps rows
r*batch_size .. (r+1)*batch_size - 1. So within an epoch no sequence goes to two ranks and none is
lost, the cursor is the same on every rank (a checkpoint is independent of the world size), and
world ranks x batch B read exactly the sequences one process reads with batch world x B.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from torch import Tensor

from refine_tasks.corpus import CorpusError, shard_paths
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
    ) -> None:
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} is not one of world size {world}'s ranks 0..{world - 1}")
        self.corpus_dir = Path(corpus_dir)
        self.seq_len, self.batch_size, self.seed = seq_len, batch_size, seed
        self.rank, self.world = rank, world
        tables = [read_shard(p, ["doc_id", "n_tokens", "input_ids"]) for p in shard_paths(self.corpus_dir)]
        self._ids: list[pa.ListArray] = [t["input_ids"].combine_chunks() for t in tables]
        self._docs = [
            (s, row, doc_id, n)
            for s, t in enumerate(tables)
            for row, (doc_id, n) in enumerate(
                zip(t["doc_id"].to_pylist(), t["n_tokens"].to_pylist(), strict=True)
            )
        ]
        if packing == "truncate":
            self.sequences = [[Piece(i, 0, seq_len)] for i, d in enumerate(self._docs) if d[3] >= seq_len]
        elif packing == "pack":
            self.sequences = self._pack()
        else:
            raise ValueError(f"train.packing={packing!r}: expected 'truncate' or 'pack'")
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

    def _pack(self) -> list[list[Piece]]:
        sequences: list[list[Piece]] = []
        current: list[Piece] = []
        need = self.seq_len
        for i, (_, _, _, n) in enumerate(self._docs):
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

    def _permutation(self, epoch: int) -> list[int]:
        rng = np.random.default_rng([self.seed, epoch])
        return rng.permutation(len(self.sequences)).tolist()

    def sequence_id(self, k: int) -> str:
        first = self.sequences[k][0]
        doc_id = self._docs[first.doc][2]
        return doc_id if first.start == 0 and len(self.sequences[k]) == 1 else f"{doc_id}@{first.start}"

    def tokens(self, k: int) -> Tensor:
        parts = []
        for piece in self.sequences[k]:
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
