"""TALE: prompt strings byte-exact against the original (reference notes A.2–A.3, A.8), budget
injection, estimate parsing, renderings, and the `[[answer]]` format in the grader."""

from __future__ import annotations

import pytest

from budgetthinker.errors import UserError
from budgetthinker.evaluation.tale import prompts as tale

Q = "Tom has 3 apples. How many?"


def test_gsm8k_prompts_are_the_originals_byte_for_byte():
    assert tale.cot_prompt(Q) == (
        "Q: Tom has 3 apples. How many?\nPlease Give the response by strictly following this "
        "format: [[answer]], for example: Answer: [[50]].Let's think step by step:\n"
    )
    assert tale.direct_prompt(Q) == (
        "Please answer the following question and give the answer directly without any "
        "reasoning process. Please Give the response by strictly following this format: "
        "[[answer]], for example: Answer: [[50]].\nQ: Tom has 3 apples. How many?"
    )
    # the budget sentence replaces the trigger in place: no space after "[[50]]." (as in the source)
    assert tale.budget_prompt(Q, 50).endswith(
        "[[answer]], for example: Answer: [[50]].Let's think step by step and use less than "
        "50 tokens:\n"
    )
    assert tale.budget_prompt(Q, 7) == tale.add_budget(tale.cot_prompt(Q), 7)


def test_other_families_and_chinese_trigger():
    assert tale.cot_prompt("X", "mathbench_choice") == (
        "X\nPlease Give the response by strictly following this format: [[choice]],for example: "
        "Choice: [[A]].\nLet's think step by step:\n"
    )
    assert tale.direct_prompt("X", "mathbench_choice").startswith(
        "Please answer the following question directly and give the answer directly without any "
        "reasoning process. Please strictLy follow the format:"
    )
    assert tale.budget_prompt("X", 26, "mathbench_choice_cn").endswith(
        "让我们一步一步思考并使用少于 26 tokens:\n"
    )
    assert tale.cot_prompt("X", "mathbench_cloze") == "Q: X\nLet's think step by step:\n"


def test_gpqa_direct_prompt_is_the_original_no_reasoning_prompt():
    """`gpqa_prompts['no_reasoning']` (inference.py --data_name GPQA without --reasoning), with
    the options appended to the question as the original's loader does."""
    question = "Which is prime?\nA. 7\nB. 8\nC. 9\nD. 10"
    assert tale.direct_prompt(question, "gpqa") == (
        "Please answer the following question directly and give the answer directly without any "
        "reasoning process. Please strictly follow the format: [[choice]],for example: Choice: "
        "[[A]].\nWhich is prime?\nA. 7\nB. 8\nC. 9\nD. 10\n"
    )
    assert all(f.direct for f in tale.FAMILIES.values())  # every family has one now


def test_estimator_prompt_is_the_original():
    assert tale.estimator_prompt("P") == (
        "Task: Analyze the given question and estimate the minimum number of tokens required to "
        "generate a complete and accurate response. Please Give the response by strictly "
        "following this format: [[budget]],for example: Budget: [[12]].\n\nBelow is the "
        'question:\n\nQuestion: "P"\n'
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Budget: [[120]]", 120),
        ("[[12]] then [[80]]", 12),  # re.search: the first one
        ("Budget: [[0]]", 0),
        ("Budget: 120 tokens", None),
        ("Budget: [[about 50]]", None),
        ("", None),
    ],
)
def test_parse_estimate(text, expected):
    assert tale.parse_estimate(text) == expected


def test_renderings(tokenizer):
    assert (
        tale.render(tokenizer, "P", "tale") == "You are a helpful assistant.\nUser: P\nAssistant:"
    )
    chat = tale.render(tokenizer, "P")
    assert chat == tokenizer.apply_chat_template(
        [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "P"},
        ],
        tokenize=False,
        add_generation_prompt=True,
    )
    assert "You are a helpful assistant." in chat and chat != "P"


def test_bad_input_is_one_clear_error():
    with pytest.raises(UserError, match="unknown TALE prompt family 'gsm9k'; choose one of gsm8k"):
        tale.cot_prompt(Q, "gsm9k")
    for bad in (0, -5, 2.5, True):
        with pytest.raises(UserError, match="positive integer"):
            tale.budget_prompt(Q, bad)
    with pytest.raises(UserError, match="no CoT trigger"):
        tale.add_budget("no trigger here", 10)
    with pytest.raises(UserError, match="TALE compat: no switch for 'vllm' here"):
        tale.render(None, "P", "vllm")


def test_the_grader_reads_the_tale_answer_format():
    from budgetthinker.evaluation.grading import grade

    result = grade("2 + 3 = 5, so Answer: [[5]]. Check: [[5]]", "5", answer_format="tale")
    assert result.correct and result.predicted == "5"
    assert not grade("Answer: [[6]] (the 5 is wrong)", "5", answer_format="tale").correct
    assert grade("So he has $1,250.", "1250", answer_format="tale").correct


# ---------------------------------------------------------------------------------------------
# TALE-EP under compat: [tale] against the original's TALE-EP.py, re-implemented from its
# documented behaviour (reference notes A.8, issue 20) over random estimator answers

