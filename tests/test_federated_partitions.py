"""Partitions of the training subjects into federated clients: pure functions, checked on labelled triples."""

from collections import Counter

import numpy as np
import pytest

from catphish.errors import CatphishError
from catphish.federated.partitions import (
    LabelledSubject,
    PartitionPlan,
    dirichlet_split,
    iid_split,
    label_skew_split,
    make_partition_plan,
    natural_sites,
)

CLASSES = ("mutant", "wildtype")


def cohort(sizes=None, mutant_share=0.3):
    """Sites of given sizes; the first ``mutant_share`` of each site is mutant."""
    sizes = sizes or {"TCGA": 40, "UTSW": 70, "EGD": 90}
    subjects = []
    for site, n in sizes.items():
        for i in range(n):
            subjects.append(LabelledSubject(f"{site}-{i:03d}", site, "mutant" if i < mutant_share * n else "wildtype"))
    return subjects


def assert_disjoint_cover(plan, subjects):
    ids = [i for client in plan.clients for i in client.subject_ids] + list(plan.holdout)
    assert sorted(ids) == sorted(s.subject_id for s in subjects)
    assert len(ids) == len(set(ids))


def test_natural_partition_is_one_client_per_site():
    subjects = cohort()
    plan = natural_sites(subjects)
    assert plan.names == ["EGD", "TCGA", "UTSW"]
    assert [len(c.subject_ids) for c in plan.clients] == [90, 40, 70]
    assert all(i.startswith(c.name) for c in plan.clients for i in c.subject_ids)
    assert_disjoint_cover(plan, subjects)


def test_iid_resplit_is_balanced_seeded_and_mixes_sites():
    subjects = cohort()
    plan = iid_split(subjects, 3, seed=1)
    assert sorted(len(c.subject_ids) for c in plan.clients) == [66, 67, 67]
    assert_disjoint_cover(plan, subjects)
    assert iid_split(subjects, 3, seed=1) == plan and iid_split(subjects, 3, seed=2) != plan
    assert all(len({i.split("-")[0] for i in c.subject_ids}) == 3 for c in plan.clients)


def _mutant_shares(plan, subjects):
    label = {s.subject_id: s.label for s in subjects}
    return np.array([np.mean([label[i] == "mutant" for i in c.subject_ids]) for c in plan.clients])


def test_dirichlet_small_alpha_skews_labels_more_than_large_alpha():
    subjects = cohort({"A": 300, "B": 300}, mutant_share=0.5)
    skewed = [_mutant_shares(dirichlet_split(subjects, CLASSES, 4, 0.1, seed), subjects).std() for seed in range(5)]
    mixed = [_mutant_shares(dirichlet_split(subjects, CLASSES, 4, 100.0, seed), subjects).std() for seed in range(5)]
    assert np.mean(skewed) > 0.2 > 0.05 > np.mean(mixed)
    plan = dirichlet_split(subjects, CLASSES, 4, 0.1, seed=0)
    assert_disjoint_cover(plan, subjects)
    assert min(len(c.subject_ids) for c in plan.clients) >= 1
    assert plan.parameters == {"alpha": 0.1}


def test_label_skew_gives_each_client_one_class_and_keeps_a_stratified_holdout():
    subjects = cohort()
    plan = label_skew_split(subjects, CLASSES, 3, holdout_fraction=0.05, seed=0)
    label = {s.subject_id: s.label for s in subjects}
    assert [{label[i] for i in c.subject_ids} for c in plan.clients] == [{"mutant"}, {"wildtype"}, {"mutant"}]
    held = Counter(label[i] for i in plan.holdout)
    totals = Counter(s.label for s in subjects)
    assert held["mutant"] == round(0.05 * totals["mutant"]) and held["wildtype"] == round(0.05 * totals["wildtype"])
    assert_disjoint_cover(plan, subjects)


def test_plan_round_trips_through_json_and_counts_classes():
    subjects = cohort()
    plan = make_partition_plan("label_skew", subjects, CLASSES, num_clients=2, seed=3)
    assert PartitionPlan.from_dict(plan.to_dict()) == plan
    counts = plan.class_counts(subjects, CLASSES)
    assert counts[0][1] == 0 and counts[1][0] == 0
    assert make_partition_plan("iid", subjects, CLASSES).clients.__len__() == 3  # default: one client per site


@pytest.mark.parametrize(("kind", "kwargs", "message"), [
    ("iid", {"num_clients": 500}, "cannot be split into 500"),
    ("dirichlet", {"alpha": 0.0}, "dirichlet_alpha must be positive"),
    ("label_skew", {"num_clients": 40, "holdout_fraction": 0.05}, "without subjects"),
    ("label_skew", {"holdout_fraction": 1.5}, "shared_holdout_fraction"),
    ("stripes", {}, "unknown partition 'stripes'"),
])
def test_impossible_partitions_are_clear_errors(kind, kwargs, message):
    with pytest.raises(CatphishError, match=message):
        make_partition_plan(kind, cohort({"A": 30, "B": 30}), CLASSES, **kwargs)


def test_unknown_label_and_empty_cohort_are_refused():
    with pytest.raises(CatphishError, match="'oligo' is not one of"):
        make_partition_plan("sites", [LabelledSubject("x", "A", "oligo")], CLASSES)
    with pytest.raises(CatphishError, match="no labelled training subjects"):
        make_partition_plan("sites", [], CLASSES)
    with pytest.raises(CatphishError, match="partition-id 3 is out of range"):
        natural_sites(cohort()).client(3)
