"""The RL ingredients of ReFINE: rewards, GRPO losses and branched rollouts (no pipeline code)."""
