"""TALE (Token-Budget-Aware LLM Reasoning): its prompts, budget injection, answer format and
budget-estimate parsing, as the original code has them (reference notes, tale_cts.md A.2–A.8).

The `[[answer]]` extraction (last `[[…]]`, else the number rule of A.5) lives with the other
answer formats in `budgetthinker.evaluation.extraction` (`answer_format="tale"`). Pure text
functions with no engine import, shared by the evaluation methods (`tale`, `tale_ep`,
`cot`, `direct`), the optimal budget search (`budgetthinker tale-search`) and the TALE-PT data
builders, so that the search, the training data and the evaluation all see byte-identical
prompts. The strings are copied from the original on purpose, typos included (the missing space
in `[[50]].Let's`, `strictLy`, `[[choice]],for`): a re-implementation that "fixes" them is no
longer the method the paper measured.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from budgetthinker.config import check_compat
from budgetthinker.errors import UserError
from budgetthinker.prompts import chat_prompt

SYSTEM = "You are a helpful assistant."
"""The system line of every TALE call (API messages and the local-model string alike)."""

COT_TRIGGER = "Let's think step by step:\n"
COT_TRIGGER_CN = "让我们一步一步思考：\n"


@dataclass(frozen=True)
class PromptFamily:
    """The vanilla-CoT and direct-answer templates of one task family (`{question}` slot).

    `answer_format`: "answer" for `[[answer]]` (numbers), "choice" for `[[choice]]` (letters).
    """

    cot: str
    direct: str | None
    answer_format: str = "answer"


FAMILIES: dict[str, PromptFamily] = {
    # GSM8K, GSM8K-Zero (and our synthetic set): utils/prompt_template.py gsm8k_prompts
    "gsm8k": PromptFamily(
        cot=(
            "Q: {question}\nPlease Give the response by strictly following this format: "
            "[[answer]], for example: Answer: [[50]].Let's think step by step:\n"
        ),
        direct=(
            "Please answer the following question and give the answer directly without any "
            "reasoning process. Please Give the response by strictly following this format: "
            "[[answer]], for example: Answer: [[50]].\nQ: {question}"
        ),
    ),
    # MathBench single choice, English (options appended to the question as "A. …\nB. …")
    "mathbench_choice": PromptFamily(
        cot=(
            "{question}\nPlease Give the response by strictly following this format: "
            "[[choice]],for example: Choice: [[A]].\nLet's think step by step:\n"
        ),
        direct=(
            "Please answer the following question directly and give the answer directly "
            "without any reasoning process. Please strictLy follow the format: [[choice]],for "
            "example: Choice: [[A]].\n{question}\n"
        ),
        answer_format="choice",
    ),
    # MathBench single choice, Chinese
    "mathbench_choice_cn": PromptFamily(
        cot=(
            "{question}\n请严格按照如下格式回答：[[选项]]，例如：选项: [[A]]。\n"
            "让我们一步一步思考：\n"
        ),
        direct=(
            "{question}\n请直接回答下面的问题并直接给出答案的选项序号。请严格按照如下格式回答："
            "[[选项]]，例如：选项: [[A]]。\n"
        ),
        answer_format="choice",
    ),
    # MathBench cloze (arithmetic / primary), English: no answer-format line in the original
    "mathbench_cloze": PromptFamily(
        cot="Q: {question}\nLet's think step by step:\n",
        direct="Please answer the following question and give the answer directly\nQ: {question}",
    ),
    # GPQA: gpqa_prompts (its direct prompt is `no_reasoning`, "strictly" spelled right here)
    "gpqa": PromptFamily(
        cot=(
            "Q: {question}\nPlease Give the response by strictly following this format: "
            "[[choice]],for example: Choice: [[A]].\nLet's think step by step:\n"
        ),
        direct=(
            "Please answer the following question directly and give the answer directly "
            "without any reasoning process. Please strictly follow the format: [[choice]],for "
            "example: Choice: [[A]].\n{question}\n"
        ),
        answer_format="choice",
    ),
}

ESTIMATOR_CONTEXT = (
    "Task: Analyze the given question and estimate the minimum number of tokens required to "
    "generate a complete and accurate response. Please Give the response by strictly following "
    "this format: [[budget]],for example: Budget: [[12]]."
)
"""TALE-EP's zero-shot estimator instruction (`create_zero_shot_context`)."""

ESTIMATOR_TEMPLATE = '{context}\n\nBelow is the question:\n\nQuestion: "{question}"\n'
"""The LangChain `PromptTemplate` the estimator instruction is wrapped in."""

EXTRACT_QUESTION_STRIPS = (
    "以下是一道关于数学的单项选择题，请你一步一步推理，并在最后用“所以答案为选项X”给出答案，其中“X”为"
    "选项A，B，C，D中你认为正确的选项。下面是你要回答的问题\n",
    "Here is a multiple-choice question about mathematics. Please reason through it step by step, "
    "and at the end, provide your answer option with 'Therefore, the correct answer is option X', "
    "Where 'X' is the correct option you think from A，B，C，D. Here is the question you need to "
    "answer:\n",
    "请严格按照如下格式回答：[[选项]]，例如：选项: [[A]]。\n让我们一步一步思考：\n",
    "Please Give the response by strictly following this format: [[choice]],for example: "
    "Choice: [[A]].\nLet's think step by step:\n",
    "Please answer the following question directly and give the answer directly without any "
    "reasoning process. Please strictLy follow the format: [[choice]],for example: Choice: "
    "[[A]].\n",
)
"""What the original's `extract_question` removes, in order, before TALE-EP's estimator sees a
prompt (MathBench's instructions and the choice families' format lines; nothing of GSM8K's)."""

