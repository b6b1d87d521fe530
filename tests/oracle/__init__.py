"""Test-only oracles, outside the installed package: libggml through ctypes (reference.py),
llama.cpp's two-step pipeline (refpipeline.py: convert_hf_to_gguf.py + llama_model_quantize). (The
scalar ports of ggml's scale searches stay in kquant/ggml/kernels/_search.py: iq2 uses them.) Tests import them as
`from oracle import reference` (tests/ is on sys.path under pytest); scripts add tests/ to sys.path."""
