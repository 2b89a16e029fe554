"""Single-machine GRPO on TRL (`budgetthinker rl --engine trl`), control tokens forced in rollouts.

TRL's `GRPOTrainer` takes a `rollout_func`; ours generates with transformers and
`BudgetForcingLogitsProcessor` — the same forcing state machine as every other engine — and:

* renders each prompt with the tip for the batch's budget (one budget per batch, drawn from the
  curriculum by epoch and batch index; validation uses the validation budget);
* generates at most `min(Bt + Bt//4, max_response_length − 200)` tokens, records the untruncated
  length L, and returns the response truncated to `Bt − 50` tokens (what is scored and trained);
* returns `env_mask` 0 on forced control tokens, so they are left out of the policy loss
  (`rollout.mask_forced_tokens=false` trains on them, as the original did) — the truncation and
  the mask come from `budgetthinker.rl.budget_rollout.shape_response`, as on verl;
* hands `budget` and `response_length` to the reward (`budgetthinker.rl.reward.trl_reward`);
* validates like verl: two-stage answering at the validation budget (`rollout.
  validation_two_stage`; `rollout.two_stage_request: second` is the original's second request);
* accumulates gradients: `trainer.micro_batch_size` sequences per pass, the global batch
  (`global_batch_size × rollout.n` sequences) per optimiser step.

Checkpoints are normal model folders that keep `budgetthinker_spec.json`.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

from budgetthinker.control_spec import (
    SPEC_FILENAME,
    TWO_STAGE_SUFFIXES,
    ControlSpec,
    load_spec,
)
from budgetthinker.errors import UserError
from budgetthinker.evaluation.tracking import finish_runs, hf_report_to, log_dirs
from budgetthinker.forcing import make_plan, thinking_cap
from budgetthinker.prompts import chat_prompt
from budgetthinker.rl.budget_rollout import (
    RL_SUFFIX,
    answer_request,
    budget_request,
    rollout_settings,
    shape_response,
)
from budgetthinker.rl.config import RLConfig
from budgetthinker.rl.curriculum import Curriculum, generation_cap, scored_length
from budgetthinker.rl.data import load_split, rl_user_content
from budgetthinker.rl.reward import make_trl_reward

logger = logging.getLogger(__name__)


def require_trl() -> None:
    try:
        import trl  # noqa: F401
    except ImportError:
        raise UserError(
            "the trl engine needs TRL (>=1.16, for rollout_func), which is not installed in this "
            "environment; install it with: pip install -e '.[rl-trl]'"
        ) from None


class BudgetRollout:
    """The `rollout_func` for `GRPOTrainer`: budget-forced generation with transformers.

    Call signature as TRL wants it: `rollout(prompts, trainer) -> dict`. `prompts` are the
    dataset's `prompt` values (the problems), already repeated once per generation.
    """

    def __init__(self, spec: ControlSpec, tokenizer: Any, cfg: RLConfig) -> None:
        self.spec = spec
        self.tokenizer = tokenizer
        self.cfg = cfg
        self.curriculum = Curriculum(cfg.curriculum)
        self.history: list[dict[str, Any]] = []  # one entry per rollout batch (for reports)

    def budget_for(self, trainer: Any, training: bool) -> tuple[int, int, int]:
        """(budget, epoch, batch index) of the batch about to be generated."""
        if not training:
            return self.curriculum.validation_budget, 0, -1
        state = trainer.state
        epoch = int(state.epoch or 0) + 1
        t = self.cfg.trainer
        # one rollout batch every rollout_batch_size / global_batch_size optimiser steps
        batch = state.global_step // max(t.rollout_batch_size // t.global_batch_size, 1)
        return self.curriculum.budget(epoch, batch), epoch, batch

    def __call__(self, prompts: list[Any], trainer: Any) -> dict[str, list]:
        model = trainer.accelerator.unwrap_model(trainer.model)
        budget, epoch, batch = self.budget_for(trainer, model.training)
        cfg, tok, spec = self.cfg, self.tokenizer, self.spec
        ro = cfg.rollout
        mode = spec.parsed_mode
        texts = [chat_prompt(tok, rl_user_content(str(p), budget, mode, ro.tip)) for p in prompts]
        prompt_ids = [tok.encode(t, add_special_tokens=False) for t in texts]
        longest = max(len(p) for p in prompt_ids)
        if longest > ro.max_prompt_length:
            raise UserError(
                f"a prompt has {longest} tokens, more than rollout.max_prompt_length "
                f"{ro.max_prompt_length}; raise it or shorten the problems"
            )
        # validation answers with two-stage, as verl's (the release's stage=2)
        two_stage = not model.training and ro.validation_two_stage
        second = two_stage and ro.two_stage_request == "second"
        opts = {"force": ro.force, "stop_at_think_end": ro.stop_at_think_end}
        request = budget_request(
            spec,
            budget,
            two_stage=two_stage,
            response_length=ro.max_response_length,
            answer_tokens=ro.two_stage_answer_tokens,
            two_stage_request=ro.two_stage_request,
            **opts,
        )
        settings = rollout_settings(
            budget, two_stage, ro.force, ro.stop_at_think_end, ro.two_stage_request
        )
        start = time.perf_counter()
        rows = self._generate(model, prompt_ids, settings.plan(spec), request["max_tokens"])
        heads: list[list[int] | None] = [None] * len(rows)
        if second:  # the original: cut to Bt − 50, suffix, a second unforced request
            heads = [answer_request(spec, budget, r, ro.two_stage_answer_tokens)[0] for r in rows]
            answers = self._generate(
                model, [p + h for p, h in zip(prompt_ids, heads, strict=True)], None,
                ro.two_stage_answer_tokens,
            )  # fmt: skip
            rows = [h + a for h, a in zip(heads, answers, strict=True)]
        completions, lengths, env_mask, forced = [], [], [], 0
        suffix_len = len(spec.suffix_ids.get(RL_SUFFIX, ()))
        for row, head in zip(rows, heads, strict=True):
            shaped = shape_response(
                spec,
                budget,
                row,
                None,
                two_stage=two_stage,
                mask_forced_tokens=ro.mask_forced_tokens,
                response_length=ro.max_response_length,
                forced_part=None if head is None else len(head) - suffix_len,
                **opts,
            )
            forced += shaped["extra_fields"]["forced_tokens"]
            completions.append(shaped["response_ids"])
            lengths.append(shaped["extra_fields"]["response_length"])
            env_mask.append(shaped["response_mask"])
        self.history.append(
            {
                "budget": budget,
                "epoch": epoch,
                "batch": batch,
                "training": model.training,
                "two_stage": two_stage,
                "generate_s": time.perf_counter() - start,
                "mean_length": sum(lengths) / len(lengths),
                "forced_tokens": forced,
            }
        )
        result: dict[str, list] = {
            "prompt_ids": prompt_ids,
            "completion_ids": completions,
            "logprobs": None,
            "budget": [budget] * len(prompts),
            "response_length": lengths,
        }
        if ro.mask_forced_tokens:
            result["env_mask"] = env_mask  # all ones otherwise: TRL then needs none
        return result

    def _generate(
        self, model: Any, prompt_ids: list[list[int]], plan: Any, max_new: int
    ) -> list[list[int]]:
        """Sampled continuations (cut at EOS) of left-padded prompts, forced by `plan` (None:
        nothing forced)."""
        import torch
        from transformers import LogitsProcessorList

        from budgetthinker.generation import cut_at_eos, eos_token_ids
        from budgetthinker.patches.hf_logits_processor import BudgetForcingLogitsProcessor

        tok, ro = self.tokenizer, self.cfg.rollout
        eos_ids = eos_token_ids(model.generation_config, tok)
        pad_id = tok.pad_token_id if tok.pad_token_id is not None else next(iter(eos_ids))
        longest = max(len(p) for p in prompt_ids)
        ids = torch.tensor([[pad_id] * (longest - len(p)) + p for p in prompt_ids])
        mask = torch.tensor([[0] * (longest - len(p)) + [1] * len(p) for p in prompt_ids])
        processor = BudgetForcingLogitsProcessor([plan] * len(prompt_ids), prompt_len=longest)
        device = next(model.parameters()).device
        with torch.no_grad():
            out = model.generate(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                max_new_tokens=max_new,
                logits_processor=LogitsProcessorList([processor]),
                do_sample=True,
                temperature=ro.temperature,
                top_p=ro.top_p,
                top_k=0,
                pad_token_id=pad_id,
                use_cache=True,
            )
        return [cut_at_eos(row[:max_new], eos_ids) for row in out[:, longest:].tolist()]


def completion_cap(cfg: RLConfig) -> int:
    """Longest completion of the run: the training cap of the largest curriculum budget, or a
    two-stage validation response (suffix and answer included), whichever is longer."""
    ro = cfg.rollout
    caps = [generation_cap(b, ro.max_response_length) for e in cfg.curriculum.budgets for b in e]
    val = cfg.curriculum.validation_budget
    caps.append(generation_cap(val, ro.max_response_length))
    if ro.validation_two_stage:
        caps.append(
            max(thinking_cap(val), scored_length(val))
            + len(TWO_STAGE_SUFFIXES[RL_SUFFIX])  # characters ≥ tokens: a safe bound
            + ro.two_stage_answer_tokens
        )
    return max(caps)



def _spec_callback(spec_file: Path):
    from transformers import TrainerCallback

    class KeepSpec(TrainerCallback):
        """Copy the control-token spec into every checkpoint folder."""

        def on_save(self, args, state, control, **kwargs):
            ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if ckpt.is_dir():
                shutil.copy2(spec_file, ckpt / SPEC_FILENAME)

    return KeepSpec()


def check(cfg: RLConfig) -> tuple[str, Any, list, list]:
    """Everything `train` checks before loading a model (what `--dry-run` runs; it writes
    nothing): the model's spec, every curriculum budget against its mode, the problems."""
    from budgetthinker.preparation.models import resolve_model

    model_dir = str(resolve_model(cfg.model, prepared=True))
    spec = load_spec(model_dir)
    for b in {b for epoch in cfg.curriculum.budgets for b in epoch}:
        make_plan(spec, b)  # every budget suits the model's mode, before any loading
    train_rows = load_split(cfg.data, "train")
    val_rows = load_split(cfg.data, "val")
    if len(train_rows) < cfg.trainer.rollout_batch_size:
        raise UserError(
            f"{len(train_rows)} training problems are fewer than trainer.rollout_batch_size "
            f"{cfg.trainer.rollout_batch_size}"
        )
    return model_dir, spec, train_rows, val_rows


