"""The only module that writes or reads model, package and run files.

Rules it enforces for everyone else:
- tensors are stored as safetensors, everything else as JSON; nothing is ever unpickled
  (``.pt``/``.pth``/``.pkl``/``.ckpt`` files and pickle byte streams are refused with a clear message);
- every write is atomic: a temporary file in the same folder, then ``os.replace``;
- a folder artifact (site package, classifier run, synthetic cohort) carries ``manifest.json`` with the format
  version and the sha256 of every file, verified on load;
- every run writes ``run.json`` (config, seed, package versions, git commit, input hashes, times, host).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import importlib.metadata
import json
import os
import platform
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes

from catphish.errors import ArtifactError, CatphishError

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
RUN_RECORD_NAME = "run.json"
PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib", ".npy", ".npz")
_PICKLE_MAGIC = (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")
_TRACKED_PACKAGES = ("catphish", "torch", "monai", "numpy", "scipy", "scikit-learn", "nibabel", "flwr", "opacus",
                     "safetensors", "statsmodels", "scikit-image")


# ----------------------------------------------------------------------------------------------- atomic writes
def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder, then rename."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise CatphishError(f"{path.parent}: cannot write here ({exc.strerror or exc})") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


@contextlib.contextmanager
def atomic_output_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path for a library that writes files itself (nibabel, matplotlib); rename on success."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CatphishError(f"{path.parent}: cannot write here ({exc.strerror or exc})") from None
    # keep the real suffix(es) so libraries pick the right format (e.g. ``.nii.gz``)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def write_json(path: str | Path, value: Any) -> Path:
    return atomic_write_text(path, json.dumps(_to_jsonable(value), indent=2, sort_keys=False) + "\n")


def read_json(path: str | Path) -> Any:
    path = Path(path)
    if not path.exists():
        raise ArtifactError(f"{path}: file does not exist")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path.name}: not valid JSON, the file is corrupt or truncated ({exc})") from None


# --------------------------------------------------------------------------------------------------- tensors
def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> Path:
    """Save a flat name → tensor mapping as safetensors (tensors copied to CPU, made contiguous)."""
    cpu = {name: t.detach().to("cpu").contiguous().clone() for name, t in tensors.items()}
    return atomic_write_bytes(path, save_safetensors_bytes(cpu, metadata=metadata))


def load_tensors(path: str | Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Load a safetensors file; pickles and damaged files are refused with a clear message."""
    path = Path(path)
    refuse_pickle(path)
    if not path.exists():
        raise ArtifactError(f"{path}: file does not exist")
    try:
        tensors = load_safetensors_bytes(path.read_bytes())
    except (SafetensorError, ValueError, OSError) as exc:
        raise ArtifactError(f"{path.name}: not a readable safetensors file, it is corrupt or truncated ({exc})") from None
    return {name: t.to(device) for name, t in tensors.items()}


