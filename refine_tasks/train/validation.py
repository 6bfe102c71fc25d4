"""Validation during training: NTP loss and next-token accuracy on held-out sequences.

The held-out sequences are the loader's (`LongDocumentLoader(held_out=N)`): never trained on, the
same for every seed and stage. As in the reference's validation, the loss is the token-mean
cross-entropy of every next token and the accuracy the share of tokens whose argmax is the truth.
"""

from __future__ import annotations

import torch

from refine_tasks.corpus.loader import Batch
from refine_tasks.models import FastWeightForCausalLM


@torch.no_grad()
def validate(model: FastWeightForCausalLM, batches: list[Batch], device: torch.device) -> dict[str, float]:
    """{"val/loss", "val/accuracy", "val/tokens"} over batches of held-out input_ids [B, T], token-mean
    over all of them; the model is put back in the train/eval mode it was in."""
    was_training = model.training
    model.eval()
    loss_sum, correct, count = 0.0, 0, 0
    try:
        for batch in batches:
            ids = batch.input_ids.to(device)
            logits = model(ids).logits[:, :-1].float()
            target = ids[:, 1:]
            loss_sum += float(
                torch.nn.functional.cross_entropy(logits.flatten(0, 1), target.flatten(), reduction="sum")
            )
            correct += int((logits.argmax(-1) == target).sum())
            count += target.numel()
    finally:
        model.train(was_training)
    if count == 0:
        return {}
    return {"val/loss": loss_sum / count, "val/accuracy": correct / count, "val/tokens": count}
