"""Test-time training (the paper's third lifecycle stage; DESIGN.md section 7).

Before an evaluation batch is answered, `ttt.steps` optimizer steps on the batch's prompts:
NTP + ttt.coef * GRPO with the `ttt.reward` (objective refine; the reference: 0.4, exact), or
NTP alone (objective sft, the TTT-SFT baseline), through the mid-training step (rollouts branch
from the prompt's own states). Then the batch is generated greedily with the adapted weights.

Modes: `reset` restores the starting weights and a fresh optimizer before every batch, and
seeds the batch's random draws by its prompts, so a batch's answers do not depend on which
batches came before it; `accumulate` (the reference) adapts across batches in file order.
Only the model in memory changes: the checkpoint on disk is never written.

Evaluation holds the weights in bfloat16 on a GPU, where w + lr * update at lr 1e-6 rounds back
to w (bf16 keeps 8 significant bits): AdamW on those weights would change nothing. `MasterWeights`
keeps float32 copies of the adapted parameters, steps AdamW on them and copies them back, so the
generation keeps the bf16 model (its kernels, its memory) and the updates accumulate in float32.
A float32 model under bf16 autocast would do the same for twice the weights' memory in generation.
"""

from __future__ import annotations

import hashlib

import torch

from refine_tasks.config import PipelineConfig
from refine_tasks.models import FastWeightForCausalLM
from refine_tasks.train.posttrain import PromptSteps, truncate_right
from refine_tasks.train.starting_model import mixed_precision
from refine_tasks.train.trainer import make_optimizer


class MasterWeights:
    """AdamW on float32 master copies of `model`'s low-precision parameters (see the module): `step`
    moves the model's gradients onto the masters, steps, and writes the masters back; the same
    `param_groups`, `step` and `zero_grad` as the optimizer it wraps."""

    def __init__(self, model: torch.nn.Module, cfg: PipelineConfig) -> None:
        self.params = [p for p in model.parameters() if p.requires_grad]
        masters = [torch.nn.Parameter(p.detach().float().clone()) for p in self.params]
        self.optimizer = make_optimizer(torch.nn.ParameterList(masters), cfg)
        self.masters, self.param_groups = masters, self.optimizer.param_groups

    @torch.no_grad()
    def step(self) -> None:
        for p, m in zip(self.params, self.masters, strict=True):
            m.grad = None if p.grad is None else p.grad.float()
        self.optimizer.step()
        for p, m in zip(self.params, self.masters, strict=True):
            p.copy_(m)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            p.grad = None
        self.optimizer.zero_grad(set_to_none=set_to_none)


class TestTimeTrainer:
    """Adapts `model` in place to each batch of prompts it is called with (see the module)."""

    __test__ = False  # not a pytest class

    def __init__(self, model: FastWeightForCausalLM, cfg: PipelineConfig) -> None:
        if cfg.ttt.objective == "none":
            raise ValueError("ttt.objective = 'none': there is no test-time training to run")
        self.model, self.cfg, self.batches = model, cfg, 0
        device = next(model.parameters()).device
        coef = cfg.ttt.coef if cfg.ttt.objective == "refine" else 0.0
        refine = cfg.refine.model_copy(update={"coef": coef, "reward": cfg.ttt.reward})
        self.steps = PromptSteps(
            refine,
            cfg.positions,
            cfg.train.grad_clip,
            cfg.seed,
            mini_batch=cfg.evaluate.batch_size,  # one optimizer step per step over the whole batch
            autocast=lambda: mixed_precision(device, cfg.train.dtype),
        )
        self.initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.optimizer = self._optimizer()

    def _optimizer(self) -> torch.optim.Optimizer | MasterWeights:
        low = any(p.dtype in (torch.bfloat16, torch.float16) for p in self.model.parameters())
        optimizer = MasterWeights(self.model, self.cfg) if low else make_optimizer(self.model, self.cfg)
        for group in optimizer.param_groups:
            group["lr"] = self.cfg.ttt.lr
        return optimizer

    def restore(self) -> None:
        """Put the starting weights back (and a fresh optimizer)."""
        self.model.load_state_dict(self.initial)
        self.optimizer = self._optimizer()

    def __call__(self, prompts: list[list[int]]) -> None:
        """Adapt to one batch's prompts (token ids), before they are answered."""
        ttt = self.cfg.ttt
        prompts = [truncate_right(p, ttt.max_prompt_tokens) for p in prompts]
        if ttt.mode == "reset":
            self.restore()
            salt = hashlib.sha256(repr(prompts).encode()).hexdigest()[:16]
        else:
            salt = str(self.batches)
        self.model.train()
        with torch.enable_grad():
            for k in range(ttt.steps):
                self.steps.run(self.model, self.optimizer, prompts, f"{salt}:{k}")
        self.model.eval()
        self.batches += 1
