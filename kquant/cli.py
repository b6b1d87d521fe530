"""Command line: thin wrappers that parse, call the library and print.

Results go to stdout (`--json` for scripts), progress and logs to stderr. A known error is one
line on stderr and a non-zero exit; KQUANT_DEBUG=1 shows the traceback.
"""

from __future__ import annotations

# Signals first: an interrupt at any moment of start-up (numba and its cached kernels load for a
# second or more) is the one-line message and exit 130, never a traceback. kquant/__init__.py and
# kquant.io.fsutil import nothing heavy. (The interpreter's own start-up, before this line, is
# Python's: a signal there gets its default behaviour.)
from .io import fsutil as _fsutil

if __name__ == "__main__":
    _fsutil.defer_interrupts()  # main() arms them inside the code that reports an interrupt
    _fsutil.announce("started")

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import traceback  # noqa: E402
from pathlib import Path  # noqa: E402

from .errors import InputError, KquantError  # noqa: E402

PROG = "kquant"


def _err(msg: str) -> None:
    print(f"{PROG}: error: {msg}", file=sys.stderr)


def _qtype_arg(s: str):
    from .types import parse_qtype

    try:
        return parse_qtype(s)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _ftype_arg(s: str):
    from .types import parse_ftype

    try:
        return parse_ftype(s)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _positive_int(flag: str):
    """argparse type for a whole number >= 1, with messages naming the flag."""

    def parse(s: str) -> int:
        try:
            n = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} takes a whole number, got {s!r}") from None
        if n < 1:
            raise argparse.ArgumentTypeError(f"{flag} must be at least 1, got {n}")
        return n

    return parse


_threads_arg = _positive_int("--threads")


def _tensor_type_arg(s: str):
    from .plan.overrides import parse_tensor_type

    try:
        return parse_tensor_type(s)
    except InputError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _overrides(args):
    from .plan.overrides import Overrides

    return Overrides(
        tensor_types=tuple(args.tensor_type or ()),
        output_tensor_type=args.output_tensor_type,
        token_embedding_type=args.token_embedding_type,
        pure=args.pure,
        leave_output_tensor=args.leave_output_tensor,
    )


def _progress(quiet: bool):
    if quiet:
        return None
    from .pipeline import print_progress

    return print_progress


