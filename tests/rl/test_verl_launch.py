"""The verl recipe against verl's own config schema, and the curriculum data through verl's dataset.

Runs in the rl environment (`bash scripts/test.sh rl`); skipped where verl is not installed.
verl cannot train on CPU, but everything up to starting Ray can be checked here.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from budgetthinker.errors import UserError
from budgetthinker.prompts import ratio_tip
from budgetthinker.rl.config import RECIPE_DIR

pytest.importorskip("verl")

from omegaconf import OmegaConf

from budgetthinker.rl.verl_launch import AGENT_LOOPS_FILE, compose, prepare

RECIPE = RECIPE_DIR / "8ratio_v1.yaml"
SMALL = 12  # synthetic problems
BATCH = 4


def small_run(tmp_path: Path, *extra: str) -> list[str]:
    """Overrides for a small run: the embedded model, synthetic problems, batches of 4."""
    return [
        "actor_rollout_ref.model.path=default",
        "budgetthinker.data.train_files=[]",
        "budgetthinker.data.val_files=[]",
        f"budgetthinker.data.synthetic.n={SMALL}",
        f"budgetthinker.output_dir={tmp_path}",
        f"data.train_batch_size={BATCH}",
        f"actor_rollout_ref.actor.ppo_mini_batch_size={BATCH}",
        *extra,
    ]


@pytest.fixture(autouse=True)
def _no_alias_env(monkeypatch):
    for name in ("MODEL_PATH", "stage", "remaining", "steady"):
        monkeypatch.delenv(name, raising=False)


def verl_defaults():
    import verl
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    config_dir = Path(verl.__file__).parent / "trainer" / "config"
    with initialize_config_dir(config_dir=str(config_dir), version_base=None):
        return hydra_compose("ppo_trainer")


def leaves(tree: dict, prefix: str = ""):
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            yield from leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def test_release_recipe_composes_with_verl_schema():
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import omega_conf_to_dataclass, validate_config

    cfg = compose(RECIPE, ["actor_rollout_ref.model.path=/models/sft"])
    actor, rollout = cfg.actor_rollout_ref.actor, cfg.actor_rollout_ref.rollout
    # docs/spec.md §5 release recipe
    assert cfg.algorithm.adv_estimator == "grpo" and not cfg.algorithm.use_kl_in_reward
    assert (rollout.name, rollout.n, rollout.temperature, rollout.top_p) == ("vllm", 5, 1.0, 0.9)
    assert (actor.optim.lr, actor.optim.weight_decay) == (1e-6, 1e-2)
    assert actor.use_kl_loss and actor.kl_loss_type == "low_var_kl" and actor.kl_loss_coef == 1e-2
    assert (cfg.data.train_batch_size, actor.ppo_mini_batch_size) == (256, 128)
    assert (cfg.data.max_prompt_length, cfg.data.max_response_length) == (1024, 10000)
    assert (rollout.prompt_length, rollout.response_length) == (1024, 10000)
    assert actor.fsdp_config.param_offload and actor.fsdp_config.optimizer_offload
    assert cfg.trainer.n_gpus_per_node == 4 and cfg.trainer.total_epochs == 1
    assert cfg.budgetthinker.epochs == 8
    # the budgetthinker hooks
    assert list(rollout.engine_kwargs.vllm.logits_processors) == [
        "budgetthinker.patches.vllm_logits_processor:BudgetForcingProcessor"
    ]
    assert rollout.agent.default_agent_loop == "budget_agent"
    assert cfg.reward.custom_reward_function.path == "pkg://budgetthinker.rl.reward"
    assert cfg.reward.custom_reward_function.name == "compute_score"
    # verl's typed configs accept the sections, and its own checks pass
    assert omega_conf_to_dataclass(rollout).engine_kwargs["vllm"]["logits_processors"]
    assert omega_conf_to_dataclass(actor).kl_loss_coef == 1e-2
    assert omega_conf_to_dataclass(cfg.algorithm).adv_estimator == "grpo"
    validate_config(cfg, need_reference_policy(cfg), need_critic(cfg))


def test_recipe_lists_only_deltas_from_verl_defaults():
    recipe = yaml.safe_load(RECIPE.read_text())
    verl_part = {k: v for k, v in recipe.items() if k not in ("hydra", "defaults", "budgetthinker")}
    defaults = verl_defaults()
    same = []
    for key, value in leaves(verl_part):
        default = OmegaConf.select(defaults, key, default=None, throw_on_missing=False)
        if OmegaConf.is_config(default):
            default = OmegaConf.to_container(default)
        if default == value:
            same.append(key)
    assert same == [], f"these recipe values equal verl's defaults: {same}"


def test_agent_loop_file_names_our_loop():
    from hydra.utils import get_class
    from verl.experimental.agent_loop.agent_loop import AgentLoopBase

    entries = OmegaConf.load(AGENT_LOOPS_FILE)
    assert [e.name for e in entries] == ["budget_agent"]
    assert issubclass(get_class(entries[0]._target_), AgentLoopBase)


def test_dry_run_prints_the_verl_command(tmp_path, capsys):
    from budgetthinker.cli import main

    argv = ["rl", "--engine", "verl", "--config", "8ratio_v1", "--dry-run", *small_run(tmp_path)]
    assert main(argv) == 0
    captured = capsys.readouterr()
    per_epoch = SMALL // BATCH
    assert f"epoch 1: {per_epoch} steps · budgets 6000×{per_epoch}" in captured.err
    assert f"epoch 6: {per_epoch} steps · budgets 2000×{per_epoch}" in captured.err
    command = captured.out.strip()
    assert "-m verl.trainer.main_ppo" in command and "--config-name=8ratio_v1" in command
    assert f"trainer.save_freq={SMALL // BATCH}" in command
    assert f'hydra.run.dir="{tmp_path / "8ratio_v1" / "hydra"}"' in command
    run = tmp_path / "8ratio_v1"
    # the command names the run folder's files, but a dry run writes none of them
    assert f"data.train_files=[\"{run.resolve() / 'data' / 'train.parquet'}\"]" in command
    assert not run.exists() and sorted(tmp_path.iterdir()) == []
    assert f"curriculum stream: {SMALL // BATCH * 8} steps" in captured.err
    assert "nothing written" in captured.err


def test_prepare_writes_the_data_and_the_resolved_config(tmp_path):
    prepared = prepare(RECIPE, small_run(tmp_path))
    run = tmp_path / "8ratio_v1"
    assert (run / "data" / "train.parquet").is_file() and (run / "data" / "val.parquet").is_file()
    resolved = OmegaConf.load(run / "verl_config.yaml")
    assert resolved.data.shuffle is False
    assert resolved.actor_rollout_ref.rollout.agent.agent_loop_config_path == str(AGENT_LOOPS_FILE)
    assert prepared.run_dir == run


def test_verl_dataset_yields_the_curriculum_prompts(tmp_path, tokenizer, spec):
    """verl's RLHFDataset and its dataloader (as its trainer builds them) over our files."""
    from verl.trainer.ppo.utils import create_rl_dataset

    prepared = prepare(RECIPE, small_run(tmp_path))
    cfg = prepared.config
    loader = verl_batches(cfg, tokenizer)
    per_epoch = SMALL // BATCH
    seen_budgets, epoch_rows = [], {}
    for step, batch in enumerate(loader):
        infos = list(batch["extra_info"])
        budgets = {info["budget"] for info in infos}
        assert len(budgets) == 1, "one budget per batch"
        budget = budgets.pop()
        seen_budgets.append(budget)
        epoch = step // per_epoch + 1
        assert {info["epoch"] for info in infos} == {epoch}
        epoch_rows.setdefault(epoch, []).extend(info["index"] for info in infos)
        for messages in batch["raw_prompt"]:
            content = messages[-1]["content"]
            assert content.endswith(ratio_tip(spec.parsed_mode, budget))
            assert content.startswith("Return your final response within \\boxed{}. ")
    assert seen_budgets == prepared.data.budgets
    assert len(seen_budgets) == 8 * per_epoch
    assert seen_budgets[: 6 * per_epoch] == [
        b for b in (6000, 4000, 3500, 3000, 2500, 2000) for _ in range(per_epoch)
    ]
    assert set(seen_budgets[6 * per_epoch :]) <= {2000, 4000, 6000}
    for rows in epoch_rows.values():
        assert sorted(rows) == list(range(SMALL)), "every epoch sees every problem once"

    val = create_rl_dataset(cfg.data.val_files, cfg.data, tokenizer, None, is_train=False)
    infos = [val[i]["extra_info"] for i in range(len(val))]
    assert {i["budget"] for i in infos} == {4000} and all(i["two_stage"] for i in infos)


