"""Experiment tracking: a short real eval logs accuracy and adherence per sweep point and the
report's plots to TensorBoard and to an offline W&B run, read back with their own readers."""

from __future__ import annotations

import pytest

from budgetthinker.config import load_config
from budgetthinker.errors import UserError
from budgetthinker.evaluation.config import EvalConfig
from budgetthinker.evaluation.runner import run_eval
from budgetthinker.evaluation.tracking import (
    LOGGED_METRICS,
    check_report_to,
    hf_report_to,
    verl_loggers,
)
from tests.clirun import RECIPE
from tests.evaluation.tracked import tensorboard_tags, wandb_run


def test_values_and_the_one_line_error():
    assert check_report_to("none") == [] and check_report_to(None) == []
    assert check_report_to("tensorboard,wandb") == ["tensorboard", "wandb"]
    assert hf_report_to("none") == "none" and hf_report_to("wandb") == "wandb"
    assert hf_report_to("wandb,tensorboard") == ["wandb", "tensorboard"]
    assert verl_loggers("tensorboard") == ["console", "tensorboard"]
    assert verl_loggers("none") == ["console"]
    for bad, needle in [("mlflow", "'mlflow'"), ("none,wandb", "'none' cannot")]:
        with pytest.raises(UserError) as raised:
            check_report_to(bad, "trainer.report_to")
        message = str(raised.value)
        assert "\n" not in message and needle in message and "trainer.report_to" in message
    with pytest.raises(UserError, match="one of none, tensorboard, wandb"):
        check_report_to("tensorbord")


def test_every_recipe_kind_checks_it(capsys):
    from budgetthinker.cli import main
    from budgetthinker.rl.config import load_rl_config
    from budgetthinker.sft.train import load_recipe

    assert main(["eval", "--config", str(RECIPE), "report_to=tb"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "report_to: unknown value 'tb'" in err[0], err
    assert "none, tensorboard, wandb" in err[0]
    with pytest.raises(UserError, match="trainer.report_to: unknown value 'x'"):
        load_rl_config("cpu_smoke", ["trainer.report_to=x"])
    with pytest.raises(UserError, match="report_to: unknown value 'all'"):
        load_recipe("cpu_smoke", ["report_to=all"])
    lf_args, _ = load_recipe("cpu_smoke", ["report_to=tensorboard,wandb"])
    assert lf_args["report_to"] == ["tensorboard", "wandb"]  # LLaMA-Factory's own key


@pytest.mark.slow
def test_a_short_eval_logs_to_tensorboard_and_offline_wandb(tmp_path, hf_backend, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_DIR", raising=False)
    cfg = load_config(EvalConfig, RECIPE, [
        f"output_dir={tmp_path}", "experiment=tracked", "methods=[control]", "budgets=[16,32]",
        "data.synthetic.n=2", "grading.workers=1", "report_to=tensorboard,wandb",
    ])  # fmt: skip
    out = run_eval(cfg, backend=hf_backend)
    point = "synthetic/control"
    scalars, images = tensorboard_tags(out / "tensorboard")
    for metric in LOGGED_METRICS:
        assert [step for step, _ in scalars[f"{point}/{metric}"]] == [16, 32]
    assert sorted(images) == ["report/synthetic_accuracy_vs_tokens"]
    # the logged numbers are the summary's
    summary = (out / "summary.csv").read_text().splitlines()
    header, first = summary[0].split(","), summary[1].split(",")
    logged = dict(scalars[f"{point}/within_budget"])[16]
    assert logged == pytest.approx(float(first[header.index("within_budget")]))
    run, keys = wandb_run(out)
    assert run == {"name": "tracked", "project": "budgetthinker"}
    assert {f"{point}/{m}" for m in LOGGED_METRICS} | {"budget"} <= keys
    assert "report/synthetic_accuracy_vs_tokens/_type" in keys  # an image (W&B nests it)
