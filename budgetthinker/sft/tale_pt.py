"""TALE-PT on LLaMA-Factory: the budget search's answers become LoRA SFT and DPO data, and a
recipe trains on them (`budgetthinker tale-pt --config configs/sft/tale_pt_lora.yaml`).

Data (reference notes A.9), from the rows of `budgetthinker tale-search` whose budget was
actually reduced (status `searched`; `no_reduction` and `skipped` rows carry no target):

* SFT: prompt = the vanilla CoT prompt, **without** a budget (what the original trains on);
  response = the answer generated under the searched budget β*. The loss covers the response
  only (LLaMA-Factory's default; the paper's cross-entropy of y given x — the original's code
  also trained on the prompt and padding).
* DPO: prompt as above; chosen = the β* answer, rejected = the vanilla CoT answer.

Both carry TALE's system line, so the model's chat template renders them exactly as the
evaluation's `cot` method renders its prompt. The trained model is therefore evaluated with
`methods: [cot]`. LoRA adapters are merged into the base after training (`<output_dir>/merged`,
a plain model folder the harness loads like any other; the core environment has no peft).

A recipe is a LLaMA-Factory YAML plus a `budgetthinker:` section (`TalePTOptions`).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from budgetthinker.errors import UserError
from budgetthinker.evaluation.tale.prompts import SYSTEM
from budgetthinker.outputs import atomic_text, publish_dir, staging_dir
from budgetthinker.preparation.models import resolve_model

KINDS = ("sft", "dpo")
MERGED = "merged"


@dataclass
class TalePTOptions:
    """The `budgetthinker:` section of a TALE-PT recipe."""

    # the search output (JSONL of `budgetthinker tale-search`)
    search: str = ""
    # rebuild the dataset even if it already exists in dataset_dir
    rebuild: bool = False
    # merge the LoRA adapter into the base model after training (<output_dir>/merged)
    merge: bool = True


def searched_rows(rows: Iterable[dict], source: str = "search file") -> list[dict]:
    """The rows with a searched budget and its answer; none at all is a user error."""
    rows = list(rows)
    kept = [r for r in rows if r.get("status") == "searched" and r.get("budget_answer")]
    if not kept:
        statuses = sorted({str(r.get("status")) for r in rows}) or ["no rows"]
        raise UserError(
            f"{source} has no searched budget (statuses: {', '.join(statuses)}); TALE-PT needs "
            "problems vanilla CoT answered correctly and whose budget could be halved at least "
            "once — search more (or easier) problems with budgetthinker tale-search"
        )
    return kept


def sft_rows(rows: Iterable[dict]) -> list[dict]:
    """Alpaca rows: vanilla CoT prompt (no budget) → the answer under β*."""
    return [_row(r, output=r["budget_answer"]["text"]) for r in searched_rows(rows)]


def dpo_rows(rows: Iterable[dict]) -> list[dict]:
    """Pairwise alpaca rows: chosen = the β* answer, rejected = the vanilla CoT answer."""
    return [
        _row(r, chosen=r["budget_answer"]["text"], rejected=r["vanilla"]["text"])
        for r in searched_rows(rows)
    ]


def _row(search_row: dict, **targets: str) -> dict:
    return {
        "system": SYSTEM,
        "instruction": search_row["prompt"],
        "input": "",
        **targets,
        "id": search_row["id"],
        "budget": search_row["budget"],
    }


def info_entry(file_name: str, kind: str) -> dict:
    """The dataset_info.json entry LLaMA-Factory reads for `kind`."""
    columns = {"prompt": "instruction", "query": "input", "system": "system"}
    if kind == "dpo":
        columns |= {"chosen": "chosen", "rejected": "rejected"}
        return {"file_name": file_name, "ranking": True, "columns": columns}
    return {"file_name": file_name, "columns": columns | {"response": "output"}}


def build_dataset(search_file: str | os.PathLike, out_dir: str | os.PathLike, name: str, kind: str):
    """Write `<out_dir>/<name>.jsonl` and its dataset_info.json entry; returns (path, rows).

    The data file is written to a temporary name and renamed, then the info file likewise, so
    an interrupted build leaves no half-written dataset behind."""
    from budgetthinker.evaluation.tale.search import read_rows

    if kind not in KINDS:
        raise UserError(f"TALE-PT data kind must be one of {', '.join(KINDS)}, got {kind!r}")
    rows = read_rows(search_file)
    data = sft_rows(rows) if kind == "sft" else dpo_rows(rows)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.jsonl"
    atomic_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in data))
    info_path = out / "dataset_info.json"
    info = json.loads(info_path.read_text(encoding="utf-8")) if info_path.is_file() else {}
    info[name] = info_entry(path.name, kind)
    atomic_text(info_path, json.dumps(info, indent=2, ensure_ascii=False) + "\n")
    return path, len(data)



def load_recipe(path: str | os.PathLike, overrides: list[str] = ()) -> tuple[dict, TalePTOptions]:
    """Recipe (a file or a shipped recipe's name) + `key=value` overrides → (LLaMA-Factory
    args, our options), through the SFT stage's one recipe loader."""
    from budgetthinker.sft.train import load_lf_recipe

    lf_args, opts = load_lf_recipe(path, overrides, TalePTOptions, None)
    stage = lf_args.get("stage")
    if stage not in KINDS:
        raise UserError(f"a TALE-PT recipe has stage: sft or stage: dpo, got {stage!r}")
    for key in ("dataset", "dataset_dir", "output_dir", "model_name_or_path"):
        if not lf_args.get(key):
            raise UserError(f"the TALE-PT recipe {path} has no {key}; set it")
    if not opts.search:
        raise UserError(
            "the recipe has no budgetthinker.search (the tale-search output to train on); set "
            "budgetthinker.search=<file.jsonl>"
        )
    return lf_args, opts


