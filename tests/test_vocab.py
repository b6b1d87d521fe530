"""kquant.vocab: tokenizer files -> GGUF vocabulary keys, checked against llama.cpp.

Fixtures (fixtures/tokenizers/, rebuilt from llama.cpp's ggml-vocab-*.gguf by
scripts/make_tokenizer_fixtures.py) are first shown faithful (pre-tokenizer hashes, llama.cpp's
.inp/.out test vectors, same vocabulary as the GGUF). With KQUANT_REFCONV_PYTHON set,
`test_matches_convert_hf_to_gguf_vocab` runs convert_hf_to_gguf.py --vocab-only on tokenizer
variants and requires the same tokenizer.* keys, in the same order, with equal types and values.
"""

from __future__ import annotations

import gc
import gzip
import json
import shutil
import weakref
from pathlib import Path

import pytest

from oracle import refpipeline
from kquant.io.gguf_kv import KVRecorder
from kquant.models import family
from kquant.models.hparams import to_hparams
from kquant.errors import InputError, UnsupportedError
from test_arch import kv_equal, read_gguf  # noqa: E402  (tests/ is on sys.path under pytest)

from kquant.io import jsonio
from kquant.io.gguf_kv import StringArray
from kquant.vocab import (
    CHKTXT, HFTokenizer, SpecialVocab, bpe, create_vocab_sentencepiece, read_spm_model, special, vocab_base_pre,
)

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "fixtures" / "tokenizers"
LLAMA_CPP = refpipeline.llama_cpp_dir() or refpipeline.REFCONV_DIR / "llama.cpp"  # scripts/setup_refconv.sh
VOCABS = LLAMA_CPP / "models"
REFCONV_PYTHON = refpipeline.refconv_python()
LLAMA_BPE_HASH = "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5"
QWEN2_HASH = "e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea"
_UNPACKED: dict[str, Path] = {}


@pytest.fixture(scope="session")
def tokdir(tmp_path_factory):
    """tokdir(name) -> a fresh copy of the unpacked fixture tokenizer folder."""
    cache = tmp_path_factory.mktemp("tok")
    work = tmp_path_factory.mktemp("tokwork")
    n = iter(range(10**6))

    def get(name: str, copy: bool = True) -> Path:
        if name not in _UNPACKED:
            d = cache / name
            d.mkdir()
            for p in (FIXTURES / name).iterdir():
                if p.suffix == ".gz":
                    (d / p.stem).write_bytes(gzip.decompress(p.read_bytes()))
                else:
                    shutil.copy(p, d / p.name)
            _UNPACKED[name] = d
        if not copy:
            return _UNPACKED[name]
        dst = work / str(next(n)) / name
        shutil.copytree(_UNPACKED[name], dst)
        return dst

    return get


def vectors(name: str) -> list[tuple[str, list[int]]]:
    inp = (VOCABS / f"ggml-vocab-{name}.gguf.inp").read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")[:-1]
    out = (VOCABS / f"ggml-vocab-{name}.gguf.out").read_text(encoding="utf-8").split("\n")[:-1]
    return [(t, [int(x) for x in o.split()]) for t, o in zip(inp, out)]


_GGUF_FIELDS: dict[Path, dict] = {}


def gguf_tokenizer_fields(path: Path) -> dict:
    if path not in _GGUF_FIELDS:
        kv, _ = read_gguf(path)
        _GGUF_FIELDS[path] = {k: v for k, _, _, v in kv if k.startswith("tokenizer.")}
    return _GGUF_FIELDS[path]


needs_vocabs = pytest.mark.skipif(not VOCABS.is_dir(), reason=f"{VOCABS} (llama.cpp test vocabularies) not present")


def hp_for(model_type: str, vocab_size: int, **kw) -> dict:
    cfg = {"architectures": ["X"], "model_type": model_type, "vocab_size": vocab_size, "hidden_size": 64,
           "intermediate_size": 128, "num_hidden_layers": 1, "num_attention_heads": 4, **kw}
    return to_hparams(cfg, Path("config.json"))


# the vocabulary recipes exercised here -> a family that uses it
RECIPE_FAMILY = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "default": "Qwen3MoeForCausalLM",
                 "gemma": "GemmaForCausalLM", "gemma2": "Gemma2ForCausalLM", "gemma3": "Gemma3ForCausalLM",
                 "phi3": "Phi3ForCausalLM"}


