"""Special tokens and the tokenizer side files: gguf-py vocab.py SpecialVocab, token types, strict readers.

Ports, from llama.cpp as vendored in llama-cpp-python 0.3.36: gguf-py/gguf/vocab.py SpecialVocab
(special token ids, add_*_token flags, merges, chat template), conversion/base.py
TextModel.does_token_look_special.
"""

from __future__ import annotations

import gc
import hashlib
from collections import OrderedDict
from contextlib import contextmanager
from itertools import chain
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..io.gguf_kv import TOK_MERGES, TOK_NORMALIZER_LOWERCASE, TOK_NORMALIZER_STRIP_ACCENTS, KVRecorder, StringArray
from ..io import jsonio

# gguf-py constants.py TokenType (== SentencePiece's ModelProto.SentencePiece.Type)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
SPIECE_UNDERLINE = "\u2581"

# Tokenizer files are bounded by the vocabulary config.json declares (itself checked against the
# embedding tensor) before they are parsed, so tokenizer memory stays proportional to the real
# vocabulary. Real ones are far inside: Qwen2.5 151k tokens in 7 MB, Gemma 3 262k in 33 MB (126
# bytes a token), Llama 3 280k merges for 128k tokens.
TOKENIZER_BASE_BYTES = 16 << 20
TOKENIZER_BYTES_PER_TOKEN = 256
MERGES_PER_TOKEN = 8
TOKENIZER_MAX_BYTES = TOKENIZER_BASE_BYTES + TOKENIZER_BYTES_PER_TOKEN * (1 << 20)  # with no vocab size known

