"""`budgetthinker` command line: one entry point, one subcommand per job.

Every mistake a user can make surfaces as a `UserError`: printed as one line on stderr (no
traceback), exit status 2, nothing written. `grade` exits 1 when it prints `false`.
"""

from __future__ import annotations

import argparse
import json
import sys

from budgetthinker.errors import UserError, report_errors
from budgetthinker.evaluation import comparison as _comparison
from budgetthinker.evaluation import lm_eval_cli as _lm_eval
from budgetthinker.evaluation.tale import search as _tale_search
from budgetthinker.patches import serve as _serve
from budgetthinker.rl import cli as _rl_cli
from budgetthinker.sft import cli as _sft_cli
from budgetthinker.sft import cts as _cts
from budgetthinker.sft import tale_pt as _tale_pt


def _budget(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise UserError(
            f"--budget must be an integer number of tokens, got {text!r}; e.g. --budget 1000"
        ) from None


def add_prepare_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--base",
        required=True,
        help="base model folder, or 'default' for the embedded SmolLM2-135M-Instruct",
    )
    parser.add_argument(
        "--mode", default="8ratio", help="8ratio (default), <N>ratio, remaining250 or remaining50"
    )
    parser.add_argument("--out", required=True, help="folder to write the prepared model to")
    parser.add_argument(
        "--noise",
        type=float,
        default=0.0,
        help="relative noise added to the mean-initialised embedding rows",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--embedding-init",
        choices=("mean", "text", "resized"),
        default="mean",
        help="mean: new embedding rows at the mean of the existing rows (default); text: each new "
        "row at the mean of the rows of its own string's pieces (control tokens start distinct, "
        "a new </think> starts with a usable logit); resized: the original, rows left as "
        "resize_token_embeddings(len(tokenizer)) leaves them",
    )


def run_prepare(args: argparse.Namespace) -> int:
    from budgetthinker.preparation.prepare import prepare_model

    prepare_model(
        args.base,
        args.mode,
        args.out,
        noise=args.noise,
        seed=args.seed,
        embedding_init=args.embedding_init,
    )
    return 0


def add_generate_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default="default",
        help="prepared model folder, or 'default' (embedded model, 8ratio)",
    )
    parser.add_argument("--prompt", required=True, help="the problem to solve")
    parser.add_argument("--budget", required=True, type=str, help="thinking budget in tokens")
    parser.add_argument("--backend", choices=("hf", "vllm"), default="hf")
    parser.add_argument(
        "--two-stage",
        action="store_true",
        help="force '</think> **Final Answer**\\boxed' if thinking is unfinished "
        "after B + B//50 tokens",
    )
    parser.add_argument(
        "--max-new-tokens",
        type=int,
        default=None,
        help="default: B + B//50 (two-stage: room for the answer as well)",
    )
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def run_generate(args: argparse.Namespace) -> int:
    from budgetthinker.control_spec import load_spec
    from budgetthinker.generation import (
        BudgetSettings,
        analyse,
        default_max_new_tokens,
        require_vllm,
    )
    from budgetthinker.limits import check_fits, check_positive, check_sampling
    from budgetthinker.preparation.models import resolve_model
    from budgetthinker.prompts import render_prompt

    budget = _budget(args.budget)
    if args.backend == "vllm":
        require_vllm()
    model_dir = str(resolve_model(args.model, prepared=True))
    spec = load_spec(model_dir)
    settings = BudgetSettings(budget=budget, two_stage=args.two_stage)
    plan = settings.plan(spec)  # validates the budget for the model's mode before any loading
    check_positive(args.max_new_tokens, "--max-new-tokens")
    check_sampling(args.temperature, args.top_p)
    max_new = args.max_new_tokens or default_max_new_tokens(settings, spec)

    from budgetthinker.preparation.loading import load_tokenizer

    tokenizer = load_tokenizer(model_dir)  # checks the spec against it
    prompt = render_prompt(tokenizer, args.prompt, budget, "control", spec.parsed_mode)
    prompt_ids = tokenizer.encode(prompt, add_special_tokens=False)
    check_fits(
        model_dir,
        max_new,
        f"{max_new} new tokens ({'--max-new-tokens' if args.max_new_tokens else 'budget'})",
        "use a smaller --budget or --max-new-tokens",
        prompt_tokens=len(prompt_ids),
    )
    from budgetthinker.patches.backends import make_backend

    backend = make_backend(
        args.backend, model_dir, seed=args.seed, max_model_len=len(prompt_ids) + max_new
    )
    try:
        [output] = backend.generate(
            [prompt_ids], [settings], [max_new], temperature=args.temperature, top_p=args.top_p
        )
    finally:
        backend.close()
    info = analyse(output, spec, plan)
    text = tokenizer.decode(output, skip_special_tokens=False)
    if args.json:
        print(
            json.dumps(
                {
                    "model": model_dir,
                    "backend": args.backend,
                    "budget": budget,
                    "mode": spec.mode,
                    "two_stage": args.two_stage,
                    "prompt": prompt,
                    "text": text,
                    "output_token_ids": output,
                    "control_positions": [list(p) for p in info.control_positions],
                    "forced_positions": info.forced_positions,
                    "thinking_tokens": info.thinking_tokens,
                    "finished_thinking": info.finished_thinking,
                    "suffix_forced": info.suffix_forced,
                    "output_tokens": len(output),
                },
                ensure_ascii=False,
            )
        )
        return 0
    print(f"model {model_dir} · mode {spec.mode} · budget {budget} · backend {args.backend}")
    print("─" * 72)
    print(text)
    print("─" * 72)
    where = ", ".join(f"{i}:{s.strip()}" for i, s in info.control_positions) or "none"
    print(f"control tokens (output index: token): {where}")
    print(
        f"output tokens {len(output)} · thinking tokens {info.thinking_tokens} · finished "
        f"thinking: {'yes' if info.finished_thinking else 'no'}"
        + (" · two-stage suffix forced" if info.suffix_forced else "")
    )
    return 0