def set_vocab(recipe: str, rec: KVRecorder, folder: Path, hp: dict, tokenizer_pre=None) -> None:
    """The family's set_vocab hook, writing into `rec`."""
    family(RECIPE_FAMILY[recipe])(hp, kv=rec, tok_folder=folder).write_vocab(tokenizer_pre)


def vocab_kv(folder: Path, recipe: str, model_type: str, vocab_size: int, tokenizer_pre=None, arch="llama") -> dict:
    rec = KVRecorder(arch)
    set_vocab(recipe, rec, folder, hp_for(model_type, vocab_size), tokenizer_pre)
    return {k: v for k, _, v in rec.entries()}


# ---------------------------------------------------------------------------------------------
# the fixtures are faithful


@needs_vocabs
@pytest.mark.parametrize("name,expected", [("llama-bpe", ("llama-bpe", LLAMA_BPE_HASH)), ("qwen2", ("qwen2", QWEN2_HASH))])
def test_fixture_pre_tokenizer_hash(tokdir, name, expected):
    model_type = {"llama-bpe": "llama", "qwen2": "qwen2"}[name]
    assert vocab_base_pre(HFTokenizer(tokdir(name, copy=False), model_type)) == expected


@needs_vocabs
@pytest.mark.parametrize("name,model_type", [("llama-bpe", "llama"), ("qwen2", "qwen2"), ("llama-spm", "llama"), ("phi-3", "phi3")])
def test_fixture_encodes_llama_cpp_vectors(tokdir, name, model_type):
    tok = HFTokenizer(tokdir(name, copy=False), model_type)
    bad = [(t, ids) for t, ids in vectors(name) if tok.encode(t, add_special_tokens=False) != ids]
    assert not bad


@needs_vocabs
@pytest.mark.parametrize("name", ["llama-spm", "phi-3"])
def test_spm_reader_matches_gguf_vocab(tokdir, name):
    spm = read_spm_model(tokdir(name, copy=False) / "tokenizer.model")
    ref = gguf_tokenizer_fields(VOCABS / f"ggml-vocab-{name}.gguf")
    assert spm.model_type == 2 and len(spm.pieces) == 32000
    assert [p for p, _, _ in spm.pieces] == ref["tokenizer.ggml.tokens"][:32000]
    skip = 3 if name == "phi-3" else 0  # the phi-3 GGUF overwrote ids 0-2 with added-token values
    assert [s for _, s, _ in spm.pieces][skip:] == ref["tokenizer.ggml.scores"][skip:32000]
    assert [t for _, _, t in spm.pieces][skip:] == ref["tokenizer.ggml.token_type"][skip:32000]


@needs_vocabs
def test_llama_spm_vocab_equals_gguf(tokdir):
    kv = vocab_kv(tokdir("llama-spm", copy=False), "llama", "llama", 32000)
    ref = gguf_tokenizer_fields(VOCABS / "ggml-vocab-llama-spm.gguf")
    for k in ("tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.tokens", "tokenizer.ggml.bos_token_id",
              "tokenizer.ggml.eos_token_id", "tokenizer.ggml.unknown_token_id", "tokenizer.ggml.add_bos_token",
              "tokenizer.ggml.add_eos_token"):
        assert kv[k] == ref[k], k
    # ids 0-2 are in tokenizer_config's added_tokens_decoder (special): today's converter gives them
    # CONTROL / -1000, the older one that wrote ggml-vocab-llama-spm.gguf kept the SentencePiece values
    assert kv["tokenizer.ggml.scores"][3:] == ref["tokenizer.ggml.scores"][3:]
    assert kv["tokenizer.ggml.token_type"][3:] == ref["tokenizer.ggml.token_type"][3:]
    assert kv["tokenizer.ggml.token_type"][:3] == [3, 3, 3] and kv["tokenizer.ggml.scores"][:3] == [-1000.0] * 3


