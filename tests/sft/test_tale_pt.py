"""TALE-PT: SFT and DPO data from a search file, the recipes, and real LoRA runs on CPU
(LLaMA-Factory; the training test needs the sft environment and is skipped elsewhere)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from budgetthinker.errors import UserError
from budgetthinker.evaluation.tale.prompts import SYSTEM, cot_prompt
from budgetthinker.evaluation.tale.search import SearchProblem, search
from budgetthinker.sft.tale_pt import build_dataset, dpo_rows, load_recipe, sft_rows

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "sft"
VANILLA = "First, 3 apples. Then 4 more apples. 3 + 4 = 7 apples in all. Answer: [[7]]"


def answer(prompts):
    """Vanilla CoT: a long correct answer; under budget β ≥ 8: a short correct one."""
    out = []
    for p in prompts:
        m = re.search(r"use less than (\d+) tokens", p)
        if m is None:
            out.append((VANILLA, 30))
        else:
            out.append(("3 + 4 = 7. Answer: [[7]]" if int(m.group(1)) >= 8 else "[[5]]", 12))
    return out


def judge(pairs):
    return [(f"[[{gold}]]" in text, None) for text, gold in pairs]


@pytest.fixture
def search_file(tmp_path) -> Path:
    out = tmp_path / "search.jsonl"
    problems = [SearchProblem(f"p{i}", f"Ava has 3 apples and gets 4 more ({i}).", "7")
                for i in range(4)]  # fmt: skip
    problems.append(SearchProblem("wrong", "A question vanilla CoT gets wrong.", "8"))
    search(problems, answer, judge, out, progress=False)
    return out


def test_sft_and_dpo_rows(search_file):
    rows = [json.loads(line) for line in search_file.read_text().splitlines()]
    sft, dpo = sft_rows(rows), dpo_rows(rows)
    assert [r["id"] for r in sft] == ["p0", "p1", "p2", "p3"]  # skipped row dropped
    first = sft[0]
    # prompt without budget (the vanilla CoT prompt), target = the answer under β*
    assert first["instruction"] == cot_prompt("Ava has 3 apples and gets 4 more (0).")
    assert "use less than" not in first["instruction"]
    assert first["output"] == "3 + 4 = 7. Answer: [[7]]" and first["system"] == SYSTEM
    assert first["budget"] == 15
    assert dpo[0]["chosen"] == first["output"] and dpo[0]["rejected"] == VANILLA


def test_datasets_registered_in_dataset_info(search_file, tmp_path):
    out = tmp_path / "data"
    (out).mkdir()
    (out / "dataset_info.json").write_text(json.dumps({"other": {"file_name": "o.jsonl"}}))
    _, n = build_dataset(search_file, out, "tale_sft", "sft")
    build_dataset(search_file, out, "tale_dpo", "dpo")
    info = json.loads((out / "dataset_info.json").read_text())
    assert set(info) == {"other", "tale_sft", "tale_dpo"} and n == 4
    assert info["tale_sft"]["columns"]["response"] == "output"
    assert info["tale_dpo"]["ranking"] is True
    assert info["tale_dpo"]["columns"] | {} == {
        "prompt": "instruction", "query": "input", "system": "system",
        "chosen": "chosen", "rejected": "rejected",
    }  # fmt: skip
    assert len((out / "tale_dpo.jsonl").read_text().splitlines()) == 4
    assert not list(out.glob("*.tmp"))


def test_search_without_a_searched_budget_is_one_clear_error(tmp_path):
    out = tmp_path / "s.jsonl"
    search([SearchProblem("w", "q", "8")], answer, judge, out, progress=False)
    with pytest.raises(UserError, match=r"has no searched budget \(statuses: skipped\)"):
        build_dataset(out, tmp_path / "data", "x", "sft")
    assert not (tmp_path / "data").exists()


def test_recipes_follow_the_paper_and_the_code():
    lf, _ = load_recipe(CONFIGS / "tale_pt_lora.yaml")
    assert (lf["lora_rank"], lf["lora_alpha"], lf["lora_target"]) == (8, 32, "q_proj,v_proj")
    assert lf["per_device_train_batch_size"] * lf["gradient_accumulation_steps"] == 16
    assert (lf["learning_rate"], lf["num_train_epochs"], lf["weight_decay"]) == (1e-4, 3.0, 0.01)
    dpo, _ = load_recipe(CONFIGS / "tale_pt_dpo.yaml")
    assert (dpo["stage"], dpo["pref_beta"], dpo["max_grad_norm"]) == ("dpo", 0.5, 5.0)
    assert dpo["per_device_train_batch_size"] * dpo["gradient_accumulation_steps"] == 16
    assert (dpo["learning_rate"], dpo["num_train_epochs"], dpo["weight_decay"]) == (3e-5, 2.0, 1e-3)
    for smoke in ("tale_pt_lora_cpu_smoke.yaml", "tale_pt_dpo_cpu_smoke.yaml"):
        lf, _ = load_recipe(CONFIGS / smoke)
        assert lf["use_cpu"] is True and lf["finetuning_type"] == "lora"
    with pytest.raises(UserError, match="stage: sft or stage: dpo"):
        load_recipe(CONFIGS / "tale_pt_lora.yaml", ["stage=pt"])
    with pytest.raises(UserError, match="budgetthinker.search"):
        load_recipe(CONFIGS / "tale_pt_lora.yaml", ["budgetthinker.search="])


def test_shipped_recipe_names_resolve_as_for_sft(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # not the checkout: the name must not depend on the folder
    by_name, _ = load_recipe("tale_pt_dpo")
    assert by_name == load_recipe(CONFIGS / "tale_pt_dpo.yaml")[0]
    with pytest.raises(UserError, match="shipped recipes"):
        load_recipe("tale_pt_nope")


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["lora", "dpo"])
def test_cpu_smoke_run_trains_saves_and_loads(kind, search_file, tmp_path, prepared_model):
    pytest.importorskip("llamafactory")
    from budgetthinker.generation import GenRequest
    from budgetthinker.patches.hf_backend import HFBackend
    from budgetthinker.sft.tale_pt import run_tale_pt

    out = tmp_path / kind
    merged, seconds = run_tale_pt(
        CONFIGS / f"tale_pt_{kind}_cpu_smoke.yaml",
        [f"budgetthinker.search={search_file}", f"dataset_dir={tmp_path / 'data'}",
         f"output_dir={out}", "max_steps=1"],
    )  # fmt: skip
    assert (out / "adapter_model.safetensors").is_file() and seconds > 0
    assert merged == out / "merged" and (merged / "config.json").is_file()
    backend = HFBackend(str(merged))  # the harness loads the merged model like any other
    [result] = backend.run([GenRequest(backend.tokenizer.encode("Q: 1+1?"), max_new_tokens=4)])
    assert len(result.token_ids) >= 1
