"""verl's side of a budget rollout on CPU: our agent loop inside verl's `AgentLoopBase`, and the
response it shapes scored by verl's reward loader and its naive reward manager.

verl's rollout server (vLLM on a GPU) cannot start here, so the agent loop talks to a small
generation server with the same `generate(request_id, prompt_ids, sampling_params)` contract that
runs the embedded model with transformers and honours the request's `max_tokens` and the
processor's `extra_args` through the HF adapter of the same forcing state machine. The vLLM side
of that contract is tested with the real vLLM processor in tests/rl/test_budget_rollout.py.
"""

from __future__ import annotations

import asyncio

import pytest

pytest.importorskip("verl")

import numpy as np
import torch
from omegaconf import OmegaConf

from budgetthinker.generation import BudgetSettings, eos_token_ids
from budgetthinker.rl.config import RECIPE_DIR
from budgetthinker.rl.reward import budget_with_tokens, score
from budgetthinker.rl.verl_launch import compose, prepare

RECIPE = RECIPE_DIR / "8ratio_v1.yaml"
BUDGET = 100


class TransformersServer:
    """`server_manager.generate` of verl's agent loops, backed by transformers on CPU."""

    def __init__(self, model_dir: str, spec) -> None:
        from transformers import AutoModelForCausalLM

        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        self.spec = spec
        self.calls: list[dict] = []

    async def generate(self, request_id, *, prompt_ids, sampling_params, **kwargs):
        from transformers import LogitsProcessorList
        from verl.workers.rollout.replica import TokenOutput

        from budgetthinker.patches.hf_logits_processor import BudgetForcingLogitsProcessor

        params = dict(sampling_params)
        self.calls.append(params)
        extra = params.get("extra_args") or {}
        plan = None
        if extra.get("force", 1) and extra.get("budget"):
            plan = BudgetSettings(
                budget=extra["budget"],
                two_stage=extra.get("two_stage", False),
                suffix=extra.get("suffix", "eval"),
                control=extra.get("control", True),
            ).plan(self.spec)
        ids = torch.tensor([prompt_ids])
        torch.manual_seed(0)
        out = self.model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=params["max_tokens"],
            # always the full cap, so the test does not depend on when the sampled model stops
            min_new_tokens=params["max_tokens"],
            do_sample=True,
            temperature=params["temperature"],
            top_p=params["top_p"],
            top_k=0,
            logits_processor=LogitsProcessorList(
                [BudgetForcingLogitsProcessor([plan], prompt_len=len(prompt_ids))]
            ),
            output_scores=True,
            return_dict_in_generate=True,
        )
        tokens = out.sequences[0, len(prompt_ids) :].tolist()
        eos = eos_token_ids(self.model.generation_config, None)
        for i, t in enumerate(tokens):
            if t in eos:
                tokens = tokens[: i + 1]
                break
        logprobs = [
            torch.log_softmax(step[0], -1)[t].item()
            for step, t in zip(out.scores, tokens, strict=False)
        ]
        return TokenOutput(token_ids=tokens, log_probs=logprobs if params.get("logprobs") else None)


@pytest.fixture(scope="module")
def small_config(tmp_path_factory, prepared_model):
    out = tmp_path_factory.mktemp("verl_run")
    return prepare(
        RECIPE,
        [
            f"actor_rollout_ref.model.path={prepared_model}",
            "budgetthinker.data.train_files=[]",
            "budgetthinker.data.val_files=[]",
            "budgetthinker.data.synthetic.n=4",
            f"budgetthinker.output_dir={out}",
            "budgetthinker.epochs=1",
            f"budgetthinker.curriculum.budgets=[[{BUDGET}]]",
            f"budgetthinker.curriculum.validation_budget={BUDGET}",
            "data.train_batch_size=4",
            "data.max_response_length=400",
            "actor_rollout_ref.actor.ppo_mini_batch_size=4",
        ],
    )


def run_agent_loop(cfg, tokenizer, server, sampling_params: dict, row: dict):
    """Build the loop inside the event loop that runs it, as verl's AgentLoopWorker does."""

    async def go():
        loop = agent_loop(cfg, tokenizer, server)
        return await loop.run(sampling_params, **row)

    return asyncio.run(go())


def agent_loop(cfg, tokenizer, server):
    from verl.experimental.agent_loop.agent_loop import DictConfigWrap
    from verl.utils.dataset.rl_dataset import RLHFDataset

    from budgetthinker.rl.verl_agent_loop import BudgetAgentLoop

    return BudgetAgentLoop(
        trainer_config=DictConfigWrap(cfg),
        server_manager=server,
        tokenizer=tokenizer,
        processor=None,
        dataset_cls=RLHFDataset,
        data_config=DictConfigWrap(cfg.data),
        hf_model_type="llama",
    )