@needs_vocabs
@pytest.mark.parametrize("name,model_type,n_vocab", [("llama-bpe", "llama", 128256), ("qwen2", "qwen2", 151936)])
def test_bpe_vocab_equals_gguf(tokdir, name, model_type, n_vocab):
    recipe = "llama" if name == "llama-bpe" else "qwen2"
    kv = vocab_kv(tokdir(name, copy=False), recipe, model_type, n_vocab)
    ref = gguf_tokenizer_fields(VOCABS / f"ggml-vocab-{name}.gguf")
    assert kv["tokenizer.ggml.model"] == "gpt2" and kv["tokenizer.ggml.pre"] == ref["tokenizer.ggml.pre"]
    assert kv["tokenizer.ggml.tokens"] == ref["tokenizer.ggml.tokens"]
    assert kv["tokenizer.ggml.merges"] == ref["tokenizer.ggml.merges"]
    # the old converter that made ggml-vocab-qwen2.gguf typed [PADn] as USER_DEFINED; now UNUSED
    assert [5 if t == 4 else t for t in ref["tokenizer.ggml.token_type"]] == kv["tokenizer.ggml.token_type"]
    assert kv["tokenizer.ggml.eos_token_id"] == ref["tokenizer.ggml.eos_token_id"]


@needs_vocabs
@pytest.mark.parametrize("name,model_type", [("llama-bpe", "llama"), ("qwen2", "qwen2"), ("gpt-2", "gpt2")])
def test_lean_tokenizer_encodes_like_the_whole_one(tokdir, name, model_type):
    """HFTokenizer(only=texts) keeps just the merges those texts can use, and encodes them as the
    tokenizer with every merge does (llama.cpp's test vectors: emoji, CJK, digits, whitespace runs)."""
    d = tokdir(name, copy=False)
    texts = [t for t, _ in vectors(name)] + [CHKTXT]
    whole, lean = HFTokenizer(d, model_type), HFTokenizer(d, model_type, only=texts)
    assert [lean.encode(t) for t in texts] == [whole.encode(t) for t in texts]
    assert [lean.encode(t, add_special_tokens=False) for t in texts] == [whole.encode(t, add_special_tokens=False) for t in texts]
    n_whole, n_lean = (len(json.loads(t.tok.to_str())["model"]["merges"]) for t in (whole, lean))
    assert 0 < n_lean < n_whole // 20
    with pytest.raises(ValueError, match="only"):
        lean.encode("a text it was not built for")


@pytest.mark.parametrize("name,model_type,pre", [("gpt-oss", "gpt_oss", "gpt-4o"), ("deepseek-v3", "deepseek_v3", "deepseek-v3")])
def test_lean_tokenizer_hash(tokdir, name, model_type, pre):
    d = tokdir(name, copy=False)
    lean = vocab_base_pre(HFTokenizer(d, model_type, only=(CHKTXT,)))
    assert lean[0] == pre and lean == vocab_base_pre(HFTokenizer(d, model_type))


@pytest.mark.parametrize("merges", [["#version: 0.2", "a b", "ab c"], [["a", "b"], ["b", "c"]], ["a b c"], ["a b", "a  b"],
                                    [["a", "x"]], [["a", "c"]]])
def test_lean_tokenizer_refuses_what_the_whole_one_refuses(tmp_path, merges):
    doc = {"version": "1.0", "model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2, "c": 3, "bc": 4, "abc": 5},
                                       "merges": merges}}
    (tmp_path / "tokenizer.json").write_text(json.dumps(doc))
    outcomes = []
    for only in (None, ["abc", "cab"]):
        special.clear_tokenizer_cache()
        try:
            tok = HFTokenizer(tmp_path, "x", only=only)
            outcomes.append([tok.encode(t) for t in ("abc", "cab")])
        except InputError as e:
            outcomes.append("not a valid tokenizer.json" in str(e))
    assert outcomes[0] == outcomes[1]


def test_vocab_loading_leaves_nothing_behind(tokdir, monkeypatch):
    """set_vocab of o200k (446k merges): every `tokenizers` object it builds is gone when it returns,
    none holds more than a few merges, the parsed tokenizer.json is forgotten, and the token and
    merge arrays are kept encoded (memory, not time: ~250 MB of merges in `tokenizers` otherwise)."""
    real, built = bpe.Tokenizer, []

    class Spy:
        @staticmethod
        def from_file(path):
            t = real.from_file(path)
            built.append((weakref.ref(t), len(special.read_tokenizer_json(Path(path))["model"]["merges"])))
            return t

        @staticmethod
        def from_str(text):
            t = real.from_str(text)
            built.append((weakref.ref(t), len(json.loads(text)["model"]["merges"])))
            return t

    monkeypatch.setattr(bpe, "Tokenizer", Spy)
    special.clear_vocab_caches()
    rec = KVRecorder("x")
    set_vocab("default", rec, tokdir("gpt-oss", copy=False), hp_for("qwen3_moe", 201088))
    gc.collect()
    assert built and all(ref() is None for ref, _ in built)
    assert max(n for _, n in built) < 5000
    assert not special._JSON_CACHE
    tokens, merges = rec.get("tokenizer.ggml.tokens"), rec.get("tokenizer.ggml.merges")
    assert isinstance(tokens, StringArray) and len(tokens) == 201088
    assert isinstance(merges, StringArray) and len(merges) == 446189


