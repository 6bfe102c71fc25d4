"""The chained delta rule's state chain and output correction: Triton kernels (`triton`) beside
their torch reference (`naive`, the CPU path)."""
