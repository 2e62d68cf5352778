"""Finding a dataset on disk (site folders + ``labels.csv``, DESIGN §3) and reading its NIfTI files.

Discovery never raises for problems inside the dataset: it collects them as :class:`Problem` records (a file and
what is wrong with it), so ``catphish data check`` can list them all and ``prepare`` can refuse or skip subjects.
Reading a NIfTI file turns every way it can fail into one :class:`InputFileError` naming the file.
"""

from __future__ import annotations

import csv
import gzip
import os
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError

from catphish.config import TASK_CLASSES
from catphish.data.naming import (
    CONVENTIONS,
    ROLE_NAMES,
    ROLES,
    SAFE_ID,
    duplicate_spellings,
    group_folder_files,
    is_nifti,
    nifti_stem,
    resolve_naming,
)
from catphish.errors import InputFileError

LABELS_NAME = "labels.csv"
LABEL_COLUMNS: tuple[str, ...] = ("subject_id", "site", "idh", "tumor_type", "split")
SPLITS: tuple[str, ...] = ("train", "test")
_READ_ERRORS = (ImageFileError, HeaderDataError, EOFError, zlib.error, gzip.BadGzipFile, OSError, ValueError)


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the dataset: the file it concerns and, in words, what is wrong.

    ``subject_id`` is set when the problem only affects that subject (``--skip-invalid`` can skip it); dataset-wide
    problems (an unusable ``labels.csv``) have none.
    """

    file: str
    problem: str
    subject_id: str | None = None
    site: str | None = None

    def as_record(self) -> dict[str, str]:
        return {"file": self.file, "problem": self.problem}

    def message(self) -> str:
        """The one-line form shown to users: ``<file name>: <problem>``."""
        return f"{Path(self.file).name}: {self.problem}" if self.file else self.problem

    def as_error(self) -> InputFileError:
        return InputFileError(self.file, self.problem)

    def __getitem__(self, key: str) -> str:
        """``problem["file"]`` / ``problem["problem"]``: the same record shape as ``check --json``."""
        return self.as_record()[key]


@dataclass(frozen=True)
class SubjectLabels:
    subject_id: str
    site: str
    idh: str = ""
    tumor_type: str = ""
    split: str = ""
    extra: dict[str, str] = field(default_factory=dict)
    line: int = 0


@dataclass
class Subject:
    """One subject's image files (role → path) and labels; roles may be missing (reported as a problem)."""

    subject_id: str
    site: str
    folder: Path
    naming: str
    files: dict[str, Path]
    labels: SubjectLabels | None = None

    @property
    def missing_roles(self) -> list[str]:
        return [role for role in ROLES if role not in self.files]

    @property
    def idh(self) -> str:
        return self.labels.idh if self.labels else ""

    @property
    def tumor_type(self) -> str:
        return self.labels.tumor_type if self.labels else ""

    @property
    def split(self) -> str:
        return self.labels.split if self.labels else ""


@dataclass
class Dataset:
    """A discovered dataset: labelled subjects with their files, unlabelled ones, and everything found wrong."""

    root: Path
    labels_path: Path
    subjects: list[Subject]
    """Subjects that have both files and a row in ``labels.csv`` (the ones ``prepare`` uses)."""
    unlabelled: list[Subject] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    """Errors: the dataset or a subject cannot be used as it is."""
    warnings: list[Problem] = field(default_factory=list)
    """Worth knowing but not an error: files without a label, labels without files, ignored files."""
    labels_usable: bool = True
    """Whether ``labels.csv`` exists and has the required columns (its rows may still have problems)."""

    @property
    def checked_subjects(self) -> list[Subject]:
        """The subjects a check looks at: labelled ones, or every one found when there are no usable labels."""
        return self.subjects if self.labels_usable else self.unlabelled

    def subject_problems(self, subject_id: str) -> list[Problem]:
        return [p for p in self.problems if p.subject_id == subject_id]

    @property
    def dataset_problems(self) -> list[Problem]:
        return [p for p in self.problems if p.subject_id is None]


# ------------------------------------------------------------------------------------------------------ discovery
def discover_dataset(data_dir: str | Path, naming: str = "auto") -> Dataset:
    """Find every subject's files under ``data_dir`` and join them with ``labels.csv``.

    Raises only when ``data_dir`` itself is unusable; everything else is collected in ``problems``/``warnings``.
    """
    root = Path(data_dir)
    if not root.exists():
        raise InputFileError(root, "path does not exist")
    if not root.is_dir():
        raise InputFileError(root, "is not a folder (expected a dataset folder with site folders and labels.csv)")
    conventions = resolve_naming(naming)
    labels_path = root / LABELS_NAME
    labels, problems = read_labels(labels_path)
    found, warnings = _find_subjects(root, conventions, problems)
    dataset = Dataset(root=root, labels_path=labels_path, subjects=[], problems=problems, warnings=warnings,
                      labels_usable=labels is not None)
    _join_labels(dataset, found, labels or {})
    # without usable labels every subject found is checked, so a folder of images can be checked before labelling
    checked = dataset.subjects if dataset.labels_usable else dataset.unlabelled
    for subject in checked:
        for role in subject.missing_roles:
            dataset.problems.append(missing_role_problem(subject, role))
    return dataset


