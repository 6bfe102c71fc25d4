"""The delta rule: float64-exact references (`naive`) beside the dispatch to fla's Triton kernels (`ops`)."""
