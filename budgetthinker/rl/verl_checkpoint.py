"""verl checkpoint callback (`trainer.checkpoint_callback_class`): checkpoints keep the spec.

Every budgetthinker stage reads the control-token spec (`budgetthinker_spec.json`) from the model
folder. verl's checkpoints are written by its FSDP workers and know nothing of it, so after each
save this copies the policy model's spec into `global_step_N/` and into its Hugging Face folder
(`actor/huggingface/`, where verl keeps the config and tokenizer that its model merger uses).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from verl.trainer.ppo.checkpoint_callback import CheckpointCallback

from budgetthinker.control_spec import SPEC_FILENAME, spec_path
from budgetthinker.outputs import atomic_text


class KeepSpec(CheckpointCallback):
    """Copy the policy model's control-token spec into every checkpoint."""

    def on_save(
        self,
        trainer: Any,
        global_step: int,
        checkpoint_dir: str,
        async_save: bool = False,
        **kwargs: Any,
    ) -> None:
        from verl.utils.fs import copy_to_local

        source = spec_path(copy_to_local(str(self.config.actor_rollout_ref.model.path)))
        folder = Path(checkpoint_dir)
        targets = [folder, folder / "actor" / "huggingface"]
        for target in targets:
            if target.is_dir():
                atomic_text(target / SPEC_FILENAME, Path(source).read_text(encoding="utf-8"))
