#!/usr/bin/env bash
# Build llama.cpp's llama-gguf-split (tools/gguf-split/gguf-split.cpp), the reference of kquant's
# split GGUF output, without building llama.cpp: the one source file is compiled against the
# headers of the vendored sources and linked to the libllama/libggml shared libraries that the
# llama-cpp-python wheel (the test extra) already ships. gguf-split.cpp includes common.h only for
# the three split.* key names and build-info.h only for `--version`: a two-file shim provides them.
#   usage: build_gguf_split.sh [LLAMA_CPP_SRC]   (default: $KQUANT_LLAMA_CPP, else ~/.cache/kquant/refconv/llama.cpp)
# Output: $KQUANT_REFCONV_DIR (default ~/.cache/kquant/refconv)/bin/llama-gguf-split. Idempotent
# (does nothing when the binary is there and runs); takes a few seconds. Needs g++ (installed with
# apt-get when missing and possible).
set -euo pipefail
DIR="${KQUANT_REFCONV_DIR:-$HOME/.cache/kquant/refconv}"
SRC="${1:-${KQUANT_LLAMA_CPP:-$DIR/llama.cpp}}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${KQUANT_PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PY" ] || PY=python3
BIN="$DIR/bin/llama-gguf-split"

if [ -x "$BIN" ] && "$BIN" --help >/dev/null 2>&1; then
    exit 0
fi
for f in tools/gguf-split/gguf-split.cpp include/llama.h ggml/include/gguf.h common/common.h; do
    [ -f "$SRC/$f" ] || { echo "build_gguf_split: $SRC/$f missing (run scripts/setup_refconv.sh)" >&2; exit 1; }
done
LIB="$("$PY" -c 'import os, llama_cpp; print(os.path.join(os.path.dirname(llama_cpp.__file__), "lib"))')"
[ -f "$LIB/libllama.so" ] || { echo "build_gguf_split: no libllama.so in $LIB" >&2; exit 1; }
if ! command -v g++ >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        apt-get install -y -q g++ >&2
    else
        echo "build_gguf_split: g++ not found (apt-get install g++)" >&2
        exit 1
    fi
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/gguf-split.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/shim" "$DIR/bin"
# the split.* key names, copied from common.h (which otherwise pulls in the rest of common/)
grep -E '^const char \* const LLM_KV_SPLIT_(NO|COUNT|TENSORS_COUNT) ' "$SRC/common/common.h" > "$tmp/shim/common.h"
[ "$(wc -l < "$tmp/shim/common.h")" = 3 ] || { echo "build_gguf_split: split.* keys not found in common.h" >&2; exit 1; }
sed -i '1i #pragma once' "$tmp/shim/common.h"
cat > "$tmp/shim/build-info.h" <<'H'
#pragma once
static int llama_build_number(void) { return 0; }
static const char * llama_commit(void) { return "llama-cpp-python 0.3.36 vendor tree"; }
static const char * llama_compiler(void) { return "g++ (kquant scripts/build_gguf_split.sh)"; }
static const char * llama_build_target(void) { return "shared libllama of llama-cpp-python"; }
H
g++ -std=c++17 -O2 -I"$tmp/shim" -I"$SRC/include" -I"$SRC/ggml/include" \
    "$SRC/tools/gguf-split/gguf-split.cpp" -o "$tmp/llama-gguf-split" \
    -L"$LIB" -lllama -lggml -lggml-base -Wl,-rpath,"$LIB"
mv "$tmp/llama-gguf-split" "$BIN"
echo "build_gguf_split: $BIN" >&2