def worker_sampling_params(cfg, validate: bool = False) -> dict:
    """What verl's AgentLoopWorker hands every agent loop."""
    rollout = cfg.actor_rollout_ref.rollout
    params = {
        "temperature": rollout.temperature,
        "top_p": rollout.top_p,
        "top_k": rollout.top_k,
        "repetition_penalty": 1.0,
        "logprobs": rollout.calculate_log_probs,
    }
    if validate:
        params.update(temperature=1.0, top_p=1.0, top_k=-1)
    return params


def dataset_row(cfg, tokenizer, split: str = "train") -> dict:
    from verl.trainer.ppo.utils import create_rl_dataset

    files = cfg.data.train_files if split == "train" else cfg.data.val_files
    dataset = create_rl_dataset(files, cfg.data, tokenizer, None, is_train=split == "train")
    return dataset[0]


def score_with_verl(cfg, tokenizer, row: dict, output) -> dict:
    """verl's per-trajectory scoring (AgentLoopWorker._compute_score → naive manager)."""
    from tensordict import TensorDict
    from verl import DataProto

    prompts = torch.tensor(output.prompt_ids)
    responses = torch.tensor(output.response_ids)
    input_ids = torch.cat([prompts, responses]).unsqueeze(0)
    batch = TensorDict(
        {
            "prompts": prompts.unsqueeze(0),
            "responses": responses.unsqueeze(0),
            "input_ids": input_ids,
            "attention_mask": torch.ones_like(input_ids),
        },
        batch_size=1,
    )
    non_tensor = {k: np.array([v], dtype=object) for k, v in row.items() if k != "dummy_tensor"}
    non_tensor["tool_extra_fields"] = np.array([output.extra_fields], dtype=object)
    non_tensor["__num_turns__"] = np.array([output.num_turns])
    from verl.experimental.reward_loop.reward_manager.naive import NaiveRewardManager
    from verl.trainer.ppo.reward import get_custom_reward_fn

    async def go():
        manager = NaiveRewardManager(cfg, tokenizer, get_custom_reward_fn(cfg))
        return await manager.run_single(DataProto(batch=batch, non_tensor_batch=non_tensor))

    return asyncio.run(go())


