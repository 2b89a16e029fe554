"""verl agent loop `budget_agent`: budget rollouts with control tokens forced by vLLM.

Why an agent loop: verl's default `single_turn_agent` sends vLLM no per-request settings and
returns every generated token with loss mask 1. The rollout of docs/spec.md §5 needs more per
request:

* the row's budget B (`extra_info["budget"]`, written by the curriculum stream) goes to
  budgetthinker's vLLM logits processor (`engine_kwargs.vllm.logits_processors`) through
  `SamplingParams.extra_args`, which forces the control tokens inside the engine, O(1) per step;
* generation stops at `min(Bt + Bt//4, max_response_length − 200)` tokens (`Bt = B + B//50`);
* the response is truncated to `Bt − 50` tokens; that is what is trained on and scored;
* forced control tokens get `response_mask` 0, so the policy loss, the KL loss and the entropy
  leave them out (`budgetthinker.rollout.mask_forced_tokens: false` restores the original
  behaviour);
* the budget and the untruncated length L reach the reward as `extra_info["budget"]` and
  `extra_info["response_length"]` (verl merges the loop's `extra_fields` into `extra_info`).

Validation rows marked `two_stage` use the improved two-stage rule (docs/spec.md §2) in the
same request: if thinking is still open at `Bt` tokens the processor forces the RL suffix
`"\\n</think>\\n**Final Answer**\\boxed"` and the answer gets `two_stage_answer_tokens` more
tokens; those responses are scored whole. `budgetthinker.rollout.two_stage_request: second` is the
original instead: each validation response is generated as in training, truncated to `Bt − 50`
tokens, given the suffix, and continued by a second request (`budget_rollout.answer_request`).

The per-request logic is engine-free (`budgetthinker.rl.budget_rollout`); this module is the verl
glue around it.
"""

from __future__ import annotations

import functools
from typing import Any
from uuid import uuid4

from verl.experimental.agent_loop.agent_loop import AgentLoopBase, AgentLoopMetrics, AgentLoopOutput
from verl.utils.profiler import simple_timer

from budgetthinker.control_spec import ControlSpec, load_spec
from budgetthinker.rl.budget_rollout import answer_request, budget_request, shape_response


@functools.lru_cache(maxsize=4)
def spec_of(model_path: str) -> ControlSpec:
    """The control-token spec of the policy model (cached per process)."""
    from verl.utils.fs import copy_to_local

    return load_spec(copy_to_local(model_path))


def rollout_settings(config: Any) -> dict[str, Any]:
    """`budgetthinker.rollout` of the trainer config (the launcher has applied `compat` to it),
    with the defaults of `BudgetRolloutConfig`."""
    block = (config.get("budgetthinker", None) or {}).get("rollout", None) or {}
    return {
        "force": bool(block.get("force", True)),
        "mask_forced_tokens": bool(block.get("mask_forced_tokens", True)),
        "two_stage_answer_tokens": int(block.get("two_stage_answer_tokens", 40)),
        "stop_at_think_end": bool(block.get("stop_at_think_end", True)),
        "two_stage_request": str(block.get("two_stage_request", "same")),
    }


class BudgetAgentLoop(AgentLoopBase):
    """One budget-forced response per call; see the module docstring."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.response_length = int(self.rollout_config.response_length)
        self.settings = rollout_settings(self.config)
        self.spec = spec_of(str(self.config.actor_rollout_ref.model.path))

    async def run(
        self, sampling_params: dict[str, Any], priority: int = 0, **kwargs: Any
    ) -> AgentLoopOutput:
        info = dict(kwargs.get("extra_info") or {})
        if info.get("budget") is None:
            raise ValueError(
                "budget_agent: the row has no extra_info.budget; train on the files budgetthinker "
                "writes (budgetthinker rl --engine verl / bash rl/8ratio_v1.sh)"
            )
        budget = int(info["budget"])
        two_stage = bool(info.get("two_stage", False))
        prompt_ids = await self.ct_build_initial_tokens(list(kwargs["raw_prompt"]))
        request = budget_request(
            self.spec,
            budget,
            two_stage=two_stage,
            force=self.settings["force"],
            response_length=self.response_length,
            answer_tokens=self.settings["two_stage_answer_tokens"],
            stop_at_think_end=self.settings["stop_at_think_end"],
            two_stage_request=self.settings["two_stage_request"],
        )
        metrics: dict[str, Any] = {}
        with simple_timer("generate_sequences", metrics):
            output = await self.server_manager.generate(
                request_id=uuid4().hex,
                prompt_ids=prompt_ids,
                sampling_params={**sampling_params, **request},
                priority=int(priority),
            )
            token_ids = list(output.token_ids)
            log_probs = list(output.log_probs) if output.log_probs else None
            forced_part = None
            if two_stage and self.settings["two_stage_request"] == "second":
                head, second = answer_request(
                    self.spec, budget, token_ids, self.settings["two_stage_answer_tokens"]
                )
                answer = await self.server_manager.generate(
                    request_id=uuid4().hex,
                    prompt_ids=prompt_ids + head,
                    sampling_params={**sampling_params, **second},
                    priority=int(priority),
                )
                forced_part = len(head) - len(self.spec.suffix_ids["rl"])
                token_ids = head + list(answer.token_ids)
                log_probs = None  # validation only: nothing is trained on these
        metrics["num_preempted"] = output.num_preempted if output.num_preempted is not None else -1
        shaped = shape_response(
            self.spec,
            budget,
            token_ids,
            log_probs,
            two_stage=two_stage,
            force=self.settings["force"],
            mask_forced_tokens=self.settings["mask_forced_tokens"],
            response_length=self.response_length,
            stop_at_think_end=self.settings["stop_at_think_end"],
            forced_part=forced_part,
        )
        return AgentLoopOutput(
            prompt_ids=prompt_ids,
            response_ids=shaped["response_ids"],
            response_mask=shaped["response_mask"],
            response_logprobs=shaped["response_logprobs"],
            num_turns=2,
            metrics=AgentLoopMetrics(**metrics),
            extra_fields={**shaped["extra_fields"], "turn_scores": [], "tool_rewards": []},
        )