def refuse_pickle(path: str | Path) -> None:
    """Refuse files that could execute code when loaded (pickles, torch ``.pt`` archives)."""
    path = Path(path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise ArtifactError(f"{path.name}: refusing to load a pickle-based file ({path.suffix}); "
                            "catphish only loads safetensors and JSON")
    if path.is_file():
        with path.open("rb") as handle:
            head = handle.read(4)
        if head[:2] in _PICKLE_MAGIC or head == b"PK\x03\x04":
            raise ArtifactError(f"{path.name}: refusing to load, the file is a pickle or torch archive, not safetensors")


# ----------------------------------------------------------------------------------- nested state (checkpoints)
def save_state(path: str | Path, state: dict[str, Any]) -> Path:
    """Save a nested state (model/optimizer state dicts, RNG states, step counters) without pickle.

    Tensors and numpy arrays go into ``<path>`` (safetensors); the structure and plain values go into its metadata
    as JSON, so a checkpoint is one file that is written atomically.
    """
    tensors: dict[str, torch.Tensor] = {}
    structure = _encode(state, tensors)
    return save_tensors(path, tensors, metadata={"catphish_state": json.dumps(structure),
                                                 "format_version": str(FORMAT_VERSION)})


def load_state(path: str | Path, device: str | torch.device = "cpu") -> dict[str, Any]:
    """Inverse of :func:`save_state`."""
    path = Path(path)
    refuse_pickle(path)
    if not path.exists():
        raise ArtifactError(f"{path}: checkpoint does not exist")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except (SafetensorError, ValueError, OSError) as exc:
        raise ArtifactError(f"{path.name}: checkpoint is corrupt or truncated ({exc})") from None
    if "catphish_state" not in metadata:
        raise ArtifactError(f"{path.name}: not a catphish checkpoint (no state metadata)")
    _check_format_version(metadata.get("format_version"), path)
    tensors = load_tensors(path, device=device)
    return _decode(json.loads(metadata["catphish_state"]), tensors)


def load_state_values(path: str | Path) -> dict[str, Any]:
    """The plain (non-tensor) values of a :func:`save_state` file, read from its header alone; tensors are ``None``.

    For a quick look at a large file (a cache key, provenance) without reading its tensors.
    """
    path = Path(path)
    refuse_pickle(path)
    if not path.exists():
        raise ArtifactError(f"{path}: file does not exist")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except (SafetensorError, ValueError, OSError) as exc:
        raise ArtifactError(f"{path.name}: file is corrupt or truncated ({exc})") from None
    if "catphish_state" not in metadata:
        raise ArtifactError(f"{path.name}: not a catphish state file (no state metadata)")
    _check_format_version(metadata.get("format_version"), path)
    return _decode(_without_tensors(json.loads(metadata["catphish_state"])), {})


def _without_tensors(value: Any) -> Any:
    if isinstance(value, dict):
        if "__tensor__" in value or "__ndarray__" in value:
            return None
        return {k: _without_tensors(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_tensors(v) for v in value]
    return value


def _encode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, torch.Tensor):
        name = f"t{len(tensors)}"
        tensors[name] = value
        return {"__tensor__": name}
    if isinstance(value, np.ndarray):
        name = f"t{len(tensors)}"
        tensors[name] = torch.from_numpy(np.ascontiguousarray(value))
        return {"__ndarray__": name, "dtype": str(value.dtype)}
    if isinstance(value, dict):
        return {"__dict__": [[_encode_key(k), _encode(v, tensors)] for k, v in value.items()]}
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v, tensors) for v in value]}
    if isinstance(value, list):
        return [_encode(v, tensors) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise TypeError(f"cannot save a value of type {type(value).__name__} in a checkpoint")


def _encode_key(key: Any) -> Any:
    if isinstance(key, bool) or not isinstance(key, int | str):
        raise TypeError(f"checkpoint dict keys must be str or int, got {type(key).__name__}")
    return {"int": key} if isinstance(key, int) else key


def _decode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, dict):
        if "__tensor__" in value:
            return tensors[value["__tensor__"]]
        if "__ndarray__" in value:
            return tensors[value["__ndarray__"]].numpy().astype(value["dtype"], copy=False)
        if "__tuple__" in value:
            return tuple(_decode(v, tensors) for v in value["__tuple__"])
        if "__dict__" in value:
            return {(k["int"] if isinstance(k, dict) else k): _decode(v, tensors) for k, v in value["__dict__"]}
        raise ArtifactError("checkpoint structure is damaged")
    if isinstance(value, list):
        return [_decode(v, tensors) for v in value]
    return value


# ---------------------------------------------------------------------------------------- folder artifacts
def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def file_bytes(paths: Iterable[str | Path]) -> int:
    """Total size of files, or of every file inside folders (a site package folder, a prepared cache)."""
    total = 0
    for path in map(Path, paths):
        if path.is_file():
            total += path.stat().st_size
        elif path.is_dir():
            total += sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        else:
            raise CatphishError(f"{path}: does not exist (cannot count its bytes)")
    return total


