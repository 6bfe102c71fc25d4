"""A small corpus in the ingest format (Arrow shards + manifest), for loader and trainer tests."""

from __future__ import annotations

from pathlib import Path

import torch

from refine_tasks.corpus.shards import token_table, write_manifest, write_shard

LENGTHS = [[50, 120, 200], [99, 100, 310], [7, 260]]  # three shards


def write_corpus(
    directory: Path, lengths=LENGTHS, seed: int = 0, source=lambda name: "test"
) -> dict[str, list[int]]:
    """Shards in the ingest format; returns doc_id -> token ids, in manifest order. source(name):
    each document's source."""
    g = torch.Generator().manual_seed(seed)
    directory.mkdir(parents=True)
    docs: dict[str, list[int]] = {}
    shards = []
    for s, shard_lengths in enumerate(lengths):
        ids = [torch.randint(0, 500, (n,), generator=g).tolist() for n in shard_lengths]
        names = [f"doc{s}-{i}" for i in range(len(ids))]
        docs.update(zip(names, ids, strict=True))
        info = write_shard(
            directory / f"shard-{s:05d}.arrow", token_table(names, [source(n) for n in names], ids), f"k{s}"
        )
        shards.append(vars(info))
    write_manifest(directory, {"shards": shards})
    return docs