def test_vocab_built_once_per_content(tokdir, monkeypatch):
    """A tokenizer's vocabulary and merges are built once per content of its files in a process: a copy
    elsewhere, or a model type with the same default tokenizer class, builds no `tokenizers` object and
    gives the same keys; another tokenizer_config.json, vocab_size or pre-tokenizer override gives what
    building gives."""
    real, built = bpe.Tokenizer, []

    class Spy:
        @staticmethod
        def from_str(text):
            built.append(1)
            return real.from_str(text)

    monkeypatch.setattr(bpe, "Tokenizer", Spy)
    special.clear_vocab_caches()
    a, b = tokdir("gpt-2"), tokdir("gpt-2")  # (50k tokens: each build below costs a fraction of a 150k one's)
    first = vocab_kv(a, "qwen2", "qwen2", 50257)
    n = len(built)
    assert n and vocab_kv(b, "qwen2", "qwen2", 50257) == first and len(built) == n
    assert vocab_kv(b, "qwen2", "qwen2", 50257, tokenizer_pre="qwen35")["tokenizer.ggml.pre"] == "qwen35" and len(built) == n
    # model_type changes only the tokenizer class AutoTokenizer defaults to: qwen3's is qwen2's, no build;
    # gpt2's is another (named by this tokenizer_config.json, so the same vocabulary), built again
    assert vocab_kv(b, "qwen2", "qwen3", 50257) == first and len(built) == n
    assert vocab_kv(b, "qwen2", "gpt2", 50257) == first and len(built) == n + 2
    n = len(built)
    variants = []
    tc = json.loads((b / "tokenizer_config.json").read_text())
    (b / "tokenizer_config.json").write_text(json.dumps({**tc, "added_tokens_decoder": {
        "50256": {"content": "<|endoftext|>", "special": False, "normalized": False}}}))
    variants.append(lambda: vocab_kv(b, "qwen2", "qwen2", 50257))
    variants.append(lambda: vocab_kv(a, "qwen2", "qwen2", 50304))
    for make in variants:
        special.clear_vocab_caches()
        want = make()
        m = len(built)
        special.clear_vocab_caches()
        vocab_kv(a, "qwen2", "qwen2", 50257)  # the cache holds another entry first
        got = make()
        assert got == want and len(built) == m + 4  # a build each, both uncached
    assert want != first  # 50304: padded
    # a pre-tokenizer override first, then the hash: computed then
    special.clear_vocab_caches()
    assert vocab_kv(a, "qwen2", "qwen2", 50257, tokenizer_pre="qwen35")["tokenizer.ggml.pre"] == "qwen35"
    assert vocab_kv(a, "qwen2", "qwen2", 50257) == first
    special.clear_vocab_caches()


