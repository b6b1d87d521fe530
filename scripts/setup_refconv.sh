#!/usr/bin/env bash
# Create the reference-converter venv the arch/vocab comparison tests use:
#   KQUANT_REFCONV_PYTHON=<venv>/bin/python pytest tests/test_arch.py tests/test_vocab.py
# It holds what llama.cpp's convert_hf_to_gguf.py needs (versions from llama.cpp's
# requirements/requirements-convert_legacy_llama.txt, torch from the local wheel) plus the vendored
# gguf-py; it lives outside the project and is never imported by kquant.
set -euo pipefail
VENV="${1:-/tmp/refconv}"
LLAMA_CPP="${KQUANT_LLAMA_CPP:-/tmp/sdist/llama_cpp_python-0.3.36/vendor/llama.cpp}"
PY="${PYTHON:-python3}"

if [ ! -f "$LLAMA_CPP/convert_hf_to_gguf.py" ]; then
    echo "setup_refconv: $LLAMA_CPP/convert_hf_to_gguf.py not found (set KQUANT_LLAMA_CPP)" >&2
    exit 2
fi
start=$(date +%s)
"$PY" -m venv "$VENV"
"$VENV/bin/pip" install --quiet torch==2.13.0 "transformers==4.57.6" "sentencepiece>=0.1.98,<0.3.0" numpy safetensors \
    "protobuf>=4.21.0,<5.0.0"
"$VENV/bin/pip" install --quiet "$LLAMA_CPP/gguf-py"
"$VENV/bin/python" -c "import torch, transformers, sentencepiece, gguf; print('torch', torch.__version__, 'transformers', transformers.__version__)"
echo "setup_refconv: $VENV ready in $(( $(date +%s) - start ))s; export KQUANT_REFCONV_PYTHON=$VENV/bin/python"
