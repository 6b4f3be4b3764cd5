"""Run the study notebooks through papermill and record a manifest.

``mrtl reproduce --study transfer --scale small`` converts ``book/experiments/transfer.md``
(jupytext) to a notebook, executes it with papermill (parameters ``scale``, ``output_dir``,
``recompute=True`` and any ``-p key value``), and stores under ``results/<study>/<run-id>/``:

- ``<study>.ipynb``: the executed notebook;
- the study's results CSV/JSON and figures (written by the notebook into ``output_dir``);
- ``manifest.json``: git commit, package versions, device, seeds, wall time, parameters and
  the list of files the run wrote.

Writes are atomic at the level of the run: the notebook runs in ``results/<study>/tmp/<run-id>/``
(git-ignored, marked by ``.mrtl-run.json``) and the folder is renamed to
``results/<study>/<run-id>/`` (or ``--output``) only when it succeeded. A failed or
interrupted run stays in ``tmp/``; rerunning with the same ``--run-id`` (or ``--resume``, which
finds the latest unfinished run of the study and scale whatever its name) reuses it: the
studies resume from their checkpoints and the sweep skips the grid cells it already finished.

Nothing mrtl did not write is deleted or moved: the destination must be new, empty, or a
finished run folder (recognised by its manifest), and the latter is replaced only with
``overwrite=True`` (``--overwrite``) and only if it holds no files besides the run's own.
Temporary files of killed writes are recognisable by name (:mod:`mrtl.utils`) and removed by
the next run.
"""

from __future__ import annotations

import ast
import dataclasses
import datetime as _dt
import errno
import glob
import importlib
import json
import os
import re
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ..utils import _pid_alive, atomic_write_text, clean_stale_temps, is_stale_temp

__all__ = ["NOTEBOOKS", "REPO_MARKERS", "repo_root", "find_repo_root", "require_book_extra", "notebook_path", "collect_manifest", "run_study", "parse_parameters",
           "default_results_root", "check_parameters", "notebook_parameters", "read_manifest", "is_run_folder",
           "foreign_files", "StudyFailed"]

NOTEBOOKS = {"transfer": "book/experiments/transfer.md", "sweep": "book/experiments/sweep.md",
             "multicoil": "book/experiments/multicoil.md", "efficiency": "book/experiments/efficiency.md"}
_PACKAGES = ("mrtl", "torch", "numpy", "scipy", "sigpy", "PyWavelets", "scikit-image", "pandas", "matplotlib",
             "papermill", "jupytext", "nibabel", "h5py")


#: What makes a folder the mrtl repository: the package, the project file and the study notebooks.
REPO_MARKERS = ("pyproject.toml", "mrtl/__init__.py", "book/experiments")


def _is_repo(folder: Path) -> bool:
    return all((folder / m).exists() for m in REPO_MARKERS)


def find_repo_root(start: Path | None = None) -> Path | None:
    """The mrtl repository (a folder with every one of :data:`REPO_MARKERS`), or None.

    Looked for, in this order: the folder above the imported ``mrtl`` package (a source checkout
    or an editable install), then ``start`` (default: the working directory) and its parents (a
    plain ``pip install mrtl`` used from inside a clone).
    """
    package_parent = Path(__file__).resolve().parents[2]
    here = Path.cwd() if start is None else Path(start)
    here = here.expanduser().resolve()
    for folder in (package_parent, here, *here.parents):
        if _is_repo(folder):
            return folder
    return None


def repo_root(required: bool = False) -> Path:
    """The repository holding the ``mrtl`` package (see :func:`find_repo_root`).

    Args:
        required: raise if there is none (``mrtl reproduce`` needs the study notebooks). When
            False, a plain install without a clone gets the folder above the package, where
            nothing is checked in (so checked-in results are not found and studies run).

    Raises:
        FileNotFoundError: ``required`` and no folder with :data:`REPO_MARKERS` was found.
    """
    found = find_repo_root()
    if found is not None:
        return found
    if required:
        raise FileNotFoundError(
            f"no mrtl repository found: neither the folder above the installed package "
            f"({Path(__file__).resolve().parents[2]}) nor the working directory ({Path.cwd()}) or its parents "
            f"hold {', '.join(REPO_MARKERS)}. mrtl reproduce runs the study notebooks of the repository: "
            f"clone it (git clone https://github.com/mrtl-project/mrtl), cd into it and run pip install -e '.[book]'")
    return Path(__file__).resolve().parents[2]