def verl_batches(cfg, tokenizer):
    """The training batches verl's trainer reads from our files (its dataset, sampler and
    dataloader, built as `RayPPOTrainer._create_dataloader` builds them)."""
    from torchdata.stateful_dataloader import StatefulDataLoader
    from verl.trainer.ppo.utils import create_rl_dataset, create_rl_sampler
    from verl.utils.dataset.rl_dataset import collate_fn

    dataset = create_rl_dataset(cfg.data.train_files, cfg.data, tokenizer, None, is_train=True)
    return list(
        StatefulDataLoader(
            dataset=dataset,
            batch_size=cfg.data.train_batch_size,
            num_workers=0,
            drop_last=True,
            collate_fn=collate_fn,
            sampler=create_rl_sampler(cfg.data, dataset),
        )
    )


def test_overlong_prompts_leave_before_batching(tmp_path, tokenizer):
    """Problems too long for data.max_prompt_length are dropped on purpose: they leave the
    stream before it is cut into batches, so every batch verl reads still has one budget and
    the stream's budgets, epoch by epoch (verl's own filter, which would shift them, is off)."""
    import json

    short = [{"problem": f"What is {i} + {i}?", "answer": str(2 * i)} for i in range(14)]
    long_text = "Consider the following very long and winding statement. " * 60
    rows = list(short)
    for at in (1, 6, 11):  # 3 overlong problems among 14 short ones
        rows.insert(at, {"problem": long_text + "What is 1 + 1?", "answer": "2"})
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    overrides = [
        *small_run(tmp_path),
        f"budgetthinker.data.train_files=[{train}]",
        f"budgetthinker.data.val_files=[{train}]",
        "data.max_prompt_length=400",
        "budgetthinker.curriculum.budgets=[[6000],[50],[2000,4000,100]]",
        "budgetthinker.epochs=3",
    ]
    prepared = prepare(RECIPE, overrides)
    assert prepared.data.dropped == {"train": 3, "val": 3}
    assert prepared.config.data.filter_overlong_prompts is False
    stream = json.loads((tmp_path / "8ratio_v1" / "data" / "stream.json").read_text())
    assert stream["dropped_overlong"] == {"train": 3, "val": 3}
    per_epoch = 14 // BATCH
    assert prepared.data.steps_per_epoch == per_epoch == stream["steps_per_epoch"]

    batches = verl_batches(prepared.config, tokenizer)
    budgets = []
    for batch in batches:
        infos = list(batch["extra_info"])
        assert len({info["budget"] for info in infos}) == 1, "one budget per batch"
        budgets.append(infos[0]["budget"])
        assert all(rows[info["index"]]["problem"] in short_problems(short) for info in infos)
        for messages in batch["raw_prompt"]:
            ids = tokenizer.apply_chat_template(
                list(messages), add_generation_prompt=True, tokenize=False
            )
            assert len(tokenizer(ids, add_special_tokens=False)["input_ids"]) <= 400
    assert budgets == prepared.data.budgets == stream["step_budgets"]
    assert budgets[:per_epoch] == [6000] * per_epoch
    assert budgets[per_epoch : 2 * per_epoch] == [50] * per_epoch

    # What verl's filter did instead: the same 17 rows batched first, then filtered by verl,
    # put rows of different budgets into one batch.
    legacy = prepare(
        RECIPE,
        [*overrides, "data.max_prompt_length=100000", f"budgetthinker.output_dir={tmp_path}/x"],
    ).config
    legacy.data.max_prompt_length = 400
    legacy.data.filter_overlong_prompts = True
    mixed = [len({i["budget"] for i in b["extra_info"]}) for b in verl_batches(legacy, tokenizer)]
    assert max(mixed) > 1


