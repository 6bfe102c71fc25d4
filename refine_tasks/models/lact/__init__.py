"""LaCT: sliding-window attention plus a SwiGLU fast-weight network per head, updated once per
large chunk (`layer`); its options (`config`), window attention (`attention`) and state (`state`)."""
