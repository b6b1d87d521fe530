"""Every llama-quantize file type through the CLI: `--dry-run --json` plans it, and a conversion
that needs a type kquant has no kernels for yet stops with one line before writing anything."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kquant import cli
from kquant.ggml import quants
from kquant.types import FileType, QType

TINY = Path(__file__).resolve().parent.parent / "fixtures" / "tiny-llama"
BY_GGML_NAME = {q.ggml_name: q for q in QType}


@pytest.mark.parametrize("ftype", list(FileType), ids=lambda f: f.short_name)
def test_dry_run_and_clean_refusal(ftype, tmp_path, capsys):
    assert cli.main(["convert", str(TINY), "--type", ftype.short_name, "--dry-run", "--json"]) == 0
    cap = capsys.readouterr()
    plan = json.loads(cap.out)
    assert plan["file_type"] == ftype.short_name and len(plan["tensors"]) == 21
    planned = {t["type"] for t in plan["tensors"]}
    lacking = sorted(q.name for q in map(BY_GGML_NAME.get, planned) if q not in quants.registry())
    needs_imatrix = "needs an importance matrix" in cap.err
    if not lacking and not needs_imatrix:
        return  # kquant converts it (the whole-file identity tests cover the bytes)
    out = tmp_path / "out.gguf"
    rc = cli.main(["convert", str(TINY), "--type", ftype.short_name, "-o", str(out), "-q"])
    err = capsys.readouterr().err
    assert rc != 0
    assert len(err.strip().splitlines()) == 1, err
    assert ("importance matrix" in err) if needs_imatrix else ("no kernels" in err and any(n in err for n in lacking)), err
    assert list(tmp_path.iterdir()) == []  # nothing written, not even a temporary file
