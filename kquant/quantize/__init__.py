"""What llama-quantize decides before it quantizes: each tensor's type (recipe), the user's
overrides (--tensor-type and friends, ECMAScript regexes), and importance matrices (imatrix)."""
