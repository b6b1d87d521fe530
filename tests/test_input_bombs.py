"""Hostile values in the files a model folder holds (issue 20): resource bombs refused before
anything proportional is allocated, file values that reach arithmetic / recursion / a type
assumption reported as one InputError line naming the file and the key, and property-based
fuzzing of config.json, tokenizer.json and generation_config.json values through `load_spec`
(what `kquant convert --dry-run` runs): success or a one-line kquant error, nothing else."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kquant import batch
from kquant.io import jsonio
from kquant.vocab import special as vocab_special
from kquant.models import load_spec
from kquant.errors import InputError, KquantError
from kquant.plan.overrides import match_names
from kquant.types import QType
from test_cli_hardening import TINY, kq, no_leftovers, one_line_error

DEEP = "[" * 100_000 + "]" * 100_000


def snapshot(d: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir()) if p.is_file()}


def edit_json(p: Path, **kw) -> None:
    doc = json.loads(p.read_text()) if p.exists() else {}
    doc.update(kw)
    p.write_text(json.dumps(doc))


def _bpe_tokenizer_json() -> str:
    """A small valid BPE tokenizer.json (normalizer sequence, template post-processor, added tokens)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    letters = "abcdefgh"
    vocab_ = {"<s>": 0, "</s>": 1, **{c: i + 2 for i, c in enumerate(letters)}}
    merges = [("a", "b"), ("c", "d"), ("ab", "cd")]
    for a, b in merges:
        vocab_[a + b] = len(vocab_)
    tok = Tokenizer(models.BPE(vocab_, merges))
    tok.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 1)])
    tok.add_special_tokens(["<s>", "</s>"])
    return tok.to_str()


# ------------------------------------------------------------------ through the CLI, one case per class

def _layers(m):
    edit_json(m / "config.json", num_hidden_layers=1_000_000_000)


def _merges(m):  # 100 MB of merges in the issue; past the size bound for vocab_size 512 here
    pairs = [["a" * 40, "b%039d" % i] for i in range(200_000)]  # 18 MB
    (m / "tokenizer.json").write_text(json.dumps({"model": {"type": "BPE", "vocab": {}, "merges": pairs}}))


def _llama3(m):
    edit_json(m / "config.json", rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 4.0,
                                               "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})


def _deep_tokenizer(m):
    (m / "tokenizer.json").write_text('{"model": ' + DEEP + "}")


def _chat_template(m):
    edit_json(m / "tokenizer_config.json", chat_template=[{"name": 7, "template": "{{ x }}"}])


def _alias_bomb(m):
    lines = ["---", 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)},*{chr(97 + i)},*{chr(97 + i)},*{chr(97 + i)}]"
              for i in range(9)]
    lines += ["tags: *j", "---", "# card"]
    (m / "README.md").write_text("\n".join(lines) + "\n")


def _temperature(m):
    edit_json(m / "generation_config.json", temperature="hot")


def _deep_generation_config(m):
    (m / "generation_config.json").write_text('{"temperature": ' + DEEP + "}")


CLI_CASES = {
    "layer-count": (_layers, (), ("config.json", "'num_hidden_layers' is 1000000000", "2 layers")),
    "merges": (_merges, (), ("tokenizer.json", "bytes, more than a tokenizer for vocab_size 512")),
    "regex": (None, ("--type", "Q4_0", "--tensor-type", "((.+)+)+#=Q4_0"), ("'((.+)+)+#'", "did not finish")),
    "llama3-rope": (_llama3, (), ("config.json", "'rope_scaling.high_freq_factor' (4.0) must be greater")),
    "deep-tokenizer": (_deep_tokenizer, (), ("tokenizer.json", "nested too deeply")),
    "deep-generation-config": (_deep_generation_config, (), ("generation_config.json", "nested too deeply")),
    "chat-template": (_chat_template, (), ("tokenizer_config.json", "'chat_template'[0]", "string 'name'")),
    "alias-bomb": (_alias_bomb, (), ("README.md", "aliases")),
    "temperature": (_temperature, (), ("generation_config.json", "'temperature'", "'hot'")),
}


def _limit_memory() -> None:
    """Popen preexec_fn: the 3 GiB address-space limit the issue's bombs ran under."""
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))


