"""Aggregation weights, the weighted Flower strategies and DP calibration, on reply messages built in-process."""

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping

from catphish.config import FederatedConfig
from catphish.errors import CatphishError
from catphish.federated.comms import numpy_to_arrays
from catphish.federated.strategies import (
    AGGREGATION_WEIGHT,
    WeightedFedAvg,
    WeightedFedProx,
    aggregation_weights,
    build_strategy,
    check_federated_config,
    epsilon_after,
    noise_for_epsilon,
    sample_size,
)


def test_aggregation_weights_by_rule():
    examples, counts = [10, 30, 60], [[10, 0], [0, 30], [5, 55]]
    assert aggregation_weights(examples, counts, "uniform") == [1.0, 1.0, 1.0]
    assert aggregation_weights(examples, counts, "samples") == [10.0, 30.0, 60.0]
    # class totals 15 and 85: client 0 holds 10/15 of class 0 → (10/15 + 0) / 2
    balanced = aggregation_weights(examples, counts, "class_balanced")
    np.testing.assert_allclose(balanced, [(10 / 15) / 2, (30 / 85) / 2, (5 / 15 + 55 / 85) / 2])
    assert sum(balanced) == pytest.approx(1.0)
    with pytest.raises(CatphishError, match="unknown weighting"):
        aggregation_weights(examples, counts, "by-mood")


def _reply(value, examples, counts, node):
    from flwr.clientapp import ClientApp

    from federated_standin import InProcessGrid  # sets Flower's task identity so Messages can be built

    InProcessGrid(ClientApp(), 1)
    request = Message(RecordDict({"config": ConfigRecord({})}), dst_node_id=node, message_type=MessageType.TRAIN)
    content = RecordDict({"arrays": numpy_to_arrays({"w": np.full(2, value, np.float32)}),
                          "metrics": MetricRecord({"train-loss": 1.0, "num-examples": examples, "unit-weight": 1,
                                                   "class-counts": counts})})
    return Message(content, reply_to=request)


@pytest.mark.parametrize(("weighting", "expected"), [
    ("uniform", (0 + 3) / 2),
    ("samples", (0 * 10 + 3 * 30) / 40),
    ("class_balanced", 0.5 * 0 + 0.5 * 3),  # each client holds all of one class
])
def test_weighted_fedavg_averages_by_the_chosen_weights(weighting, expected):
    strategy = WeightedFedAvg(weighting, min_available_nodes=2)
    replies = [_reply(0.0, 10, [10, 0], 1), _reply(3.0, 30, [0, 30], 2)]
    arrays, metrics = strategy.aggregate_train(1, replies)
    np.testing.assert_allclose(arrays["w"].numpy(), expected)
    assert AGGREGATION_WEIGHT not in metrics


def test_build_strategy_chooses_fedprox_and_the_dp_wrapper():
    plan = build_strategy(FederatedConfig(strategy="fedprox", proximal_mu=0.3), 3)
    assert isinstance(plan.strategy, WeightedFedProx) and plan.strategy.proximal_mu == 0.3
    assert plan.private is None and plan.sample_size == 3
    private = build_strategy(FederatedConfig(differential_privacy="server_fixed", noise_multiplier=0.5), 3)
    assert isinstance(private.strategy, DifferentialPrivacyServerSideFixedClipping)
    assert private.private.accountant is not None
    assert sample_size(10, 0.3, 2) == 3 and sample_size(10, 0.1, 2) == 2 and sample_size(3, 1.0, 5) == 3


def test_dp_accounting_matches_flower_and_calibrates_to_a_target_epsilon():
    # Reference value measured with Flower's RdpAccountant: z=0.5, 3 clients, 3 rounds, delta 1e-5 → ε 21.44
    assert epsilon_after(0.5, 3, 1e-5, 3, 3) == pytest.approx(21.44, abs=0.01)
    noise = noise_for_epsilon(1.5, 10, 1e-5, 3, 3)
    assert epsilon_after(noise, 10, 1e-5, 3, 3) <= 1.5 < epsilon_after(noise * 0.99, 10, 1e-5, 3, 3)
    calibrated = build_strategy(FederatedConfig(differential_privacy="server_fixed", target_epsilon=1.5, rounds=10), 3)
    assert calibrated.private.noise_multiplier == pytest.approx(noise)


@pytest.mark.parametrize(("values", "message"), [
    ({"rounds": 0}, "federated.rounds must be at least 1"),
    ({"local_epochs": 0}, "local_epochs must be at least 1"),
    ({"fraction_train": 0.0}, "fraction_train must be in"),
    ({"dropout_probability": 1.5}, "dropout_probability must be in"),
    ({"min_clients": 4}, "min_clients=4 but the federation has only 3"),
    ({"retries": -1}, "retries must not be negative"),
    ({"differential_privacy": "server_fixed", "noise_multiplier": 0.0}, "noise_multiplier > 0"),
    ({"secure_aggregation": True, "differential_privacy": "server_fixed"}, "cannot run with it"),
    ({"secure_aggregation": True, "weighting": "class_balanced"}, "secure aggregation supports"),
    ({"secure_aggregation": True, "compression": "int8"}, "secure aggregation supports"),
])
def test_impossible_federated_settings_are_refused(values, message):
    with pytest.raises(CatphishError, match=message):
        check_federated_config(FederatedConfig(**values), 3)


def test_arrayrecord_helpers_keep_names():
    record = numpy_to_arrays({"a": np.zeros(2, np.float32), "b": np.ones((1, 2), np.float64)})
    assert isinstance(record, ArrayRecord) and list(record) == ["a", "b"]
