"""Run the study notebooks through papermill and record a manifest.

``mrtl reproduce --study transfer --scale small`` converts ``book/experiments/transfer.md``
(jupytext) to a notebook, executes it with papermill (parameters ``scale``, ``output_dir``,
``recompute=True`` and any ``-p key value``), and stores under ``results/<study>/<run-id>/``:

- ``<study>.ipynb``: the executed notebook;
- the study's results CSV/JSON and figures (written by the notebook into ``output_dir``);
- ``manifest.json``: git commit, package versions, device, seeds, wall time, parameters.

Writes are atomic at the level of the run: the notebook runs in ``results/<study>/tmp/<run-id>/``
(git-ignored) and the folder is renamed to ``results/<study>/<run-id>/`` only when it succeeded.
A failed or interrupted run stays in ``tmp/``; rerunning with the same ``--run-id`` (or
``--resume``) reuses it, and the sweep skips the grid cells it already finished.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ..utils import atomic_write_text

__all__ = ["NOTEBOOKS", "repo_root", "notebook_path", "collect_manifest", "run_study", "parse_parameters",
           "default_results_root"]

NOTEBOOKS = {"transfer": "book/experiments/transfer.md", "sweep": "book/experiments/sweep.md",
             "multicoil": "book/experiments/multicoil.md"}
_PACKAGES = ("mrtl", "torch", "numpy", "scipy", "sigpy", "PyWavelets", "scikit-image", "pandas", "matplotlib",
             "papermill", "jupytext", "nibabel", "h5py")


def repo_root() -> Path:
    """The repository holding the ``mrtl`` package (editable install / source checkout)."""
    return Path(__file__).resolve().parents[2]


def default_results_root() -> Path:
    return repo_root() / "results"


def notebook_path(study: str) -> Path:
    if study not in NOTEBOOKS:
        raise ValueError(f"study: expected one of {sorted(NOTEBOOKS)}, got {study!r}")
    p = repo_root() / NOTEBOOKS[study]
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
    return {
        "study": study,
        "scale": scale,
        "run_id": run_id,
        "status": status,
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(status_porcelain) if status_porcelain is not None else None,
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


def run_study(study: str, scale: str = "small", parameters: dict | None = None, results_root: str | Path | None = None,
              run_id: str | None = None, resume: bool = False, output: str | Path | None = None,
              kernel_name: str | None = None, log_output: bool = False, timeout: int | None = None,
              keep_checkpoints: bool = False) -> Path:
    """Execute a study notebook with papermill and store everything under one run folder.

    Args:
        study: "transfer", "sweep" or "multicoil".
        scale: "small" or "full" (or "tiny", for tests), passed to the notebook as ``scale``.
        parameters: further notebook parameters (``R_list``, ``epochs``, ``t1_dir``, ``seed``...).
        results_root: root folder (default: the repository's ``results/``).
        run_id: the run's name (default: ``<scale>-<UTC timestamp>``).
        resume: reuse the most recent unfinished run of this study and scale in ``tmp/``.
        output: final folder instead of ``<results_root>/<study>/<run-id>`` (e.g.
            ``results/small/transfer`` to refresh the checked-in results; replaced atomically).
        kernel_name: Jupyter kernel (default: the notebook's, ``python3``).
        log_output: stream the notebook's output.
        timeout: per-cell timeout in seconds (None = none).
        keep_checkpoints: keep ``checkpoints/`` (model weights) in the final folder; by default
            they are deleted after a successful run (they only serve resuming).

    Returns:
        The final run folder.
    """
    import jupytext
    import nbformat
    import papermill as pm

    from .config import SCALES

    if scale not in SCALES:
        raise ValueError(f"scale: expected one of {SCALES}, got {scale!r}")
    src = notebook_path(study)
    root = Path(results_root) if results_root is not None else default_results_root()
    tmp_root = root / study / "tmp"
    if resume and run_id is None:
        cands = sorted(tmp_root.glob(f"{scale}-*"), key=lambda p: p.stat().st_mtime) if tmp_root.exists() else []
        if not cands:
            raise FileNotFoundError(f"--resume: no unfinished {scale} run of {study} under {tmp_root}")
        run_id = cands[-1].name
    if run_id is None:
        run_id = f"{scale}-{_dt.datetime.now(_dt.timezone.utc).strftime('%Y%m%d-%H%M%S')}"
    if not run_id.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise ValueError(f"run_id: expected letters, digits, '-', '_' or '.', got {run_id!r}")
    final = Path(output) if output is not None else root / study / run_id
    work = tmp_root / run_id
    work.mkdir(parents=True, exist_ok=True)

    params = {"scale": scale, "recompute": True, **(parameters or {})}
    params["output_dir"] = str(work.resolve())
    nb = jupytext.read(src)
    nb.metadata.setdefault("kernelspec", {"name": "python3", "display_name": "Python 3", "language": "python"})
    inp = work / f".{study}.input.ipynb"
    nbformat.write(nb, str(inp))
    out_nb = work / f"{study}.ipynb"
    t0 = time.perf_counter()
    status = "failed"
    try:
        pm.execute_notebook(str(inp), str(out_nb), parameters=params, cwd=str(src.parent),
                            kernel_name=kernel_name, log_output=log_output, progress_bar=False,
                            execution_timeout=timeout)
        status = "finished"
    finally:
        wall = time.perf_counter() - t0
        manifest = collect_manifest(study, scale, {k: v for k, v in params.items() if k != "output_dir"},
                                    round(wall, 2), status, run_id,
                                    extra={"notebook": NOTEBOOKS[study]})
        atomic_write_text(work / "manifest.json", json.dumps(manifest, indent=1, default=str))
        if inp.exists():
            inp.unlink()
    if not keep_checkpoints:
        shutil.rmtree(work / "checkpoints", ignore_errors=True)
    # success: move the whole folder into place in one rename
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, old)
        os.replace(work, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(work, final)
    try:
        tmp_root.rmdir()
    except OSError:
        pass
    return final
