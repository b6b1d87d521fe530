#!/usr/bin/env bash
# Set up llama.cpp's own converter (convert_hf_to_gguf.py), the reference the end-to-end tests
# and scripts/bench_convert.py compare against. It needs torch and transformers, which kquant
# never imports, so it lives in its own venv outside the project:
#   $KQUANT_REFCONV_DIR (default ~/.cache/kquant/refconv)/venv      torch 2.13.0 (the machine's local
#                                                                    wheel), transformers, sentencepiece, gguf-py,
#                                                                    tiktoken (Kimi K2's remote-code tokenizer)
#   $KQUANT_REFCONV_DIR/llama.cpp                                    the llama.cpp sources vendored in the
#                                                                    llama-cpp-python 0.3.36 sdist (PyPI),
#                                                                    with its models/ggml-vocab-* test vocabularies
#   $KQUANT_REFCONV_DIR/bin/llama-gguf-split                         built by scripts/build_gguf_split.sh
# Idempotent: does nothing when both are there. Prints the two variables the tests read.
set -euo pipefail
DIR="${KQUANT_REFCONV_DIR:-$HOME/.cache/kquant/refconv}"
PY="${PYTHON:-python3}"
VENV="$DIR/venv"
SRC="$DIR/llama.cpp"
mkdir -p "$DIR"
start=$(date +%s)

# The converter, its vocabularies, and what scripts/build_gguf_split.sh compiles (tools/gguf-split,
# the public headers, common.h for the split.* key names). A tree from an older version of this
# script lacks the latter: it is extracted again.
if [ ! -f "$SRC/convert_hf_to_gguf.py" ] || [ ! -f "$SRC/tools/gguf-split/gguf-split.cpp" ] \
        || [ ! -f "$SRC/ggml/include/gguf.h" ] || [ ! -f "$SRC/include/llama.h" ] || [ ! -f "$SRC/common/common.h" ]; then
    tmp=$(mktemp -d "$DIR/dl.XXXXXX")
    trap 'rm -rf "$tmp"' EXIT
    "$PY" -m pip download --quiet --no-deps --no-binary :all: llama-cpp-python==0.3.36 -d "$tmp" >&2
    tar -xzf "$tmp"/llama_cpp_python-0.3.36.tar.gz -C "$tmp" \
        llama_cpp_python-0.3.36/vendor/llama.cpp/convert_hf_to_gguf.py \
        llama_cpp_python-0.3.36/vendor/llama.cpp/conversion \
        llama_cpp_python-0.3.36/vendor/llama.cpp/gguf-py \
        llama_cpp_python-0.3.36/vendor/llama.cpp/models \
        llama_cpp_python-0.3.36/vendor/llama.cpp/tools/gguf-split \
        llama_cpp_python-0.3.36/vendor/llama.cpp/include \
        llama_cpp_python-0.3.36/vendor/llama.cpp/ggml/include \
        llama_cpp_python-0.3.36/vendor/llama.cpp/common/common.h
    if [ -f "$SRC/convert_hf_to_gguf.py" ]; then  # add what is missing, leave what is in use alone
        cp -Rn "$tmp/llama_cpp_python-0.3.36/vendor/llama.cpp/." "$SRC/"
    else
        rm -rf "$SRC"
        mv "$tmp/llama_cpp_python-0.3.36/vendor/llama.cpp" "$SRC"
    fi
fi

if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import torch, transformers, sentencepiece, gguf" 2>/dev/null; then
    "$PY" -m venv "$VENV"
    # versions from llama.cpp's requirements-convert_legacy_llama.txt; torch from the local wheel
    "$VENV/bin/pip" install --quiet torch==2.13.0 "transformers==4.57.6" "sentencepiece>=0.1.98,<0.3.0" numpy \
        safetensors "protobuf>=4.21.0,<5.0.0" >&2
    "$VENV/bin/pip" install --quiet "$SRC/gguf-py" >&2
fi
# tiktoken: Kimi K2's tokenizer (its remote code, which the converter loads with trust_remote_code) needs it
if ! "$VENV/bin/python" -c "import tiktoken" 2>/dev/null; then
    "$VENV/bin/pip" install --quiet "tiktoken==0.14.0" >&2
fi
# llama-gguf-split, the reference of split GGUF output (seconds; cached beside the sources)
KQUANT_REFCONV_DIR="$DIR" bash "$(dirname "${BASH_SOURCE[0]}")/build_gguf_split.sh" "$SRC" >&2 || echo "setup_refconv: llama-gguf-split not built (its tests skip)" >&2
echo "setup_refconv: ready in $(( $(date +%s) - start ))s" >&2
out="export KQUANT_REFCONV_PYTHON=$VENV/bin/python KQUANT_LLAMA_CPP=$SRC"
[ -x "$DIR/bin/llama-gguf-split" ] && out="$out KQUANT_GGUF_SPLIT=$DIR/bin/llama-gguf-split"
echo "$out"
