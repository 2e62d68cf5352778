"""File naming conventions of public glioma MRI collections, and matching file names against them.

A subject's files are four sequences and a tumour segmentation (the *roles* ``t1``, ``t1c``, ``t2``, ``flair``,
``seg``). Each convention maps roles to the file-name suffix its collection uses; matching ignores case so that
hospital exports like ``<id>_FLAIR.nii.gz`` or ``<id>_t1c.nii.gz`` are recognised too. The first suffix of each role
is the collection's own spelling (used in messages); later ones are common variants.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from catphish.config import SEQUENCES
from catphish.errors import ConfigError

SEGMENTATION = "seg"
ROLES: tuple[str, ...] = (*SEQUENCES, SEGMENTATION)
"""Every file a subject needs: the four sequences in model order, then the tumour segmentation."""
ROLE_NAMES: dict[str, str] = {"t1": "T1", "t1c": "T1C", "t2": "T2", "flair": "FLAIR", SEGMENTATION: "segmentation"}
NIFTI_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii")


@dataclass(frozen=True)
class NamingConvention:
    """How one collection names a subject's files: ``<id><separator><suffix>.nii[.gz]``.

    ``separator`` is ``None`` for conventions without a subject prefix (the generic layout, one folder per subject
    whose name is the subject id).
    """

    name: str
    title: str
    separator: str | None
    suffixes: dict[str, tuple[str, ...]]

    def expected_name(self, subject_id: str, role: str) -> str:
        """The file name this convention expects for ``role`` (``.nii.gz`` spelling)."""
        stem = self.suffixes[role][0]
        return f"{stem}.nii.gz" if self.separator is None else f"{subject_id}{self.separator}{stem}.nii.gz"

    def match(self, file_name: str) -> tuple[str, str] | None:
        """``(subject_id, role)`` when ``file_name`` follows this convention, else ``None``.

        Generic files carry no subject id; their id is the empty string (the caller uses the folder name).
        """
        stem = nifti_stem(file_name)
        if stem is None:
            return None
        lowered = stem.lower()
        for role, suffixes in self.suffixes.items():
            for suffix in suffixes:
                if self.separator is None:
                    if lowered == suffix.lower():
                        return "", role
                    continue
                ending = f"{self.separator}{suffix}".lower()
                if lowered.endswith(ending) and len(stem) > len(ending):
                    return stem[: -len(ending)], role
        return None


CONVENTIONS: dict[str, NamingConvention] = {
    convention.name: convention
    for convention in (
        NamingConvention("brats2021", "BraTS 2020/2021", "_",
                         {"t1": ("t1",), "t1c": ("t1ce", "t1c", "t1gd"), "t2": ("t2",), "flair": ("flair",),
                          SEGMENTATION: ("seg",)}),
        NamingConvention("brats2023", "BraTS 2023 glioma", "-",
                         {"t1": ("t1n",), "t1c": ("t1c",), "t2": ("t2w",), "flair": ("t2f",), SEGMENTATION: ("seg",)}),
        NamingConvention("ucsf-pdgm", "UCSF-PDGM", "_",
                         {"t1": ("T1",), "t1c": ("T1c",), "t2": ("T2",), "flair": ("FLAIR",),
                          SEGMENTATION: ("tumor_segmentation",)}),
        NamingConvention("generic", "generic (one folder per subject)", None,
                         {"t1": ("t1",), "t1c": ("t1c", "t1ce"), "t2": ("t2",), "flair": ("flair",),
                          SEGMENTATION: ("mask", "seg")}),
    )
}
"""Recognised conventions in auto-detection precedence order (DESIGN §3)."""
_ALIASES = {"brats2020": "brats2021", "brats": "brats2021", "ucsf": "ucsf-pdgm", "ucsf_pdgm": "ucsf-pdgm",
            "ucsfpdgm": "ucsf-pdgm", "brats2024": "brats2023"}
NAMING_CHOICES: tuple[str, ...] = ("auto", *CONVENTIONS)


def resolve_naming(naming: str) -> list[NamingConvention]:
    """The conventions to try for ``naming`` (``auto`` tries all, in precedence order)."""
    key = naming.strip().lower()
    if key == "auto":
        return list(CONVENTIONS.values())
    key = _ALIASES.get(key, key)
    if key not in CONVENTIONS:
        raise ConfigError(f"unknown naming convention '{naming}' (choose from {', '.join(NAMING_CHOICES)})")
    return [CONVENTIONS[key]]


def nifti_stem(file_name: str) -> str | None:
    """The name without ``.nii``/``.nii.gz`` (any case), or ``None`` for other files."""
    lowered = file_name.lower()
    for suffix in NIFTI_SUFFIXES:
        if lowered.endswith(suffix) and len(file_name) > len(suffix):
            return file_name[: -len(suffix)]
    return None


def is_nifti(path: Path) -> bool:
    return path.is_file() and nifti_stem(path.name) is not None and not path.name.startswith(".")


@dataclass
class SubjectFileGroup:
    """Files of one subject found in one folder under one convention (roles may be missing)."""

    subject_id: str
    convention: NamingConvention
    files: dict[str, Path]


def group_folder_files(folder: Path, files: list[Path], conventions: list[NamingConvention]) -> list[SubjectFileGroup]:
    """Split the NIfTI files of one folder into subjects, detecting the convention per subject.

    Every convention proposes subjects; the proposals that explain the most files win (ties go to the earlier
    convention), and a file belongs to at most one subject. Files no convention explains are not returned.
    """
    proposals: list[tuple[int, int, SubjectFileGroup]] = []
    for rank, convention in enumerate(conventions):
        by_subject: dict[str, dict[str, Path]] = {}
        for path in files:
            matched = convention.match(path.name)
            if matched is None:
                continue
            subject_id, role = matched
            subject_id = subject_id or folder.name
            # two spellings of one role (x.nii and x.nii.gz): keep the first in sorted order, report later
            by_subject.setdefault(subject_id, {}).setdefault(role, path)
        for subject_id, roles in by_subject.items():
            proposals.append((-len(roles), rank, SubjectFileGroup(subject_id, convention, roles)))
    proposals.sort(key=lambda item: (item[0], item[1], item[2].subject_id))
    claimed: set[Path] = set()
    taken_ids: set[str] = set()
    groups: list[SubjectFileGroup] = []
    for _, _, group in proposals:
        if group.subject_id in taken_ids or any(path in claimed for path in group.files.values()):
            continue
        groups.append(group)
        claimed.update(group.files.values())
        taken_ids.add(group.subject_id)
    return sorted(groups, key=lambda group: group.subject_id)


def duplicate_spellings(files: list[Path]) -> list[tuple[Path, Path]]:
    """Pairs like ``x.nii`` and ``x.nii.gz`` in one folder: ambiguous, the caller reports them."""
    seen: dict[str, Path] = {}
    pairs = []
    for path in sorted(files):
        stem = nifti_stem(path.name)
        if stem is None:
            continue
        key = stem.lower()
        if key in seen:
            pairs.append((seen[key], path))
        else:
            seen[key] = path
    return pairs


SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
"""Subject ids become cache file names; anything else (slashes, spaces) is refused."""
