"""Storage: the DuckDB catalog (documents, runs, evaluation results), its single-writer lock, and
the cache of selected rollout positions. Knows nothing of models or training."""
