"""Who holds which training subjects in a federated study: pure functions over (subject, site, label) triples.

- ``sites``: the natural partition of the paper, one client per real hospital;
- ``iid``: the pooled cohort re-split uniformly at random (the easy, unrealistic case);
- ``dirichlet``: per class, client shares drawn from Dir(α) (α→0: each class on few clients; α→∞: IID);
- ``label_skew``: each client holds one class only (extreme non-IID), with a stratified shared holdout (5 % by
  default) kept at the server for validation.

Plans are seeded, deterministic and JSON-able, so a run folder records exactly which subject trained where.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from catphish.errors import CatphishError

PARTITION_KINDS: tuple[str, ...] = ("sites", "iid", "dirichlet", "label_skew")


@dataclass(frozen=True)
class LabelledSubject:
    """The only facts a partition needs about a subject."""

    subject_id: str
    site: str
    label: str


@dataclass(frozen=True)
class ClientPartition:
    """One federated client: a name (the site for natural partitions) and the subjects it trains on."""

    name: str
    subject_ids: tuple[str, ...]


@dataclass(frozen=True)
class PartitionPlan:
    kind: str
    clients: tuple[ClientPartition, ...]
    holdout: tuple[str, ...] = ()
    """Subjects kept at the server (label-skew shared holdout) for server-side validation, never trained on."""
    seed: int = 0
    parameters: dict[str, Any] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return [client.name for client in self.clients]

    def client(self, partition_id: int) -> ClientPartition:
        if not 0 <= partition_id < len(self.clients):
            raise CatphishError(f"partition-id {partition_id} is out of range: the plan has {len(self.clients)} clients")
        return self.clients[partition_id]

    def class_counts(self, subjects: Iterable[LabelledSubject], class_names: Sequence[str]) -> list[list[int]]:
        """Per client, the number of subjects of each class (in ``class_names`` order)."""
        label_of = {s.subject_id: s.label for s in subjects}
        return [[sum(label_of.get(i) == name for i in client.subject_ids) for name in class_names]
                for client in self.clients]

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "seed": self.seed, "parameters": dict(self.parameters),
                "clients": [{"name": c.name, "subject_ids": list(c.subject_ids)} for c in self.clients],
                "holdout": list(self.holdout)}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> PartitionPlan:
        try:
            clients = tuple(ClientPartition(str(c["name"]), tuple(map(str, c["subject_ids"]))) for c in values["clients"])
            return cls(kind=str(values["kind"]), clients=clients, holdout=tuple(map(str, values.get("holdout", ()))),
                       seed=int(values.get("seed", 0)), parameters=dict(values.get("parameters", {})))
        except (KeyError, TypeError, ValueError) as exc:
            raise CatphishError(f"partition plan is malformed ({exc})") from None


def natural_sites(subjects: Sequence[LabelledSubject]) -> PartitionPlan:
    """One client per site, in sorted site order (the paper's federation)."""
    sites = sorted({s.site for s in subjects})
    clients = tuple(ClientPartition(site, tuple(s.subject_id for s in subjects if s.site == site)) for site in sites)
    return PartitionPlan("sites", clients)


def iid_split(subjects: Sequence[LabelledSubject], num_clients: int, seed: int) -> PartitionPlan:
    """The pooled subjects shuffled and dealt out in near-equal shares."""
    _check_enough(subjects, num_clients)
    order = np.random.default_rng(seed).permutation(len(subjects))
    shares = np.array_split(order, num_clients)
    clients = tuple(ClientPartition(f"client{k}", tuple(subjects[i].subject_id for i in sorted(share)))
                    for k, share in enumerate(shares))
    return PartitionPlan("iid", clients, seed=seed)


def dirichlet_split(subjects: Sequence[LabelledSubject], class_names: Sequence[str], num_clients: int, alpha: float,
                    seed: int, min_subjects: int = 1, max_tries: int = 200) -> PartitionPlan:
    """Label-distribution skew: for each class, client proportions ~ Dir(α·1); redrawn until every client has data."""
    if alpha <= 0:
        raise CatphishError(f"federated.dirichlet_alpha must be positive, got {alpha}")
    _check_enough(subjects, num_clients * min_subjects)
    rng = np.random.default_rng(seed)
    by_class = _indices_by_class(subjects, class_names)
    for _ in range(max_tries):
        members: list[list[int]] = [[] for _ in range(num_clients)]
        for indices in by_class.values():
            shuffled = rng.permutation(indices)
            proportions = rng.dirichlet(np.full(num_clients, alpha))
            cuts = (np.cumsum(proportions)[:-1] * len(shuffled)).astype(int)
            for k, part in enumerate(np.split(shuffled, cuts)):
                members[k].extend(int(i) for i in part)
        if min(map(len, members)) >= min_subjects:
            clients = tuple(ClientPartition(f"client{k}", tuple(subjects[i].subject_id for i in sorted(m)))
                            for k, m in enumerate(members))
            return PartitionPlan("dirichlet", clients, seed=seed, parameters={"alpha": alpha})
    raise CatphishError(f"Dirichlet partition with alpha={alpha} left a client with fewer than {min_subjects} subject(s) "
                        f"in {max_tries} draws; use a larger alpha or fewer clients")


def label_skew_split(subjects: Sequence[LabelledSubject], class_names: Sequence[str], num_clients: int,
                     holdout_fraction: float, seed: int) -> PartitionPlan:
    """Extreme label skew: class ``c`` goes to clients ``k`` with ``k % C == c`` (or ``c % K == k`` with fewer clients).

    First a stratified ``holdout_fraction`` of every class (at least one subject per non-empty class) is set aside as
    the shared holdout the server validates on.
    """
    if not 0 <= holdout_fraction < 1:
        raise CatphishError(f"federated.shared_holdout_fraction must be in [0, 1), got {holdout_fraction}")
    rng = np.random.default_rng(seed)
    by_class = _indices_by_class(subjects, class_names)
    holdout: list[int] = []
    remaining: dict[str, list[int]] = {}
    for name, indices in by_class.items():
        shuffled = [int(i) for i in rng.permutation(indices)]
        n_hold = max(1, round(holdout_fraction * len(shuffled))) if holdout_fraction > 0 and len(shuffled) > 1 else 0
        holdout.extend(shuffled[:n_hold])
        remaining[name] = shuffled[n_hold:]
    members: list[list[int]] = [[] for _ in range(num_clients)]
    for c, name in enumerate(class_names):
        owners = [k for k in range(num_clients) if k % len(class_names) == c] or [c % num_clients]
        for owner, part in zip(owners, np.array_split(np.array(remaining.get(name, []), dtype=int), len(owners)),
                               strict=True):
            members[owner].extend(int(i) for i in part)
    empty = [k for k, m in enumerate(members) if not m]
    if empty:
        raise CatphishError(f"label-skew partition left client{empty[0]} without subjects "
                            f"({num_clients} clients for {len(class_names)} classes); use fewer clients")
    clients = tuple(ClientPartition(f"client{k}", tuple(subjects[i].subject_id for i in sorted(m)))
                    for k, m in enumerate(members))
    return PartitionPlan("label_skew", clients, holdout=tuple(subjects[i].subject_id for i in sorted(holdout)),
                         seed=seed, parameters={"holdout_fraction": holdout_fraction})


def make_partition_plan(kind: str, subjects: Sequence[LabelledSubject], class_names: Sequence[str], *,
                        num_clients: int = 0, seed: int = 0, alpha: float = 0.3,
                        holdout_fraction: float = 0.05) -> PartitionPlan:
    """Dispatch on ``federated.partition``; ``num_clients`` 0 means one client per training site."""
    if not subjects:
        raise CatphishError("no labelled training subjects to partition")
    unknown = sorted({s.label for s in subjects} - set(class_names))
    if unknown:
        raise CatphishError(f"subject label '{unknown[0]}' is not one of {', '.join(class_names)}")
    if kind == "sites":
        return natural_sites(subjects)
    clients = num_clients or len({s.site for s in subjects})
    if clients < 1:
        raise CatphishError(f"federated.num_clients must be at least 1, got {num_clients}")
    if kind == "iid":
        return iid_split(subjects, clients, seed)
    if kind == "dirichlet":
        return dirichlet_split(subjects, class_names, clients, alpha, seed)
    if kind == "label_skew":
        return label_skew_split(subjects, class_names, clients, holdout_fraction, seed)
    raise CatphishError(f"unknown partition '{kind}' (choose from {', '.join(PARTITION_KINDS)})")


def _indices_by_class(subjects: Sequence[LabelledSubject], class_names: Sequence[str]) -> dict[str, list[int]]:
    return {name: [i for i, s in enumerate(subjects) if s.label == name] for name in class_names}


def _check_enough(subjects: Sequence[LabelledSubject], needed: int) -> None:
    if len(subjects) < needed:
        raise CatphishError(f"{len(subjects)} training subjects cannot be split into {needed} non-empty client shares")
