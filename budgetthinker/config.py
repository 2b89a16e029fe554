"""YAML recipes → typed dataclasses, with `key=value` overrides and documented env aliases.

A recipe file in `configs/` is the whole description of an experiment. Overrides use dotted keys
(`sampling.temperature=0.6`, `budgets=[100,250]`); values are parsed as YAML. Unknown keys fail
with the list of known ones, values of the wrong type fail with the key's type: a typo never
silently runs the wrong experiment.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

from budgetthinker import aliases
from budgetthinker.errors import UserError
from budgetthinker.outputs import user_path

T = TypeVar("T")


def recipes_root() -> Path:
    """The recipe folder shipped with budgetthinker: `budgetthinker/configs/` in an installed
    wheel (package data), else the checkout's `configs/` (source trees and editable installs).
    Never the working directory: named recipes work from any folder."""
    package = Path(__file__).resolve().parent
    installed = package / "configs"
    return installed if installed.is_dir() else package.parent / "configs"


ORIGINALS = {
    "seed": "the original BudgetThinker code (its rollout, reward rule, SFT placement, evaluation)",
    "s1": "the s1 lm-evaluation-harness fork (its budget rounds, end string and graded text)",
    "hf_fork": "the scaling-function fork's Hugging Face version (its entropy_thresholding rule)",
    "vllm_fork": "the scaling-function fork's later vLLM version (its entropy_thresholding rule)",
    "tale": "TALE's code (its plain local-model prompt string, TALE-EP's estimate handling)",
    "cts": "CTS's LLMLingua call (the tokens it keeps, artefacts included)",
}
"""`compat` means the same everywhere: the list of originals whose behaviour to reproduce,
quirks included (docs/faithful_switches.md). Each stage accepts the originals it has switches
for."""


def check_compat(names: Sequence[str] | str | None, allowed: Sequence[str], key: str = "compat"):
    """`names` as a checked list (a single name or null is accepted, as in any list key); an
    original the stage has no switch for is one line naming the ones it has."""
    if names is None:
        return []
    names = [names] if isinstance(names, str) else list(names)
    for name in names:
        if name not in allowed:
            known = ", ".join(f"{a} ({ORIGINALS[a]})" for a in allowed)
            raise UserError(f"{key}: no switch for {name!r} here; {key} lists originals: {known}")
    return names


def shipped_recipes(stage: str) -> list[str]:
    """Names of the recipes shipped for `stage` (`rl`, `sft`, `eval`)."""
    return sorted(p.stem for p in (recipes_root() / stage).glob("*.yaml"))


def resolve_recipe(stage: str, config: str, what: str = "") -> Path:
    """A recipe file: an existing path, a shipped recipe's name (`cpu_smoke`), or a shipped
    recipe's documented path (`configs/rl/cpu_smoke.yaml`) from any working directory."""
    path = user_path(config)
    if path.is_file():
        return path
    what = what or f"{stage} recipe"
    shipped = recipes_root() / stage
    known = ", ".join(shipped_recipes(stage)) or "none"
    if path.suffix not in (".yaml", ".yml") and "/" not in config:
        named = shipped / f"{config}.yaml"
        if named.is_file():
            return named
        raise UserError(
            f"unknown {what} {config!r}; shipped recipes: {known} (in {shipped}), or "
            "pass a recipe file"
        )
    if path.parts[-3:-1] == ("configs", stage) and (shipped / path.name).is_file():
        return shipped / path.name
    raise UserError(f"{what} {config} does not exist; shipped recipes: {known}")


class _AliasFound(Exception):
    def __init__(self, event) -> None:
        super().__init__(event.anchor)
        self.anchor, self.line = event.anchor, event.start_mark.line + 1