def add_eval_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        default="configs/eval/default.yaml",
        help="evaluation recipe (YAML); default: configs/eval/default.yaml",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="check the recipe, model folder, methods, budgets and data, print what would run; "
        "load no weights, write nothing (GPU recipes on a CPU machine too)",
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="override recipe keys, e.g. budgets=[100,250] data.limit=50",
    )


def run_eval(args: argparse.Namespace) -> int:
    from budgetthinker.config import load_config
    from budgetthinker.evaluation.config import EvalConfig
    from budgetthinker.evaluation.runner import run_eval as run

    cfg = load_config(EvalConfig, args.config, args.overrides, aliases_of="eval")
    if args.dry_run:
        from budgetthinker.evaluation.runner import dry_run

        print(dry_run(cfg))
        return 0
    run(cfg)
    return 0


def add_grade_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "pred",
        metavar="PRED",
        help="a model response (its answer is extracted as in evaluation) or a bare answer",
    )
    parser.add_argument("gold", metavar="GOLD", help="the gold answer")
    parser.add_argument("--benchmark", default=None, help="benchmark name (e.g. minerva_math)")
    parser.add_argument(
        "--answer-format", default=None, help="a method's answer format tried first: tale | s1"
    )
    parser.add_argument(
        "--extraction",
        default="default",
        choices=["default", "qwen", "seed"],
        help="default: boxed, then math-verify's extraction; qwen/seed: the original's rule",
    )
    parser.add_argument(
        "--timeout", type=float, default=5.0, help="seconds for the check (default 5)"
    )
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="also print the extracted answer and how both answers were normalised and parsed",
    )


def run_grade(args: argparse.Namespace) -> int:
    from budgetthinker.evaluation.grading import explain, grade

    if not args.timeout > 0:
        raise UserError(f"--timeout must be a positive number of seconds, got {args.timeout}")
    result = grade(
        args.pred,
        args.gold,
        args.benchmark,
        args.timeout,
        answer_format=args.answer_format,
        extraction=args.extraction,
    )
    answer, source, correct = result.predicted, f"rule {result.rule!r}", result.correct
    if answer is None:
        answer, source = args.pred.strip(), "PRED itself (no answer found in it)"
    info = explain(answer, args.gold, args.timeout)
    correct = correct or info["correct"]
    if args.verbose:
        print(f"answer: {answer!r}, from {source}")
        print(f"gold: {args.gold!r}")
        for key, value in info.items():
            if key != "correct":
                print(f"{key}: {value!r}" if isinstance(value, str) else f"{key}: {value}")
    print("true" if correct else "false")
    return 0 if correct else 1  # usable in shell tests: `budgetthinker grade A B && …`


