"""Dataset discovery: the four naming conventions, labels.csv, and what counts as a warning rather than an error."""

from __future__ import annotations

from pathlib import Path

import pytest

from catphish.data.loading import discover_dataset, read_labels
from catphish.data.naming import CONVENTIONS, resolve_naming
from catphish.errors import ConfigError, InputFileError
from nifti_fixtures import NAMINGS, subject_id_for, write_dataset, write_labels, write_subject


@pytest.mark.parametrize("naming", NAMINGS)
def test_each_naming_convention_is_detected(tmp_path: Path, naming: str):
    rows = write_dataset(tmp_path, naming, sites={"siteA": 2, "siteB": 1})
    dataset = discover_dataset(tmp_path)
    assert not dataset.problems and not dataset.warnings
    assert [s.subject_id for s in dataset.subjects] == [r["subject_id"] for r in rows]
    assert {s.naming for s in dataset.subjects} == {naming}
    subject = dataset.subjects[0]
    assert sorted(subject.files) == ["flair", "seg", "t1", "t1c", "t2"]
    assert subject.labels is not None and subject.labels.extra == {"age": "40"}


def test_uncompressed_nii_and_an_explicit_naming_work(tmp_path: Path):
    write_dataset(tmp_path, "brats2023", sites={"siteA": 1}, suffix=".nii")
    assert len(discover_dataset(tmp_path, naming="brats2023").subjects) == 1
    # forcing another convention finds nothing usable: the files are ignored, the labelled subject has no files
    forced = discover_dataset(tmp_path, naming="ucsf-pdgm")
    assert not forced.subjects
    assert any("no image files" in w.problem for w in forced.warnings)


def test_conventions_can_be_mixed_per_subject_in_one_flat_site_folder(tmp_path: Path):
    site = tmp_path / "siteA"
    write_subject(site, "a1", "brats2021")
    write_subject(site, "b1", "brats2023")
    for path in sorted(site.rglob("*.nii.gz")):  # flatten: all files directly in the site folder
        path.rename(site / path.name)
    write_labels(tmp_path, [{"subject_id": sid, "site": "siteA", "idh": "", "tumor_type": "", "split": ""}
                            for sid in ("a1", "b1")])
    dataset = discover_dataset(tmp_path)
    assert {(s.subject_id, s.naming) for s in dataset.subjects} == {("a1", "brats2021"), ("b1", "brats2023")}
    assert not dataset.problems


def test_hospital_spellings_match_case_insensitively():
    brats = CONVENTIONS["brats2021"]
    assert brats.match("TCGA-FG-6692_t1c.nii.gz") == ("TCGA-FG-6692", "t1c")
    assert brats.match("X_FLAIR.NII.GZ") == ("X", "flair")
    assert CONVENTIONS["ucsf-pdgm"].match("UCSF-PDGM-0004_T1c_bias.nii.gz") is None
    assert CONVENTIONS["generic"].match("mask.nii") == ("", "seg")
    with pytest.raises(ConfigError, match="unknown naming convention 'bids'"):
        resolve_naming("bids")
    assert resolve_naming("brats2020")[0].name == "brats2021"


def test_missing_sequence_names_the_expected_file(tmp_path: Path):
    write_dataset(tmp_path, "ucsf-pdgm", sites={"siteA": 1})
    t2 = next(tmp_path.rglob("*_T2.nii.gz"))
    t2.unlink()
    problems = discover_dataset(tmp_path).problems
    assert len(problems) == 1
    assert problems[0].file == str(t2)
    assert "missing T2" in problems[0].problem and "UCSF-PDGM naming" in problems[0].problem


def test_unlabelled_files_and_labels_without_files_are_warnings(tmp_path: Path):
    rows = write_dataset(tmp_path, "generic", sites={"siteA": 2})
    write_subject(tmp_path / "siteA", "stray", "generic")
    write_labels(tmp_path, [*rows, {"subject_id": "ghost", "site": "siteA", "idh": "mutant", "tumor_type": "",
                                    "split": ""}])
    dataset = discover_dataset(tmp_path)
    assert not dataset.problems
    assert [s.subject_id for s in dataset.subjects] == [subject_id_for("generic", "siteA", i) for i in range(2)]
    messages = " | ".join(w.problem for w in dataset.warnings)
    assert "'stray' has no row in labels.csv" in messages
    assert "'ghost' has no image files" in messages


@pytest.mark.parametrize(("content", "expected"), [
    ("subject_id,site,idh,split\ns1,a,mutant,train\n", "missing column tumor_type"),
    ("subject_id,site,idh,tumor_type,split\ns1,a,mutnt,astrocytoma,train\n", "line 2: unknown idh value 'mutnt'"),
    ("subject_id,site,idh,tumor_type,split\ns1,a,,glioma,\n", "unknown tumor_type value 'glioma'"),
    ("subject_id,site,idh,tumor_type,split\ns1,a,,,\ns1,a,,,\n", "line 3: subject 's1' is listed twice"),
    ("subject_id,site,idh,tumor_type,split\ns1,a,,,validation\n", "unknown split value 'validation'"),
])
def test_bad_labels_are_problems_naming_the_line(tmp_path: Path, content: str, expected: str):
    path = tmp_path / "labels.csv"
    path.write_text(content)
    _, problems = read_labels(path)
    assert len(problems) == 1 and expected in problems[0].problem and problems[0].file == str(path)


def test_labels_are_normalised_and_extra_columns_kept(tmp_path: Path):
    path = tmp_path / "labels.csv"
    path.write_text("\ufeffSubject_ID, site ,IDH,tumor_type,split,age\n s1 ,a,Wildtype,GLIOBLASTOMA,Train,63\n")
    labels, problems = read_labels(path)
    assert not problems
    label = labels["s1"]
    assert (label.site, label.idh, label.tumor_type, label.split) == ("a", "wildtype", "glioblastoma", "train")
    assert label.extra == {"age": "63"}


def test_missing_labels_and_missing_folder(tmp_path: Path):
    write_subject(tmp_path / "siteA", "s1", "brats2021")
    dataset = discover_dataset(tmp_path)
    assert not dataset.labels_usable and dataset.problems[0].problem.startswith("is missing")
    assert [s.subject_id for s in dataset.unlabelled] == ["s1"]
    with pytest.raises(InputFileError, match="nowhere: path does not exist"):
        discover_dataset(tmp_path / "nowhere")


def test_subjects_outside_their_site_folder_give_one_warning_per_site(tmp_path: Path):
    for index in range(3):  # BraTS as downloaded: subject folders directly in the dataset folder, no site level
        write_subject(tmp_path, f"BraTS2021_{index:05d}", "brats2021")
    write_labels(tmp_path, [{"subject_id": f"BraTS2021_{i:05d}", "site": "center1", "idh": "", "tumor_type": "",
                             "split": ""} for i in range(3)])
    dataset = discover_dataset(tmp_path)
    assert not dataset.problems and {s.site for s in dataset.subjects} == {"center1"}
    assert len(dataset.warnings) == 1 and "3 subject(s) labelled with site 'center1'" in dataset.warnings[0].problem