@pytest.mark.parametrize("merges,lazy", [
    (["a b", "ab c"], True), ([["a", "b"], ["ab", "c"]], True), ([], False),
    (["a b", ["ab", "c"]], False), ([["a", "b", "c"]], False), ([1], False),
])
def test_merges_read_lazily(tmp_path, merges, lazy):
    """model.merges stays text (a LazyArray equal to the parsed list) when it has one of the two
    shapes; anything else takes the whole-tree path and its error."""
    p = tmp_path / "tokenizer.json"
    doc = {"version": "1.0", "model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2, "c": 3}, "merges": merges}, "x": [1]}
    p.write_text(json.dumps(doc, indent=1))
    special.clear_tokenizer_cache()
    if not lazy and merges:
        with pytest.raises(InputError, match="model.merges"):
            special.read_tokenizer_json(p)
        return
    tj = special.read_tokenizer_json(p)
    special.clear_tokenizer_cache()
    got = tj["model"]["merges"]
    assert isinstance(got, jsonio.LazyArray) == lazy
    assert list(got) == merges and len(got) == len(merges) and {**tj, "model": {**tj["model"], "merges": merges}} == doc
    if merges:
        assert got[0] == merges[0] and got[-1] == merges[-1]


@pytest.mark.parametrize("n", [1, 2, jsonio.LazyArray.CHUNK - 1, jsonio.LazyArray.CHUNK, jsonio.LazyArray.CHUNK + 1,
                               2 * jsonio.LazyArray.CHUNK, 2 * jsonio.LazyArray.CHUNK + 3])
@pytest.mark.parametrize("pairs", [False, True])
def test_lazy_merges_at_chunk_edges(tmp_path, n, pairs):
    """LazyArray's chunks (one regular expression match of CHUNK elements each) around the chunk size,
    with JSON escapes and whitespace in and between the elements: the same elements as json.loads."""
    odd = ['a\\"b', "\u0120x", "\\", "\ud800", "/\t", "\u00e9\u4e2d", "\U0001f999".encode().decode("unicode_escape")]
    parts = [f"t{i}{odd[i % len(odd)]}" for i in range(n + 1)]
    merges = [[parts[i], parts[i + 1]] for i in range(n)] if pairs else [f"{parts[i]} {parts[i + 1]}" for i in range(n)]
    seps = [", ", ",\n   ", "\t,\r\n", ","]
    inner = "".join(json.dumps(m, indent=1 if i % 3 == 0 else None) + (seps[i % len(seps)] if i < n - 1 else "")
                    for i, m in enumerate(merges))
    p = tmp_path / "tokenizer.json"
    doc = '{"model": {"type": "BPE", "merges": [ \n%s \n], "vocab": {}}, "x": 1}'
    p.write_text(doc % inner)
    special.clear_tokenizer_cache()
    got = special.read_tokenizer_json(p)["model"]["merges"]
    special.clear_tokenizer_cache()
    assert isinstance(got, jsonio.LazyArray) and len(got) == n
    assert list(got) == merges and [x for c in got.chunks() for x in c] == merges
    assert got[0] == merges[0] and got[-1] == merges[-1] and got[n // 2] == merges[n // 2]
    p.write_text(doc % (inner + ","))  # a trailing comma
    with pytest.raises(InputError, match="invalid JSON"):
        special.read_tokenizer_json(p)
    special.clear_tokenizer_cache()


@pytest.mark.parametrize("name", ["qwen2", "deepseek-v3"])  # [a, b] pairs; "a b" strings
def test_usable_merges_fast_path_equals_one_by_one(tokdir, name):
    """_usable_merges (a chunk at a time) keeps the same merges as the merge-by-merge reference loop, on
    the real tokenizers, with words holding NULs and every 500th merge's own text."""
    d = tokdir(name, copy=False)
    special.clear_tokenizer_cache()
    tj = special.read_tokenizer_json(d / "tokenizer.json")
    merges, vocab = tj["model"]["merges"], tj["model"]["vocab"]
    words = [CHKTXT, "a\x00b", "\x00"] + ["".join(m if isinstance(m, list) else m.split(" ")) for m in list(merges)[::500]]
    got = bpe._usable_merges(d, vocab, merges, words)
    assert got == bpe._usable_merges_checked(d, vocab, merges, "\x00".join(words)) and len(got) > len(merges) // 500
    special.clear_tokenizer_cache()


def test_substring_test_equals_contains():
    words = ["abc", "", "a\x00b", "x" * 300, "é🦙"]
    joined = "\x00".join(words)
    probes = ["", "a", "ab", "abc", "abcd", "b\x00a", "c\x00", "\x00", "x" * 256, "x" * 257, "x" * 300, "x" * 301, "🦙", "é🦙",
              "q"]
    for chunk in ([p for p in probes if len(p) <= 256 and "\x00" not in p], probes):
        test = bpe._substring_test(joined)(chunk)
        assert [test(p) for p in chunk] == [p in joined for p in chunk]
    many = "\x00".join("w%dxyzxyzxyzxyz" % i for i in range(100000))  # too many substrings for the set: the search
    assert [bpe._substring_test(many)(["w99999x"])(p) for p in ("w99999x", "w100000")] == [True, False]


def test_string_array_chunks():
    items = [chr(0x61 + i % 26) * (i % 7) + "\udc80" * (i % 2) for i in range(2 * StringArray.CHUNK + 5)]
    assert list(StringArray(items)) == items and list(StringArray(iter(items))) == items
    with pytest.raises(ValueError, match="'\\\\ud800' is not encodable"):
        StringArray(items + ["\ud800"])


def test_string_array_encodes_as_a_list():
    from kquant.io.gguf import GGUFStreamWriter
    import io
    items = ["a", "", "Ġthe", "🦙", "\udcff"]
    out = []
    for value in (items, StringArray(items)):
        f = io.BytesIO()
        w = GGUFStreamWriter(f)
        w.add_kv("k", 9, value, 8)  # ARRAY of STRING
        w.write_header()
        w.finish()
        out.append(f.getvalue())
    assert out[0] == out[1] and list(StringArray(items)) == items and StringArray(items) == items
    with pytest.raises(ValueError, match="not encodable"):
        StringArray(["\ud800"])


# ---------------------------------------------------------------------------------------------
# behaviour and errors


def test_tokenizer_pre_override_and_unknown_hash(tokdir):
    d = tokdir("llama-bpe")
    tj = json.loads((d / "tokenizer.json").read_text())
    tj["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "\\s+|\\S+"  # a pre-tokenizer llama.cpp does not know
    (d / "tokenizer.json").write_text(json.dumps(tj))
    with pytest.raises(UnsupportedError, match="pass --tokenizer-pre NAME, one of: .*llama-bpe") as e:
        vocab_kv(d, "llama", "llama", 128256)
    assert "\n" not in str(e.value)
    assert vocab_kv(d, "llama", "llama", 128256, tokenizer_pre="llama-bpe")["tokenizer.ggml.pre"] == "llama-bpe"
    # the override also wins over a known hash
    assert vocab_kv(tokdir("qwen2", copy=False), "qwen2", "qwen2", 151936, tokenizer_pre="qwen35")["tokenizer.ggml.pre"] == "qwen35"


def test_chat_template_sources(tokdir):
    d = tokdir("llama-spm")
    (d / "chat_template.jinja").write_text("{{ messages }}")
    assert vocab_kv(d, "llama", "llama", 32000)["tokenizer.chat_template"] == "{{ messages }}"
    tc = json.loads((d / "tokenizer_config.json").read_text())
    tc["chat_template"] = "from config"
    (d / "tokenizer_config.json").write_text(json.dumps(tc))
    assert vocab_kv(d, "llama", "llama", 32000)["tokenizer.chat_template"] == "from config"
    tc["chat_template"] = [{"name": "default", "template": "A"}, {"name": "tool use", "template": "B"}]
    (d / "tokenizer_config.json").write_text(json.dumps(tc))
    kv = vocab_kv(d, "llama", "llama", 32000)
    assert kv["tokenizer.chat_template"] == "A" and kv["tokenizer.chat_template.tool_use"] == "B"
    assert kv["tokenizer.chat_templates"] == ["tool_use"]


def test_spm_added_tokens_and_padding(tokdir):
    d = tokdir("llama-spm")
    (d / "added_tokens.json").write_text(json.dumps({"<extra>": 32000, "<far>": 40000}))
    tc = json.loads((d / "tokenizer_config.json").read_text())
    tc["added_tokens_decoder"]["32001"] = {"content": "\u2581user\u2581word", "special": False}
    tc["added_tokens_decoder"]["32002"] = {"content": "<|im_end|>", "special": False}
    (d / "tokenizer_config.json").write_text(json.dumps(tc))
    tokens, scores, types = create_vocab_sentencepiece(d, hp_for("llama", 32004))
    assert tokens[32000:] == ["<extra>", " user word", "<|im_end|>", "[PAD32003]"]
    assert types[32000:] == [4, 4, 3, 5] and scores[32000:] == [-1000.0, -1000.0, -1000.0, -10000.0]
    assert types[:4] == [3, 3, 3, 6]  # <unk>, <s>, </s> are special in added_tokens_decoder


def test_special_vocab_sources(tokdir):
    d = tokdir("qwen2")
    (d / "config.json").write_text(json.dumps({"bos_token_id": 151643, "eos_token_id": [151645], "pad_token_id": 7}))
    sv = SpecialVocab(d, load_merges=True)
    # tokenizer_config first (eos, pad from added tokens), then config.json fills bos; lists are ignored
    assert sv.special_token_ids == {"eos": 151643, "pad": 151643, "bos": 151643}
    assert sv.add_special_token == {"bos": False, "eos": False}  # ByteLevel post-processor
    assert sv.merges[0] == "Ġ Ġ" and len(sv.merges) == 151387


@pytest.mark.parametrize("fname,content,err,match", [
    ("tokenizer.json", "{not json", InputError, "tokenizer.json: invalid JSON"),
    ("tokenizer.json", '{"model": {"type": "BPE"}, "added_tokens": []}', InputError, "tokenizer.json: not a valid tokenizer.json"),
    ("tokenizer_config.json", "[]", InputError, "tokenizer_config.json: expected a JSON object"),
    ("tokenizer_config.json", '{"added_tokens_decoder": {"x": {}}}', InputError, "added_tokens_decoder key 'x'"),
])
def test_malformed_bpe_files(tokdir, fname, content, err, match):
    d = tokdir("qwen2")
    (d / fname).write_text(content)
    with pytest.raises(err, match=match) as e:
        vocab_kv(d, "qwen2", "qwen2", 151936)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("content,match", [
    (b"\x0a\x09\x0a\x03abc", "truncated protobuf"),
    (b"hello world", "not a SentencePiece model|truncated"),
    (b"", "no pieces"),
    (b"\x0a\x05\x0a\x03abc" + b"\x0a\x05\x0a\x03abc" + b"\x0a\x07\x0a\x03unk\x18\x02", "defined twice"),
    (b"\x0a\x05\x0a\x03abc", "exactly one unknown piece"),
])
def test_malformed_tokenizer_model(tokdir, content, match):
    d = tokdir("llama-spm")
    (d / "tokenizer.model").write_bytes(content)
    with pytest.raises(InputError, match=match):
        vocab_kv(d, "llama", "llama", 32000)


def test_spm_only_tokenizer_json_is_refused(tokdir):
    d = tokdir("llama-spm")
    (d / "tokenizer.model").unlink()  # tokenizer.json is a byte-fallback BPE: upstream's LlamaHfVocab path
    with pytest.raises(UnsupportedError, match="SentencePiece-style tokenizer.json"):
        vocab_kv(d, "llama", "llama", 32000)


def test_gemma_recipe_keys(tokdir):
    kv = vocab_kv(tokdir("llama-spm", copy=False), "gemma", "gemma", 32000, arch="gemma")
    keys = list(kv)
    assert keys[-2:] == ["tokenizer.ggml.eot_token_id", "tokenizer.ggml.add_space_prefix"]
    assert kv["tokenizer.ggml.eot_token_id"] == 107 and kv["tokenizer.ggml.add_space_prefix"] is False


# ---------------------------------------------------------------------------------------------
# against convert_hf_to_gguf.py --vocab-only


def _config(arch: str, model_type: str, vocab: int, **kw) -> dict:
    return {"architectures": [arch], "model_type": model_type, "hidden_size": 64, "intermediate_size": 96,
            "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": vocab,
            "max_position_embeddings": 2048, "rms_norm_eps": 1e-5, "head_dim": 16, **kw}


def _variant_user_tokens(d: Path) -> None:
    """Add a non-special, non-normalized added token and a normalized one (transformers round trip)."""
    tj = json.loads((d / "tokenizer.json").read_text())
    tc = json.loads((d / "tokenizer_config.json").read_text())
    for t in tj["added_tokens"]:
        if t["id"] == 128005:
            t.update(special=False, content="<user-tok>")
        if t["id"] == 128006:
            t.update(special=False, normalized=True, content=" hello world")
    for i, c in ((128005, "<user-tok>"), (128006, " hello world")):
        tc["added_tokens_decoder"][str(i)].update(content=c, special=False, normalized=(i == 128006))
    tc.pop("chat_template")
    (d / "tokenizer.json").write_text(json.dumps(tj))
    (d / "tokenizer_config.json").write_text(json.dumps(tc))
    (d / "chat_template.jinja").write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}")


def _variant_spm_extras(d: Path) -> None:
    (d / "added_tokens.json").write_text(json.dumps({"<extra>": 32000}))
    tc = json.loads((d / "tokenizer_config.json").read_text())
    tc["added_tokens_decoder"]["32001"] = {"content": "\u2581user\u2581word", "special": False}
    tc["added_tokens_decoder"]["32002"] = {"content": "<|im_end|>", "special": False}
    tc["add_eos_token"] = True
    tc["pad_token"] = "<unk>"
    (d / "tokenizer_config.json").write_text(json.dumps(tc))


# name: (fixture, config, recipe, variant)
VOCAB_CASES = {
    "llama-bpe": ("llama-bpe", _config("LlamaForCausalLM", "llama", 128256, bos_token_id=128000, eos_token_id=[128001, 128009]), "llama", None),
    "llama-bpe-user": ("llama-bpe", _config("LlamaForCausalLM", "llama", 128256), "llama", _variant_user_tokens),
    "llama-spm": ("llama-spm", _config("LlamaForCausalLM", "llama", 32000, bos_token_id=1, eos_token_id=2), "llama", None),
    "llama-spm-extras": ("llama-spm", _config("LlamaForCausalLM", "llama", 32004, pad_token_id=0), "llama", _variant_spm_extras),
    "codellama": ("llama-spm", _config("LlamaForCausalLM", "llama", 32016), "llama", None),
    "mistral": ("llama-spm", _config("MistralForCausalLM", "mistral", 32000), "llama", None),
    "qwen2": ("qwen2", _config("Qwen2ForCausalLM", "qwen2", 151936, eos_token_id=151645), "qwen2", None),
    "qwen3moe": ("qwen2", _config("Qwen3MoeForCausalLM", "qwen3_moe", 151936, num_experts=4, num_experts_per_tok=2), "default", None),
    "gemma": ("llama-spm", _config("GemmaForCausalLM", "gemma", 32000), "gemma", None),
    "gemma2": ("llama-spm", _config("Gemma2ForCausalLM", "gemma2", 32000), "gemma2", None),
    "gemma3": ("llama-spm", _config("Gemma3ForCausalLM", "gemma3_text", 32000), "gemma3", None),
    "gemma3-bpe": ("qwen2", _config("Gemma3ForCausalLM", "gemma3_text", 151936), "gemma3", None),
    "phi3": ("phi-3", _config("Phi3ForCausalLM", "phi3", 32064), "phi3", None),
}


def _ours(folder: Path, cfg: dict, recipe: str) -> list:
    rec = KVRecorder("x")
    set_vocab(recipe, rec, folder, to_hparams(cfg, folder / "config.json"))
    return rec.entries()


def _selected(request, test_name: str, cases) -> list[str]:
    """The parametrized cases of `test_name` this session will run (convert only those)."""
    sel = [i.callspec.params["name"] for i in request.session.items
           if getattr(i, "originalname", "") == test_name and hasattr(i, "callspec")]
    return [c for c in cases if c in sel]


@pytest.fixture(scope="module")
def vocab_reference(request, tmp_path_factory, tokdir):
    if not REFCONV_PYTHON:
        pytest.skip("set KQUANT_REFCONV_PYTHON to the reference venv's python (scripts/setup_refconv.sh)")
    root = tmp_path_factory.mktemp("vocabref")
    todo = _selected(request, "test_matches_convert_hf_to_gguf_vocab", VOCAB_CASES)
    folders = {}
    for name in todo:
        fix, cfg, _, variant = VOCAB_CASES[name]
        d = root / name
        shutil.copytree(tokdir(fix, copy=False), d)
        (d / "config.json").write_text(json.dumps(cfg))
        if variant:
            variant(d)
        folders[name] = d

    outs = {name: root / f"{name}.gguf" for name in todo}
    procs = refpipeline.convert_many([[folders[n], "--vocab-only", "--outfile", outs[n]] for n in todo])
    return folders, {n: (p, outs[n]) for n, p in zip(todo, procs)}


@pytest.mark.parametrize("name", sorted(VOCAB_CASES))
def test_matches_convert_hf_to_gguf_vocab(vocab_reference, name):
    folders, results = vocab_reference
    proc, out = results[name]
    assert proc.returncode == 0, proc.stderr[-3000:]
    kv, _ = read_gguf(out)
    keys = [e[0] for e in kv]
    ref = kv[keys.index("general.quantization_version") + 1:]
    ours = _ours(folders[name], VOCAB_CASES[name][1], VOCAB_CASES[name][2])
    assert [e[0] for e in ref] == [k for k, _, _ in ours]
    for (k, t_ref, _, v_ref), (_, t, v) in zip(ref, ours):
        assert t_ref == t, k
        assert kv_equal(t, v_ref, v), k