def hash_inputs(paths: list[str | Path]) -> dict[str, str]:
    """sha256 of each input: a file's own hash, or for a folder the hash of its sorted (path, file hash) list."""
    hashes: dict[str, str] = {}
    for path in map(Path, paths):
        if path.is_file():
            hashes[str(path)] = sha256_file(path)
        elif path.is_dir():
            digest = hashlib.sha256()
            for file in sorted(p for p in path.rglob("*") if p.is_file()):
                digest.update(f"{file.relative_to(path)}\0{sha256_file(file)}\n".encode())
            hashes[str(path)] = digest.hexdigest()
    return hashes


def write_manifest(folder: str | Path, kind: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Hash every file of ``folder`` into ``manifest.json`` (written last, atomically)."""
    folder = Path(folder)
    files = {str(path.relative_to(folder)): sha256_file(path) for path in _tracked_files(folder)}
    manifest = {"format_version": FORMAT_VERSION, "kind": kind, "files": files, **(extra or {})}
    write_json(folder / MANIFEST_NAME, manifest)
    return manifest


def verify_folder(folder: str | Path, kind: str | None = None) -> dict[str, Any]:
    """Check a folder artifact: manifest present, format version known, no pickles, every hash matches.

    Raises :class:`ArtifactError` naming the first problem; returns the manifest.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ArtifactError(f"{folder}: not a folder (expected a catphish {kind or 'artifact'} folder)")
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            refuse_pickle(path)
    manifest_path = folder / MANIFEST_NAME
    if not manifest_path.exists():
        raise ArtifactError(f"{folder.name}: no {MANIFEST_NAME}; not a catphish artifact or it was not finished")
    manifest = read_json(manifest_path)
    if not isinstance(manifest, dict) or "files" not in manifest:
        raise ArtifactError(f"{folder.name}/{MANIFEST_NAME}: malformed manifest")
    _check_format_version(manifest.get("format_version"), manifest_path)
    if kind is not None and manifest.get("kind") != kind:
        raise ArtifactError(f"{folder.name}: is a '{manifest.get('kind')}' artifact, expected '{kind}'")
    listed = manifest["files"]
    for name, expected in listed.items():
        path = folder / name
        if not path.is_file():
            raise ArtifactError(f"{folder.name}/{name}: listed in the manifest but missing")
        if sha256_file(path) != expected:
            raise ArtifactError(f"{folder.name}/{name}: sha256 does not match the manifest (tampered or truncated)")
    present = {str(p.relative_to(folder)) for p in _tracked_files(folder)}
    unexpected = sorted(present - set(listed))
    if unexpected:
        raise ArtifactError(f"{folder.name}/{unexpected[0]}: file not listed in the manifest (added after export)")
    return manifest


def _tracked_files(folder: Path) -> list[Path]:
    """Files a manifest covers: everything but the manifest and hidden working files (``.name`` at any depth)."""
    return [path for path in sorted(folder.rglob("*"))
            if path.is_file() and path.name != MANIFEST_NAME
            and not any(part.startswith(".") for part in path.relative_to(folder).parts)]


def _check_format_version(version: Any, path: Path) -> None:
    try:
        number = int(version)
    except (TypeError, ValueError):
        raise ArtifactError(f"{path.name}: missing or invalid format version {version!r}") from None
    if number != FORMAT_VERSION:
        raise ArtifactError(f"{path.name}: format version {number} is not supported by this catphish "
                            f"(supports {FORMAT_VERSION})")


def open_output_dir(path: str | Path, fingerprint: dict[str, Any], *, resume: bool = False,
                    overwrite: bool = False, what: str = "output", resumable: bool = True) -> bool:
    """Create or reopen an output folder; returns True when an unfinished run of the same config is resumed.

    A folder holding another run (different fingerprint) is refused unless ``overwrite``; an existing folder is
    refused unless ``resume`` or ``overwrite``. ``resumable=False``: the command has no ``--resume``, so the refusal
    does not suggest it.
    """
    path = Path(path)
    marker = path / ".fingerprint.json"
    fingerprint = _to_jsonable(fingerprint)
    if path.exists() and any(path.iterdir()):
        if overwrite:
            shutil.rmtree(path)
        elif not resume:
            hint = "--resume to continue it or --overwrite to replace it" if resumable else "--overwrite to replace it"
            raise CatphishError(f"{path}: {what} folder already exists (use {hint})")
        elif not marker.exists() or read_json(marker) != fingerprint:
            raise CatphishError(f"{path}: holds a different run (other config or inputs); "
                                "use --overwrite to replace it or choose another folder")
        else:
            return True
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CatphishError(f"{path}: cannot create the {what} folder ({exc.strerror or exc})") from None
    if not os.access(path, os.W_OK):
        raise CatphishError(f"{path}: {what} folder is not writable")
    write_json(marker, fingerprint)
    return False


@contextlib.contextmanager
def discard_on_error(path: str | Path, created: bool) -> Iterator[None]:
    """Remove ``path`` when the block fails and the folder was created for this run (``created``): checks that run
    after :func:`open_output_dir` then leave nothing behind that would block the corrected rerun. A folder being
    resumed is kept."""
    try:
        yield
    except BaseException:
        if created:
            shutil.rmtree(path, ignore_errors=True)
        raise


@contextlib.contextmanager
def updated_folder(folder: str | Path) -> Iterator[Path]:
    """Change files of a finished folder (a package) as one step: the block edits a copy, which then replaces the
    folder; when the block fails the folder is left as it was."""
    folder = Path(folder)
    staging = folder.with_name(f".{folder.name}.updating")
    backup = folder.with_name(f".{folder.name}.previous")
    for leftover in (staging, backup):
        shutil.rmtree(leftover, ignore_errors=True)
    shutil.copytree(folder, staging)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    os.replace(folder, backup)
    os.replace(staging, folder)
    shutil.rmtree(backup, ignore_errors=True)


# ------------------------------------------------------------------------------------------------ run records
def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _TRACKED_PACKAGES:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[name] = importlib.metadata.version(name)
    return versions


def git_commit() -> str | None:
    """The catphish source checkout's commit, if it runs from one."""
    source = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    commit = out.stdout.strip()
    if out.returncode != 0 or not commit:
        return None
    dirty = subprocess.run(["git", "-C", str(source), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, timeout=5, check=False).stdout.strip()
    return commit + ("-dirty" if dirty else "")


def host_description() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    host: dict[str, Any] = {"hostname": socket.gethostname(), "platform": platform.platform(), "cpu": cpu,
                            "cpu_count": os.cpu_count()}
    if torch.cuda.is_available():
        host["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return host


class RunRecord:
    """Collects what a run needs to be reproduced and writes it as ``run.json`` beside the outputs."""

    def __init__(self, out_dir: str | Path, command: str, config: dict[str, Any] | None, seed: int | None,
                 inputs: list[str | Path] | None = None) -> None:
        self.path = Path(out_dir) / RUN_RECORD_NAME
        self.record: dict[str, Any] = {
            "command": command,
            "seed": seed,
            "config": config,
            "inputs": hash_inputs(list(inputs or [])),
            "versions": package_versions(),
            "git_commit": git_commit(),
            "host": host_description(),
            "started": _now(),
            "finished": None,
            "status": "running",
        }

    def add(self, **values: Any) -> None:
        self.record.update(values)

    def write(self, status: str) -> None:
        self.record["status"] = status
        self.record["finished"] = _now()
        write_json(self.path, self.record)


@contextlib.contextmanager
def run_record(out_dir: str | Path, command: str, config: dict[str, Any] | None, seed: int | None,
               inputs: list[str | Path] | None = None) -> Iterator[RunRecord]:
    """Write ``run.json`` when the block ends: ``finished``, ``interrupted`` or ``failed``."""
    record = RunRecord(out_dir, command, config, seed, inputs)
    try:
        yield record
    except KeyboardInterrupt:
        record.write("interrupted")
        raise
    except BaseException:
        record.write("failed")
        raise
    record.write("finished")


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _to_jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_to_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value
