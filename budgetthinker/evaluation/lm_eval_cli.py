"""`budgetthinker lm-eval …`: lm-evaluation-harness's own command line with the `budgetthinker`
model (and its adherence metrics) registered.

lm-eval 0.4.13 finds models only in its own registry (no entry points), so the model must be
registered in the process that runs lm-eval. This command does that and hands its arguments,
unchanged, to lm-eval's CLI (`lm_eval.__main__.cli_evaluate`): every lm-eval option works as
documented, e.g.

    budgetthinker lm-eval --model budgetthinker --model_args pretrained=DIR,backend=vllm \\
        --tasks TASK --gen_kwargs "method=control,budget=2000" --log_samples --output_path out

From Python, `import budgetthinker.evaluation.lm_eval_model` registers it for
`lm_eval.simple_evaluate(model="budgetthinker", …)`.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys

from budgetthinker.errors import UserError


def add_args(parser: argparse.ArgumentParser) -> None:
    # Nothing here is ours: no argument is read as an option of this parser (its -h included),
    # every one goes to lm-eval, which prints its own help.
    parser.prefix_chars = "\0"
    parser.add_argument(
        "args", nargs=argparse.REMAINDER, metavar="LM_EVAL_ARGS",
        help="lm-eval's arguments (lm-eval --help), e.g. --model budgetthinker --tasks …",
    )  # fmt: skip


def run_cli(args: argparse.Namespace) -> int:
    if importlib.util.find_spec("lm_eval") is None:
        raise UserError(
            "lm-evaluation-harness is not installed: pip install 'budgetthinker[lmeval]' (or "
            "bash scripts/setup_env.sh, which installs it in the core environment)"
        )
    from lm_eval.__main__ import cli_evaluate

    import budgetthinker.evaluation.lm_eval_model  # noqa: F401  (registers model and metrics)

    sys.argv = ["lm-eval", *args.args]
    cli_evaluate()
    return 0