def _find_subjects(root: Path, conventions: list, problems: list[Problem]) -> tuple[list[Subject], list[Problem]]:
    """Walk ``root``: NIfTI files are grouped per folder into subjects; a subject's site is its top folder."""
    subjects: list[Subject] = []
    warnings: list[Problem] = []
    for folder, dir_names, file_names in os.walk(root, followlinks=True):  # site folders may be links
        dir_names[:] = sorted(d for d in dir_names if not d.startswith("."))
        folder_path = Path(folder)
        files = sorted(folder_path / name for name in file_names if is_nifti(folder_path / name))
        if not files:
            continue
        for first, second in duplicate_spellings(files):
            problems.append(Problem(str(second), f"same image as {first.name} (two spellings of one file name); "
                                                 "keep only one"))
        relative = folder_path.relative_to(root).parts
        site = relative[0] if relative else root.name
        groups = group_folder_files(folder_path, files, conventions)
        if not groups:  # extra files beside a recognised subject (UCSF ADC, DWI, …) are ignored silently
            warnings.extend(Problem(str(path), "ignored: name matches no sequence of the "
                                               f"{'/'.join(c.name for c in conventions)} naming", site=site)
                            for path in files)
        for group in groups:
            subjects.append(Subject(subject_id=group.subject_id, site=site, folder=folder_path,
                                    naming=group.convention.name, files=group.files))
    return subjects, warnings


def _join_labels(dataset: Dataset, found: list[Subject], labels: dict[str, SubjectLabels]) -> None:
    by_id: dict[str, Subject] = {}
    misplaced: dict[str, list[Subject]] = {}
    for subject in found:
        label = labels.get(subject.subject_id) or labels.get(subject.folder.name)
        if label is not None and label.subject_id != subject.subject_id:
            subject.subject_id = label.subject_id  # folder named after the labelled id (e.g. UCSF "<id>_nifti")
        if subject.subject_id in by_id:
            other = by_id[subject.subject_id]
            dataset.problems.append(Problem(str(subject.folder), f"subject '{subject.subject_id}' is found twice: in "
                                            f"{other.folder} and here", subject.subject_id, subject.site))
            continue
        by_id[subject.subject_id] = subject
        if label is None:
            if dataset.labels_usable:
                dataset.warnings.append(Problem(str(_first_file(subject)), f"subject '{subject.subject_id}' has no row in "
                                                f"{LABELS_NAME}; it is not used", subject.subject_id, subject.site))
            dataset.unlabelled.append(subject)
            continue
        if label.site != subject.site and subject.folder != dataset.root:
            misplaced.setdefault(label.site, []).append(subject)
        subject.site = label.site
        subject.labels = label
        if not SAFE_ID.match(subject.subject_id):
            dataset.problems.append(Problem(str(subject.folder), f"subject id '{subject.subject_id}' contains characters "
                                            "that cannot be used in a file name", subject.subject_id, subject.site))
        dataset.subjects.append(subject)
    for site, subjects in misplaced.items():  # one warning per site: a flat layout would otherwise warn per subject
        first = subjects[0]
        dataset.warnings.append(Problem(str(first.folder), f"{len(subjects)} subject(s) labelled with site '{site}' are "
                                        f"not under a '{site}/' folder (e.g. '{first.subject_id}'); using the site "
                                        f"from {LABELS_NAME}", site=site))
    for subject_id, label in labels.items():
        if subject_id not in by_id:
            dataset.warnings.append(Problem(str(dataset.labels_path), f"line {label.line}: subject '{subject_id}' has no "
                                            "image files", subject_id, label.site))
    dataset.subjects.sort(key=lambda s: (s.site, s.subject_id))
    dataset.unlabelled.sort(key=lambda s: (s.site, s.subject_id))


def _first_file(subject: Subject) -> Path:
    return next(iter(subject.files.values()), subject.folder)


def missing_role_problem(subject: Subject, role: str) -> Problem:
    """The problem record for a missing file: it names the file the subject's convention expected."""
    expected = CONVENTIONS[subject.naming].expected_name(subject.subject_id, role)
    where = subject.folder / expected
    return Problem(str(where), f"missing {ROLE_NAMES[role]} of subject '{subject.subject_id}' "
                   f"({CONVENTIONS[subject.naming].title} naming; .nii or .nii.gz)", subject.subject_id, subject.site)


