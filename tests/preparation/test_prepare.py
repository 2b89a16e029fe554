"""Preparation on the real embedded model and on the real DeepSeek-R1-Distill tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from budgetthinker.control_spec import SPEC_FILENAME, load_spec
from budgetthinker.errors import UserError
from budgetthinker.preparation.embedded_model import default_base_dir
from budgetthinker.preparation.prepare import add_control_tokens, prepare_model
from tests.conftest import SHARED_TOKENIZER

pytestmark = pytest.mark.slow


def _embeddings(model_dir: Path) -> torch.Tensor:
    weights = {}
    for f in sorted(model_dir.glob("*.safetensors")):
        weights.update(load_file(f))
    return weights["model.embed_tokens.weight"]


def test_prepared_default_model(prepared_model, spec, tokenizer):
    assert spec.mode == "8ratio"
    assert list(spec.token_strings) == [f"\n<remaining>{k}/8</remaining>\n" for k in range(1, 8)]
    for s, tid in zip(spec.token_strings, spec.token_ids, strict=True):
        assert tokenizer.encode(s, add_special_tokens=False) == [tid]
        assert tokenizer.convert_ids_to_tokens(tid) == s
    # SmolLM2 lacks <think>/</think>: preparation adds them as single tokens after the controls
    assert tokenizer.encode("</think>", add_special_tokens=False) == [spec.think_end_id]
    assert spec.think_start_id == spec.token_ids[-1] + 1
    assert spec.think_end_id == spec.token_ids[-1] + 2
    assert spec.suffix_ids["eval"] == tuple(
        tokenizer.encode("\n</think>\n\n**Final Answer**\\boxed", add_special_tokens=False)
    )
    assert spec.think_end_id in spec.suffix_ids["rl"]

    emb = _embeddings(prepared_model)
    config = json.loads((prepared_model / "config.json").read_text())
    old = 49152  # SmolLM2's vocabulary
    assert emb.shape[0] % 64 == 0 and emb.shape[0] >= len(tokenizer) == old + 9
    assert config["vocab_size"] == emb.shape[0]
    mean = _embeddings(default_base_dir())[:old].mean(dim=0)
    for tid in (*spec.token_ids, spec.think_start_id, spec.think_end_id):
        torch.testing.assert_close(emb[tid], mean, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(emb[:old], _embeddings(default_base_dir())[:old])


def test_text_init_starts_each_row_at_its_own_pieces(tmp_path):
    """`--embedding-init text` on the embedded model: each new row is the mean of the base rows
    its string spells out to (`</think>` → `</`, `think`, `>`), so the control tokens start
    distinct, unlike `mean` where all nine new rows are one vector."""
    from transformers import AutoTokenizer

    spec = prepare_model("default", "8ratio", tmp_path / "text", quiet=True, embedding_init="text")
    base = AutoTokenizer.from_pretrained(default_base_dir())
    base_emb = _embeddings(default_base_dir())
    emb = _embeddings(tmp_path / "text")
    new = (*spec.token_ids, spec.think_start_id, spec.think_end_id)
    strings = (*spec.token_strings, spec.think_start, spec.think_end)
    assert base.convert_ids_to_tokens(base.encode("</think>", add_special_tokens=False)) == [
        "</", "think", ">"
    ]  # fmt: skip
    for tid, text in zip(new, strings, strict=True):
        pieces = base.encode(text, add_special_tokens=False)
        assert len(pieces) > 1
        torch.testing.assert_close(emb[tid], base_emb[pieces].mean(dim=0), atol=1e-6, rtol=1e-5)
    assert len({tuple(emb[tid].tolist()) for tid in new}) == len(new)  # all distinct
    torch.testing.assert_close(emb[:49152], base_emb[:49152])


def test_prepare_again_is_a_noop_and_other_mode_is_an_error(prepared_model, tmp_path):
    out = tmp_path / "copy"
    spec = prepare_model(str(prepared_model), "8ratio", out, quiet=True)
    assert spec == load_spec(prepared_model)
    stamp = (out / SPEC_FILENAME).stat().st_mtime_ns
    assert prepare_model(str(prepared_model), "8ratio", out, quiet=True) == spec
    assert (out / SPEC_FILENAME).stat().st_mtime_ns == stamp
    with pytest.raises(UserError, match="already prepared with mode 8ratio"):
        prepare_model("default", "4ratio", out, quiet=True)
    with pytest.raises(UserError, match="prepare from the original base"):
        prepare_model(str(prepared_model), "remaining250", tmp_path / "other", quiet=True)
    assert not (tmp_path / "other").exists()


def test_prepare_countdown_mode(tmp_path):
    spec = prepare_model("default", "remaining250", tmp_path / "r250", quiet=True)
    assert len(spec.token_ids) == 40
    assert spec.token_strings[-1] == "\n<remaining>10000</remaining>\n"
    assert spec.token_ids == tuple(range(49152, 49192))
    assert load_spec(tmp_path / "r250") == spec


def test_bad_base_and_out(tmp_path):
    with pytest.raises(UserError, match="not a model folder"):
        prepare_model(str(tmp_path), "8ratio", tmp_path / "o", quiet=True)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x.txt").write_text("x")
    with pytest.raises(UserError, match="exists and is not a prepared model"):
        prepare_model("default", "8ratio", tmp_path / "full", quiet=True)
    with pytest.raises(UserError, match="unknown mode"):
        prepare_model("default", "eightratio", tmp_path / "o", quiet=True)
    assert not (tmp_path / "o").exists()


@pytest.mark.skipif(not SHARED_TOKENIZER.is_dir(), reason="shared/ tokenizer copy not present")
def test_real_deepseek_tokenizer_ids():
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(SHARED_TOKENIZER)
    assert len(tokenizer) == 151665
    spec = add_control_tokens(tokenizer, "8ratio")
    assert spec.token_ids == tuple(range(151665, 151672))  # 1/8 … 7/8
    assert tokenizer.convert_tokens_to_ids("\n<remaining>7/8</remaining>\n") == 151671
    # DeepSeek already has the thinking delimiters: nothing else is added
    assert len(tokenizer) == 151672
    assert (spec.think_start_id, spec.think_end_id) == (151648, 151649)
    assert spec.suffix_ids["eval"][:3] == (198, 151649, 271)


@pytest.mark.skipif(not SHARED_TOKENIZER.is_dir(), reason="shared/ tokenizer copy not present")
@pytest.mark.parametrize("init", ["mean", "text", "resized"])
def test_embedding_init_switch_on_the_deepseek_layout(tmp_path, init):
    """A small model with DeepSeek-R1-Distill-Qwen's layout (151936 embedding rows, a tokenizer
    of 151665): `resized` is the original's resize to len(tokenizer) — the matrix shrinks to
    151672 rows and the control tokens keep the checkpoint's padding rows; `mean` keeps the
    matrix and sets those rows to the mean of the 151665 real ones."""
    import shutil

    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM

    base = tmp_path / "base"
    config = Qwen2Config(
        vocab_size=151936,
        hidden_size=8,
        intermediate_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    Qwen2ForCausalLM(config).save_pretrained(base)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy2(SHARED_TOKENIZER / name, base / name)
    before = AutoModelForCausalLM.from_pretrained(base).get_input_embeddings().weight.detach()

    spec = prepare_model(str(base), "8ratio", tmp_path / "out", quiet=True, embedding_init=init)
    ids = list(spec.token_ids)
    assert ids == list(range(151665, 151672))
    after = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    weight = after.get_input_embeddings().weight.detach()
    assert torch.equal(weight[:151665], before[:151665])
    if init == "resized":
        assert weight.shape[0] == after.get_output_embeddings().weight.shape[0] == 151672
        assert torch.equal(weight[ids], before[ids])  # the padding rows, as they were
    elif init == "mean":
        assert weight.shape[0] == 151936
        mean = before[:151665].float().mean(dim=0)
        assert torch.allclose(weight[ids], mean.expand(len(ids), -1), atol=1e-6)
    else:  # text: each control token at the mean of the base rows its string spells out to
        from transformers import AutoTokenizer

        assert weight.shape[0] == 151936
        tokenizer = AutoTokenizer.from_pretrained(SHARED_TOKENIZER)
        for tid, text in zip(ids, spec.token_strings, strict=True):
            pieces = tokenizer.encode(text, add_special_tokens=False)
            assert len(pieces) > 1 and max(pieces) < 151665
            assert torch.allclose(weight[tid], before[pieces].float().mean(dim=0), atol=1e-6)
        assert not torch.allclose(weight[ids[0]], weight[ids[-1]])
    with pytest.raises(UserError, match="unknown embedding init 'zeros'"):
        prepare_model(str(base), "8ratio", tmp_path / "x", quiet=True, embedding_init="zeros")


def test_prepare_twice_gives_the_same_bytes(tmp_path):
    """Issue #21: the padding rows of the grown embedding were drawn unseeded. Same inputs, same
    bytes, on the real CLI; another --seed gives other padding rows (and only those)."""
    from tests.clirun import cli, snapshot

    for name, seed in (("a", "0"), ("b", "0"), ("c", "1")):
        proc = cli("prepare", "--base", "default", "--out", tmp_path / name, "--seed", seed)
        assert proc.returncode == 0, proc.stderr
    a, b, c = (snapshot(tmp_path / n) for n in "abc")
    assert a == b
    assert a.keys() == c.keys() and a["model.safetensors"] != c["model.safetensors"]
    rows = [_embeddings(tmp_path / n) for n in "ac"]
    spec = load_spec(tmp_path / "a")
    used = max(spec.think_end_id, *spec.token_ids) + 1
    assert torch.equal(rows[0][:used], rows[1][:used])  # the seed moves only the padding rows


def test_a_file_size_limit_is_one_line_and_leaves_nothing(tmp_path):
    """`ulimit -f`: safetensors' native writer fails with EFBIG inside its own exception type;
    it is the one write-error line, and no staging folder or half model is left."""
    import resource

    from tests.clirun import cli, one_line, snapshot

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))

    before = snapshot(tmp_path)
    proc = cli("prepare", "--base", "default", "--out", tmp_path / "o", preexec_fn=limit)
    one_line(proc, "cannot write", "File too large", "ulimit -f")
    assert snapshot(tmp_path) == before
