"""The chained delta rule's state chain and output correction: Triton kernels (`triton`)."""