ORIGINAL_STRIPS = [  # utils.extract_question, in its order
    "以下是一道关于数学的单项选择题，请你一步一步推理，并在最后用“所以答案为选项X”给出答案，"
    "其中“X”为选项A，B，C，D中你认为正确的选项。下面是你要回答的问题\n",
    "Here is a multiple-choice question about mathematics. Please reason through it step by "
    "step, and at the end, provide your answer option with 'Therefore, the correct answer is "
    "option X', Where 'X' is the correct option you think from A，B，C，D. Here is the question "
    "you need to answer:\n",
    "请严格按照如下格式回答：[[选项]]，例如：选项: [[A]]。\n让我们一步一步思考：\n",
    "Please Give the response by strictly following this format: [[choice]],for example: "
    "Choice: [[A]].\nLet's think step by step:\n",
    "Please answer the following question directly and give the answer directly without any "
    "reasoning process. Please strictLy follow the format: [[choice]],for example: Choice: "
    "[[A]].\n",
]


def original_tale_ep(cot: str, estimator_answer: str) -> tuple[str, str, int]:
    """TALE-EP.py's Adapter for one item: the estimator prompt, the second prompt, the budget."""
    import re

    question = cot
    for line in ORIGINAL_STRIPS:
        question = question.replace(line, "")
    context = (
        "Task: Analyze the given question and estimate the minimum number of tokens required to "
        "generate a complete and accurate response. Please Give the response by strictly "
        "following this format: [[budget]],for example: Budget: [[12]]."
    )
    estimator = f'{context}\n\nBelow is the question:\n\nQuestion: "{question}"\n'
    match = re.search(r"\[\[(\d+)\]\]", estimator_answer)
    budget = int(match.group(1) if match else -1)
    trigger = "Let's think step by step"
    second = cot.replace(
        f"{trigger}:\n", f"{trigger} and use less than {budget} tokens:\n"
    ).replace("让我们一步一步思考：\n", f"让我们一步一步思考并使用少于 {budget} tokens:\n")
    plain = "You are a helpful assistant.\nUser: {}\nAssistant:"  # its local-model string
    return plain.format(estimator), plain.format(second), budget


def random_answer(rng) -> str:
    n = rng.choice([0, 1, 7, 50, 120, 1023, 1024, 1025, 99999, 10**20])
    return rng.choice([
        f"Budget: [[{n}]]", f"[[{n}]] or maybe [[{n + 3}]]", f"about {n} tokens", "",
        f"[[ {n} ]]", f"[[-{n}]]", f"[[{n}.5]]", f"Budget: [[{n}]].", "[[twelve]]",
    ])  # fmt: skip


def test_tale_ep_compat_is_the_original_on_random_estimates(tokenizer):
    import random

    from budgetthinker.evaluation.methods import SampleContext, get_method
    from budgetthinker.generation import GenResult

    rng = random.Random(5)
    questions = [
        "Tom has 3 apples and buys 4 more. How many?",
        "Which is prime?\nA. 7\nB. 8\nC. 9\nD. 10",
        "Here is a multiple-choice question about mathematics. Please reason through it step by "
        "step, and at the end, provide your answer option with 'Therefore, the correct answer is "
        "option X', Where 'X' is the correct option you think from A，B，C，D. Here is the "
        "question you need to answer:\n2 + 2 = ?\nA. 4\nB. 5",
    ]
    families = ["gsm8k", "mathbench_choice", "mathbench_choice_cn", "mathbench_cloze", "gpqa"]
    same = total = 0
    for _ in range(300):
        family, question = rng.choice(families), rng.choice(questions)
        answer = random_answer(rng)
        method = get_method({"name": "tale_ep", "family": family, "compat": ["tale"]})
        estimator_text = method.prompt(tokenizer, question, 64, None)
        ids = tokenizer.encode(estimator_text, add_special_tokens=False)
        ctx = SampleContext(prompt_ids=ids, budget=64, tokenizer=tokenizer, spec=None,
                            delimiters=None, max_new_tokens=1024, question=question)  # fmt: skip
        episode = method.episode(ctx)
        next(episode)
        second = episode.send(GenResult(tokenizer.encode(answer, add_special_tokens=False),
                                        "stop"))  # fmt: skip
        try:
            episode.send(GenResult([2], "stop"))
        except StopIteration as stop:
            outcome = stop.value
        expected = original_tale_ep(tale.cot_prompt(question, family), answer)
        got = (estimator_text, tokenizer.decode(second.prompt_ids), outcome.extra["tale_budget"])
        total += 1
        same += got == expected
        assert got == expected, (family, question, answer)
    print(f"tale_ep compat tale vs the original: {same}/{total} identical")
    with pytest.raises(UserError, match="estimator_max_tokens is ours: the original caps every"):
        get_method({"name": "tale_ep", "compat": ["tale"], "estimator_max_tokens": 16})


# ---------------------------------------------------------------------------------------------
# The methods on the harness (embedded model)


