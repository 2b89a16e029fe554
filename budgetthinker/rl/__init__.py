"""RL stage: budget reward, budget curriculum, GRPO on verl (multi-GPU) and TRL (one machine)."""
