"""refine-pipeline: ReFINE training of fast-weight language models as a pipeline library.

Layers, top to bottom (imports point down only): `flows/` -> `refine_tasks` pipeline steps
(corpus, tokenizer, catalog, positions, train, evaluate) -> `refine_tasks.rl`,
`refine_tasks.models` -> `refine_tasks.kernels`.
"""

__version__ = "0.1.0"