@pytest.mark.parametrize("case", list(CLI_CASES))
def test_cli_one_line_error(tmp_path, case):
    make, args, needles = CLI_CASES[case]
    m = tmp_path / "model"
    shutil.copytree(TINY, m)
    if make is not None:
        make(m)
    before = snapshot(m)
    out = tmp_path / "out" / "o.gguf"
    out.parent.mkdir()
    r = kq("convert", m, "-o", out, *args, preexec_fn=_limit_memory)
    one_line_error(r, *needles, code=InputError.exit_code)
    assert not out.exists()
    no_leftovers(out.parent)
    no_leftovers(m)
    assert snapshot(m) == before


# ------------------------------------------------------------------ the same classes, in process

@pytest.fixture
def model(tmp_path):
    m = tmp_path / "model"
    shutil.copytree(TINY, m)
    return m


def _error(m, **kw) -> str:
    vocab_special.clear_tokenizer_cache()
    with pytest.raises(KquantError) as e:
        load_spec(m, **kw)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


@pytest.mark.parametrize("key,value,needle", [
    ("num_hidden_layers", 2**40, "'num_hidden_layers' is 1099511627776 but the checkpoint has tensors for 2 layers"),
    ("vocab_size", 10**12, "'vocab_size' is 1000000000000, larger than any tensor dimension"),
    ("intermediate_size", 2**31, "'intermediate_size' is 2147483648, larger"),
    ("num_attention_heads", 2**40, "num_attention_heads 1099511627776"),
    ("vocab_size_per_layer_input", 10**9, "'vocab_size_per_layer_input' is 1000000000"),
])
def test_count_bombs(model, key, value, needle):
    edit_json(model / "config.json", **{key: value})
    assert needle in _error(model)


def test_real_tokenizers_within_bounds():
    # the largest real tokenizer.json files fit the bound their vocab_size gives (Gemma 3: 33 MB for 262,208
    # ids; Qwen2.5: 7 MB for 151,936; Llama 3: 9 MB, 280k merges for 128,256); tests/test_vocab.py converts
    # the Qwen2 and Llama 3 ones
    def limit(n):
        return vocab_special.TOKENIZER_BASE_BYTES + vocab_special.TOKENIZER_BYTES_PER_TOKEN * n

    assert limit(262_208) > 2 * 33_400_000 and limit(151_936) > 4 * 7_000_000 and limit(128_256) > 3 * 9_100_000
    assert vocab_special.MERGES_PER_TOKEN * 128_256 > 2 * 280_147


def test_merge_count_bomb(model):
    # within the byte bound, but more merges than MERGES_PER_TOKEN per token of vocab_size
    n = vocab_special.MERGES_PER_TOKEN * 512 + 65536 + 1
    (model / "tokenizer.json").write_text(json.dumps({"model": {"type": "BPE", "merges": ["a b"] * n}}))
    assert f"{n} merges, more than" in _error(model)


@pytest.mark.parametrize("fname", ["tokenizer.json", "tokenizer_config.json", "generation_config.json", "config.json"])
def test_deep_json(model, fname):
    (model / fname).write_text('{"a": ' + "[" * 200 + "]" * 200 + "}")  # beyond MAX_DEPTH, within Python's recursion
    assert f"{fname}: JSON nested too deeply" in _error(model)


def test_duplicate_keys_everywhere(model):
    (model / "generation_config.json").write_text('{"temperature": 0.5, "temperature": 0.7}')
    assert "generation_config.json: invalid JSON (duplicate key 'temperature')" in _error(model)


@pytest.mark.parametrize("card,needle", [
    ("---\nlicense: [1, 2]\n---\n", "front matter 'license' must be a string or a list of strings"),
    ("---\nversion: 2024-01-01\n---\n", "front matter 'version' must be a string"),
    ("---\nbase_model: [{name: [x]}]\n---\n", "front matter 'base_model'"),
    ("---\ntags: " + "[" * 5000 + "]" * 5000 + "\n---\n", "README.md"),
])
def test_model_card_values(model, card, needle):
    (model / "README.md").write_text(card)
    assert needle in _error(model)


@pytest.mark.parametrize("gen,needle", [
    ({"top_k": 2.5}, "'top_k' must be a 32-bit integer"),
    ({"top_k": 2**40}, "'top_k' must be a 32-bit integer"),
    ({"temperature": 1e300}, "'temperature' must be a number within float32 range"),
    ({"temperature": True}, "'temperature' must be a number"),
    ({"sequence": ["a"]}, "'sequence' must be a string"),
])
def test_generation_config_values(model, gen, needle):
    (model / "generation_config.json").write_text(json.dumps(gen))
    assert needle in _error(model)