def require_book_extra() -> None:
    """Check that the notebook tools of ``mrtl reproduce`` (papermill, jupytext) import.

    Raises:
        ImportError: one is missing; the message names the ``mrtl[book]`` extra that brings them
            (``pip install mrtl`` alone does not).
    """
    missing = []
    for mod in ("papermill", "jupytext"):
        try:
            importlib.import_module(mod)
        except ImportError:
            missing.append(mod)
    if missing:
        raise ImportError(f"mrtl reproduce needs {' and '.join(missing)} (the notebook runner), which "
                          f"'pip install mrtl' does not bring: pip install 'mrtl[book]' (or pip install "
                          f"{' '.join(missing)})")


def default_results_root() -> Path:
    return repo_root() / "results"


def notebook_path(study: str) -> Path:
    if study not in NOTEBOOKS:
        raise ValueError(f"study: expected one of {sorted(NOTEBOOKS)}, got {study!r}")
    p = repo_root(required=True) / NOTEBOOKS[study]
    if not p.exists():
        raise FileNotFoundError(f"notebook {p} not found: run from a clone of the mrtl repository")
    return p


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=repo_root(), capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _versions() -> dict[str, str | None]:
    from importlib import metadata

    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _device_info(device: str | None) -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"requested": device, "cuda_available": torch.cuda.is_available(),
                            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                            "platform": platform.platform(), "processor": platform.processor() or platform.machine()}
    if torch.cuda.is_available():
        info["cuda_devices"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def collect_manifest(study: str, scale: str, parameters: dict, wall_time_s: float | None, status: str,
                     run_id: str, extra: dict | None = None) -> dict[str, Any]:
    """The run's manifest: git commit (and whether the tree was dirty), package versions, device,
    seeds, wall time, parameters, status."""
    status_porcelain = _git("status", "--porcelain")
    seeds = {k: v for k, v in parameters.items() if "seed" in k}
    # changes under results/ are outputs (earlier runs, this one), not code: they do not make
    # the tree dirty; anything else (tracked or untracked) does and is listed
    # (porcelain lines are "XY path"; split, not slice: _git strips the first line's leading space)
    paths = [] if status_porcelain is None else [ln.split(maxsplit=1)[1] for ln in status_porcelain.splitlines()
                                                 if len(ln.split(maxsplit=1)) == 2]
    dirty_files = None if status_porcelain is None else [p for p in paths if not p.strip('"').startswith("results/")]
    return {
        "study": study,
        "scale": scale,
        "run_id": run_id,
        "status": status,
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(dirty_files) if dirty_files is not None else None,
        "git_dirty_files": (dirty_files or [])[:50],
        "versions": _versions(),
        "device": _device_info(parameters.get("device")),
        "seeds": seeds,
        "wall_time_s": wall_time_s,
        "parameters": parameters,
        "command": " ".join(sys.argv),
        "finished_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **(extra or {}),
    }


def parse_parameters(pairs: list[list[str]] | list[tuple[str, str]] | None) -> dict[str, Any]:
    """Parse ``-p key value`` pairs as papermill does (YAML values: ``[4, 8]``, ``1e-3``, ``null``; also ``None``)."""
    import yaml

    out: dict[str, Any] = {}
    for pair in pairs or []:
        if len(pair) != 2:
            raise ValueError(f"-p: expected KEY VALUE, got {pair!r}")
        key, raw = pair
        if not key.isidentifier():
            raise ValueError(f"-p: parameter name must be a Python identifier, got {key!r}")
        if raw in ("None", "none"):
            out[key] = None
            continue
        try:
            val = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise ValueError(f"-p {key}: cannot parse value {raw!r}: {exc}") from None
        if isinstance(val, str):  # YAML 1.1 reads "1e-3" as a string
            try:
                val = float(val)
            except ValueError:
                pass
        out[key] = val
    return out


# ------------------------------------------------------------------------------ run folders
#
# A run folder is recognised by its manifest (``manifest.json`` with ``study``, ``run_id`` and
# ``status``, written when a run ends) or, while the run is in progress, by the marker
# ``.mrtl-run.json`` in its working folder. The manifest lists the files the run wrote
# (``files``); only those may ever be replaced or deleted by a later run.

MARKER = ".mrtl-run.json"
MANIFEST = "manifest.json"
_RUN_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
# folders mrtl parks beside a target while swapping it: removed by the next run once their process has ended
_PARKED_RE = re.compile(r"^\.(?P<name>.+)\.mrtl-(?P<kind>replaced|copy)-(?P<pid>\d+)$")


def _read_json(path: Path) -> dict | None:
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return d if isinstance(d, dict) else None


def read_manifest(folder: str | Path) -> dict | None:
    """The manifest of a run folder made by ``mrtl reproduce``, or None if ``folder`` is not one."""
    m = _read_json(Path(folder) / MANIFEST)
    if m is None or not all(k in m for k in ("study", "run_id", "status")):
        return None
    return m


def is_run_folder(folder: str | Path) -> bool:
    """True if ``folder`` was made by ``mrtl reproduce`` (a manifest, or the in-progress marker)."""
    folder = Path(folder)
    return folder.is_dir() and (read_manifest(folder) is not None or _read_json(folder / MARKER) is not None)


def _files_under(folder: Path) -> list[str]:
    """Relative POSIX paths of the files under ``folder`` (symlinks count as files, never followed)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(folder):
        rel = Path(dirpath).relative_to(folder)
        for name in filenames + [d for d in dirnames if (Path(dirpath) / d).is_symlink()]:
            out.append((rel / name).as_posix())
    return sorted(out)


def _written_by_mrtl(rel: str, study: str, manifest: dict) -> bool:
    """Whether the file ``rel`` of a finished run folder was written by the run."""
    if rel in (MANIFEST, MARKER):
        return True
    if isinstance(manifest.get("files"), list):
        return rel in manifest["files"]
    # manifests written before the file list: the names the studies write
    top = rel.split("/", 1)[0]
    return (top in ("checkpoints", "cells") or rel == f"{study}.ipynb"
            or (("/" not in rel) and rel.startswith(study) and rel.endswith((".csv", ".json", ".png"))))


def foreign_files(folder: str | Path) -> list[str]:
    """Files in the run folder ``folder`` that ``mrtl reproduce`` did not write (e.g. a user's notes)."""
    folder = Path(folder)
    m = read_manifest(folder) or {}
    study = str(m.get("study", ""))
    return [r for r in _files_under(folder) if not _written_by_mrtl(r, study, m)]


def _check_target(final: Path, study: str, overwrite: bool, flag: str) -> None:
    """Refuse to put a run at ``final`` where that could lose anything (see :func:`run_study`)."""
    if final.is_symlink() or (final.exists() and not final.is_dir()):
        raise FileExistsError(f"{flag}: {str(final)!r} exists and is not a folder; choose another path")
    if not final.exists() or not any(final.iterdir()):
        return
    m = read_manifest(final)
    if m is None:
        raise FileExistsError(
            f"{flag}: {str(final)!r} is not empty and is not a run folder made by mrtl reproduce (it has no "
            f"{MANIFEST}); nothing was changed. Choose a new or empty folder.")
    if not overwrite:
        raise FileExistsError(
            f"{flag}: {str(final)!r} already holds a {m.get('status')} {m.get('study')} run ({m.get('run_id')}); "
            f"pass --overwrite to replace it, or choose another --run-id/--output. Nothing was changed.")
    extra = foreign_files(final)
    if extra:
        shown = ", ".join(extra[:5]) + (f" and {len(extra) - 5} more" if len(extra) > 5 else "")
        raise FileExistsError(
            f"{flag}: {str(final)!r} holds files that mrtl did not write ({shown}); --overwrite replaces only "
            f"mrtl's own files, so move those away first. Nothing was changed.")


def _clean_parked(parent: Path, name: str) -> None:
    """Remove folders that an interrupted swap of ``parent/name`` left parked (their process has ended)."""
    if not parent.is_dir():
        return
    for p in parent.glob(f".{glob.escape(name)}.mrtl-*"):
        m = _PARKED_RE.match(p.name)
        if m and m["name"] == name and p.is_dir() and not p.is_symlink() and not _pid_alive(int(m["pid"])):
            shutil.rmtree(p, ignore_errors=True)


def _lock(folder: Path):
    """Hold an exclusive lock on ``folder`` for this process (released at exit, even on a kill).

    Returns the open file descriptor, or None where locking is unsupported.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        return None
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RuntimeError(f"--run-id: run {folder.name!r} is in progress in another process ({folder}); "
                           "wait for it to end or choose another --run-id") from None
    except OSError:  # pragma: no cover - file systems without flock
        os.close(fd)
        return None
    return fd


def _find_unfinished(tmp_root: Path, study: str, scale: str) -> Path | None:
    """The most recent unfinished run of ``study`` at ``scale`` under ``tmp_root`` (any --run-id)."""
    if not tmp_root.is_dir():
        return None
    cands = []
    for p in tmp_root.iterdir():
        if not p.is_dir() or p.name.startswith("."):
            continue
        mk = _read_json(p / MARKER) or read_manifest(p)
        if mk is not None:
            if mk.get("study") == study and mk.get("scale") == scale:
                cands.append(p)
        elif p.name.startswith(f"{scale}-"):  # a run started before markers existed
            cands.append(p)
    return max(cands, key=lambda p: p.stat().st_mtime) if cands else None


def notebook_parameters(study: str) -> dict[str, str]:
    """The names in the notebook's cell tagged ``parameters`` (name -> the line that sets it)."""
    require_book_extra()
    import jupytext

    nb = jupytext.read(notebook_path(study))
    cell = next((c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])), None)
    if cell is None:
        return {}
    out = {}
    for node in ast.parse(cell.source).body:
        if isinstance(node, ast.Assign):
            for t in node.targets:
                if isinstance(t, ast.Name):
                    out[t.id] = ast.get_source_segment(cell.source, node) or t.id
    return out


