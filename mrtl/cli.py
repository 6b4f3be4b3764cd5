"""The ``mrtl`` command line.

Each group of subcommands lives next to the code it drives and registers itself here through
a function ``add_commands(subparsers)``; every subcommand sets ``func`` (called with the parsed
``argparse.Namespace``, returning an exit code).

Failures: whatever a command raises ends as one line on stderr, ``mrtl COMMAND: error: ...``,
naming the file or argument at fault and what to do, and a non-zero exit status (2 for bad
input or a file that cannot be used, 1 for an unexpected internal error, 130 for Ctrl-C).
``MRTL_DEBUG=1`` shows the full traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

from . import __version__

# Modules that contribute subcommands, each with ``add_commands(subparsers)``.
COMMAND_MODULES: tuple[str, ...] = ("mrtl.experiments.cli", "mrtl.data.cli", "mrtl.train_cli", "mrtl.adapt_cli")

DEBUG_HINT = "rerun with MRTL_DEBUG=1 for the traceback"
_MAX_CHARS = 600


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mrtl",
        description="Transfer learning for accelerated MRI reconstruction (Dar et al., MRM 2020).",
        epilog="Errors are reported in one line; MRTL_DEBUG=1 shows the traceback.",
    )
    parser.add_argument("--version", action="version", version=f"mrtl {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod in COMMAND_MODULES:
        importlib.import_module(mod).add_commands(sub)
    return parser


def _debug() -> bool:
    return os.environ.get("MRTL_DEBUG", "0") not in ("", "0", "false", "False")


def _one_line(text: str) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= _MAX_CHARS else text[: _MAX_CHARS - 3] + "..."


def _first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    return lines[0] if lines else ""


# the variable that holds the file being read, in the frames of the readers that may fail on one
_READER_FRAMES = {
    ("serialization.py", "load"): "f",          # torch.load
    ("serialization.py", "_open_file_like"): "name_or_buffer",
    ("files.py", "__init__"): "name",           # h5py.File
    ("files.py", "make_fid"): "name",
    ("_npyio_impl.py", "load"): "file",         # numpy.load
    ("npyio.py", "load"): "file",
    ("Image.py", "open"): "filename",           # PIL.Image.open
    ("loaders.py", None): "path",               # mrtl.data readers
    ("train_cli.py", None): "p",                # config and array files of mrtl train/reconstruct
}


def _file_of(exc: BaseException) -> str | None:
    """The file a reader was reading when ``exc`` was raised (innermost known reader frame)."""
    filename = getattr(exc, "filename", None)
    if isinstance(filename, (str, os.PathLike)):
        return str(filename)
    frames = []
    tb = exc.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    for frame in reversed(frames):
        base = Path(frame.f_code.co_filename).name
        var = _READER_FRAMES.get((base, frame.f_code.co_name)) or _READER_FRAMES.get((base, None))
        if var is None:
            continue
        v = frame.f_locals.get(var)
        if isinstance(v, (str, os.PathLike)) and len(str(v)) < 4096:
            return str(v)
    return None


def _is_checkpoint_read(exc: BaseException) -> bool:
    tb = exc.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        if Path(code.co_filename).name == "serialization.py" and code.co_name == "load":
            return True
        tb = tb.tb_next
    return False


def _out_dir(args: argparse.Namespace) -> Path | None:
    out = getattr(args, "out", None)
    return Path(out) if out else None


def describe_error(exc: BaseException, args: argparse.Namespace | None = None) -> tuple[str, int]:
    """One line for the user (naming the file or argument and what to do) and the exit status.

    Args:
        exc: the exception a command raised.
        args: the parsed command line (to recognise e.g. a checkpoint in ``--out``).

    Returns:
        ``(message, exit_status)``.
    """
    import pickle

    name = type(exc).__name__
    file = _file_of(exc)
    where = f"{file}: " if file else ""

    # a study notebook failed (mrtl reproduce); the runner summarises it
    if name in ("StudyFailed",):
        return _one_line(str(exc)), 2
    if name == "PapermillExecutionError":
        return _one_line(f"a notebook cell failed: {getattr(exc, 'ename', '')}: "
                         f"{_first_line(Exception(getattr(exc, 'evalue', '')))}"), 2

    # a missing optional dependency whose message says what to install (e.g. the mrtl[book] extra)
    if isinstance(exc, ImportError) and "pip install" in str(exc):
        return _one_line(str(exc)), 2

    # files that cannot be read
    if _is_checkpoint_read(exc) and not isinstance(exc, (MemoryError, FileNotFoundError, PermissionError)):
        # whatever torch.load raises on a damaged file (UnpicklingError, EOFError, RuntimeError
        # from the zip reader, even IndexError/KeyError from a garbled pickle stream)
        detail = _first_line(exc)
        if not detail or len(detail) > 160 or detail.startswith("Weights only load failed"):
            detail = ""  # torch's long advice about weights_only does not apply: the file is bad
        msg = (f"{where}cannot be read as a checkpoint ({name}{': ' + detail if detail else ''}); "
               "the file is corrupt, truncated or not an mrtl checkpoint")
        out = _out_dir(args) if args is not None else None
        if file and Path(file).name.startswith("checkpoint_") and (
                out is None or Path(file).resolve().parent == out.resolve()):
            msg += (f". It blocks resuming the run in {Path(file).parent}: restore it, or move it away "
                    "(e.g. rename it to *.bad) to restart that phase from its beginning, or use a new --out")
        else:
            msg += "; give a checkpoint written by mrtl train or mrtl finetune (best_pretrain.pt, best_finetune.pt)"
        return _one_line(msg), 2
    try:
        import yaml

        if isinstance(exc, yaml.YAMLError):
            mark = getattr(exc, "problem_mark", None)
            at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            problem = getattr(exc, "problem", None) or _first_line(exc)
            return _one_line(f"{where}malformed YAML{at}: {problem}; fix the file (configs/ has examples)"), 2
    except ImportError:  # pragma: no cover - yaml is a dependency
        pass
    if name == "DecompressionBombError":
        return _one_line(f"{where}the image is larger than Pillow's safety limit (a possible decompression bomb: "
                         f"{_first_line(exc)}); remove it from the folder or resize it"), 2
    if isinstance(exc, EOFError):
        return _one_line(f"{where}the file ends too early (truncated or empty; {_first_line(exc) or 'EOFError'}); "
                         "write it again"), 2
    if isinstance(exc, pickle.UnpicklingError):
        return _one_line(f"{where}not a readable file ({_first_line(exc)[:200]}); it is corrupt or of another "
                         "format"), 2
    if isinstance(exc, (FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError,
                        PermissionError)):
        text = str(exc)
        if file and file not in text:
            text = f"{file}: {text}"
        return _one_line(text), 2
    if isinstance(exc, MemoryError):
        return _one_line(f"out of memory ({_first_line(exc) or 'MemoryError'}); use a smaller --batch-size or "
                         "smaller inputs"), 2
    if isinstance(exc, OSError):
        text = _first_line(exc) or name
        return _one_line(f"{where}{text} (OSError: the file is unreadable, corrupt or of the wrong format, or "
                         f"the disk failed); {DEBUG_HINT}"), 2

    # bad input: mrtl's own messages name the argument and what was expected
    if isinstance(exc, (ValueError, TypeError)):
        return _one_line(f"{where if where and file not in str(exc) else ''}{exc}"), 2
    if isinstance(exc, KeyError):
        return _one_line(f"{where}missing key {exc} ({DEBUG_HINT})"), 2
    if isinstance(exc, RuntimeError):
        return _one_line(f"{where}{name}: {_first_line(exc)} ({DEBUG_HINT})"), 2

    # anything else is a bug: say so, never hide it
    return _one_line(f"internal error, probably a bug in mrtl: {name}: {_first_line(exc)}; {DEBUG_HINT} "
                     "and report it"), 1


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        if _debug():
            raise
        print(f"mrtl {args.command}: interrupted; finished work is saved, rerun the same command to continue",
              file=sys.stderr)
        return 130
    except Exception as exc:  # every failure becomes one line (MRTL_DEBUG=1: the traceback)
        if _debug():
            raise
        msg, status = describe_error(exc, args)
        print(f"mrtl {args.command}: error: {msg}", file=sys.stderr)
        return status


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