def test_manifest_nested_or_mistyped(tmp_path):
    (tmp_path / batch.MANIFEST_NAME).write_text(DEEP)
    assert "nested too deeply" in batch.Manifest(tmp_path).note
    doc = {"version": batch.MANIFEST_VERSION, "outputs": {"a.gguf": {"fingerprint": "x", "size": "big", "mtime_ns": 1}}}
    (tmp_path / batch.MANIFEST_NAME).write_text(json.dumps(doc))
    assert batch.Manifest(tmp_path).outputs == {}  # the mistyped record is re-checked, not trusted


def test_jsonio_depth_and_size(tmp_path):
    assert jsonio.loads("[" * jsonio.MAX_DEPTH + "]" * jsonio.MAX_DEPTH, "x") is not None
    with pytest.raises(InputError, match="x: JSON nested too deeply"):
        jsonio.loads("[" * (jsonio.MAX_DEPTH + 1) + "]" * (jsonio.MAX_DEPTH + 1), "x")
    p = tmp_path / "big.json"
    p.write_text(" " * 101 + "{}")
    with pytest.raises(InputError, match="big.json: 103 bytes, more than the 100"):
        jsonio.read_json(p, max_bytes=100)


# ------------------------------------------------------------------ pathological --tensor-type regexes

NAMES = [f"blk.{i}.{w}.weight" for i in range(4) for w in ("attn_q", "attn_k", "ffn_down")] + ["token_embd.weight"]


@pytest.mark.parametrize("pattern", [
    r"blk\.[0-9]+\.attn_q", r"(blk\.(1|2)\.)?ffn", r"(\.\d+)*\.attn", r"(attn|ffn)+_", r"(a+)+", r"k{1,2}",
    r"(blk)\.\d\.\1", r"(?:q|k|down)\.w+", r"(_.)*\.", r"a**",
])
def test_guarded_patterns_match_as_before(pattern):
    # flagged or not, the matches are Python re's, as they were before the guard
    import re

    from kquant.plan.overrides import ecma_to_python

    rx = re.compile(ecma_to_python(pattern), re.ASCII)
    (got, _), = match_names([(pattern, QType.Q4_0)], NAMES)
    assert [bool(got.search(n)) for n in NAMES] == [bool(rx.search(n)) for n in NAMES]


def test_pathological_pattern_bounded(monkeypatch):
    import kquant.plan.overrides as overrides

    monkeypatch.setattr(overrides, "MATCH_SECONDS", 1.0)
    with pytest.raises(InputError, match=r"'\(\(\.\+\)\+\)\+#' did not finish matching the tensor names in 1 s"):
        match_names([("((.+)+)+#", QType.Q4_0)], ["blk.10.attn_q.weight_and_a_long_tail"] * 3)


# ------------------------------------------------------------------ fuzzing the values of the JSON files

HOSTILE = st.one_of(
    st.sampled_from([None, True, False, 0, -1, 1, 2**31, 2**63, 10**30, -(10**30), 0.0, -0.5, 1e308, -1e308, 1e-320,
                     float("nan"), float("inf"), "", "hot", "llama3", "linear", "yarn", "default", [], [0], ["a", "b"],
                     [[1, 2]], {}, {"a": 1}, {"type": "Sequence"}, {"id": 1}, "x" * 5000]),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.integers(min_value=70, max_value=400).map(lambda n: "[" * n + "1" + "]" * n),  # deep nesting (as raw JSON)
)


def _paths(doc, prefix=(), limit=400):
    """Key / index paths into a JSON document (lists sampled at their ends)."""
    out = [prefix] if prefix else []
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, prefix + (k,), limit)
    elif isinstance(doc, list):
        for i in sorted({0, len(doc) - 1} & set(range(len(doc)))):
            out += _paths(doc[i], prefix + (i,), limit)
    return out[:limit]


def _dumps(doc) -> str:
    """JSON text; a string of brackets marked as raw nesting is spliced in unquoted."""
    text = json.dumps(doc)
    return text.replace('"[[[', "[[[").replace(']]]"', "]]]")