COMPATS = ("tale",)
"""The original TALE has a switch for: `compat: [tale]` renders the original's plain string for
local models (`TALE_PLAIN`) instead of the model's own chat template with TALE's system line,
and makes TALE-EP read and use its estimate as the original does (`extract_question`, −1 for no
`[[N]]`, no fallback or clamp)."""

TALE_PLAIN = "You are a helpful assistant.\nUser: {prompt}\nAssistant:"

TALE_SAMPLING = {"temperature": 0.1, "top_p": 0.9, "repetition_penalty": 1.2, "max_tokens": 1024}
"""The original's vLLM sampling for local models (with `compat: [tale]`)."""

_ESTIMATE = re.compile(r"\[\[(\d+)\]\]")


def family(name: str) -> PromptFamily:
    """The prompt family `name`, or one clear error listing the known ones."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise UserError(
            f"unknown TALE prompt family {name!r}; choose one of {', '.join(FAMILIES)}"
        ) from None


def check_budget(budget: int) -> int:
    """A TALE budget is a positive whole number of tokens."""
    if isinstance(budget, bool) or not isinstance(budget, int) or budget <= 0:
        raise UserError(f"a TALE token budget must be a positive integer, got {budget!r}")
    return budget


def cot_prompt(question: str, family_name: str = "gsm8k") -> str:
    """Vanilla CoT: the question inside the family's CoT template (ends with the trigger)."""
    return family(family_name).cot.format(question=question)


def direct_prompt(question: str, family_name: str = "gsm8k") -> str:
    """Directly Answering: the family's no-reasoning template."""
    template = family(family_name).direct
    if template is None:
        raise UserError(
            f"TALE prompt family {family_name!r} has no direct-answer prompt in the original; "
            "use another family or method cot/tale"
        )
    return template.format(question=question)


def add_budget(prompt: str, budget: int, *, original: bool = False) -> str:
    """`utils.add_budget`: the CoT trigger replaced in place by its budgeted form. `original`:
    any integer, as the original writes it (TALE-EP's −1 for an estimate it could not read).

    >>> add_budget("Q: 1+1?\\nLet's think step by step:\\n", 50)
    "Q: 1+1?\\nLet's think step by step and use less than 50 tokens:\\n"
    """
    if not original:
        check_budget(budget)
    if COT_TRIGGER not in prompt and COT_TRIGGER_CN not in prompt:
        raise UserError(
            'the prompt has no CoT trigger ("Let\'s think step by step:\\n") to put the budget '
            "in; build it with budgetthinker.evaluation.tale.prompts.cot_prompt"
        )
    return prompt.replace(
        COT_TRIGGER, f"Let's think step by step and use less than {budget} tokens:\n"
    ).replace(COT_TRIGGER_CN, f"让我们一步一步思考并使用少于 {budget} tokens:\n")


def budget_prompt(question: str, budget: int, family_name: str = "gsm8k") -> str:
    """The TALE prompt: vanilla CoT with the budget sentence in place of the trigger."""
    return add_budget(cot_prompt(question, family_name), budget)


def estimator_prompt(prompt: str, original: bool = False) -> str:
    """TALE-EP's estimator prompt for a CoT prompt.

    The original passes the CoT prompt through its `extract_question`, which strips only
    MathBench's instructions and the choice families' format lines (`EXTRACT_QUESTION_STRIPS`),
    so on GSM8K the estimator also sees the answer-format line. By default we pass the whole CoT
    prompt for every family; `original` (`compat: [tale]`) strips as the original does.
    """
    if original:
        for line in EXTRACT_QUESTION_STRIPS:
            prompt = prompt.replace(line, "")
    return ESTIMATOR_TEMPLATE.format(context=ESTIMATOR_CONTEXT, question=prompt)


def parse_estimate(text: str) -> int | None:
    """The estimated budget: the first `[[digits]]` of the estimator's answer, else None (the
    original's `extract_number` returns −1 then, and TALE-EP asks for "less than -1 tokens")."""
    match = _ESTIMATE.search(text)
    return int(match.group(1)) if match else None


def render(tokenizer, prompt: str, compat: Sequence[str] | str | None = ()) -> str:
    """The full model input for a TALE prompt.

    Default: the model's chat template with TALE's system line (what its API runs sent: system
    "You are a helpful assistant." + user prompt); a tokenizer without a template falls back to
    the plain string. `compat: [tale]`: the original's plain string for local models.
    """
    compat = check_compat(compat, COMPATS, "TALE compat")
    if "tale" in compat or not getattr(tokenizer, "chat_template", None):
        return TALE_PLAIN.format(prompt=prompt)
    return chat_prompt(tokenizer, prompt, system=SYSTEM)


def chat_messages(prompt: str) -> list[dict[str, str]]:
    """The messages of an API call (what hosted models receive)."""
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}]