def run_tale_pt(config: str | os.PathLike, overrides: list[str] = (), data_only: bool = False):
    """Build the data, train, merge; returns the folder to evaluate (merged model, or the
    adapter folder when `merge` is off) and the training wall time in seconds."""
    lf_args, opts = load_recipe(config, overrides)
    stage, name, out_dir = lf_args["stage"], lf_args["dataset"], Path(lf_args["dataset_dir"])
    if opts.rebuild or not (out_dir / f"{name}.jsonl").is_file():
        path, n = build_dataset(opts.search, out_dir, name, stage)
        print(f"[tale-pt] {stage} dataset: {n} rows → {path}", flush=True)
    if data_only:
        return out_dir, 0.0
    from budgetthinker.sft.train import require_llamafactory

    require_llamafactory()
    # `default` is the embedded model, the one `tale-search --model default` searched with
    lf_args["model_name_or_path"] = str(resolve_model(lf_args["model_name_or_path"]))
    from llamafactory.train.tuner import run_exp

    start = time.perf_counter()
    run_exp(dict(lf_args))
    seconds = time.perf_counter() - start
    output = Path(lf_args["output_dir"])
    print(f"[tale-pt] {stage} training done in {seconds:.1f} s → {output}", flush=True)
    if opts.merge and lf_args.get("finetuning_type") == "lora":
        output = merge_adapter(lf_args["model_name_or_path"], output, output / MERGED)
        print(f"[tale-pt] merged model → {output}", flush=True)
    return output, seconds


def merge_adapter(base: str, adapter: Path, out: Path) -> Path:
    """Base + LoRA adapter → one plain model folder (tokenizer and control-token spec copied)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from budgetthinker.control_spec import SPEC_FILENAME

    model = AutoModelForCausalLM.from_pretrained(base, dtype="float32")
    merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    with staging_dir(out.parent, out.name) as tmp:
        merged.save_pretrained(tmp)
        AutoTokenizer.from_pretrained(base).save_pretrained(tmp)
        if (Path(base) / SPEC_FILENAME).is_file():
            shutil.copy2(Path(base) / SPEC_FILENAME, tmp / SPEC_FILENAME)
        shutil.rmtree(out, ignore_errors=True)
        publish_dir(tmp, out)
    return out


def add_args(parser) -> None:
    parser.add_argument(
        "--config",
        default="configs/sft/tale_pt_lora_cpu_smoke.yaml",
        help="TALE-PT recipe (LLaMA-Factory YAML + budgetthinker: section); default: "
        "configs/sft/tale_pt_lora_cpu_smoke.yaml",
    )
    parser.add_argument(
        "--data-only",
        action="store_true",
        help="only write the dataset (and its dataset_info.json entry) from the search file",
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="override LLaMA-Factory keys (learning_rate=1e-5) or ours (budgetthinker.search=…)",
    )


def run_cli(args) -> int:
    output, seconds = run_tale_pt(args.config, args.overrides, data_only=args.data_only)
    if args.data_only:
        print(f"dataset written to {output}")
    else:
        print(f"TALE-PT done in {seconds:.1f} s: {output} (evaluate it with methods=[cot])")
    return 0
