"""Everything about ggml tensor types: their declarations (types), kernels, dispatch (quants)
and first-run compilation (warm)."""
