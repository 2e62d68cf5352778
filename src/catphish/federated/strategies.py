"""Server strategies: Flower's FedAvg/FedProx with catphish's aggregation weights, and the central-DP wrapper.

Aggregation weights (``federated.weighting``):
- ``samples``: by each client's number of training subjects (McMahan et al.'s FedAvg);
- ``uniform``: every participating client counts the same;
- ``class_balanced``: client ``k`` weighs ``Σ_c n_kc / N_c`` (its share of each class among this round's clients),
  so every class pulls on the global model equally however unevenly the classes are spread over sites.

The weight is computed at the server from the counts each client reports and written into the reply's metrics
under :data:`AGGREGATION_WEIGHT`, which the Flower strategy then averages by. Central differential privacy uses
Flower's :class:`DifferentialPrivacyServerSideFixedClipping` with the RDP accountant, which requires Flower's own
FedAvg aggregation with equal client weights, so it always aggregates uniformly.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping, FedAvg, FedProx, Strategy

from catphish.config import FederatedConfig
from catphish.errors import CatphishError
from catphish.runtime import log

AGGREGATION_WEIGHT = "agg-weight"
UNIT_WEIGHT = "unit-weight"
NUM_EXAMPLES = "num-examples"
CLASS_COUNTS = "class-counts"
WEIGHTINGS: tuple[str, ...] = ("samples", "uniform", "class_balanced")


def aggregation_weights(num_examples: Sequence[float], class_counts: Sequence[Sequence[float]],
                        weighting: str) -> list[float]:
    """Unnormalised aggregation weight of each participating client."""
    if weighting == "uniform":
        return [1.0] * len(num_examples)
    if weighting == "samples":
        return [float(n) for n in num_examples]
    if weighting == "class_balanced":
        if not class_counts:
            return []
        totals = [sum(column) for column in zip(*class_counts, strict=True)]
        present = [c for c, total in enumerate(totals) if total > 0]
        return [sum(counts[c] / totals[c] for c in present) / max(len(present), 1) for counts in class_counts]
    raise CatphishError(f"unknown weighting '{weighting}' (choose from {', '.join(WEIGHTINGS)})")


def assign_weights(replies: Iterable[Message], weighting: str) -> None:
    """Write each valid reply's aggregation weight into its (single) MetricRecord."""
    valid = [reply for reply in replies if not reply.has_error()]
    metrics = [next(iter(reply.content.metric_records.values())) for reply in valid]
    weights = aggregation_weights([float(m[NUM_EXAMPLES]) for m in metrics],
                                  [list(m[CLASS_COUNTS]) for m in metrics], weighting)  # type: ignore[arg-type]
    for record, weight in zip(metrics, weights, strict=True):
        record[AGGREGATION_WEIGHT] = float(weight)


class _Weighting:
    """Mixin: compute catphish's aggregation weights before Flower's weighted average."""

    weighting: str = "samples"

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        assign_weights(replies, self.weighting)
        return super().aggregate_train(server_round, replies)  # type: ignore[misc]


class WeightedFedAvg(_Weighting, FedAvg):
    """FedAvg with uniform, sample-count or class-balanced aggregation weights."""

    def __init__(self, weighting: str, **kwargs: Any) -> None:
        super().__init__(weighted_by_key=AGGREGATION_WEIGHT, **kwargs)
        self.weighting = weighting


class WeightedFedProx(_Weighting, FedProx):
    """FedProx (clients add μ/2·‖w − w_global‖²) with the same choice of aggregation weights."""

    def __init__(self, weighting: str, **kwargs: Any) -> None:
        super().__init__(weighted_by_key=AGGREGATION_WEIGHT, **kwargs)
        self.weighting = weighting


@dataclass
class StrategyPlan:
    strategy: Strategy
    sample_size: int
    """Clients asked to train in each round."""
    private: DifferentialPrivacyServerSideFixedClipping | None = None
    """The DP wrapper when central DP is on (its accountant reports ε)."""


def sample_size(num_clients: int, fraction: float, min_clients: int) -> int:
    """Flower's rule: ``int(n·fraction)`` clients, but never fewer than the minimum (capped at ``n``)."""
    return min(num_clients, max(int(num_clients * fraction), min_clients, 1))