@contextmanager
def gc_paused():
    """The cyclic garbage collector off while a vocabulary loads: its hundreds of thousands of small
    containers (JSON pairs, merge lists) are not garbage, yet each full collection they trigger walks
    the whole heap again (~25% of loading o200k's vocabulary). Restored on exit."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()



# ---------------------------------------------------------------------------------------------
# gguf-py vocab.py SpecialVocab


class SpecialVocab:
    """Special token ids, add_*_token flags, merges and chat template, found as gguf-py finds them."""

    def __init__(self, path: Path, load_merges: bool = False, special_token_types=None, n_vocab: int | None = None):
        self.special_token_ids: dict[str, int] = {}
        self.add_special_token: dict[str, bool] = {}
        self.n_vocab = n_vocab
        self.load_merges = load_merges
        self.merges: list[str] | StringArray = []
        self.chat_template = None
        self.normalizer_lowercase = None
        self.normalizer_strip_accents = None
        if special_token_types is not None:
            self.special_token_types = special_token_types
        else:
            self.special_token_types = ("bos", "eos", "unk", "sep", "pad", "cls", "mask")
        self._load(Path(path))

    def add_to_gguf(self, gw: KVRecorder) -> None:
        if self.merges:
            merges = self.merges
            if not isinstance(merges, StringArray):
                try:
                    merges = StringArray(merges)
                except ValueError as e:
                    raise InputError(f"merges: {e}") from None
            gw.add_array(TOK_MERGES, merges)
        for typ, tokid in self.special_token_ids.items():
            gw.add_special_token_id(typ, tokid)  # no handler (cls, prefix, ...): skipped upstream too
        for typ, value in self.add_special_token.items():
            gw.add_add_special_token(typ, value)
        if self.chat_template is not None:
            gw.add_chat_template(self.chat_template)
        if self.normalizer_lowercase is not None:
            gw.add_bool(TOK_NORMALIZER_LOWERCASE, self.normalizer_lowercase)
        if self.normalizer_strip_accents is not None:
            gw.add_bool(TOK_NORMALIZER_STRIP_ACCENTS, self.normalizer_strip_accents)

    def _load(self, path: Path) -> None:
        self._try_load_from_tokenizer_json(path)
        self._try_load_from_config_json(path)
        if self.load_merges and not self.merges:
            self._try_load_merges_txt(path)

    def _try_load_merges_txt(self, path: Path) -> bool:
        merges_file = path / "merges.txt"
        if not merges_file.is_file():
            return False
        lines = jsonio.read_text(merges_file, TOKENIZER_MAX_BYTES, "merges file").splitlines()  # bounded in check_tokenizer_files
        if lines and lines[0].strip().startswith("#"):
            lines = lines[1:]
        merges = []
        for line in lines:
            line = line.strip()
            if not line:
                continue
            parts = line.split(None, 3)
            if len(parts) != 2:
                continue  # upstream: "Entry malformed, ignoring"
            merges.append(f"{parts[0]} {parts[1]}")
        self.merges = merges
        return True

    def set_special_token(self, typ: str, tid: Any, where: str = "") -> None:
        if not isinstance(tid, int) or isinstance(tid, bool):
            return
        if tid < 0:
            raise InputError(f"{where or 'tokenizer'}: invalid value for special token type {typ}: {tid}")
        if self.n_vocab is None or tid < self.n_vocab:
            if typ in self.special_token_ids:
                return
            self.special_token_ids[typ] = tid

    def _parse_normalizer(self, normalizer: dict) -> None:
        normalizer_type = normalizer.get("type")
        if normalizer_type == "Lowercase":
            self.normalizer_lowercase = True
        elif normalizer_type == "StripAccents":
            self.normalizer_strip_accents = True
        elif normalizer_type == "BertNormalizer":
            if "lowercase" in normalizer:
                self.normalizer_lowercase = normalizer["lowercase"]
            if "strip_accents" in normalizer:
                self.normalizer_strip_accents = normalizer["strip_accents"]
        elif normalizer_type == "Sequence":
            for norm in normalizer.get("normalizers", []):
                self._parse_normalizer(norm)

    def _try_load_from_tokenizer_json(self, path: Path) -> bool:
        tokenizer = None
        tokenizer_file = path / "tokenizer.json"
        if tokenizer_file.is_file():
            tokenizer = read_tokenizer_json(tokenizer_file)
            if self.load_merges:
                merges = tokenizer.get("model", {}).get("merges")
                if isinstance(merges, (list, jsonio.LazyArray)) and len(merges):
                    # kept encoded (StringArray): o200k's 446k merges as Python strings take ~40 MB
                    first = merges[0]
                    if not (isinstance(first, str) or isinstance(first, list) and len(first) == 2 and isinstance(first[0], str)):
                        raise InputError(f"{tokenizer_file}: unknown format of model.merges")
                    key = content_key(tokenizer_file)
                    if key not in _MERGES_CACHE:
                        try:
                            cache_put(_MERGES_CACHE, key, StringArray(chain.from_iterable(map(
                                _merge_strings, merges.chunks() if isinstance(merges, jsonio.LazyArray) else (merges,)))))
                        except ValueError as e:
                            raise InputError(f"{tokenizer_file}: model.merges: {e}") from None
                    _MERGES_CACHE.move_to_end(key)
                    self.merges = _MERGES_CACHE[key]
            if normalizer := tokenizer.get("normalizer"):
                self._parse_normalizer(normalizer)
            added_tokens = tokenizer.get("added_tokens", {})
        else:
            added_tokens = {}
        tokenizer_config = None
        tokenizer_config_file = path / "tokenizer_config.json"
        if tokenizer_config_file.is_file():
            tokenizer_config = read_object(tokenizer_config_file)
        if tokenizer:
            special_bos = (tokenizer_config or {}).get("bos_token")
            special_cls = (tokenizer_config or {}).get("cls_token")
            special_eos = (tokenizer_config or {}).get("eos_token")
            special_sep = (tokenizer_config or {}).get("sep_token")
            if not special_bos and special_cls and tokenizer_config:
                tokenizer_config["bos_token"] = special_bos = special_cls
            if not special_eos and special_sep and tokenizer_config:
                tokenizer_config["eos_token"] = special_eos = special_sep
            if post_processor := tokenizer.get("post_processor"):
                for processor in post_processor.get("processors", [post_processor]):
                    processor_type = processor.get("type")
                    if processor_type == "ByteLevel":
                        self.add_special_token.setdefault("bos", False)
                        self.add_special_token.setdefault("eos", False)
                    elif processor_type == "RobertaProcessing":
                        self.add_special_token["bos"] = True
                        self.add_special_token["eos"] = True
                        self.add_special_token["sep"] = True
                        if not special_cls and tokenizer_config:
                            special_cls = processor.get("cls", [special_bos])[0]
                            tokenizer_config["cls_token"] = special_cls
                        if not special_sep and tokenizer_config:
                            special_sep = processor.get("sep", [special_eos])[0]
                            tokenizer_config["sep_token"] = special_sep
                        continue
                    elif processor_type == "TemplateProcessing":
                        tmpl_single = processor.get("single", [])
                        tmpl_pair = processor.get("pair", [])
                        special_first = None
                        special_last = None
                        if len(tmpl_single) > 1:
                            if special_first := tmpl_single[0].get("SpecialToken", {}).get("id"):
                                if not tokenizer_config:
                                    special_bos = special_first
                                elif special_first not in (special_bos, special_cls):
                                    if not special_bos:
                                        tokenizer_config["bos_token"] = special_bos = special_first
                                    if not special_cls:
                                        tokenizer_config["cls_token"] = special_cls = special_first
                                self.add_special_token["bos"] = True if special_first in (special_bos, special_cls) else False
                            if special_last := tmpl_single[-1].get("SpecialToken", {}).get("id"):
                                if not tokenizer_config:
                                    special_eos = special_last
                                elif special_last != special_eos:
                                    if "eot" not in self.special_token_types:
                                        self.special_token_types = tuple(self.special_token_types) + ("eot",)
                                        tokenizer_config["eot_token"] = special_eos
                                    elif "eom" not in self.special_token_types:
                                        self.special_token_types = tuple(self.special_token_types) + ("eom",)
                                        tokenizer_config["eom_token"] = special_eos
                                    tokenizer_config["eos_token"] = special_eos = special_last
                                self.add_special_token["eos"] = True if special_last == special_eos else False
                        if tmpl_pair:
                            seq_start = 1 if special_first and tmpl_pair[0].get("SpecialToken", {}).get("id") == special_first else 0
                            seq_stop = -1 if special_last and tmpl_pair[-1].get("SpecialToken", {}).get("id") == special_last else None
                            if tmpl_pair := tmpl_pair[slice(seq_start, seq_stop)]:
                                tmpl_a = tmpl_pair[0].get("Sequence", {}).get("id")
                                tmpl_b = tmpl_pair[-1].get("Sequence", {}).get("id")
                                if tmpl_a == "A" and tmpl_b == "B" and (tmpl_pair := tmpl_pair[1:-1]):
                                    add_sep = False
                                    if special_entry := tmpl_pair[0].get("SpecialToken", {}).get("id"):
                                        if special_entry in (special_sep, special_eos) and not special_last:
                                            add_sep = True
                                    if len(tmpl_pair) == 2:
                                        if special_entry := tmpl_pair[1].get("SpecialToken", {}).get("id"):
                                            if special_entry in (special_sep, special_eos):
                                                add_sep = True
                                    self.add_special_token["sep"] = add_sep
                                    if add_sep and not special_sep and tokenizer_config:
                                        tokenizer_config["sep_token"] = special_eos
                        continue
        if not tokenizer_config:
            return True
        chat_template_alt = None
        chat_template_json = path / "chat_template.json"
        chat_template_jinja = path / "chat_template.jinja"
        if chat_template_jinja.is_file():
            chat_template_alt = _read_text(chat_template_jinja)
            if additional_templates := sorted((path / "additional_chat_templates").glob("*.jinja")):
                chat_template_alt = [{"name": "default", "template": chat_template_alt}]
                for template_path in additional_templates:
                    chat_template_alt.append({"name": template_path.stem, "template": _read_text(template_path)})
        elif chat_template_json.is_file():
            chat_template_alt = read_object(chat_template_json).get("chat_template")
        chat_template = tokenizer_config.get("chat_template", chat_template_alt)
        _check_chat_template(chat_template, tokenizer_config_file if "chat_template" in tokenizer_config else chat_template_json)
        if chat_template is None or isinstance(chat_template, (str, list)):
            self.chat_template = chat_template
        for typ in self.special_token_types:
            add_entry = tokenizer_config.get(f"add_{typ}_token")
            if isinstance(add_entry, bool):
                if typ not in self.add_special_token:
                    self.add_special_token[typ] = add_entry
            entry = tokenizer_config.get(f"{typ}_token")
            if isinstance(entry, str):
                tc_content = entry
            elif isinstance(entry, dict):
                entry_content = entry.get("content")
                if not isinstance(entry_content, str):
                    continue
                tc_content = entry_content
            else:
                continue
            maybe_token_id = next(
                (atok.get("id") for atok in added_tokens if atok.get("content") == tc_content),
                None,
            )
            self.set_special_token(typ, maybe_token_id)
        return True

    def _try_load_from_config_json(self, path: Path) -> bool:
        config_file = path / "config.json"
        if not config_file.is_file():
            return False
        config = read_object(config_file)
        for typ in self.special_token_types:
            token_id = config.get(f"{typ}_token_id")
            if token_id is None and isinstance(config.get("text_config"), dict):
                token_id = config["text_config"].get(f"{typ}_token_id")
            self.set_special_token(typ, token_id, f"{config_file}: '{typ}_token_id'")
        return True


# What this process derived from tokenizer files, by their content (sha256), a few entries each:
# a batch converting one model to several types, checkpoints sharing a tokenizer, build it once.
VOCAB_CACHE_ENTRIES = 4
VOCAB_CACHES: dict[str, OrderedDict] = {}
_MERGES_CACHE: OrderedDict[tuple, StringArray] = VOCAB_CACHES.setdefault("merges", OrderedDict())


def content_key(*paths: Path) -> tuple:
    """The sha256 of each file (None where absent), read with the bound read_tokenizer_json has (the
    tokenizer.json read_tokenizer_json holds: the digest of the bytes it parsed)."""
    return tuple(_digest(p) if p.is_file() else None for p in paths)


def _digest(path: Path) -> bytes:
    got = _JSON_CACHE.get(_json_key(path))
    return got[1] if got is not None else hashlib.sha256(jsonio.read_bytes(path, TOKENIZER_MAX_BYTES, "tokenizer file")).digest()


def cache_put(cache: OrderedDict, key, value) -> None:
    cache[key] = value
    while len(cache) > VOCAB_CACHE_ENTRIES:
        cache.popitem(last=False)


def clear_vocab_caches() -> None:
    """Forget what was derived from tokenizer files (VOCAB_CACHES) and the parsed tokenizer.json."""
    for cache in VOCAB_CACHES.values():
        cache.clear()
    _JSON_CACHE.clear()


def _merge_strings(merges: list):
    """gguf-py SpecialVocab._try_load_from_tokenizer_json's merges as strings: "a b" as they are;
    [a, b] pairs (transformers >= 4.45) as "a b", the spaces inside a part encoded as U+0120
    (upstream encodes them only when some part has one: the same strings)."""
    if not merges or isinstance(merges[0], str):
        return merges
    if " " not in "".join(chain.from_iterable(merges)):
        return map(" ".join, merges)
    return (" ".join([part.replace(" ", "\u0120") for part in pair]) for pair in merges)


_JSON_CACHE: dict[tuple[str, int, int, int, int], tuple[dict, bytes]] = {}  # (tree, sha256 of the file)


def clear_tokenizer_cache() -> None:
    """Forget the parsed tokenizer.json files (read_tokenizer_json keeps the last one)."""
    _JSON_CACHE.clear()


def read_tokenizer_json(path: Path, max_bytes: int = TOKENIZER_MAX_BYTES) -> dict:
    """tokenizer.json, parsed and shape-checked once per file version (several readers here; none mutate it).
    model.merges is a jsonio.LazyArray (a sequence parsed again on each pass) unless malformed."""
    key = _json_key(path)
    if key not in _JSON_CACHE:
        _JSON_CACHE.clear()
        data = jsonio.read_bytes(path, max_bytes, "JSON file")
        digest = hashlib.sha256(data).digest()
        text = jsonio.decode_utf8(data, path)
        del data
        tj = jsonio.loads_object_lazy(text, path, ("model", "merges"))
        _check_tokenizer_shape(tj, path)
        _JSON_CACHE[key] = (tj, digest)
    return _JSON_CACHE[key][0]


def _json_key(path: Path) -> tuple[str, int, int, int, int]:
    """A file version: ctime and inode too, which `cp -p` / `rsync -t` (same size, mtime kept) cannot keep."""
    st = path.stat()
    return str(path.resolve()), st.st_mtime_ns, st.st_size, st.st_ctime_ns, st.st_ino


def read_object(path: Path, max_bytes: int = jsonio.MAX_BYTES) -> dict:
    return jsonio.read_object(path, max_bytes)


def _read_text(path: Path) -> str:
    return jsonio.read_text(path, jsonio.MAX_BYTES, "template")


def _is_id(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _all_ids(values) -> bool:
    """all(map(_is_id, values)), at C speed for what json makes (exact ints)."""
    if set(map(type, values)) <= {int}:
        return not values or min(values) >= 0
    return all(map(_is_id, values))


def _check_tokenizer_shape(tj: dict, path: Path) -> None:
    """The parts of tokenizer.json the converter reads have the types it assumes (names the key)."""
    def bad(key: str, want: str):
        raise InputError(f"{path}: {key!r} must be {want}")

    model = tj.get("model")
    if model is not None:
        if not isinstance(model, dict):
            bad("model", "an object")
        if "type" in model and not isinstance(model["type"], str):
            bad("model.type", "a string")
        vocab = model.get("vocab")
        if vocab is not None and not (isinstance(vocab, dict) and _all_ids(vocab.values()) or isinstance(vocab, list)):
            bad("model.vocab", "an object of token -> id (or a Unigram list)")
        merges = model.get("merges")
        if merges is not None and not isinstance(merges, jsonio.LazyArray) and not (isinstance(merges, list) and (
                all(isinstance(m, str) for m in merges)
                or all(isinstance(m, list) and len(m) == 2 and isinstance(m[0], str) and isinstance(m[1], str)
                       for m in merges))):
            bad("model.merges", "a list of strings or a list of [string, string] pairs")
    added = tj.get("added_tokens")
    if added is not None and not (isinstance(added, list) and all(
            isinstance(a, dict) and _is_id(a.get("id")) and isinstance(a.get("content"), str) for a in added)):
        bad("added_tokens", "a list of objects with an integer 'id' and a string 'content'")
    for key in ("normalizer", "post_processor", "decoder", "pre_tokenizer"):
        if tj.get(key) is not None and not isinstance(tj[key], dict):
            bad(key, "an object or null")
    stack = [("normalizer", tj.get("normalizer"))]
    while stack:
        key, norm = stack.pop()
        if norm is None:
            continue
        if not isinstance(norm, dict):
            bad(key, "an object")
        if norm.get("type") == "Sequence":
            subs = norm.get("normalizers", [])
            if not isinstance(subs, list):
                bad(f"{key}.normalizers", "a list")
            stack.extend((f"{key}.normalizers[{i}]", n) for i, n in enumerate(subs))
    pp = tj.get("post_processor")
    if pp:
        procs = pp.get("processors", [pp])
        if not isinstance(procs, list) or not all(isinstance(p, dict) for p in procs):
            bad("post_processor.processors", "a list of objects")
        for i, proc in enumerate(procs):
            where = f"post_processor.processors[{i}]" if "processors" in pp else "post_processor"
            for k in ("single", "pair"):
                seq = proc.get(k, [])
                if not isinstance(seq, list) or not all(isinstance(e, dict) for e in seq):
                    bad(f"{where}.{k}", "a list of objects")
                for e in seq:
                    for kind in ("SpecialToken", "Sequence"):
                        if kind in e and not (isinstance(e[kind], dict) and isinstance(e[kind].get("id", ""), str)):
                            bad(f"{where}.{k}[].{kind}", "an object with a string 'id'")
            for k in ("cls", "sep"):
                if k in proc and not (isinstance(proc[k], list) and proc[k]):
                    bad(f"{where}.{k}", "a non-empty list")


def _check_chat_template(tmpl, path: Path) -> None:
    """A chat template is a string, null, or a list of {"name": string, "template": string}."""
    if tmpl is None or isinstance(tmpl, str):
        return
    if not isinstance(tmpl, list):
        return  # ignored, as upstream ignores other types
    for i, c in enumerate(tmpl):
        if not (isinstance(c, dict) and isinstance(c.get("name", ""), str)
                and (c.get("template") is None or isinstance(c["template"], str))):
            raise InputError(f"{path}: 'chat_template'[{i}] must be an object with a string 'name' and 'template'")


def _n_vocab(hp: dict) -> int:
    """The largest vocabulary config.json declares (already bounded by the checkpoint's tensors)."""
    ns = [hp[k] for k in ("vocab_size", "vocab_size_per_layer_input")
          if isinstance(hp.get(k), int) and not isinstance(hp.get(k), bool)]
    return max(ns, default=0)


def check_tokenizer_files(folder: Path, hp: dict) -> None:
    """Refuse tokenizer files out of proportion to config.json's vocabulary, before parsing them."""
    n_vocab = _n_vocab(hp)
    limit = TOKENIZER_BASE_BYTES + TOKENIZER_BYTES_PER_TOKEN * n_vocab
    for name in ("tokenizer.json", "tokenizer.model", "merges.txt", "vocab.json", "tiktoken.model"):
        p = folder / name
        try:
            size = p.stat().st_size if p.is_file() else 0
        except OSError:
            continue
        if size > limit:
            raise InputError(f"{p}: {size} bytes, more than a tokenizer for vocab_size {n_vocab} may have ({limit})")
    tj_path = folder / "tokenizer.json"
    if not tj_path.is_file():
        return
    tj = read_tokenizer_json(tj_path, limit)
    model = tj.get("model") or {}
    n_tok = len(model.get("vocab") or ()) + len(tj.get("added_tokens") or ())
    if n_tok > 2 * n_vocab + 65536:
        raise InputError(f"{tj_path}: {n_tok} tokens, far more than config.json vocab_size {n_vocab}")
    n_merges = len(model.get("merges") or ())
    if n_merges > MERGES_PER_TOKEN * n_vocab + 65536:
        raise InputError(f"{tj_path}: {n_merges} merges, more than {MERGES_PER_TOKEN} per token of vocab_size {n_vocab}")


# conversion/base.py TextModel.does_token_look_special
def does_token_look_special(token_text: str) -> bool:
    seems_special = token_text in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
    seems_special = seems_special or (token_text.startswith("<|") and token_text.endswith("|>"))
    seems_special = seems_special or (token_text.startswith("<\uff5c") and token_text.endswith("\uff5c>"))
    seems_special = seems_special or (token_text.startswith("<unused") and token_text.endswith(">"))
    return seems_special

def check_token_id(path: Path, what: str, v) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise InputError(f"{path}: token id of {what!r} must be a non-negative integer, got {v!r}")
    return v


def added_tokens_decoder(path: Path, tc: dict) -> dict[int, dict]:
    """tokenizer_config.json added_tokens_decoder with checked ids and contents."""
    atd = tc.get("added_tokens_decoder", {})
    if not isinstance(atd, dict):
        raise InputError(f"{path}: 'added_tokens_decoder' must be an object")
    out = {}
    for k, v in atd.items():
        try:
            tid = int(k)
        except ValueError:
            raise InputError(f"{path}: added_tokens_decoder key {k!r} is not a token id") from None
        if tid < 0 or not isinstance(v, dict) or not isinstance(v.get("content"), str):
            raise InputError(f"{path}: added_tokens_decoder[{k!r}] must be an object with a string 'content'")
        out[tid] = v
    return out