class _NoAliasLoader(yaml.SafeLoader):
    """`yaml.safe_load` (no tags, nothing executed) that also refuses aliases (`*name`, and
    merge keys `<<: *name`): a recipe is a few lines of settings, and aliases of aliases let a
    kilobyte of YAML stand for gigabytes once written out (a fingerprint, a resolved config)."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            raise _AliasFound(self.peek_event())
        return super().compose_node(parent, index)


def safe_yaml(text: str, where: str) -> Any:
    """Recipe YAML as plain data: `safe_load` without aliases; a bad document is one UserError
    naming `where` (the file, or the override)."""
    try:
        return yaml.load(text, Loader=_NoAliasLoader)  # a SafeLoader: no tags, no code
    except _AliasFound as e:
        raise UserError(
            f"{where} uses the YAML alias *{e.anchor} (line {e.line}); recipes must spell every "
            "value out (aliases can blow a small file up into a huge one): replace the alias "
            "with the value it stands for"
        ) from None


def load_yaml(path: str | os.PathLike) -> dict:
    path = user_path(path)
    if not path.is_file():
        raise UserError(f"config file {path} does not exist; see configs/ for the recipes")
    try:
        data = safe_yaml(path.read_text(), f"config file {path}") or {}
    except yaml.YAMLError as e:
        raise UserError(f"config file {path} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a mapping of keys to values")
    return data


def parse_overrides(items: Sequence[str]) -> dict:
    """`["a.b=1", "c=[1,2]"]` → `{"a": {"b": 1}, "c": [1, 2]}` (values parsed as YAML)."""
    result: dict = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"override {item!r} must look like key=value (e.g. budgets=[100,250])")
        try:
            value = safe_yaml(raw, f"override {item!r}") if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        node = result
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UserError(f"override {item!r} conflicts with another override of {part!r}")
        node[parts[-1]] = value
    return result


def merge(base: dict, extra: Mapping) -> dict:
    """Deep merge: mappings merge key by key, anything else replaces."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(dict(out[key]), value)
        else:
            out[key] = value
    return out


def build(cls: type[T], data: Mapping, where: str = "") -> T:
    """Instantiate dataclass `cls` from a mapping, recursively, checking keys and types."""
    if not isinstance(data, Mapping):
        raise UserError(f"{where or 'config'} must be a mapping, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise UserError(
            f"unknown config key{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(repr(_dotted(where, k)) for k in unknown)}; known keys"
            f"{' of ' + where if where else ''}: {', '.join(sorted(fields))}"
        )
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(hints[name], value, _dotted(where, name))
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise UserError(f"invalid config{' ' + where if where else ''}: {e}") from None