def _target_bpw_arg(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--target-bpw takes a number of bits per weight, got {s!r}") from None
    if not 0 < v < float("inf"):
        raise argparse.ArgumentTypeError(f"--target-bpw must be a positive number, got {s!r}")
    return v


def _target_size_arg(s: str) -> int:
    from .automix import parse_size

    try:
        return parse_size(s)
    except InputError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


ROUNDING_HELP = ("ggml (default): llama-quantize's bytes; best: a harder search per block, kept where it "
                 "lowers both ggml's weighted error and the output error, same types, loads in any llama.cpp "
                 "(recorded as quantize.rounding), 2-30x ggml mode's time; refine: a cheap least-squares refit "
                 "of ggml's blocks, same guarantees, smaller gain, within 2x ggml mode's time")


def _rounding_arg(s: str) -> str:
    from .ggml.quants import parse_rounding

    try:
        return parse_rounding(s)
    except InputError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _split_size_arg(s: str) -> int:
    from .io.gguf_split import parse_split_size

    try:
        return parse_split_size(s)
    except InputError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _split_options(args):
    """SplitOptions from --split-max-size / --split-max-tensors, or None."""
    from .io.gguf_split import SplitOptions

    return SplitOptions.from_args(args.split_max_size, args.split_max_tensors)


def _add_split_args(p) -> None:
    p.add_argument("--split-max-size", type=_split_size_arg, metavar="SIZE",
                   help="write llama-gguf-split shards of at most SIZE of tensor data each (500M, 2G: decimal units)")
    p.add_argument("--split-max-tensors", type=_positive_int("--split-max-tensors"), metavar="N",
                   help="write llama-gguf-split shards of at most N tensors each")


def cmd_convert(args) -> int:
    from . import pipeline as cv

    opts = cv.Options(
        split=_split_options(args),
        overrides=_overrides(args),
        threads=args.threads,
        config=args.config,
        tokenizer_pre=args.tokenizer_pre,
        allow_nonfinite=args.allow_nonfinite,
        force=args.force,
        fp8_as_q8=args.fp8_as_q8,
        progress=_progress(args.quiet or args.dry_run),
        on_compile=None if args.quiet else cv.print_compile_notice,
        rounding=args.rounding,
    )
    if args.imatrix:
        from .plan.imatrix import load_imatrix

        opts.imatrix = load_imatrix(args.imatrix, include=args.include_weights or (), exclude=args.exclude_weights or ())
    elif args.include_weights or args.exclude_weights:
        raise InputError("--include-weights / --exclude-weights need --imatrix")
    mix = None
    if args.target_bpw is not None or args.target_size is not None:  # automatic mix: measure, then choose
        from . import automix
        from .errors import OutputError

        if args.target_bpw is not None and args.target_size is not None:
            raise InputError("give either --target-bpw or --target-size, not both")
        if args.fp8_as_q8:
            raise InputError("--fp8-as-q8 fixes the FP8 tensors at Q8_0: it cannot be combined with --target-bpw / --target-size")
        if not args.dry_run and not args.output:
            raise InputError("convert: -o/--output is required (or use --dry-run)")
        if args.target_size is not None and opts.split is not None:
            raise InputError("--target-size budgets one file: it cannot be combined with --split-max-size / --split-max-tensors")
        if not args.dry_run and not args.force:  # before the measuring pass, as the pipeline would refuse after it
            if opts.split is not None:
                from .io.gguf_split import describe_existing

                problem = describe_existing(args.output)
                if problem:
                    raise OutputError(f"{problem} (use --force to overwrite)")
            elif os.path.lexists(args.output):
                raise OutputError(f"{args.output}: already exists (use --force to overwrite)")
        mix = automix.choose_mix(args.model, args.type, opts, target_bpw=args.target_bpw, target_size=args.target_size,
                                 progress=None if args.quiet else automix.print_measure_progress)
        opts.type_map = mix.type_map
    if args.dry_run:
        plan = cv.dry_run(args.model, args.type, opts)
        if plan.needs_imatrix:  # llama-quantize --dry-run's warning
            name, qt = plan.needs_imatrix
            print(f"kquant: warning: dry run complete, but converting needs an importance matrix (--imatrix): "
                  f"tensor {name} would be {qt.ggml_name}", file=sys.stderr)
        extra = {"automix": mix.as_json()} if mix else {}
        if opts.split is not None:  # the cut llama-gguf-split would make of the file
            from .io.gguf_split import plan_shards

            extra["split_tensors_per_shard"] = plan_shards([(t.name, t.nbytes) for t in plan.tensors], opts.split)
        if args.json:
            print(json.dumps(dict(plan.as_json(), **extra)))
        else:
            for t in plan.tensors:
                shape = "x".join(str(d) for d in reversed(t.shape))
                print(f"{t.name:48s} {shape:>18s} {t.qtype.ggml_name:6s} {t.nbytes:>12d}")
            print(f"{len(plan.tensors)} tensors, {plan.total_bytes / 2**20:.2f} MiB, {plan.bpw:.4f} bits per weight")
            if plan.not_converted:
                print(f"kquant: note: {cv.models_note(plan.not_converted)}", file=sys.stderr)
            if "split_tensors_per_shard" in extra:
                n = extra["split_tensors_per_shard"]
                print(f"{len(n)} shards of {', '.join(map(str, n))} tensors")
            if mix:
                print(mix.summary())
        return 0
    if not args.output:
        raise InputError("convert: -o/--output is required (or use --dry-run)")
    res = cv.convert(args.model, args.output, args.type, opts)
    if args.json:
        print(json.dumps(dict(res.as_json(), **({"automix": mix.as_json()} if mix else {}))))
    else:
        print(
            f"wrote {res.path}{f' (first of {len(res.shards)} shards)' if res.shards else ''}: "
            f"{res.n_tensors} tensors, {res.file_bytes / 2**20:.2f} MiB, "
            f"{res.bpw:.4f} bits per weight, {res.seconds:.1f} s"
        )
        if mix:
            print(mix.summary())
    return 0


class _UsageError(Exception):
    """A command-line error: printed as one line (exit 2)."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors, and single-valued options that refuse conflicting repeats."""

    def error(self, message):
        raise _UsageError(f"{message} (see '{self.prog} --help')")

    def add_argument(self, *args, **kw):
        if args and args[0].startswith("-") and "action" not in kw and kw.get("nargs") is None:
            kw["action"] = _StoreOnce
        return super().add_argument(*args, **kw)


class _StoreOnce(argparse.Action):
    """Store a single value; the same option again with a different value is an error."""

    def __call__(self, parser, namespace, values, option_string=None):
        seen = namespace.__dict__.setdefault("_given", {})
        if self.dest in seen and seen[self.dest][1] != values:
            first, _ = seen[self.dest]
            parser.error(f"{option_string or self.dest} given twice with different values ({first} and {values_str(values)}); give it once")
        seen[self.dest] = (values_str(values), values)
        setattr(namespace, self.dest, values)


def values_str(v) -> str:
    for a in ("short_name", "ggml_name"):
        if hasattr(v, a):
            return str(getattr(v, a))
    return str(v)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    p = _Parser(prog=PROG, description="Hugging Face checkpoints to quantized GGUF, byte-identical to llama.cpp.")
    p.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND")
    sub.required = True

    c = sub.add_parser("convert", help="convert a HF folder / safetensors file to a quantized GGUF")
    c.add_argument("model", help="HF model folder, or a .safetensors file (with --config)")
    c.add_argument("-o", "--output", help="output .gguf path")
    c.add_argument("-t", "--type", default="Q4_K_M", type=_ftype_arg, help="file type, as llama-quantize: Q4_K_M (default), Q8_0, F16, ...")
    c.add_argument("--tensor-type", action="append", type=_tensor_type_arg, metavar="REGEX=TYPE", help="override the type of tensors whose name matches (repeatable)")
    c.add_argument("--output-tensor-type", type=_qtype_arg, metavar="TYPE")
    c.add_argument("--token-embedding-type", type=_qtype_arg, metavar="TYPE")
    c.add_argument("--pure", action="store_true", help="no k-quant mixture: every tensor gets the default type")
    c.add_argument("--leave-output-tensor", action="store_true", help="keep output.weight unquantized (as llama-quantize)")
    c.add_argument("--imatrix", metavar="FILE", help="importance matrix from llama-imatrix (GGUF or .dat)")
    c.add_argument("--rounding", type=_rounding_arg, default="ggml", help=ROUNDING_HELP)
    c.add_argument("--include-weights", action="append", metavar="NAME", help="use the importance matrix only for tensors whose name contains NAME (repeatable)")
    c.add_argument("--exclude-weights", action="append", metavar="NAME", help="do not use the importance matrix for tensors whose name contains NAME (repeatable)")
    c.add_argument("--config", metavar="FILE", help="config.json for a single .safetensors input")
    c.add_argument("--tokenizer-pre", metavar="NAME", help="BPE pre-tokenizer name, when the tokenizer is not recognised")
    c.add_argument("--threads", type=_threads_arg, help="quantization threads (default: all cores)")
    c.add_argument("--dry-run", action="store_true", help="print the plan from headers only; write nothing")
    c.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    c.add_argument("--force", action="store_true", help="overwrite an existing output file")
    c.add_argument("--allow-nonfinite", action="store_true", help="do not refuse NaN/Inf weights")
    c.add_argument("--fp8-as-q8", action="store_true", help="as convert_hf_to_gguf.py --fp8-as-q8: tensors dequantized "
                   "from FP8 are Q8_0 in the intermediate (so only --type Q8_0 keeps them without requantizing)")
    c.add_argument("--target-bpw", type=_target_bpw_arg, metavar="BPW", help="automatic mix: choose each tensor's type to "
                   "minimize the predicted damage within BPW bits per weight (all tensors, as llama.cpp reports it); "
                   "reads every tensor once to measure (also with --dry-run, which still writes nothing)")
    c.add_argument("--target-size", type=_target_size_arg, metavar="SIZE", help="automatic mix for a whole-file size: "
                   "350MB, 1.2GiB or bytes (the written file is never larger)")
    _add_split_args(c)
    c.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    c.set_defaults(func=cmd_convert)

    d = sub.add_parser("demo", help="convert the tiny checkpoint in fixtures/ and print the error report")
    d.add_argument("-o", "--output", help="where to write the demo GGUF (default: a temporary folder)")
    d.add_argument("--type", default="Q4_K_M", type=_ftype_arg)
    d.set_defaults(func=cmd_demo)
    _add_file_tool_parsers(sub)
    _add_batch_parser(sub)
    return p


def fixture_model() -> Path:
    """The tiny checkpoint shipped in the repository's fixtures/."""
    here = Path(__file__).resolve().parent.parent / "fixtures" / "tiny-llama"
    if not here.is_dir():
        raise InputError(f"{here}: the demo checkpoint is missing (run from a clone of the repository)")
    return here


def cmd_demo(args) -> int:
    import tempfile

    from . import pipeline as cv

    model = fixture_model()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.output) if args.output else Path(tmp) / f"tiny-llama-{args.type.short_name}.gguf"
        print(f"converting {model} -> {out} ({args.type.short_name})", file=sys.stderr)
        res = cv.convert(model, out, args.type, cv.Options(progress=cv.print_progress, on_compile=cv.print_compile_notice,
                                                       force=bool(args.output) is False))
        print(
            f"wrote {res.path}: {res.n_tensors} tensors, {res.file_bytes / 2**10:.1f} KiB, "
            f"{res.bpw:.3f} bits per weight, {res.seconds:.1f} s"
        )
        try:
            from .validate import validate_file, print_report
        except ImportError:
            return 0
        report = validate_file(out, model)
        print_report(report, sys.stdout)
    return 0