def train(cfg: RLConfig) -> dict[str, Any]:
    """Run GRPO with TRL; returns a summary (per-step reward and wall time, output folder)."""
    require_trl()
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from budgetthinker.preparation.models import load_causal_lm, load_tokenizer

    model_dir, spec, train_rows, val_rows = check(cfg)
    out_dir = cfg.run_dir
    tokenizer = load_tokenizer(model_dir)
    tokenizer.padding_side = "left"
    on_gpu = torch.cuda.is_available()
    model = load_causal_lm(model_dir, dtype=torch.bfloat16 if on_gpu else torch.float32)
    n = cfg.rollout.n
    t = cfg.trainer
    # Sequences per forward/backward pass; the optimiser step accumulates the global batch.
    micro = t.micro_batch_size or t.global_batch_size * n
    # transformers 5 dropped `logging_dir`; its TensorBoard callback reads a variable (and W&B
    # its own): <run>/logs and <run>/wandb unless the environment names other folders.
    log_dirs(out_dir)
    args = GRPOConfig(
        output_dir=str(out_dir),
        num_generations=n,
        num_generations_eval=n,
        per_device_train_batch_size=micro,
        gradient_accumulation_steps=t.global_batch_size * n // micro,
        steps_per_generation=t.rollout_batch_size * n // micro,
        max_completion_length=completion_cap(cfg),
        temperature=cfg.rollout.temperature,
        top_p=cfg.rollout.top_p,
        learning_rate=t.lr,
        weight_decay=t.weight_decay,
        beta=t.kl_coef,
        max_grad_norm=t.max_grad_norm,
        num_train_epochs=t.epochs,
        max_steps=t.max_steps if t.max_steps is not None else -1,
        lr_scheduler_type="constant",
        # Gradient checkpointing would also switch off the KV cache in the rollouts' generate().
        gradient_checkpointing=False,
        seed=t.seed,
        use_cpu=not on_gpu,
        bf16=on_gpu,
        logging_steps=1,
        save_strategy="epoch" if t.save_every_epoch else "no",
        eval_strategy="epoch" if val_rows else "no",
        per_device_eval_batch_size=n * max(1, min(len(val_rows), t.global_batch_size)),
        report_to=hf_report_to(t.report_to, "trainer.report_to"),
        disable_tqdm=False,
    )
    rollout = BudgetRollout(spec, tokenizer, cfg)
    step_log: list[dict[str, Any]] = []

    class StepLog(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "reward" in logs:
                step_log.append(
                    {
                        "step": state.global_step,
                        "reward": logs["reward"],
                        "accuracy": logs.get("reward/accuracy"),
                        "format": logs.get("reward/format"),
                        "length": logs.get("reward/length"),
                        "wall_s": time.perf_counter() - getattr(self, "start", time.perf_counter()),
                    }
                )

    def as_dataset(rows):
        return Dataset.from_list([{"prompt": r.problem, "answer": r.answer} for r in rows])

    trainer = GRPOTrainer(
        model=model,
        # compat: seed grades with the original reward's answer rule
        reward_funcs=make_trl_reward("seed" if "seed" in cfg.compat else "default"),
        args=args,
        train_dataset=as_dataset(train_rows),
        eval_dataset=as_dataset(val_rows) if val_rows else None,
        processing_class=tokenizer,
        rollout_func=rollout,
        callbacks=[_spec_callback(Path(model_dir) / SPEC_FILENAME), StepLog()],
    )
    try:
        trainer.train()
    finally:
        finish_runs()  # the W&B run is complete when `budgetthinker rl` returns
    final = out_dir / "final"
    trainer.save_model(str(final))
    tokenizer.save_pretrained(str(final))
    shutil.copy2(Path(model_dir) / SPEC_FILENAME, final / SPEC_FILENAME)
    for entry, batch in zip(step_log, [h for h in rollout.history if h["training"]], strict=False):
        entry["budget"] = batch["budget"]
        entry["forced_tokens"] = batch["forced_tokens"]
    return {"output_dir": str(final), "steps": step_log, "rollouts": rollout.history}