def to_dict(obj: Any) -> Any:
    """Dataclass → plain dict (for writing the resolved config)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def _dotted(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _coerce(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, key)
            except UserError as e:
                errors.append(str(e))
        raise UserError(errors[0] if errors else f"{key}: bad value {value!r}")
    if dataclasses.is_dataclass(tp):
        return build(tp, value, key)
    if origin in (list, tuple, Sequence):
        (item,) = typing.get_args(tp)[:1] or (Any,)
        if value is None:
            return []  # null for a list: empty
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [value]  # a single value where a list is expected
        if not isinstance(value, list):
            raise UserError(f"{key} must be a list, got {value!r}")
        return [_coerce(item, v, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, Mapping):
            raise UserError(f"{key} must be a mapping, got {value!r}")
        args = typing.get_args(tp)
        if len(args) == 2 and dataclasses.is_dataclass(args[1]):  # a typed block per name
            return {str(k): build(args[1], {} if v is None else v, f"{key}.{k}")
                    for k, v in value.items()}  # fmt: skip
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise UserError(f"{key} must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise UserError(f"{key} must be an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise UserError(f"{key} must be a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise UserError(f"{key} must be a string, got {value!r}")
    return value


def load_config(
    cls: type[T],
    path: str | os.PathLike | None,
    overrides: Sequence[str] = (),
    aliases_of: str | None = None,
) -> T:
    """Recipe file (optional) < the original environment variables of stage `aliases_of`
    (`budgetthinker.aliases`) < command-line overrides."""
    data = load_yaml(path) if path is not None else {}
    if aliases_of:
        data = merge(data, aliases.nested(aliases.read(aliases_of)))
    data = merge(data, parse_overrides(overrides))
    return build(cls, data)


@dataclasses.dataclass(frozen=True)
class RecipeKey:
    """One `key=value` key of a recipe, as `--help` and docs/configuration.md list it."""

    key: str  # dotted: `sampling.temperature`
    type: str  # `float`, `list[int]`, `str | None`
    default: Any
    doc: str  # the field's comment (same line or the lines above) or its `Args:` entry


def recipe_keys(cls: type, prefix: str = "") -> list[RecipeKey]:
    """Every key of dataclass `cls`, nested dataclasses flattened to dotted keys, read from the
    dataclasses themselves, so `--help` and the generated reference never lag behind a new key.
    Defaults are those of `cls()` (a default set in `__post_init__` included)."""
    try:
        instance = cls()
    except Exception:  # a dataclass with required fields: its declared defaults only
        instance = None
    hints = typing.get_type_hints(cls)
    docs = _field_docs(cls)
    keys = []
    for f in dataclasses.fields(cls):
        if not f.init or f.name.startswith("_"):
            continue
        tp = hints.get(f.name, f.type)
        nested = _dataclass_of(tp)
        if nested is not None:
            keys += recipe_keys(nested, f"{prefix}{f.name}.")
            continue
        if instance is not None:
            default = getattr(instance, f.name)
        elif f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = dataclasses.MISSING
        keys.append(RecipeKey(prefix + f.name, _type_name(tp), default, docs.get(f.name, "")))
    return keys


def format_default(value: Any) -> str:
    """A default as a user would type it in `key=value` (YAML flow style)."""
    if value is dataclasses.MISSING:
        return "(required)"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, dict)):
        return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    return str(value)


def _dataclass_of(tp: Any) -> type | None:
    """The dataclass behind `tp` (`Config` or `Config | None`), else None."""
    if dataclasses.is_dataclass(tp):
        return tp
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(inner) == 1 and dataclasses.is_dataclass(inner[0]):
            return inner[0]
    return None


def _type_name(tp: Any) -> str:
    if isinstance(tp, type) and not typing.get_args(tp):
        return tp.__name__
    return str(tp).replace("typing.", "").replace("NoneType", "None")


def _field_docs(cls: type) -> dict[str, str]:
    """Field → its description: `Args:` entries of the class docstrings (bases included), then
    the comment on the field's line or the comment lines right above it, which win."""
    import inspect
    import io
    import re
    import tokenize

    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        doc = inspect.getdoc(klass) or ""
        if "Args:" in doc:
            body = doc.split("Args:", 1)[1]
            head = r"^ {4}(\w[\w, ]*?)\s*(?:\(`[^\n]*?\))?:"  # `    name (`type`):`
            entry = head + r"\s*(.+?)(?=^ {4}\w[\w, ]*?\s*(?:\(`|:)|\Z)"
            for m in re.finditer(entry, body, re.M | re.S):
                for name in m.group(1).split(","):
                    docs[name.strip()] = " ".join(m.group(2).split())
        try:
            source = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        pending: list[str] = []
        field_line = re.compile(r"^\s+(\w+)\s*:")
        try:
            tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
        except (tokenize.TokenError, SyntaxError):
            continue
        comments = {t.start[0]: t.string.lstrip("#").strip() for t in tokens
                    if t.type == tokenize.COMMENT}  # fmt: skip
        for n, line in enumerate(source.splitlines(), 1):
            stripped = line.strip()
            if stripped.startswith("#"):
                pending.append(comments.get(n, ""))
                continue
            m = field_line.match(line)
            if m and m.group(1) in {f.name for f in dataclasses.fields(klass)}:
                text = comments.get(n, "")
                text = " ".join([*pending, text]).strip() if pending else text
                text = re.sub(r"type: ignore\[[\w-]+\]\s*", "", text).strip().lstrip("# ")
                if text and "__post_init__" not in text:
                    docs[m.group(1)] = text
            pending = []
    return docs


def keys_markdown(cls: type, prefix: str = "") -> str:
    """The keys of `cls` as a Markdown table (docs/configuration.md's generated sections)."""
    rows = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for k in recipe_keys(cls, prefix):
        cells = [f"`{k.key}`", _html_safe(k.type), f"`{format_default(k.default)}`",
                 _html_safe(k.doc)]  # fmt: skip
        rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(rows)


def keys_help(cls: type, prefix: str = "") -> str:
    """The keys of `cls` as `--help` lists them: `key=default  meaning`, one per line."""
    lines = []
    for k in recipe_keys(cls, prefix):
        lines.append(f"  {k.key}={format_default(k.default)}")
        if k.doc:
            lines.append(f"      {k.doc}")
    return "\n".join(lines)


def _html_safe(text: str) -> str:
    """`<` and `>` outside code spans as entities, so Markdown does not read them as tags."""
    parts = text.split("`")
    for i in range(0, len(parts), 2):  # the even parts are outside backticks
        parts[i] = parts[i].replace("<", "&lt;").replace(">", "&gt;")
    return "`".join(parts)