# ---------------------------------------------------------------- validate / inspect / dequantize
def _float_arg(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {s!r}") from None
    if not v >= 0 or v == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {s!r}")
    return v


def _types_list_arg(s: str):
    from .types import parse_qtype

    out = []
    for part in s.split(","):
        if not part.strip():
            continue
        try:
            out.append(parse_qtype(part))
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    if not out:
        raise argparse.ArgumentTypeError(f"no type in {s!r} (e.g. Q4_K,Q5_K,Q6_K,Q8_0)")
    return out


def _set_threads(n) -> None:
    if n is None:
        return
    from .ggml.quants import set_threads

    set_threads(n)


def _check_report_outputs(args, inputs) -> None:
    """Refuse report outputs (--csv, --plot) that exist (without --force) or are inputs, before any work."""
    from .errors import OutputError
    from .io.fsutil import check_not_input

    outs = [o for o in (args.csv, args.plot) if o and o != "-"]
    if len(outs) == 2 and os.path.abspath(outs[0]) == os.path.abspath(outs[1]):
        raise OutputError(f"{outs[0]}: given to both --csv and --plot")
    for o in outs:
        check_not_input(o, inputs)
        if os.path.lexists(o) and not args.force:
            raise OutputError(f"{o}: already exists (use --force to overwrite)")


def _write_text_output(path: str, text: str, force: bool) -> None:
    from .io.fsutil import atomic_output

    if path == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    with atomic_output(path, force=force) as f:
        f.write(text.encode("utf-8"))


def _write_plot(path: str, draw, force: bool) -> None:
    from .io.fsutil import atomic_output
    from .validate import load_matplotlib

    load_matplotlib()  # a missing matplotlib is reported before the output file is created
    with atomic_output(path, force=force) as f:
        draw(f)


def _validate_progress(quiet: bool):
    if quiet:
        return None

    def show(i, n, t):
        m = t.metrics
        print(f"[{i:4d}/{n}] {t.name:40s} {t.type:6s} rel_rmse {m.rel_rmse:.5f}", file=sys.stderr, flush=True)

    return show


def _what_if_progress(quiet: bool):
    if quiet:
        return None

    def show(i, n, row):
        cells = " ".join(f"{k} {'n/a' if m is None else format(m.rel_rmse, '.5f')}" for k, m in row["errors"].items())
        print(f"[{i:4d}/{n}] {row['name']:40s} {cells}", file=sys.stderr, flush=True)

    return show


def cmd_validate(args) -> int:
    from . import validate as va

    if args.file and args.types:
        raise InputError("validate: give either a GGUF FILE to check or --types for a what-if table, not both")
    if not args.file and not args.types:
        raise InputError("validate: give a GGUF FILE to check, or --types Q4_K,Q6_K,... for a what-if table")
    if args.types and args.fail_above is not None:
        raise InputError("validate: --fail-above applies to a GGUF FILE, not to --types")
    if args.json and args.csv == "-":
        raise InputError("validate: --json and --csv - would both write to stdout; give --csv a file name")
    inputs = [args.source] + ([args.file] if args.file else [])
    _check_report_outputs(args, inputs)
    if args.plot:
        va.load_matplotlib()
    _set_threads(args.threads)
    if args.types:
        res = va.what_if(args.source, args.types, config=args.config, progress=_what_if_progress(args.quiet))
        if args.csv:
            _write_text_output(args.csv, va.what_if_csv(res), args.force)
        if args.plot:
            _write_plot(args.plot, lambda f: va.plot_what_if(res, f), args.force)
        if args.json:
            print(va.report_json(res))
        elif args.csv != "-":
            va.print_what_if(res, sys.stdout)
        return 0
    rep = va.validate_file(args.file, args.source, config=args.config, progress=_validate_progress(args.quiet))
    if args.csv:
        _write_text_output(args.csv, va.report_csv(rep), args.force)
    if args.plot:
        _write_plot(args.plot, lambda f: va.plot_report(rep, f), args.force)
    if args.json:
        print(va.report_json(rep))
    elif args.csv != "-":
        va.print_report(rep, sys.stdout, worst=args.worst)
    if args.fail_above is not None:
        bad = rep.over(args.fail_above)
        if bad:
            worst = sorted(bad, key=lambda t: -t.metrics.rel_rmse if t.metrics.rel_rmse == t.metrics.rel_rmse else float("-inf"))
            names = ", ".join(f"{t.name} ({t.metrics.rel_rmse:.4f})" for t in worst[:5])
            more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
            _err(f"{len(bad)} tensor(s) above rel_rmse {args.fail_above:g}: {names}{more}")
            return 1
    return 0


def cmd_inspect(args) -> int:
    from .inspect import inspect_json, inspect_path, print_inspect

    info = inspect_path(args.file, config=args.config, full=args.full)
    if args.json:
        print(inspect_json(info))
    else:
        print_inspect(info, sys.stdout)
    return 0


def cmd_dequantize(args) -> int:
    from .inspect import dequantize_file

    def show(i, n, name, tname, seconds):
        print(f"[{i:4d}/{n}] {name:48s} {tname:6s} -> {args.dtype}", file=sys.stderr, flush=True)

    res = dequantize_file(args.file, args.output, dtype=args.dtype, hf_names=args.hf_names, force=args.force,
                          progress=None if args.quiet else show)
    if args.json:
        print(json.dumps(res))
    else:
        skipped = f" (not written, no HF tensor: {', '.join(res['skipped'])})" if res["skipped"] else ""
        print(f"wrote {res['output']}: {res['n_tensors']} tensors, {res['bytes'] / 2**20:.2f} MiB {res['dtype']}, "
              f"{'Hugging Face' if res['hf_names'] else 'GGUF'} names, {res['seconds']:.1f} s{skipped}")
    return 0


def _add_file_tool_parsers(sub) -> None:
    v = sub.add_parser(
        "validate",
        help="per-tensor round-trip error of a GGUF against its source, or a what-if table (--types)",
        description="Dequantize every tensor of FILE and compare it with the source checkpoint; or, with --types "
        "and no FILE, quantize each source tensor to each type in memory and report the errors.",
    )
    v.add_argument("file", nargs="?", help="GGUF file to check (written by kquant or llama.cpp)")
    v.add_argument("--source", required=True, metavar="MODEL", help="HF model folder or .safetensors file it came from")
    v.add_argument("--types", type=_types_list_arg, metavar="T1,T2,...", help="what-if: quantize to these types in memory (no FILE)")
    v.add_argument("--json", action="store_true", help="one JSON object on stdout instead of the table")
    v.add_argument("--csv", metavar="FILE", help="also write one CSV row per tensor ('-' for stdout)")
    v.add_argument("--plot", metavar="FILE.png", help="also draw the error by layer and tensor kind (needs matplotlib)")
    v.add_argument("--fail-above", type=_float_arg, metavar="REL_RMSE", help="exit 1 when any tensor's rel_rmse exceeds this")
    v.add_argument("--worst", type=_positive_int("--worst"), default=5, metavar="N", help="worst tensors listed (default 5)")
    v.add_argument("--config", metavar="FILE", help="config.json for a single .safetensors source")
    v.add_argument("--threads", type=_threads_arg, help="threads (default: all cores)")
    v.add_argument("--force", action="store_true", help="overwrite existing --csv / --plot files")
    v.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    v.set_defaults(func=cmd_validate)

    i = sub.add_parser("inspect", help="metadata and tensor list of a GGUF, a .safetensors file or a HF folder")
    i.add_argument("file", help="GGUF file, .safetensors file or HF model folder")
    i.add_argument("--json", action="store_true", help="one JSON object on stdout")
    i.add_argument("--full", action="store_true", help="GGUF: show long metadata arrays (vocabulary) in full")
    i.add_argument("--config", metavar="FILE", help="config.json to show with a single .safetensors file")
    i.set_defaults(func=cmd_inspect)

    q = sub.add_parser("dequantize", help="GGUF back to float safetensors")
    q.add_argument("file", help="GGUF file")
    q.add_argument("-o", "--output", required=True, help="output .safetensors path")
    q.add_argument("--dtype", default="F32", type=str.upper, choices=("F32", "F16", "BF16"), help="output float type (default F32)")
    q.add_argument("--hf-names", action="store_true", help="Hugging Face tensor names and row order (llama, mistral, qwen2, qwen3)")
    q.add_argument("--json", action="store_true", help="machine-readable result on stdout")
    q.add_argument("--force", action="store_true", help="overwrite an existing output file")
    q.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    q.set_defaults(func=cmd_dequantize)


# ---------------------------------------------------------------- batch
def _add_batch_parser(sub) -> None:
    b = sub.add_parser(
        "batch",
        help="convert every model folder under ROOT to several types (resumable; local processes or Ray)",
        description="Convert every model folder under ROOT (config.json + safetensors; symlinks followed, hidden "
        "folders ignored) to each --type, reading each checkpoint once, into OUTDIR/<folder>-<TYPE>.gguf. "
        "Complete outputs recorded in OUTDIR/.kquant-batch.json are skipped on a re-run; an interrupted run "
        "leaves only complete files and the next run finishes the job. Exit 0: all done; 1: a model failed; "
        "130: interrupted.",
    )
    b.add_argument("root", help="folder holding the model folders (or one model folder)")
    b.add_argument("-o", "--outdir", required=True, help="output folder (created if missing; with Ray: shared by every node)")
    b.add_argument("-t", "--type", action="append", required=True, type=_ftype_arg, help="file type (repeatable): Q4_K_M, Q8_0, ...")
    b.add_argument("--jobs", type=_positive_int("--jobs"), help="models converted at once (local: worker processes, capped by cores "
                   "and memory; default 1. ray: tasks in flight, default unlimited)")
    b.add_argument("--threads", type=_threads_arg, help="quantization threads per model (local default: cores // jobs; ray default 1, "
                   "also the CPUs each Ray task requests)")
    b.add_argument("--rounding", type=_rounding_arg, default="ggml", help=ROUNDING_HELP)
    b.add_argument("--imatrix-dir", metavar="DIR", help="use DIR/<folder>.gguf or DIR/<folder>.dat as the importance matrix when present")
    b.add_argument("--executor", choices=("local", "ray"), default="local", help="local (default) or ray (pip install 'kquant[ray]')")
    b.add_argument("--address", help="Ray cluster address (default: start a local Ray instance)")
    b.add_argument("--force", action="store_true", help="redo every output, even complete ones")
    b.add_argument("--allow-nonfinite", action="store_true", help="do not refuse NaN/Inf weights")
    _add_split_args(b)
    b.add_argument("--json", action="store_true", help="one JSON object on stdout instead of the table")
    b.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    b.set_defaults(func=cmd_batch)


def cmd_batch(args) -> int:
    from .batch import run_batch

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    try:
        rep = run_batch(args.root, args.outdir, args.type, jobs=args.jobs, threads=args.threads,
                        imatrix_dir=args.imatrix_dir, executor=args.executor, address=args.address, force=args.force,
                        allow_nonfinite=args.allow_nonfinite, split=_split_options(args),
                        log=None if args.quiet else log, rounding=args.rounding)
    except KeyboardInterrupt:  # a second interrupt during clean-up
        _err("interrupted; outputs under their final names are complete, run the same command again to finish")
        return 130
    if args.json:
        print(json.dumps(rep.as_json()))
    else:
        rep.print_table(sys.stdout)
    if rep.interrupted:
        _err(f"interrupted: {rep.count('done') + rep.count('skipped')} of {len(rep.rows)} outputs complete; "
             "run the same command again to finish")
    elif rep.failed:
        names = ", ".join(f"{m} ({e})" for m, e in rep.failed.items())
        _err(f"{len(rep.failed)} model(s) failed: {names}")
    return rep.exit_code


def main(argv=None) -> int:
    """The command line. Called without `argv` (the `kquant` script, `python -m kquant.cli`) it
    owns the process: SIGINT/SIGTERM/SIGHUP interrupt once (later ones are ignored while the first
    is cleaned up) and are ignored after it returns, so no signal can end in a traceback."""
    owner = argv is None
    old = _fsutil.defer_interrupts()  # (already so since start-up under `python -m kquant.cli`)
    old_hook, sys.unraisablehook = sys.unraisablehook, _fsutil.unraisable_hook(sys.unraisablehook)
    code = None
    try:  # interrupt_once raises at most one KeyboardInterrupt, wherever it lands
        try:
            code = _main(argv)
        except KeyboardInterrupt as e:  # before _main's own handler was entered
            code = _interrupted(e)
        finally:
            _leave(owner, old, old_hook)
    except KeyboardInterrupt as e:  # it landed in between
        _leave(owner, old, old_hook)
        if code is None:
            code = _interrupted(e)
    return code


def _leave(owner: bool, old: dict, old_hook) -> None:
    if owner:
        _fsutil.ignore_interrupts()  # the process is exiting: nothing left to interrupt
    else:
        _fsutil.restore_handlers(old)
        sys.unraisablehook = old_hook


def _interrupted(e: BaseException, signum: int | None = None) -> int:
    if os.environ.get("KQUANT_DEBUG", "") not in ("", "0"):
        traceback.print_exception(e)
    signum = signum or getattr(e, "signum", 2)  # fsutil.Terminated carries SIGTERM/SIGHUP
    _err(f"interrupted by signal {signum}; no partial output was left behind")
    return 128 + signum


def _main(argv) -> int:
    try:
        parser = build_parser()
        try:
            args = parser.parse_args(argv)
        except _UsageError as e:
            _err(str(e))
            return 2
        args.__dict__.pop("_given", None)
        if args.func is not cmd_inspect:  # the kernels' imports, with signals still only recorded
            from .ggml import quants  # noqa: F401
        _fsutil.arm_interrupts()
        with _fsutil.track_inputs():
            return int(args.func(args) or 0)
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM/SIGHUP
        return _interrupted(e)
    except BrokenPipeError:
        return 141
    except Exception as e:
        signum = _fsutil.interrupt_signal()
        if signum is not None:  # the interrupt surfaced as another error (numpy's import wraps it in ImportError)
            return _interrupted(e, signum)
        return _report(e)


def _report(e: Exception) -> int:
    """One line for an exception that ended a command; its exit code."""
    if os.environ.get("KQUANT_DEBUG", "") not in ("", "0"):
        traceback.print_exception(e)
    if isinstance(e, KquantError):
        _err(str(e).splitlines()[0] if str(e) else type(e).__name__)
        return e.exit_code
    if isinstance(e, MemoryError):
        _err("out of memory")
        return 3
    if isinstance(e, OSError):  # the system refused (too many open files, I/O error, ...): not a bug
        where = f"{e.filename}: " if e.filename else ""
        _err(f"{where}{e.strerror or e}")
        return 74  # EX_IOERR
    _err(f"internal error: {type(e).__name__}: {e} (set KQUANT_DEBUG=1 for the traceback)")  # a bug
    return 70


if __name__ == "__main__":
    sys.exit(main())