COMMANDS = {
    "prepare": (
        add_prepare_args,
        run_prepare,
        "add control tokens to a base model and write a prepared model folder",
    ),
    "generate": (
        add_generate_args,
        run_generate,
        "generate one answer with control tokens forced into the thinking",
    ),
    "grade": (
        add_grade_args,
        run_grade,
        "check one answer (or a response's last \\boxed{} answer) against a gold answer",
    ),
    "eval": (
        add_eval_args,
        run_eval,
        "run a budget sweep over benchmarks and methods; write results, table and plots",
    ),
    "report": (
        _comparison.add_report_args,
        _comparison.run_report,
        "compare methods (and models) from finished evaluation runs: report.md and report.html",
    ),
    "lm-eval": (
        _lm_eval.add_args,
        _lm_eval.run_cli,
        "lm-evaluation-harness's own CLI with the budgetthinker model registered",
    ),
    "cts": (
        _cts.add_cts_args,
        _cts.run_cts,
        "compress the thinking of reasoning traces with a reference model (CTS) before SFT",
    ),
    "tale-search": (
        _tale_search.add_args,
        _tale_search.run_cli,
        "TALE's optimal budget search: per problem, halve the budget in the prompt while the "
        "answer stays correct and gets shorter (data for TALE-PT)",
    ),
    "tale-pt": (
        _tale_pt.add_args,
        _tale_pt.run_cli,
        "TALE-PT: LoRA SFT or DPO on LLaMA-Factory from a tale-search file (sft environment)",
    ),
    "sft-traces": (
        _sft_cli.add_traces_args,
        _sft_cli.run_traces,
        "write synthetic reasoning traces (JSONL) for the embedded SFT pipeline",
    ),
    "sft-data": (
        _sft_cli.add_data_args,
        _sft_cli.run_data,
        "build the SFT dataset: control tokens inserted into reasoning traces (LLaMA-Factory)",
    ),
    "sft": (
        _sft_cli.add_sft_args,
        _sft_cli.run_sft,
        "SFT with LLaMA-Factory and the weighted special-token loss (sft environment)",
    ),
    "rl": (
        _rl_cli.add_rl_args,
        _rl_cli.run_rl,
        "GRPO with the budget reward and curriculum, control tokens forced in rollouts (TRL)",
    ),
    "serve": (
        _serve.add_serve_args,
        _serve.run_serve,
        "vLLM's OpenAI-compatible server on a prepared model; budgets from vllm_xargs, "
        "thinking_token_budget, reasoning_effort or a server default",
    ),
}


def _show_defaults(parser: argparse.ArgumentParser) -> None:
    """Every option's default in `--help` (argparse's ArgumentDefaultsHelpFormatter, minus its
    noise: no `(default: None)`/`False`, none where the help text already names the default)."""
    for action in parser._actions:
        default = action.default
        if not action.option_strings or default is None or default is False:
            continue
        if default == argparse.SUPPRESS:
            continue
        if isinstance(action, argparse._VersionAction | argparse._HelpAction):
            continue
        text = action.help or ""
        if "default" not in text.lower():
            action.help = f"{text} (default: %(default)s)".strip()


def _epilog(name: str) -> str | None:
    """`eval --help` ends with every recipe key and its default, generated from the dataclasses
    (the source of docs/configuration.md's tables too)."""
    if name != "eval":
        return None
    from budgetthinker.config import keys_help
    from budgetthinker.evaluation.config import EvalConfig

    return (
        "recipe keys (key=default; override any as key=value, lists as [a,b]; the recipe file "
        "may set other values; reference: docs/configuration.md):\n" + keys_help(EvalConfig)
    )


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"budgetthinker {version('budgetthinker')}"
    except PackageNotFoundError:  # a source tree on PYTHONPATH, not installed
        return "budgetthinker (not installed: source tree)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="budgetthinker", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (add_args, _run, help_text) in COMMANDS.items():
        command = sub.add_parser(
            name,
            help=help_text,
            description=help_text,
            epilog=_epilog(name),
            formatter_class=argparse.RawDescriptionHelpFormatter,  # the key list keeps its lines
        )
        add_args(command)
        _show_defaults(command)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand, through the one error path (`errors.report_errors`)."""
    args = build_parser().parse_args(argv)
    return report_errors(f"budgetthinker {args.command}", lambda: COMMANDS[args.command][1](args))


if __name__ == "__main__":
    sys.exit(main())