def short_problems(short: list[dict]) -> set[str]:
    return {r["problem"] for r in short}


def test_same_inputs_same_stream(tmp_path):
    first = prepare(RECIPE, small_run(tmp_path / "a")).data.budgets
    second = prepare(RECIPE, small_run(tmp_path / "b")).data.budgets
    assert first == second
    other_seed = prepare(
        RECIPE, small_run(tmp_path / "c", "budgetthinker.curriculum.seed=7")
    ).data.budgets
    assert other_seed[: 6 * (SMALL // BATCH)] == first[: 6 * (SMALL // BATCH)]


def test_aliases(monkeypatch, tmp_path):
    monkeypatch.setenv("stage", "1")
    monkeypatch.setenv("remaining", "default")
    cfg = prepare(RECIPE, small_run(tmp_path)).config
    assert cfg.budgetthinker.rollout.validation_two_stage is False
    assert cfg.budgetthinker.rollout.force is False and cfg.budgetthinker.rollout.tip == "default"
    monkeypatch.setenv("MODEL_PATH", "/nowhere/model")
    with pytest.raises(UserError, match="/nowhere/model does not exist"):
        prepare(RECIPE, small_run(tmp_path)[1:])


def test_compat_seed_sets_the_original_rollout(tmp_path):
    """`budgetthinker.compat=seed`: the agent loop reads the original's switches from the
    resolved config, and the reward gets the original answer rule."""
    cfg = prepare(RECIPE, [*small_run(tmp_path), "budgetthinker.compat=seed"]).config
    bt = cfg.budgetthinker.rollout
    assert (bt.mask_forced_tokens, bt.stop_at_think_end, bt.two_stage_request) == (
        False,
        False,
        "second",
    )
    assert cfg.reward.custom_reward_function.reward_kwargs.extraction == "seed"
    plain = prepare(RECIPE, small_run(tmp_path / "plain")).config.budgetthinker.rollout
    assert (plain.mask_forced_tokens, plain.stop_at_think_end, plain.two_stage_request) == (
        True,
        True,
        "same",
    )


def test_reasoning_gym_problems_and_report_to(tmp_path):
    """reasoning-gym tasks become verl's parquet rows through the same data function as TRL's;
    `budgetthinker.report_to` becomes verl's `trainer.logger`."""
    import pyarrow.parquet as pq

    reasoning_gym = pytest.importorskip("reasoning_gym")
    gym = ["budgetthinker.data.train_files=[rg:basic_arithmetic]",
           "budgetthinker.data.val_files=[rg:basic_arithmetic]",
           f"+budgetthinker.data.rg.basic_arithmetic={{size: {SMALL}, level: 0}}",
           "budgetthinker.report_to=[tensorboard,wandb]"]  # fmt: skip
    prepared = prepare(RECIPE, [*small_run(tmp_path), *gym])
    assert list(prepared.config.trainer.logger) == ["console", "tensorboard", "wandb"]
    level0 = {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1}
    for name, seed in (("train", 0), ("val", SMALL)):
        theirs = reasoning_gym.create_dataset("basic_arithmetic", size=SMALL, seed=seed, **level0)
        rows = pq.read_table(tmp_path / "8ratio_v1" / "data" / f"{name}.parquet").to_pylist()
        questions = {e["question"]: e["answer"] for e in theirs}
        for row in rows:
            asked = [q for q in questions if q in row["prompt"][-1]["content"]]
            assert len(asked) == 1, row["prompt"]
            assert row["reward_model"]["ground_truth"] == questions[asked[0]]
    none = prepare(RECIPE, [*small_run(tmp_path / "none"), "budgetthinker.report_to=none"])
    assert list(none.config.trainer.logger) == ["console"]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("budgetthinker.report_to=mlflow", "budgetthinker.report_to: unknown value 'mlflow'"),
        ("trainer.logger=[console]", "budgetthinker.report_to=none|tensorboard|wandb"),
        ("budgetthinker.data.train_files=[rg:nope]", "unknown reasoning-gym task rg:nope"),
        ("data.train_batch_sise=4", "does not compose"),
        ("budgetthinker.curriculum.budgets=[[1234]]", "1234 is not a multiple of 50"),
        ("budgetthinker.unknown=1", "does not compose"),
        ("+budgetthinker.unknown=1", "unknown config key 'budgetthinker.unknown'"),
        ("budgetthinker.rollout.tip=prompt_v1", "tip must be one of control, default"),
        ("budgetthinker.rollout.two_stage_request=twice", "two_stage_request must be same"),
        ("budgetthinker.compat=s1", "budgetthinker.compat: no switch for 's1' here"),
        # the earlier flat block: one line naming the key's new place (the TRL recipe's shape)
        ("budgetthinker.tip=default", "budgetthinker.tip is now budgetthinker.rollout.tip"),
        ("budgetthinker.train_files=[]", "is now budgetthinker.data.train_files"),
        ("budgetthinker.synthetic.n=4", "is now budgetthinker.data.synthetic.n"),
        ("trainer.total_epochs=8", "budgetthinker.epochs=8"),
        ("data.train_batch_size=64", "fewer than data.train_batch_size 64"),
        ("trainer.n_gpus_per_node=3", "verl rejects this configuration.*divisible"),
    ],
)
def test_user_errors(tmp_path, override, message):
    with pytest.raises(UserError, match=message):
        prepare(RECIPE, [*small_run(tmp_path), override])
    assert not (tmp_path / "8ratio_v1" / "verl_config.yaml").exists()