class ScriptedEstimates:
    """Backend `hf` whose estimation rounds answer from a script (by the problem in the prompt)
    and whose answer rounds run the real model; records the answer rounds' prompts."""

    name = "hf"

    def __init__(self, real, tokenizer, script: dict[str, str]):
        self.real, self.tokenizer, self.script = real, tokenizer, script
        self.spec = real.spec
        self.answer_prompts: list[str] = []

    def run(self, requests, **sampling):
        from budgetthinker.generation import GenRequest, GenResult

        results: list = [None] * len(requests)
        real = []
        for i, request in enumerate(requests):
            text = self.tokenizer.decode(request.prompt_ids)
            if tale.ESTIMATOR_CONTEXT in text:
                reply = next(v for k, v in self.script.items() if k in text)
                ids = self.tokenizer.encode(reply, add_special_tokens=False)
                results[i] = GenResult(ids, "stop")
            else:
                self.answer_prompts.append(text)
                real.append(
                    (i, GenRequest(request.prompt_ids, max_new_tokens=8, seed=request.seed))
                )
        for (i, _), result in zip(
            real, self.real.run([r for _, r in real], **sampling), strict=True
        ):
            results[i] = result
        return results

    def close(self):
        pass


def _eval_cfg(tmp_path, *extra):
    from budgetthinker.config import load_config
    from budgetthinker.evaluation.config import EvalConfig

    return load_config(
        EvalConfig,
        None,
        [f"output_dir={tmp_path}", "data.synthetic.n=4", "max_new_tokens=24", "grading.workers=1",
         *extra],
    )  # fmt: skip


def _records(out):
    import json

    return [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_tale_ep_estimates_unparsable_zero_huge_fall_back(tmp_path, hf_backend, tokenizer):
    from budgetthinker.evaluation.datasets import DataConfig, SyntheticConfig, load_problems
    from budgetthinker.evaluation.runner import run_eval

    problems = load_problems(DataConfig(synthetic=SyntheticConfig(n=4)))
    replies = ["I think about fifty.", "Budget: [[0]]", "Budget: [[99999999999999999999]]",
               "Budget: [[12]]"]  # fmt: skip
    script = {p.question: r for p, r in zip(problems, replies, strict=True)}
    backend = ScriptedEstimates(hf_backend, tokenizer, script)
    out = run_eval(_eval_cfg(tmp_path, "methods=[tale_ep]", "budgets=[64]"), backend=backend)
    by_id = {r["problem_id"]: r for r in _records(out)}
    got = [(by_id[p.id]["tale_estimate"], by_id[p.id]["tale_estimate_status"],
            by_id[p.id]["tale_budget"]) for p in problems]  # fmt: skip
    assert got == [
        (None, "unparsable", 64),  # the sweep's budget
        (0, "zero", 64),
        (99999999999999999999, "clamped", 24),  # the answer cap
        (12, "ok", 12),
    ]
    assert [by_id[p.id]["tale_estimate_in_range"] for p in problems] == [False] * 3 + [True]
    assert all(r["rounds"] == 2 and r["method"] == "tale_ep" for r in by_id.values())
    # round 2 is the budgeted CoT prompt of the same problem, rendered with the chat template
    for problem, budget in zip(problems, (64, 64, 24, 12), strict=True):
        expected = tale.render(tokenizer, tale.budget_prompt(problem.question, budget))
        assert expected in backend.answer_prompts


@pytest.mark.slow
def test_cot_tale_direct_on_the_embedded_model(tmp_path, hf_backend, tokenizer):
    from budgetthinker.evaluation.methods import get_method
    from budgetthinker.evaluation.runner import run_eval

    q = "Ava has 3 apples. How many apples does Ava have now?"
    tale_m = get_method("tale")
    assert tale_m.prompt(tokenizer, q, 50, None) == tale.render(
        tokenizer, tale.budget_prompt(q, 50)
    )
    plain = get_method({"name": "cot", "compat": "tale"}).prompt(tokenizer, q, 50, None)
    assert plain == f"You are a helpful assistant.\nUser: {tale.cot_prompt(q)}\nAssistant:"
    with pytest.raises(UserError, match="unknown TALE prompt family"):
        get_method({"name": "tale", "family": "gsm9k"})
    with pytest.raises(UserError, match="method cot compat: no switch for 'seed' here"):
        get_method({"name": "cot", "compat": "seed"})
    assert get_method({"name": "cot", "compat": ["tale"]}).display_name == "cot[compat=tale]"
    with pytest.raises(UserError, match="positive integer"):
        run_eval(_eval_cfg(tmp_path, "methods=[tale]", "budgets=[-3]"))

    cfg = _eval_cfg(tmp_path, "methods=[cot,tale,direct]", "budgets=[50]", "data.synthetic.n=2")
    records = _records(run_eval(cfg, backend=hf_backend))
    assert sorted({r["method"] for r in records}) == ["cot", "direct", "tale"]
    assert all(r["output_tokens"] <= 24 and r["rounds"] == 1 for r in records)
    # graded with TALE's format: [[…]] first, else its number rule
    assert any(str(r["grade_rule"]).startswith("tale") for r in records)