@pytest.mark.slow
def test_budget_agent_loop_in_verl(small_config, tokenizer, spec, prepared_model):
    cfg = small_config.config
    server = TransformersServer(str(prepared_model), spec)
    row = dataset_row(cfg, tokenizer)
    assert row["extra_info"]["budget"] == BUDGET
    output = run_agent_loop(cfg, tokenizer, server, worker_sampling_params(cfg), row)

    # the request: the budget cap and the processor's per-request arguments
    bt = budget_with_tokens(BUDGET)
    (call,) = server.calls
    assert call["max_tokens"] == min(bt + bt // 4, 400 - 200)
    assert call["extra_args"] == {
        "budget": BUDGET,
        "two_stage": False,
        "suffix": "rl",
        "control": True,
        "stop_at_think_end": True,
    }
    assert call["top_p"] == 0.9 and call["temperature"] == 1.0

    # the prompt: verl's chat rendering of our row, with the tip for the budget
    expected_prompt = tokenizer.apply_chat_template(
        list(row["raw_prompt"]), add_generation_prompt=True, tokenize=True, return_dict=False
    )
    assert output.prompt_ids == list(expected_prompt)
    assert f"within {BUDGET} tokens" in tokenizer.decode(output.prompt_ids)

    # the response: truncated to Bt − 50, forced control tokens out of the loss
    info = output.extra_fields
    assert info["response_length"] == call["max_tokens"] and info["truncated"] is True
    assert len(output.response_ids) == bt - 50
    masked = [i for i, m in enumerate(output.response_mask) if m == 0]
    levels = spec.level_of
    assert masked and all(output.response_ids[i] in levels for i in masked)
    delta = BUDGET // 8 + 1
    assert masked == [
        k * delta + k - 1 for k in range(1, 8) if k * delta + k - 1 < len(output.response_ids)
    ]
    assert info["budget"] == BUDGET and info["forced_tokens"] == len(masked)
    assert len(output.response_logprobs) == len(output.response_ids)

    # the reward: verl's loader + naive manager see the budget and the untruncated length
    result = score_with_verl(cfg, tokenizer, row, output)
    text = tokenizer.decode(output.response_ids, skip_special_tokens=True)
    expected = score(
        text,
        row["reward_model"]["ground_truth"],
        budget=BUDGET,
        response_length=info["response_length"],
    )
    assert result["reward_score"] == pytest.approx(expected["score"], abs=0)
    assert {k: result["reward_extra_info"][k] for k in expected} == expected


@pytest.mark.slow
def test_original_behaviour_and_two_stage_validation(small_config, tokenizer, spec, prepared_model):
    original = {"budgetthinker": {"rollout": {"mask_forced_tokens": False}}}
    cfg = OmegaConf.merge(small_config.config, original)
    server = TransformersServer(str(prepared_model), spec)
    row = dataset_row(cfg, tokenizer, split="val")
    assert row["extra_info"]["two_stage"] is True
    output = run_agent_loop(cfg, tokenizer, server, worker_sampling_params(cfg, True), row)
    (call,) = server.calls
    suffix = list(spec.suffix_ids["rl"])
    bt = budget_with_tokens(BUDGET)
    assert call["max_tokens"] == bt + len(suffix) + 40
    assert call["extra_args"]["two_stage"] is True
    assert set(output.response_mask) == {1}, "original behaviour: forced tokens trained on"
    # the 135M model never closes its thinking: the RL suffix is forced at Bt, and the answer
    # tokens follow; two-stage responses are scored whole
    assert output.extra_fields["suffix_forced"] is True
    assert output.response_ids[bt : bt + len(suffix)] == suffix
    assert len(output.response_ids) == call["max_tokens"]


@pytest.mark.slow
def test_original_two_stage_validation_is_a_second_request(
    small_config, tokenizer, spec, prepared_model
):
    """`budgetthinker.rollout.two_stage_request: second` (set by compat: seed): the validation
    response is generated as in training, cut to Bt − 50, given the suffix, and answered by a
    second, unforced request that continues prompt + cut response + suffix."""
    second = {"budgetthinker": {"rollout": {"two_stage_request": "second"}}}
    cfg = OmegaConf.merge(small_config.config, second)
    server = TransformersServer(str(prepared_model), spec)
    row = dataset_row(cfg, tokenizer, split="val")
    output = run_agent_loop(cfg, tokenizer, server, worker_sampling_params(cfg, True), row)
    first, second = server.calls
    bt = budget_with_tokens(BUDGET)
    assert first["max_tokens"] == min(bt + bt // 4, 400 - 200)
    assert first["extra_args"]["two_stage"] is False
    assert second["max_tokens"] == 40 and second["extra_args"] == {"force": 0}
    suffix = list(spec.suffix_ids["rl"])
    cut = bt - 50
    assert output.response_ids[cut : cut + len(suffix)] == suffix
    assert len(output.response_ids) == cut + len(suffix) + 40
    assert output.extra_fields["suffix_forced"] is True


def test_reward_loader_gives_exact_values(tokenizer):
    """verl's `get_custom_reward_fn` on the recipe loads budgetthinker's reward unchanged."""
    from verl.trainer.ppo.reward import get_custom_reward_fn

    cfg = compose(RECIPE, ["actor_rollout_ref.model.path=/models/sft"])
    fn = get_custom_reward_fn(cfg)
    good = "think</think>\n**Final Answer**\\boxed{\\frac{1}{2}}"
    cases = [
        # (text, gold, B, L, expected score)
        (good, "0.5", 2000, 2040, 1.0),  # correct, L = Bt
        (good, "0.5", 2000, 2550, 0.85),  # correct but L = 1.25·Bt: length 0
        (good, "3", 2000, 1020, 0.15 + 0.15 * 0.75),  # wrong, half of a mild (Bt ≥ 1500) budget
        (good, "3", 1000, 510, 0.15 + 0.15 * 0.0),  # wrong, harsh curve below Bt = 1500
        ("\\boxed{3}", "3", 2000, 2040, 0.7 + 0.15),  # correct, no **Final Answer**
        ("nothing", "3", 2000, 2346, 0.15 * (1 - 16 * 0.15**2)),  # over budget by 15 %
    ]
    for text, gold, budget, length, expected in cases:
        got = fn(
            data_source="budgetthinker",
            solution_str=text,
            ground_truth=gold,
            extra_info={"budget": budget, "response_length": length},
        )
        assert got["score"] == pytest.approx(expected, abs=1e-12), (text, gold, budget, length)
    with pytest.raises(ValueError, match="extra_info lacks budget, response_length"):
        fn(data_source="x", solution_str=good, ground_truth="0.5", extra_info={"index": 0})
