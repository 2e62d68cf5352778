"""Errors that come from the user's input rather than from a bug.

The CLI prints a :class:`CatphishError` as one red line and exits with code 2; anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations

from pathlib import Path


class CatphishError(Exception):
    """A problem with the user's input, configuration or files, explained in one line."""


class InputFileError(CatphishError):
    """A problem with one input file: the message names the file first, like TorchIO does."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{display_name(path)}: {problem}" if path else problem)

    def as_record(self) -> dict[str, str]:
        return {"file": self.path, "problem": self.problem}


def display_name(path: str | Path) -> str:
    """The file name, with its subject folder when the name alone does not say whose image it is (generic naming:
    ``sub-07/flair.nii.gz``; BraTS names such as ``TCGA-0001_t1.nii.gz`` already carry the subject id)."""
    path = Path(path)
    is_nifti = path.name.endswith((".nii", ".nii.gz"))
    if is_nifti and path.parent.name and path.parent.name not in path.name:
        return f"{path.parent.name}/{path.name}"
    return path.name


class ConfigError(CatphishError):
    """An unknown key, a wrong type or an impossible value in a configuration."""


class ArtifactError(CatphishError):
    """A saved model, package or run folder that is missing, tampered with, truncated or of another format."""