def _mutate(doc, path, value, delete: bool):
    doc = copy.deepcopy(doc)
    if not path:
        return value
    node = doc
    try:
        for k in path[:-1]:
            node = node[k]
        node[path[-1]]  # noqa: B018 (the path still exists after the mutations before)
    except (KeyError, IndexError, TypeError):
        return doc
    if not isinstance(node, (dict, list)):
        return doc
    if delete and isinstance(node, dict):
        node.pop(path[-1], None)
    else:
        node[path[-1]] = value
    return doc


def _mutations(base, extra_keys=()):
    paths = _paths(base) + [(k,) for k in extra_keys]
    return st.lists(st.tuples(st.sampled_from(paths), HOSTILE, st.booleans()), min_size=1, max_size=3)


def _check(folder: Path, **kw) -> None:
    vocab_special.clear_tokenizer_cache()
    try:
        load_spec(folder, **kw)
    except KquantError as e:
        assert "\n" not in str(e), str(e)
    # anything else propagates: the fuzz case fails with the exception and its traceback


@pytest.fixture(scope="module")
def fuzz_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    spm = root / "spm"
    shutil.copytree(TINY, spm)
    (spm / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": 1, "eos_token_id": [2, 3], "do_sample": True, "temperature": 0.6, "top_p": 0.9, "top_k": 40,
         "repetition_penalty": 1.1, "min_p": 0.05}))
    bpe = root / "bpe"
    shutil.copytree(TINY, bpe)
    (bpe / "tokenizer.model").unlink()
    (bpe / "tokenizer.json").write_text(_bpe_tokenizer_json())
    (bpe / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
         "chat_template": [{"name": "default", "template": "{{ m }}"}, {"name": "tool_use", "template": "{{ t }}"}]}))
    load_spec(spm)  # both bases convert cleanly
    load_spec(bpe, tokenizer_pre="gpt-2")
    return spm, bpe


# KQUANT_FUZZ_EXAMPLES=2000 for a deeper, randomized run; the default keeps the suite fast and repeatable
_N = int(os.environ.get("KQUANT_FUZZ_EXAMPLES", "0"))
FUZZ = settings(max_examples=_N or 40, deadline=None, derandomize=not _N, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
CONFIG_EXTRA = ("rope_scaling", "head_dim", "num_key_value_heads", "sliding_window", "num_local_experts",
                "partial_rotary_factor", "original_max_position_embeddings", "_name_or_path", "vocab_size_per_layer_input",
                "text_config", "rope_parameters")
LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 8192}


def _fuzz_file(folder: Path, fname: str, base, muts, **kw) -> None:
    p = folder / fname
    doc = base
    for path, value, delete in muts:
        doc = _mutate(doc, path, value, delete)
    p.write_text(_dumps(doc))
    try:
        _check(folder, **kw)
    finally:
        p.write_text(json.dumps(base))


def test_fuzz_config_values(fuzz_models):
    spm, _ = fuzz_models
    base = {**json.loads((TINY / "config.json").read_text()), "rope_scaling": LLAMA3}

    @FUZZ
    @given(_mutations(base, CONFIG_EXTRA))
    def run(muts):
        _fuzz_file(spm, "config.json", base, muts)

    run()


def test_fuzz_generation_config_values(fuzz_models):
    spm, _ = fuzz_models
    base = json.loads((spm / "generation_config.json").read_text())

    @FUZZ
    @given(_mutations(base, ("sequence", "mirostat", "mirostat_eta", "penalty_last_n", "xtc_threshold")))
    def run(muts):
        _fuzz_file(spm, "generation_config.json", base, muts, vocab=False)

    run()


@pytest.mark.parametrize("fname", ["tokenizer.json", "tokenizer_config.json"])
def test_fuzz_tokenizer_values(fuzz_models, fname):
    _, bpe = fuzz_models
    base = json.loads((bpe / fname).read_text())

    @FUZZ
    @given(_mutations(base, ("added_tokens", "normalizer", "post_processor", "add_bos_token", "chat_template")))
    def run(muts):
        _fuzz_file(bpe, fname, base, muts, tokenizer_pre="gpt-2")

    run()


def test_negative_special_token_id(model):
    edit_json(model / "config.json", bos_token_id=-1)
    assert "config.json: 'bos_token_id': invalid value for special token type bos: -1" in _error(model)
