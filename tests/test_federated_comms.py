"""Communication accounting and update compression, on arrays and records (no Flower run needed)."""

import numpy as np
import pytest
from flwr.app import ConfigRecord, RecordDict
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

from catphish.artifacts import file_bytes
from catphish.errors import CatphishError
from catphish.federated.comms import (
    ByteCountingGrid,
    communication_markdown,
    communication_table,
    compress_update,
    decompress_update,
    federated_run_bytes,
    numpy_to_arrays,
    restore_dtypes,
    wire_bytes,
)
from catphish.federated.rounds import write_rounds_csv


def weights(seed=0, scale=1.0, width=8):
    rng = np.random.default_rng(seed)
    return {"conv.weight": (rng.normal(size=(width, 4, 3, 3)) * scale).astype(np.float32),
            "bn.running_var": rng.random(8).astype(np.float32) + 0.5,
            "bn.num_batches_tracked": np.array(12, dtype=np.int64)}


def record_bytes(record):
    return sum(len(o.deflate()) for o in get_all_nested_objects(record).values())


@pytest.mark.parametrize(("method", "tolerance"), [("none", 0.0), ("float16", 1e-3), ("int8", 2e-3)])
def test_compressed_update_decodes_to_the_client_weights(method, tolerance):
    global_ = weights(0)
    local = {k: (v + 0.01 * np.sign(v)).astype(v.dtype) if v.dtype == np.float32 else v + 3 for k, v in global_.items()}
    sent = compress_update(local, global_, method)
    restored = {k: a.numpy() for k, a in decompress_update(sent, global_, method).items()}
    for name, value in local.items():
        assert restored[name].dtype == value.dtype
        np.testing.assert_allclose(restored[name], value, atol=tolerance, rtol=0)
    assert restored["bn.num_batches_tracked"] == 15  # integer buffers travel exactly


def test_compression_shrinks_the_upload():
    global_ = weights(0, width=256)
    local = weights(1, scale=1.01, width=256)
    sizes = {m: record_bytes(compress_update(local, global_, m)) for m in ("none", "float16", "int8")}
    raw = sum(v.nbytes for v in local.values())
    assert sizes["none"] > raw  # serialized records carry headers
    assert sizes["int8"] < sizes["float16"] < sizes["none"]
    assert sizes["int8"] < 0.45 * sizes["none"]


def test_unknown_compression_and_model_mismatch_are_clear_errors():
    with pytest.raises(CatphishError, match="unknown compression 'zip'"):
        compress_update(weights(), weights(), "zip")
    sent = compress_update({"other": np.zeros(3, np.float32)}, {"other": np.zeros(3, np.float32)}, "float16")
    with pytest.raises(CatphishError, match="lacks tensor 'conv.weight'"):
        decompress_update(sent, weights(), "float16")


def test_restore_dtypes_undoes_averaging_of_integer_buffers():
    reference = weights()
    averaged = numpy_to_arrays({k: v * 0.5 for k, v in reference.items()})
    restored = restore_dtypes(averaged, reference)
    assert restored["bn.num_batches_tracked"].numpy().dtype == np.int64


def test_byte_counting_grid_measures_each_node_in_both_directions():
    from flwr.app import Message, MessageType
    from flwr.clientapp import ClientApp

    from federated_standin import InProcessGrid

    echo = ClientApp()

    @echo.query()
    def reply(msg, context):
        return Message(RecordDict({"config": ConfigRecord({"pad": "x" * 1000 * (1 + context.node_config["partition-id"])})}),
                       reply_to=msg)

    grid = ByteCountingGrid(InProcessGrid(echo, 2))
    payload = RecordDict({"arrays": numpy_to_arrays(weights()), "config": ConfigRecord({"a": 1})})
    messages = [Message(payload, dst_node_id=node, message_type=MessageType.QUERY) for node in grid.get_node_ids()]
    expected_down = wire_bytes(messages[0])
    grid.send_and_receive(messages)
    (exchange,) = grid.take()
    assert exchange.down == {100: expected_down, 101: expected_down}
    assert exchange.up[101] - exchange.up[100] == pytest.approx(1000, abs=16)
    assert grid.take() == []


def test_communication_table_ratio_and_markdown(tmp_path):
    rows = communication_table(centralized_bytes=5_000_000, federated_bytes=30_000_000, catphishing_bytes=2_000_000,
                               rounds=10, sites=3)
    assert [r.mode for r in rows] == ["centralized", "federated", "catphishing"]
    assert rows[1].ratio_to_catphishing == pytest.approx(15.0)
    text = communication_markdown(rows)
    assert "| federated |" in text and "FL / CATphishing communication ratio: **15.00**" in text
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "model.safetensors").write_bytes(b"x" * 300)
    (tmp_path / "image.nii.gz").write_bytes(b"y" * 200)
    assert file_bytes([tmp_path / "pkg", tmp_path / "image.nii.gz"]) == 500
    with pytest.raises(CatphishError, match="does not exist"):
        file_bytes([tmp_path / "missing"])


def test_federated_run_bytes_sums_rounds_csv(tmp_path):
    rows = [{"round": r, "bytes_down": 1000 * r, "bytes_up": 10 * r, "bytes_down_A": 1000 * r} for r in (1, 2, 3)]
    write_rounds_csv(tmp_path / "rounds.csv", rows, ["A"])
    assert federated_run_bytes(tmp_path) == 6060
    with pytest.raises(CatphishError, match="rounds.csv: not found"):
        federated_run_bytes(tmp_path / "elsewhere")


def test_bench_comms_writes_the_mode_comparison_into_benchmarks(tmp_path):
    from catphish.artifacts import write_json
    from catphish.modes.federated import communication_benchmark

    run = tmp_path / "fl"
    write_json(run / "run.json", {"train_sites": ["A", "B"], "federated": {"rounds": 2, "clients": ["A", "B"]}})
    rows = [{"round": r, "round_time_s": 1.5, "bytes_down": 4000, "bytes_up": 4000} for r in (1, 2)]
    write_rounds_csv(run / "rounds.csv", rows, [])
    for site, size in (("A", 3000), ("B", 5000), ("C", 99999)):
        (tmp_path / "data" / site).mkdir(parents=True)
        (tmp_path / "data" / site / "x_t1.nii.gz").write_bytes(b"0" * size)
    package = tmp_path / "A.catphish"
    package.mkdir()
    (package / "model.safetensors").write_bytes(b"1" * 4000)
    benchmarks = tmp_path / "BENCHMARKS.md"
    body = communication_benchmark(run, [package], tmp_path / "data", benchmarks=benchmarks)
    assert "| centralized | training images (copied once) | 8,000 |" in body
    assert "FL / CATphishing communication ratio: **4.00**" in body
    assert "<!-- bench:comms -->" in benchmarks.read_text()
    with pytest.raises(CatphishError, match="no folder for training site 'Z'"):
        communication_benchmark(run, [package], tmp_path / "data", train_sites=["Z"])
