import json
import pickle

import numpy as np
import pytest
import torch

from catphish import artifacts
from catphish.errors import ArtifactError, CatphishError


def test_tensors_round_trip(tmp_path):
    tensors = {"w": torch.randn(3, 4), "b": torch.arange(5)}
    path = artifacts.save_tensors(tmp_path / "m.safetensors", tensors)
    loaded = artifacts.load_tensors(path)
    assert set(loaded) == {"w", "b"}
    assert torch.equal(loaded["w"], tensors["w"]) and torch.equal(loaded["b"], tensors["b"])


def test_nested_state_round_trip_keeps_types(tmp_path):
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    rng = np.random.default_rng(3)
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": 7,
             "torch_rng": torch.get_rng_state(), "numpy_rng": rng.bit_generator.state, "tuple": (1, "a", None)}
    artifacts.save_state(tmp_path / "ckpt.safetensors", state)
    loaded = artifacts.load_state(tmp_path / "ckpt.safetensors")
    assert loaded["step"] == 7 and loaded["tuple"] == (1, "a", None)
    assert torch.equal(loaded["torch_rng"], state["torch_rng"])
    restored = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    restored.load_state_dict(loaded["optimizer"])
    assert 0 in restored.state_dict()["state"]
    np.random.default_rng().bit_generator.state = loaded["numpy_rng"]


@pytest.mark.parametrize("suffix", [".pt", ".pkl", ".ckpt"])
def test_pickle_files_are_refused_by_suffix(tmp_path, suffix):
    path = tmp_path / f"model{suffix}"
    path.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(ArtifactError, match="refusing to load a pickle"):
        artifacts.load_tensors(path)


def test_pickle_bytes_are_refused_whatever_the_name(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(ArtifactError, match="pickle"):
        artifacts.load_tensors(path)


def test_truncated_safetensors_is_a_clear_error(tmp_path):
    path = artifacts.save_tensors(tmp_path / "m.safetensors", {"w": torch.randn(64, 64)})
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ArtifactError, match="m.safetensors: .*corrupt or truncated"):
        artifacts.load_tensors(path)


def _package(tmp_path):
    folder = tmp_path / "pkg"
    artifacts.save_tensors(folder / "model.safetensors", {"w": torch.ones(2)})
    artifacts.write_json(folder / "card.json", {"site": "A"})
    artifacts.write_manifest(folder, kind="site-package")
    return folder


def test_manifest_verifies_untouched_folder(tmp_path):
    manifest = artifacts.verify_folder(_package(tmp_path), kind="site-package")
    assert set(manifest["files"]) == {"model.safetensors", "card.json"}


def test_tampered_file_is_detected(tmp_path):
    folder = _package(tmp_path)
    artifacts.write_json(folder / "card.json", {"site": "B"})
    with pytest.raises(ArtifactError, match="card.json: sha256 does not match"):
        artifacts.verify_folder(folder)


def test_added_pickle_and_unknown_file_are_refused(tmp_path):
    folder = _package(tmp_path)
    (folder / "extra.txt").write_text("x")
    with pytest.raises(ArtifactError, match="extra.txt: file not listed"):
        artifacts.verify_folder(folder)
    (folder / "extra.txt").unlink()
    (folder / "weights.pt").write_bytes(b"\x80\x04junk")
    with pytest.raises(ArtifactError, match="weights.pt: refusing"):
        artifacts.verify_folder(folder)


def test_unknown_format_version_and_kind_are_refused(tmp_path):
    folder = _package(tmp_path)
    manifest = json.loads((folder / "manifest.json").read_text())
    with pytest.raises(ArtifactError, match="expected 'classifier-run'"):
        artifacts.verify_folder(folder, kind="classifier-run")
    manifest["format_version"] = 99
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="format version 99 is not supported"):
        artifacts.verify_folder(folder)


def test_atomic_write_leaves_no_partial_file_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "out.json"

    def explode(*_args, **_kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(artifacts.os, "replace", explode)
    with pytest.raises(OSError):
        artifacts.write_json(target, {"a": 1})
    assert list(tmp_path.iterdir()) == []


def test_unwritable_output_folder_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(CatphishError, match="cannot"):
        artifacts.write_json(blocker / "sub" / "x.json", {})


def test_run_record_has_reproducibility_fields(tmp_path):
    data = tmp_path / "in.txt"
    data.write_text("hello")
    with artifacts.run_record(tmp_path / "run", "test", {"a": 1}, seed=5, inputs=[data]) as record:
        record.add(result=3)
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["status"] == "finished" and run["seed"] == 5 and run["result"] == 3
    assert run["inputs"][str(data)] == artifacts.sha256_file(data)
    assert {"torch", "numpy", "python"} <= set(run["versions"])
    assert run["host"]["cpu_count"] >= 1 and run["started"] <= run["finished"]


def test_run_record_marks_failures(tmp_path):
    with pytest.raises(ValueError), artifacts.run_record(tmp_path, "test", None, seed=0):
        raise ValueError("boom")
    assert json.loads((tmp_path / "run.json").read_text())["status"] == "failed"


def test_output_dir_refuses_other_runs_unless_told(tmp_path):
    out = tmp_path / "run"
    assert artifacts.open_output_dir(out, {"cfg": 1}) is False
    (out / "x").write_text("partial")
    with pytest.raises(CatphishError, match="already exists"):
        artifacts.open_output_dir(out, {"cfg": 1})
    assert artifacts.open_output_dir(out, {"cfg": 1}, resume=True) is True
    with pytest.raises(CatphishError, match="different run"):
        artifacts.open_output_dir(out, {"cfg": 2}, resume=True)
    assert artifacts.open_output_dir(out, {"cfg": 2}, overwrite=True) is False
    assert not (out / "x").exists()