def check_parameters(study: str, scale: str, parameters: dict) -> None:
    """Refuse unknown or invalid ``-p`` parameters before anything runs.

    Every name must be a parameter of the study's notebook (the runner sets ``output_dir``
    itself and ``scale`` comes from ``--scale``), and the values must make a valid study
    config (:func:`mrtl.experiments.config.make_config`), so ``-p epochs 0`` fails here, in one
    line, rather than inside the notebook.
    """
    from .config import make_config

    for key, flag in (("output_dir", "--output"), ("scale", "--scale")):
        if key in parameters:
            raise ValueError(f"-p {key}: set by mrtl reproduce; use {flag} instead")
    known = notebook_parameters(study)
    unknown = sorted(set(parameters) - set(known))
    if unknown:
        raise ValueError(f"-p {unknown[0]}: not a parameter of the {study} study"
                         + (f" ({len(unknown)} unknown: {unknown})" if len(unknown) > 1 else "")
                         + f"; its parameters are {sorted(k for k in known if k not in ('output_dir', 'scale'))}")
    for key in ("natural_dir", "t1_dir", "t2_dir", "fastmri_dir"):
        v = parameters.get(key)
        if v is not None and not Path(str(v)).expanduser().is_dir():
            raise FileNotFoundError(f"-p {key}: {str(v)!r} is not a folder; give the folder of your data "
                                    "(or leave it out to use the bundled data)")
    if "recompute" in parameters and not isinstance(parameters["recompute"], bool):
        raise ValueError(f"-p recompute: expected true or false, got {parameters['recompute']!r}")
    cfg_keys = {f.name for f in dataclasses.fields(_config_class(study))}
    try:
        make_config(study, scale, **{k: v for k, v in parameters.items() if k in cfg_keys})
    except (ValueError, TypeError) as exc:
        raise type(exc)(f"-p {exc}") from None


