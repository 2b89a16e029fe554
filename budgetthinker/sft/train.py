"""`budgetthinker sft --config configs/sft/<recipe>.yaml [key=value …]`: the SFT launcher.

A recipe is a LLaMA-Factory training YAML plus one `budgetthinker:` section (see SFTOptions).
The launcher

1. resolves `model_name_or_path: default` to the embedded SmolLM2 prepared for 8ratio, and
   checks that the model folder has a control-token spec;
2. builds the dataset first when the section has `data:` (synthetic traces or a JSONL file →
   `dataset_dir/<dataset>.jsonl` + `dataset_info.json`);
3. for each run (the recipe itself, then every entry of `then:`, each starting from the previous
   run's `output_dir`) writes the resolved YAML to `<output_dir>/budgetthinker_sft.yaml` and
   runs `budgetthinker.sft.worker` on it: in this process on one device, under `torchrun
   --nproc_per_node N` for N > 1 GPUs (each rank runs LLaMA-Factory with our loss callback).

Overrides: `key=value` sets a LLaMA-Factory key (`learning_rate=1e-5`), `budgetthinker.key=value`
one of ours (`budgetthinker.special_token_loss=T10`). The original environment variable
`special_token_loss` is accepted as an alias (recipe < env var < command line).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import yaml

from budgetthinker import aliases
from budgetthinker.config import (
    build,
    check_compat,
    load_yaml,
    merge,
    parse_overrides,
    recipes_root,
    resolve_recipe,
    to_dict,
)
from budgetthinker.control_spec import SPEC_FILENAME
from budgetthinker.errors import UserError
from budgetthinker.evaluation.tracking import finish_runs, hf_report_to, log_dirs
from budgetthinker.outputs import atomic_json, atomic_text, user_path
from budgetthinker.preparation.models import resolve_model
from budgetthinker.sft.loss import parse_special_token_loss

RESOLVED_NAME = "budgetthinker_sft.yaml"


@dataclass
class DataOptions:
    """Build the dataset before training (written to the recipe's `dataset_dir`/`dataset`)."""

    # `synthetic` (budgetthinker.synthetic traces) or a traces JSONL file
    traces: str = "synthetic"
    # synthetic traces: how many, set, steps per problem, re-check rounds [low, high]
    num_traces: int = 64
    seed: int = 1
    steps: int = 3
    checks: list[int] = field(default_factory=lambda: [0, 4])
    budget_rule: str = "v2"
    max_thinking: int = 10000
    format: str = "alpaca"
    # generated: control tokens where forcing puts them; thinking: the original's count
    placement: str = "generated"
    # rebuild even if the dataset already exists with the same inputs
    rebuild: bool = False


@dataclass
class SFTOptions:
    """The `budgetthinker:` section of an SFT recipe."""

    # F (weight 0) | T (weight 1, default) | T<n> (weight n) on control-token targets
    special_token_loss: str = "T"
    # processes (GPUs) per run; 0 = every visible CUDA device (1 without CUDA)
    nproc: int = 0
    data: DataOptions | None = None
    # further runs, each a mapping of LLaMA-Factory keys, starting from the previous output_dir
    then: list[dict] = field(default_factory=list)
    # [seed]: the original's data (control tokens counted from the first thinking token)
    compat: list[str] = field(default_factory=list)

    def __post_init__(self):
        self.compat = check_compat(self.compat, ("seed",), "budgetthinker.compat")
        if "seed" in self.compat and self.data is not None:
            self.data.placement = "thinking"
        parse_special_token_loss(self.special_token_loss)
        if self.nproc < 0:
            raise ValueError(f"nproc must be >= 0, got {self.nproc}")


T = TypeVar("T")


def load_lf_recipe(
    path: str | os.PathLike, overrides: Sequence[str], options: type[T], aliases_of: str | None
) -> tuple[dict, T]:
    """The one LLaMA-Factory recipe loader (SFT, CTS, TALE-PT): a file, or a shipped recipe's
    name or documented path, + `key=value` overrides → (LLaMA-Factory args, our `options` built
    from the recipe's `budgetthinker:` block). Recipe < environment aliases < overrides."""
    raw = load_yaml(resolve_recipe("sft", str(path)))
    ours = raw.pop("budgetthinker", None) or {}
    extra = parse_overrides(list(overrides))
    if aliases_of:  # the original environment variables (budgetthinker.aliases)
        ours = merge(ours, aliases.nested(aliases.read(aliases_of)))
    ours = merge(ours, extra.pop("budgetthinker", {}))
    lf_args = merge(raw, extra)
    if "report_to" in lf_args:  # LLaMA-Factory's own key, with the one meaning of every stage
        lf_args["report_to"] = hf_report_to(lf_args["report_to"])
    _resolve_shipped_file(lf_args, "deepspeed")
    return lf_args, build(options, ours, "budgetthinker")


def load_recipe(path: str | os.PathLike, overrides: Sequence[str] = ()) -> tuple[dict, SFTOptions]:
    """An SFT recipe + overrides → (LLaMA-Factory args, our options); the folders it names
    (`output_dir`, `dataset_dir`) with `~` expanded, as every command does."""
    lf_args, opts = load_lf_recipe(path, overrides, SFTOptions, "sft")
    for key in ("output_dir", "dataset_dir"):
        if isinstance(lf_args.get(key), str):
            lf_args[key] = str(user_path(lf_args[key]))
    return lf_args, opts


def _resolve_shipped_file(lf_args: dict, key: str) -> None:
    """A recipe's `configs/…` file (the DeepSpeed config) that is not in the working directory
    is taken from the shipped recipes, so a recipe runs from any folder."""
    value = lf_args.get(key)
    if not isinstance(value, str) or user_path(value).is_file():
        return
    parts = Path(value).parts
    if parts[:1] == ("configs",) and (recipes_root().joinpath(*parts[1:])).is_file():
        lf_args[key] = str(recipes_root().joinpath(*parts[1:]))


def recipe_model(lf_args: dict) -> Path:
    """The recipe's `model_name_or_path` resolved (`default` → the embedded prepared model) and
    written back, so LLaMA-Factory gets the folder."""
    model = lf_args.get("model_name_or_path")
    if not model:
        raise UserError("the recipe has no model_name_or_path; set it to a prepared model folder")
    path = resolve_model(model, prepared=True)
    lf_args["model_name_or_path"] = str(path)
    return path


def _digest(paths: list[Path]) -> str:
    """sha256 over the contents of the existing files among `paths` (and their names)."""
    h = hashlib.sha256()
    for path in paths:
        if path.is_file():
            h.update(path.name.encode() + b"\0")
            with path.open("rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()


def data_inputs(data: DataOptions, model_dir: Path) -> dict:
    """What a built dataset depends on: the data options, the traces file's content and the
    model's tokenizer, chat template and control-token spec."""
    options = {k: v for k, v in to_dict(data).items() if k != "rebuild"}
    if data.traces != "synthetic":
        traces = Path(data.traces).expanduser()
        if not traces.is_file():
            raise UserError(f"budgetthinker.data.traces: {data.traces} does not exist")
        options["traces_sha256"] = _digest([traces])
        for knob in ("num_traces", "seed", "steps", "checks"):  # synthetic traces only
            options.pop(knob)
    names = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", SPEC_FILENAME)
    options["model_sha256"] = _digest([model_dir / n for n in names])
    return options


def build_data(lf_args: dict, data: DataOptions, model_dir: Path) -> None:
    """Build the recipe's dataset, or reuse it when it was built from the same inputs (recorded
    in `<name>.inputs.json`); changed inputs rebuild it, saying which; a dataset with no record
    (made by hand with `sft-data`) is never overwritten silently."""
    from budgetthinker.sft.data import build_dataset, read_jsonl
    from budgetthinker.synthetic import synthetic_traces

    names = str(lf_args.get("dataset", "")).split(",")
    if len(names) != 1 or not names[0]:
        raise UserError("budgetthinker.data builds one dataset: set `dataset: NAME` in the recipe")
    name, out = names[0], Path(lf_args.get("dataset_dir", "data"))
    inputs = data_inputs(data, model_dir)
    record = out / f"{name}.inputs.json"
    exists = (out / f"{name}.jsonl").is_file() and (out / "dataset_info.json").is_file()
    if exists and not data.rebuild:
        if not record.is_file():
            raise UserError(
                f"dataset {name} in {out} was not built by this recipe (no {record.name}), so its "
                "inputs are unknown; set budgetthinker.data.rebuild=true to rebuild it, or drop "
                "budgetthinker.data to train on it as it is"
            )
        before = json.loads(record.read_text(encoding="utf-8"))
        changed = sorted(k for k in inputs.keys() | before.keys() if inputs.get(k) != before.get(k))
        if not changed:
            print(f"[budgetthinker] dataset {name} in {out} is up to date; reusing it", flush=True)
            return
        print(
            f"[budgetthinker] dataset {name} in {out} was built from other inputs "
            f"({', '.join(changed)} changed); rebuilding it",
            flush=True,
        )
    # A record never outlives its dataset: a crash while rebuilding leaves none, and the next
    # run asks for rebuild=true instead of trusting a dataset of unknown inputs.
    record.unlink(missing_ok=True)
    if data.traces == "synthetic":
        if len(data.checks) not in (1, 2):
            raise UserError(
                f"budgetthinker.data.checks must be [n] or [low, high], got {data.checks}"
            )
        low, high = data.checks[0], data.checks[-1]
        traces = synthetic_traces(data.num_traces, data.seed, data.steps, (low, high))
    else:
        traces = read_jsonl(data.traces)
    stats = build_dataset(
        model_dir,
        traces,
        out,
        name,
        data.budget_rule,
        data.max_thinking,
        data.format,
        placement=data.placement,
    )
    atomic_json(record, inputs)  # only after the dataset is in place
    print(f"[budgetthinker] built {out / name}.jsonl\n{stats.summary()}", flush=True)


def num_processes(nproc: int) -> int:
    if nproc:
        return nproc
    try:
        import torch

        return max(1, torch.cuda.device_count())
    except ImportError:
        return 1


def require_llamafactory() -> None:
    import importlib.util

    if importlib.util.find_spec("llamafactory") is None:
        raise UserError(
            "LLaMA-Factory is not installed in this environment; SFT has its own: "
            "bash scripts/setup_env.sh sft, then .venv-sft/bin/budgetthinker sft … "
            "(or simply bash sft/train.sh CONFIG)"
        )


def runs(lf_args: dict, opts: SFTOptions) -> list[dict]:
    """The recipe's runs: itself, then each `then:` entry from the previous output_dir."""
    result = [dict(lf_args)]
    for i, extra in enumerate(opts.then, start=1):
        if not isinstance(extra, dict) or "output_dir" not in extra:
            raise UserError(f"budgetthinker.then[{i - 1}] must be a mapping with an output_dir")
        nxt = merge(result[-1], extra)
        nxt["model_name_or_path"] = result[-1]["output_dir"]
        result.append(nxt)
    return result


def run_sft(config: str | os.PathLike, overrides: list[str] = ()) -> list[Path]:
    """Run the recipe; returns the output folders (each a prepared model with its spec)."""
    lf_args, opts = load_recipe(config, list(overrides))
    require_llamafactory()
    model_dir = recipe_model(lf_args)
    if "output_dir" not in lf_args:
        raise UserError("the recipe has no output_dir; set it (e.g. runs/sft/<experiment>)")
    if opts.data is not None:
        build_data(lf_args, opts.data, model_dir)
    nproc = num_processes(opts.nproc)
    outputs = []
    for i, args in enumerate(runs(lf_args, opts)):
        out = Path(args["output_dir"])
        out.mkdir(parents=True, exist_ok=True)
        log_dirs(out)  # report_to's logs: <output_dir>/logs, <output_dir>/wandb
        spec_dir = model_dir if i == 0 else outputs[-1]
        resolved = dict(args)
        resolved["budgetthinker"] = {
            **{k: v for k, v in to_dict(opts).items() if k in ("special_token_loss", "nproc")},
            "model_spec": str(spec_dir),
            "data": to_dict(opts.data) if opts.data else None,
        }
        path = out / RESOLVED_NAME
        atomic_text(path, yaml.safe_dump(resolved, sort_keys=False, allow_unicode=True))
        print(
            f"[budgetthinker] SFT run {i + 1}: {args['model_name_or_path']} → {out} "
            f"({nproc} process{'es' if nproc > 1 else ''}, "
            f"special_token_loss={opts.special_token_loss})",
            flush=True,
        )
        start = time.perf_counter()
        if nproc > 1:
            cmd = [
                sys.executable,
                "-m",
                "torch.distributed.run",
                f"--nproc_per_node={nproc}",
                "-m",
                "budgetthinker.sft.worker",
                str(path),
            ]
            if subprocess.run(cmd).returncode != 0:
                raise UserError(f"SFT run {i + 1} failed (torchrun exit status); see the log above")
        else:
            from budgetthinker.sft.worker import run

            try:
                run(path)
            finally:
                finish_runs()  # a W&B run of this stage is complete before the next one starts
        print(
            f"[budgetthinker] SFT run {i + 1} done in {time.perf_counter() - start:.1f} s",
            flush=True,
        )
        outputs.append(out)
    return outputs
