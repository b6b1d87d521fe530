"""Runs llama.cpp's convert_hf_to_gguf.py many times in one process (run by the reference venv's Python).

Importing the converter (torch, transformers, gguf-py) costs more than converting a tiny test
checkpoint, so the tests start one of these per worker and send it jobs instead of one process per
conversion. Protocol, one JSON object per line: stdin {"args": [...convert_hf_to_gguf.py argv...]},
stdout {"rc": exit code, "log": the converter's stdout+stderr}. Each job runs `main()` exactly as
`python convert_hf_to_gguf.py ARGS < /dev/null` would (stdin empty: transformers' trust_remote_code
prompt gets EOF, as there, instead of reading the next job); logging is reset so every job logs afresh.
A job may add {"pre_hashes": {chkhsh: name}}: pre-tokenizer hashes get_vocab_base_pre recognises
besides its own table (a fixture standing in for a vocabulary that cannot be had, registered as
convert_hf_to_gguf_update.py would register the real one), for that job only.
Usage: python refconv_server.py LLAMA_CPP_DIR
"""

import ast
import contextlib
import io
import json
import logging
import re
import sys
import traceback
from hashlib import sha256
from pathlib import Path


@contextlib.contextmanager
def extra_pre_hashes(llama_cpp: str, hashes: dict[str, str]):
    """conversion/base.py TextModel.get_vocab_base_pre, recognising `hashes` too (of its own chktxt)."""
    if not hashes:
        yield
        return
    from conversion.base import TextModel

    src = (Path(llama_cpp) / "conversion" / "base.py").read_text(encoding="utf-8")
    chktxt = ast.literal_eval(re.search(r"\n\s+chktxt = ('.*')\n", src).group(1))
    orig = TextModel.get_vocab_base_pre

    def get_vocab_base_pre(self, tokenizer) -> str:
        chkhsh = sha256(str(tokenizer.encode(chktxt)).encode()).hexdigest()
        return hashes[chkhsh] if chkhsh in hashes else orig(self, tokenizer)

    TextModel.get_vocab_base_pre = get_vocab_base_pre
    try:
        yield
    finally:
        TextModel.get_vocab_base_pre = orig


def main() -> None:
    llama_cpp = sys.argv[1]
    sys.path.insert(0, llama_cpp)
    proto, jobs = sys.stdout, sys.stdin
    import convert_hf_to_gguf as conv  # noqa: E402  (the slow import, done once)
    import gguf  # noqa: E402

    # gguf-py tensor_mapping.py TensorNameMap.__init__ applies an architecture's arch_block_mappings_cfg with
    # block_mappings_cfg.update(): it mutates the class's table, so after one ARCTIC (or QWEN4EXP) conversion every
    # later one in this process would map post_attention_layernorm otherwise. A process per conversion never sees
    # it; each job here starts from the table as imported.
    block_mappings = dict(gguf.TensorNameMap.block_mappings_cfg)

    for line in jobs:
        job = json.loads(line)
        gguf.TensorNameMap.block_mappings_cfg = dict(block_mappings)
        buf = io.StringIO()
        logging.root.handlers.clear()  # main() calls basicConfig: its handler must write to this job's buffer
        rc = 0
        sys.stdin = io.StringIO("")
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf), \
                extra_pre_hashes(llama_cpp, job.get("pre_hashes", {})):
            sys.argv = ["convert_hf_to_gguf.py", *job["args"]]
            try:
                conv.main()
            except SystemExit as e:
                rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            except BaseException:  # noqa: BLE001 - reported to the test as the converter's failure
                traceback.print_exc()
                rc = 1
        logging.root.handlers.clear()
        proto.write(json.dumps({"rc": rc, "log": buf.getvalue()}) + "\n")
        proto.flush()


if __name__ == "__main__":
    main()
