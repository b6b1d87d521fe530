"""What llama-quantize decides before it quantizes: each tensor's type (recipe), the user's
overrides (--tensor-type and friends, ECMAScript regexes), and importance matrices (imatrix).

(Not named `quantize`: a subpackage of that name would replace the public `kquant.quantize`
function as an attribute of the package once imported.)
"""
