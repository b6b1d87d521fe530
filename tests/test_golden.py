"""kquant against committed golden bytes from libggml (scripts/make_fixtures.py)."""

import os

import numpy as np
import pytest

from kquant.ggml import quants

GOLDEN = os.path.join(os.path.dirname(__file__), "..", "fixtures", "golden")


@pytest.fixture(scope="module")
def inputs():
    with np.load(os.path.join(GOLDEN, "inputs.npz")) as z:
        return {k: z[k] for k in z.files}


@pytest.mark.parametrize("qtype", quants.supported_types(), ids=lambda t: t.name)  # every type with kernels
def test_golden(qtype, inputs):
    imatrix = inputs["imatrix"]
    with np.load(os.path.join(GOLDEN, f"{qtype.name}.npz")) as z:
        want = {k: z[k] for k in z.files}
    checked = 0
    for name, x in inputs.items():
        if name == "imatrix":
            continue
        if qtype.requires_imatrix:  # ggml aborts without one: golden bytes are the weighted ones
            assert name not in want
            q = want[name + "__imatrix"]
        else:
            np.testing.assert_array_equal(quants.quantize(x, qtype), want[name], err_msg=f"{qtype.name} {name}")
            q = want[name]
        deq = quants.dequantize(q, qtype, x.shape)
        np.testing.assert_array_equal(deq.view(np.uint32), want[name + "__deq"].view(np.uint32))
        if qtype.is_quantized:
            got = quants.quantize(x, qtype, imatrix)
            np.testing.assert_array_equal(got, want[name + "__imatrix"], err_msg=f"{qtype.name} {name} imatrix")
        checked += 1
    assert checked == 7 + 1
