"""Runs llama.cpp's convert_hf_to_gguf.py many times in one process (run by the reference venv's Python).

Importing the converter (torch, transformers, gguf-py) costs more than converting a tiny test
checkpoint, so the tests start one of these per worker and send it jobs instead of one process per
conversion. Protocol, one JSON object per line: stdin {"args": [...convert_hf_to_gguf.py argv...]},
stdout {"rc": exit code, "log": the converter's stdout+stderr}. Each job runs `main()` exactly as
`python convert_hf_to_gguf.py ARGS` would; logging is reset so every job logs afresh.
Usage: python refconv_server.py LLAMA_CPP_DIR
"""

import contextlib
import io
import json
import logging
import sys
import traceback


def main() -> None:
    sys.path.insert(0, sys.argv[1])
    proto = sys.stdout
    import convert_hf_to_gguf as conv  # noqa: E402  (the slow import, done once)

    for line in sys.stdin:
        job = json.loads(line)
        buf = io.StringIO()
        logging.root.handlers.clear()  # main() calls basicConfig: its handler must write to this job's buffer
        rc = 0
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
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