# --------------------------------------------------------------------------------------------------------- labels
def read_labels(path: Path) -> tuple[dict[str, SubjectLabels] | None, list[Problem]]:
    """Parse ``labels.csv``: required columns, known class values, one row per subject (extra columns kept).

    Returns ``None`` instead of labels when the file is missing or unusable as a whole.
    """
    if not path.is_file():
        return None, [Problem(str(path), f"is missing (a dataset needs {LABELS_NAME} with columns "
                                         f"{', '.join(LABEL_COLUMNS)})")]
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        return None, [Problem(str(path), f"cannot read {LABELS_NAME} ({exc})")]
    rows = [row for row in rows if any(cell.strip() for cell in row)]
    if not rows:
        return None, [Problem(str(path), "is empty (needs a header row with " + ", ".join(LABEL_COLUMNS) + ")")]
    header = [cell.strip().lower() for cell in rows[0]]
    missing = [column for column in LABEL_COLUMNS if column not in header]
    if missing:
        return None, [Problem(str(path), f"missing column{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
                                       f"(needs {', '.join(LABEL_COLUMNS)})")]
    labels: dict[str, SubjectLabels] = {}
    problems: list[Problem] = []
    for line, row in enumerate(rows[1:], start=2):
        values = {name: (row[i].strip() if i < len(row) else "") for i, name in enumerate(header)}
        label, row_problems = _parse_label_row(path, line, values)
        if label is None:
            problems.extend(row_problems)
            continue
        if label.subject_id in labels:
            problems.append(Problem(str(path), f"line {line}: subject '{label.subject_id}' is listed twice (first on "
                                               f"line {labels[label.subject_id].line})", label.subject_id, label.site))
            continue
        problems.extend(row_problems)
        labels[label.subject_id] = label
    return labels, problems


def _parse_label_row(path: Path, line: int, values: dict[str, str]) -> tuple[SubjectLabels | None, list[Problem]]:
    subject_id, site = values["subject_id"], values["site"]
    if not subject_id:
        return None, [Problem(str(path), f"line {line}: empty subject_id")]
    problems = []
    if not site:
        problems.append(Problem(str(path), f"line {line}: subject '{subject_id}' has an empty site", subject_id))
    classes: dict[str, str] = {}
    allowed = {**TASK_CLASSES, "split": SPLITS}
    for column, choices in allowed.items():
        value = values[column].lower()
        if value and value not in choices:
            problems.append(Problem(str(path), f"line {line}: unknown {column} value '{values[column]}' for subject "
                                               f"'{subject_id}' (expected {', '.join(choices)} or empty)",
                                    subject_id, site or None))
            value = ""
        classes[column] = value
    extra = {k: v for k, v in values.items() if k not in LABEL_COLUMNS and k}
    label = SubjectLabels(subject_id=subject_id, site=site, idh=classes["idh"], tumor_type=classes["tumor_type"],
                          split=classes["split"], extra=extra, line=line)
    return label, problems


# ---------------------------------------------------------------------------------------------------- NIfTI files
def read_nifti_header(path: Path) -> nib.Nifti1Image:
    """Open a NIfTI image (header only; voxels are read lazily) or raise an error naming the file."""
    if not path.exists():
        raise InputFileError(path, "file does not exist")
    try:
        image = nib.load(str(path))
    except _READ_ERRORS as exc:
        raise InputFileError(path, f"cannot read: not a valid NIfTI file ({_reason(exc, path)})") from None
    if not isinstance(image, nib.Nifti1Image | nib.Nifti2Image):
        raise InputFileError(path, f"is a {type(image).__name__}, not a NIfTI image")
    return image


def spatial_shape(image: nib.Nifti1Image, path: Path) -> tuple[int, int, int]:
    """The 3D shape (trailing length-1 axes dropped); a 4D or 2D image is an error."""
    shape = tuple(int(n) for n in image.shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) != 3:
        kind = f"{len(shape)}D" if len(shape) != 4 else f"4D ({shape[3]} volumes)"
        raise InputFileError(path, f"is a {kind} image with shape {format_shape(shape)}; a 3D volume is expected")
    return shape  # type: ignore[return-value]


def read_volume(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Voxels as float32 (3D, scaling applied) and the voxel-to-world affine; unreadable data is an error."""
    image = read_nifti_header(path)
    shape = spatial_shape(image, path)
    try:
        data = np.asarray(image.dataobj, dtype=np.float32).reshape(shape)
    except _READ_ERRORS as exc:
        raise InputFileError(path, "cannot read the image data: file is corrupt or truncated "
                                   f"({_reason(exc, path)})") from None
    return data, np.asarray(image.affine, dtype=np.float64)


def _reason(exc: BaseException, path: Path) -> str:
    text = str(exc).strip() or type(exc).__name__
    # nibabel repeats the full path; the message already names the file
    return text.replace(f'"{path}"', path.name).replace(str(path), path.name).replace("\n", " ")[:200]


def format_shape(shape: Iterable[int]) -> str:
    return "×".join(str(n) for n in shape)


def nifti_name(path: Path) -> str:
    stem = nifti_stem(path.name)
    return stem if stem is not None else path.name


def load_subject_volumes(subject: Subject, **options: object) -> dict[str, np.ndarray]:
    """One subject's validated volumes in RAS (see :func:`catphish.data.volumes.load_subject_volumes`)."""
    from catphish.data.volumes import load_subject_volumes as load

    return load(subject, **options)  # type: ignore[arg-type]