def build_strategy(federated: FederatedConfig, num_clients: int) -> StrategyPlan:
    """The Flower strategy for a run of ``num_clients`` clients, wrapped for central DP when asked."""
    check_federated_config(federated, num_clients)
    size = sample_size(num_clients, federated.fraction_train, federated.min_clients)
    common: dict[str, Any] = {"fraction_train": federated.fraction_train, "fraction_evaluate": 1.0,
                              "min_train_nodes": min(size, num_clients), "min_evaluate_nodes": 1,
                              "min_available_nodes": num_clients}
    if federated.differential_privacy != "server_fixed":
        if federated.strategy == "fedprox":
            return StrategyPlan(WeightedFedProx(federated.weighting, proximal_mu=federated.proximal_mu, **common), size)
        return StrategyPlan(WeightedFedAvg(federated.weighting, **common), size)
    if federated.weighting != "uniform":
        log.warning("central DP with the RDP accountant needs equal client weights: aggregating uniformly "
                    "(federated.weighting=%s is ignored)", federated.weighting)
    base: FedAvg = (FedProx(weighted_by_key=UNIT_WEIGHT, proximal_mu=federated.proximal_mu, **common)
                    if federated.strategy == "fedprox" else FedAvg(weighted_by_key=UNIT_WEIGHT, **common))
    noise = federated.noise_multiplier
    if federated.target_epsilon > 0:
        noise = noise_for_epsilon(federated.target_epsilon, federated.rounds, federated.dp_delta, num_clients, size)
        log.info("central DP: noise multiplier %.3f gives epsilon %.2f after %d rounds (delta %g)", noise,
                 federated.target_epsilon, federated.rounds, federated.dp_delta)
    wrapper = DifferentialPrivacyServerSideFixedClipping(base, noise, federated.clipping_norm, size,
                                                         accountant=rdp_accountant(federated.dp_delta, num_clients))
    return StrategyPlan(wrapper, size, private=wrapper)


def rdp_accountant(delta: float, population: int) -> Any:
    """Flower's Rényi-DP accountant for client-level DP without sampling amplification (needs ``flwr[dp]``)."""
    try:
        from flwr.serverapp import NeighboringRelation, PrivacyConfig, RdpAccountant, SamplingMethod

        return RdpAccountant(PrivacyConfig(target_delta=delta, population_size=population,
                                           neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
                                           sampling_method=SamplingMethod.NO_AMPLIFICATION))
    except ImportError as exc:
        raise CatphishError(f"central DP accounting needs Flower's optional DP extra: pip install 'flwr[dp]' "
                            f"({exc})") from None


def epsilon_after(noise_multiplier: float, releases: int, delta: float, population: int, sample_size: int) -> float:
    """Client-level ε after ``releases`` rounds of the Gaussian mechanism (RDP, no sampling amplification)."""
    from flwr.serverapp import GaussianPrivacyEvent

    accountant = rdp_accountant(delta, population)
    accountant.compose(GaussianPrivacyEvent(noise_multiplier, sample_size, population), count=releases)
    return float(accountant.get_privacy_spent().epsilon)


def noise_for_epsilon(target_epsilon: float, releases: int, delta: float, population: int, sample_size: int,
                      tolerance: float = 1e-3) -> float:
    """The smallest noise multiplier whose ε after ``releases`` rounds is at most ``target_epsilon`` (bisection)."""
    low, high = 1e-2, 1.0
    while epsilon_after(high, releases, delta, population, sample_size) > target_epsilon:
        low, high = high, high * 2
        if high > 1e6:
            raise CatphishError(f"no noise multiplier reaches epsilon {target_epsilon} in {releases} rounds")
    while high - low > tolerance * high:
        middle = (low + high) / 2
        if epsilon_after(middle, releases, delta, population, sample_size) > target_epsilon:
            low = middle
        else:
            high = middle
    return high


def check_federated_config(federated: FederatedConfig, num_clients: int) -> None:
    """Values a dataclass type cannot rule out, checked before any client starts."""
    if federated.rounds < 1:
        raise CatphishError(f"federated.rounds must be at least 1, got {federated.rounds}")
    if federated.local_epochs < 1:
        raise CatphishError(f"federated.local_epochs must be at least 1, got {federated.local_epochs}")
    if not 0 < federated.fraction_train <= 1:
        raise CatphishError(f"federated.fraction_train must be in (0, 1], got {federated.fraction_train}")
    if not 0 <= federated.dropout_probability <= 1:
        raise CatphishError(f"federated.dropout_probability must be in [0, 1], got {federated.dropout_probability}")
    if federated.min_clients < 1:
        raise CatphishError(f"federated.min_clients must be at least 1, got {federated.min_clients}")
    if federated.min_clients > num_clients:
        raise CatphishError(f"federated.min_clients={federated.min_clients} but the federation has only "
                            f"{num_clients} client(s)")
    if federated.retries < 0:
        raise CatphishError(f"federated.retries must not be negative, got {federated.retries}")
    if federated.proximal_mu < 0:
        raise CatphishError(f"federated.proximal_mu must not be negative, got {federated.proximal_mu}")
    if federated.differential_privacy != "none" and (federated.noise_multiplier <= 0 or federated.clipping_norm <= 0):
        raise CatphishError("differential privacy needs federated.noise_multiplier > 0 and federated.clipping_norm > 0")
    if federated.secure_aggregation and federated.differential_privacy == "server_fixed":
        raise CatphishError("secure aggregation hides individual updates, so server-side DP clipping cannot run with it; "
                            "use federated.differential_privacy=none with secure aggregation")
    if federated.secure_aggregation and (federated.weighting == "class_balanced" or federated.compression != "none"):
        raise CatphishError("secure aggregation supports federated.weighting=samples|uniform and no compression "
                            f"(got weighting={federated.weighting}, compression={federated.compression})")