def _config_class(study: str):
    from .config import EfficiencyConfig, MulticoilConfig, SweepConfig, TransferConfig

    return {"transfer": TransferConfig, "sweep": SweepConfig, "multicoil": MulticoilConfig,
            "efficiency": EfficiencyConfig}[study]


class StudyFailed(RuntimeError):
    """A study notebook raised; the message names the cell, the error and where the notebook is."""


def _summarise_execution_error(exc, study: str, out_nb: Path) -> str:
    ename = getattr(exc, "ename", type(exc).__name__)
    evalue = str(getattr(exc, "evalue", "") or "").strip().splitlines()
    cell = getattr(exc, "exec_count", None)
    where = f"cell [{cell}]" if cell is not None else "a cell"
    return (f"the {study} notebook failed in {where}: {ename}: {evalue[-1] if evalue else ''} "
            f"(executed notebook with the traceback: {out_nb}); fix the cause and rerun the same command "
            "(or add --resume) to continue from the finished work")


def run_study(study: str, scale: str = "small", parameters: dict | None = None, results_root: str | Path | None = None,
              run_id: str | None = None, resume: bool = False, output: str | Path | None = None,
              kernel_name: str | None = None, log_output: bool = False, timeout: int | None = None,
              keep_checkpoints: bool = False, overwrite: bool = False, progress_bar: bool | None = None) -> Path:
    """Execute a study notebook with papermill and store everything under one run folder.

    The run works in ``<results_root>/<study>/tmp/<run-id>/`` and moves that folder into place
    only when it has finished, so a failed or killed run never touches the final folder;
    rerunning the same command (or ``--resume``) continues it, skipping finished work.
    Nothing that mrtl did not write is ever deleted or moved: the final folder must be new,
    empty, or (with ``overwrite=True``) a finished run folder holding only files that run wrote.

    Args:
        study: "transfer", "sweep" or "multicoil".
        scale: "small" or "full" (or "tiny", for tests), passed to the notebook as ``scale``.
        parameters: further notebook parameters (``R_list``, ``epochs``, ``t1_dir``, ``seed``...);
            an unknown name or an invalid value is an error before anything runs.
        results_root: root folder (default: the repository's ``results/``).
        run_id: the run's name (default: ``<scale>-<UTC timestamp>``).
        resume: continue an unfinished run: ``run_id`` if given (it must exist), else the most
            recent unfinished run of this study and scale.
        output: final folder instead of ``<results_root>/<study>/<run-id>`` (e.g.
            ``results/small/transfer`` to refresh the checked-in results, with ``overwrite``).
        kernel_name: Jupyter kernel (default: the notebook's, ``python3``).
        log_output: stream the notebook's output.
        timeout: per-cell timeout in seconds (None = none).
        keep_checkpoints: keep ``checkpoints/`` (model weights) in the final folder; by default
            they are deleted after a successful run (they only serve resuming).
        overwrite: replace a finished run folder at the destination (only its own files).
        progress_bar: papermill's per-cell progress bar (default: on unless ``MRTL_QUIET=1``
            or ``log_output``).

    Returns:
        The final run folder.

    Raises:
        FileExistsError: the destination holds something that must not be replaced.
        StudyFailed: the notebook raised (the message names the cell and the error).
    """
    from .config import SCALES

    if scale not in SCALES:
        raise ValueError(f"scale: expected one of {SCALES}, got {scale!r}")
    require_book_extra()
    src = notebook_path(study)
    params_in = dict(parameters or {})
    check_parameters(study, scale, params_in)
    root = Path(results_root) if results_root is not None else default_results_root()
    tmp_root = root / study / "tmp"
    if run_id is not None and (not isinstance(run_id, str) or not _RUN_ID_RE.match(run_id) or run_id == "tmp"):
        raise ValueError(f"--run-id: expected letters, digits, '-', '_' or '.' (not starting with '.' or '-', "
                         f"and not 'tmp'), got {run_id!r}")
    if resume:
        if run_id is None:
            found = _find_unfinished(tmp_root, study, scale)
            if found is None:
                raise FileNotFoundError(f"--resume: no unfinished {scale} run of {study} under {tmp_root}; "
                                        "start a new run without --resume")
            run_id = found.name
        elif not (tmp_root / run_id).is_dir():
            raise FileNotFoundError(f"--resume: no unfinished run {run_id!r} of {study} under {tmp_root}"
                                    + (" (it has finished; use --overwrite to run it again)"
                                       if (root / study / run_id).is_dir() and output is None else ""))
    if run_id is None:
        run_id = f"{scale}-{_dt.datetime.now(_dt.timezone.utc).strftime('%Y%m%d-%H%M%S')}"
    final = Path(output).expanduser() if output is not None else root / study / run_id
    flag = "--output" if output is not None else "--run-id"
    work = tmp_root / run_id
    fa, wa = final.resolve(), work.resolve()
    if fa == wa or fa in wa.parents or wa in fa.parents:
        raise ValueError(f"{flag}: {str(final)!r} would contain or lie inside the run's working folder {work}; "
                         "choose a folder outside it")
    _clean_parked(final.parent, final.name)
    _check_target(final, study, overwrite, flag)

    work.mkdir(parents=True, exist_ok=True)
    lock = _lock(work)
    try:
        clean_stale_temps(work, recursive=True)
        for p in work.glob(".mrtl-trash-*"):  # checkpoints whose deletion was interrupted
            shutil.rmtree(p, ignore_errors=True)
        done = read_manifest(work)
        if done is None or done.get("status") != "finished":
            if _read_json(work / MARKER) is None:
                atomic_write_text(work / MARKER, json.dumps(
                    {"study": study, "scale": scale, "run_id": run_id, "final": str(final),
                     "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}, indent=1))
            _execute(study, scale, src, work, run_id, params_in, kernel_name, log_output, timeout,
                     progress_bar, keep_checkpoints)
        # the manifest says "finished": delete the checkpoints, then move the folder into place
        if not keep_checkpoints and (work / "checkpoints").exists():
            trash = work / f".mrtl-trash-{os.getpid()}"
            os.replace(work / "checkpoints", trash)
            shutil.rmtree(trash, ignore_errors=True)
        try:
            (work / MARKER).unlink()
        except FileNotFoundError:
            pass
        _place(work, final, study, overwrite, flag)
    finally:
        if lock is not None:
            os.close(lock)
    try:
        tmp_root.rmdir()
    except OSError:
        pass
    return final


def _execute(study, scale, src, work, run_id, params_in, kernel_name, log_output, timeout, progress_bar,
             keep_checkpoints) -> None:
    """Run the notebook in ``work`` and write the manifest (status finished or failed)."""
    import jupytext
    import nbformat
    import papermill as pm

    from ..utils import quiet

    params = {"scale": scale, "recompute": True, **params_in}
    params["output_dir"] = str(work.resolve())
    nb = jupytext.read(src)
    nb.metadata.setdefault("kernelspec", {"name": "python3", "display_name": "Python 3", "language": "python"})
    inp = work / f".{study}.input.ipynb"
    atomic_write_text(inp, nbformat.writes(nb))
    out_nb = work / f"{study}.ipynb"
    if progress_bar is None:
        progress_bar = not (quiet() or log_output)
    t0 = time.perf_counter()
    status = "failed"
    try:
        try:
            pm.execute_notebook(
                str(inp), str(out_nb), parameters=params, cwd=str(src.parent), kernel_name=kernel_name,
                log_output=log_output, execution_timeout=timeout,
                progress_bar={"desc": f"{study} ({scale})", "unit": "cell"} if progress_bar else False,
                # the kernel's own log (e.g. "Kernel is running over TCP without encryption") is not the
                # user's business; cell output and errors still come through
                extra_arguments=["--IPKernelApp.log_level=ERROR"])
        except pm.PapermillExecutionError as exc:
            raise StudyFailed(_summarise_execution_error(exc, study, out_nb)) from exc
        status = "finished"
    finally:
        wall = time.perf_counter() - t0
        files = [r for r in _files_under(work)
                 if r not in (MANIFEST, MARKER, inp.name) and not r.startswith(".mrtl-")
                 and not (r.startswith("checkpoints/") and not keep_checkpoints and status == "finished")
                 and not is_stale_temp(work / r)]
        manifest = collect_manifest(study, scale, {k: v for k, v in params.items() if k != "output_dir"},
                                    round(wall, 2), status, run_id,
                                    extra={"notebook": NOTEBOOKS[study], "files": files, **_study_facts(work, study)})
        atomic_write_text(work / MANIFEST, json.dumps(manifest, indent=1, default=str))
        try:
            inp.unlink()
        except FileNotFoundError:
            pass


def _study_facts(work: Path, study: str) -> dict:
    """What the study itself recorded about the run (``<study>.json``): the seeds it actually
    ran and the torch thread count inside the run (results on CPU depend on it)."""
    extra = (_read_json(work / f"{study}.json") or {}).get("extra") or {}
    if "seeds" not in extra:  # the study did not finish (or is not one of ours)
        return {}
    return {"seeds_used": extra["seeds"], "num_threads": extra.get("num_threads")}


def _place(work: Path, final: Path, study: str, overwrite: bool, flag: str) -> None:
    """Move the finished ``work`` folder to ``final`` (checked again: nothing foreign is replaced)."""
    _check_target(final, study, overwrite, flag)
    final.parent.mkdir(parents=True, exist_ok=True)
    old = None
    if final.exists() and any(final.iterdir()):
        old = final.parent / f".{final.name}.mrtl-replaced-{os.getpid()}"
        os.replace(final, old)
    elif final.exists():
        final.rmdir()  # empty: nothing is lost
    try:
        os.replace(work, final)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            if old is not None:
                os.replace(old, final)
            raise
        # another file system: copy beside the target, then rename into place
        copy = final.parent / f".{final.name}.mrtl-copy-{os.getpid()}"
        shutil.copytree(work, copy, symlinks=True)
        os.replace(copy, final)
        shutil.rmtree(work)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