def test_missing_model_and_bad_data(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    with pytest.raises(UserError, match="no policy model: add actor_rollout_ref.model.path"):
        prepare(RECIPE, small_run(tmp_path)[1:])
    release = ["actor_rollout_ref.model.path=default", f"budgetthinker.output_dir={tmp_path}"]
    with pytest.raises(UserError, match=r"set budgetthinker\.data\.train_files=\[path/to"):
        prepare(RECIPE, release)
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"problem": ["1+1?"] * 8, "solution": ["2"] * 8}), bad)
    overrides = [*small_run(tmp_path), f"budgetthinker.data.train_files=[{bad}]"]
    with pytest.raises(UserError, match="has no 'answer' column.*data.answer_key"):
        prepare(RECIPE, overrides)


def test_release_data_files_stream(tmp_path, prepared_model):
    """The shared release parquet (when present) turns into 56 steps per epoch, as the original."""
    shared = Path(__file__).resolve().parents[3] / "shared" / "data" / "rl" / "train_RL.parquet"
    if not shared.is_file():
        pytest.skip("../shared/data/rl is not present")
    prepared = prepare(
        RECIPE,
        [
            f"actor_rollout_ref.model.path={prepared_model}",
            f"budgetthinker.data.train_files=[{shared}]",
            f"budgetthinker.data.val_files=[{shared.with_name('math500_RL.parquet')}]",
            f"budgetthinker.output_dir={tmp_path}",
        ],
    )
    assert prepared.data.steps_per_epoch == 14470 // 256 == 56
    assert prepared.data.total_steps == 8 * 56


def test_checkpoints_keep_the_spec(tmp_path, prepared_model):
    """verl builds our checkpoint callback from the recipe; it copies the spec on every save."""
    from verl.trainer.ppo.checkpoint_callback import build_checkpoint_callback

    from budgetthinker.control_spec import SPEC_FILENAME

    cfg = compose(RECIPE, [f"actor_rollout_ref.model.path={prepared_model}"])
    callback = build_checkpoint_callback(cfg)
    step = tmp_path / "global_step_56"
    (step / "actor" / "huggingface").mkdir(parents=True)
    callback.on_save(trainer=None, global_step=56, checkpoint_dir=str(step))
    original = (Path(prepared_model) / SPEC_FILENAME).read_text()
    assert (step / SPEC_FILENAME).read_text() == original
    assert (step / "actor" / "huggingface" / SPEC_FILENAME).read_text() == original
