"""Test-only oracles, outside the installed package: libggml through ctypes (reference.py),
llama.cpp's two-step pipeline (refpipeline.py: convert_hf_to_gguf.py + llama_model_quantize) and
the scalar ports of ggml's scale searches the kernels specialise (search.py). Tests import them as
`from oracle import reference` (tests/ is on sys.path under pytest); scripts add tests/ to sys.path."""
