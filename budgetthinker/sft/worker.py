"""One SFT run on LLaMA-Factory with the weighted special-token loss (one process per GPU).

    python -m budgetthinker.sft.worker RESOLVED.yaml        # what `budgetthinker sft` runs

RESOLVED.yaml is written by the launcher (`budgetthinker.sft.train`): the LLaMA-Factory
arguments plus a `budgetthinker:` section (`special_token_loss`, `model_spec`). The loss is
installed by a `TrainerCallback` at the start of training (`model.loss_function`, a public
transformers hook) and passed to LLaMA-Factory's public `run_exp(args, callbacks)`; no file of
LLaMA-Factory or transformers is touched. The callback also copies the control-token spec into
every checkpoint and the final output folder, so each one is a prepared model the later stages
can load.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import yaml
from transformers import TrainerCallback

from budgetthinker.control_spec import SPEC_FILENAME, load_spec
from budgetthinker.errors import UserError
from budgetthinker.sft.loss import SpecialTokenLoss, install


def check_tokenizer(tokenizer, spec) -> None:
    """Every control-token string must still be its single recorded id."""
    for text, tid in zip(spec.token_strings, spec.token_ids, strict=True):
        got = tokenizer.convert_tokens_to_ids(text)
        if got != tid:
            raise UserError(
                f"control token {text!r} has id {got} in the training tokenizer but {tid} in the "
                "model's spec; train from the prepared model folder (budgetthinker prepare)"
            )


class SpecialTokenLossCallback(TrainerCallback):
    """Installs the weighted loss on the model when training starts; copies the spec into each
    saved checkpoint."""

    def __init__(self, loss: SpecialTokenLoss, spec_dir: str | Path):
        self.loss = loss
        self.spec_file = Path(spec_dir) / SPEC_FILENAME
        self.spec = load_spec(spec_dir)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        tokenizer = kwargs.get("processing_class") or kwargs.get("tokenizer")
        if tokenizer is not None:
            check_tokenizer(tokenizer, self.spec)
        install(model, self.loss)
        if state.is_world_process_zero:
            print(f"[budgetthinker] loss: {self.loss}", flush=True)

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if ckpt.is_dir():
                shutil.copy2(self.spec_file, ckpt / SPEC_FILENAME)

    def on_train_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            Path(args.output_dir).mkdir(parents=True, exist_ok=True)
            shutil.copy2(self.spec_file, Path(args.output_dir) / SPEC_FILENAME)


def run(resolved: str | Path) -> None:
    from llamafactory.train.tuner import run_exp

    data = yaml.safe_load(Path(resolved).read_text())
    ours = data.pop("budgetthinker")
    spec = load_spec(ours["model_spec"])
    loss = SpecialTokenLoss.from_spec(spec, ours["special_token_loss"])
    run_exp(data, callbacks=[SpecialTokenLossCallback(loss, ours["model_spec"])])
    # The final save happens after on_train_end in some versions: copy again to be sure.
    out = Path(data["output_dir"])
    if out.is_dir() and os.environ.get("RANK", "0") == "0":
        shutil.copy2(Path(ours["model_spec"]) / SPEC_FILENAME, out / SPEC_FILENAME)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print("usage: python -m budgetthinker.sft.worker RESOLVED.yaml", file=sys.stderr)
        sys.exit(2)
    run(sys.argv[1])
