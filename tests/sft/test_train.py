"""A real LLaMA-Factory SFT run on CPU: embedded model, synthetic traces, our weighted loss.

Needs the sft environment (bash scripts/setup_env.sh sft); skipped in the core environment.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from budgetthinker.control_spec import load_spec
from budgetthinker.errors import UserError
from budgetthinker.sft.train import load_recipe, runs

REPO_CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "sft"


def test_recipes_parse(monkeypatch):
    lf, opts = load_recipe(f"{REPO_CONFIGS}/release.yaml")
    assert lf["deepspeed"] == "configs/deepspeed/ds_z0_config.json"
    assert (lf["per_device_train_batch_size"], lf["gradient_accumulation_steps"]) == (2, 8)
    assert (lf["learning_rate"], lf["lr_scheduler_type"], lf["bf16"]) == (2e-5, "cosine", True)
    assert opts.special_token_loss == "T" and opts.nproc == 8
    first, second = runs(lf, opts)
    assert (first["num_train_epochs"], second["num_train_epochs"]) == (2.0, 4.0)
    assert second["model_name_or_path"] == first["output_dir"]
    monkeypatch.setenv("special_token_loss", "T10")
    _, opts = load_recipe(f"{REPO_CONFIGS}/cpu_smoke.yaml")
    assert opts.special_token_loss == "T10"
    _, opts = load_recipe(f"{REPO_CONFIGS}/cpu_smoke.yaml", ["budgetthinker.special_token_loss=F"])
    assert opts.special_token_loss == "F"
    monkeypatch.setenv("special_token_loss", "X")
    with pytest.raises(UserError, match="special_token_loss"):
        load_recipe(f"{REPO_CONFIGS}/cpu_smoke.yaml")
    monkeypatch.delenv("special_token_loss")
    with pytest.raises(UserError, match="unknown config key"):
        load_recipe(f"{REPO_CONFIGS}/cpu_smoke.yaml", ["budgetthinker.speical=1"])


def test_recipes_run_from_any_folder(tmp_path, monkeypatch):
    """A recipe name or its documented path, and the DeepSpeed file it names, resolve to the
    shipped copies when the working directory is not the checkout."""
    monkeypatch.chdir(tmp_path)
    lf, _ = load_recipe("release")
    assert Path(lf["deepspeed"]) == REPO_CONFIGS.parent / "deepspeed" / "ds_z0_config.json"
    lf, _ = load_recipe("configs/sft/cpu_smoke.yaml", ["report_to=tensorboard"])
    assert lf["report_to"] == "tensorboard" and lf["model_name_or_path"] == "default"
    with pytest.raises(UserError, match="unknown sft recipe 'nope'; shipped recipes: .*release"):
        load_recipe("nope")
    _, opts = load_recipe("cpu_smoke", ["budgetthinker.compat=seed"])
    assert opts.data.placement == "thinking"
    assert load_recipe("cpu_smoke")[1].data.placement == "generated"


def test_recipe_dataset_follows_its_inputs(tmp_path, prepared_model, capsys):
    """A recipe's dataset is reused only when built from the same inputs: changed options or a
    changed traces file rebuild it (saying which); a dataset of unknown origin is not touched."""
    from budgetthinker.sft.train import DataOptions, build_data
    from budgetthinker.synthetic import synthetic_traces

    lf = {"dataset": "d", "dataset_dir": str(tmp_path / "data")}
    rows = tmp_path / "data" / "d.jsonl"

    def build(**options):
        build_data(lf, DataOptions(budget_rule="v1", **options), prepared_model)
        return capsys.readouterr().out

    assert "built" in build(num_traces=3) and len(rows.read_text().splitlines()) == 3
    assert "up to date; reusing it" in build(num_traces=3)
    out = build(num_traces=4)
    assert "(num_traces changed); rebuilding" in out and len(rows.read_text().splitlines()) == 4
    assert "placement changed" in build(num_traces=4, placement="thinking")
    traces = tmp_path / "traces.jsonl"
    traces.write_text("".join(json.dumps(t) + "\n" for t in synthetic_traces(5, 2)))
    out = build(traces=str(traces))
    assert "placement, seed, steps, traces, traces_sha256 changed" in out
    assert "up to date" in build(traces=str(traces))
    traces.write_text("".join(json.dumps(t) + "\n" for t in synthetic_traces(6, 2)))
    assert "(traces_sha256 changed)" in build(traces=str(traces))
    assert len(rows.read_text().splitlines()) == 6
    (tmp_path / "data" / "d.inputs.json").unlink()
    with pytest.raises(UserError, match="not built by this recipe.*rebuild=true"):
        build(traces=str(traces))
    assert len(rows.read_text().splitlines()) == 6
    assert "built" in build(traces=str(traces), rebuild=True)


@pytest.mark.slow
def test_cpu_sft_run(tmp_path, prepared_model, spec):
    pytest.importorskip("llamafactory")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from budgetthinker.sft.train import run_sft

    out = tmp_path / "model"
    [result] = run_sft(
        f"{REPO_CONFIGS}/cpu_smoke.yaml",
        [
            f"output_dir={out}",
            f"dataset_dir={tmp_path / 'data'}",
            "max_steps=6",
            "save_steps=6",
            "budgetthinker.data.num_traces=4",
            "budgetthinker.special_token_loss=T10",
        ],
    )
    assert result == out
    state = json.loads((out / "trainer_state.json").read_text())
    losses = [e["loss"] for e in state["log_history"] if "loss" in e]
    assert len(losses) == 6
    assert sum(losses[-2:]) < sum(losses[:2]), losses
    resolved = (out / "budgetthinker_sft.yaml").read_text()
    assert "special_token_loss: T10" in resolved
    for folder in (out, out / "checkpoint-6"):
        assert load_spec(folder) == spec
        tok = AutoTokenizer.from_pretrained(folder)
        assert [tok.convert_tokens_to_ids(s) for s in spec.token_strings] == list(spec.token_ids)
        model = AutoModelForCausalLM.from_pretrained(folder)
        assert model.get_input_embeddings().weight.shape[0] > max(spec.token_ids)
    data = (tmp_path / "data" / "synthetic_8ratio_sft.jsonl").read_text().splitlines()
    assert len(data) == 4 and spec.token_strings[-1] in json.loads(data[0])["output"]


@pytest.mark.slow
def test_llamafactory_trains_with_the_weighted_loss(tmp_path):
    """LLaMA-Factory's first logged loss on the same batch and weights, with control-token
    weight w = 0 (F), 1 (T) and 10 (T10), follows L(w) = (S_plain + w·S_control) / N: it is
    linear in w with the same divisor, so L(10) − L(0) = 10·(L(1) − L(0)) > 0."""
    pytest.importorskip("llamafactory")
    from budgetthinker.sft.train import run_sft

    first = {}
    for value in ("F", "T", "T10"):
        out = tmp_path / value
        run_sft(
            f"{REPO_CONFIGS}/cpu_smoke.yaml",
            [
                f"output_dir={out}",
                f"dataset_dir={tmp_path / 'data'}",
                "max_steps=1",
                "save_steps=100",
                "budgetthinker.data.num_traces=2",
                f"budgetthinker.special_token_loss={value}",
            ],
        )
        state = json.loads((out / "trainer_state.json").read_text())
        first[value] = next(e["loss"] for e in state["log_history"] if "loss" in e)
    control_part = first["T"] - first["F"]  # S_control / N, from the logged values
    assert control_part > 0.01, first
    # trainer logs are rounded to 4 decimals; the factor 10 multiplies that rounding
    assert first["T10"] - first["F"] == pytest.approx(10 * control_part, abs=2e-3), first
