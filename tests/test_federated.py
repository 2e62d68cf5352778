"""The federated server loop and client app, run in-process on Flower messages (no Ray): strategies, options,
failures, resume, secure aggregation and the run folder it writes."""

import json
import shutil

import numpy as np
import pytest
import torch
from flwr.app import Context, RecordDict

from catphish.artifacts import load_tensors, read_json, save_tensors
from catphish.config import TASK_CLASSES, preset_config
from catphish.data.prepared import load_prepared_dir
from catphish.errors import CatphishError
from catphish.evaluation.predictions import read_predictions
from catphish.federated.client_app import make_client_app
from catphish.federated.partitions import LabelledSubject, make_partition_plan
from catphish.federated.rounds import read_rounds_csv
from catphish.federated.secagg import make_secure_client_app
from catphish.federated.server_app import FederatedSetup, load_checkpoint, serve
from catphish.federated.task import ClientSource
from catphish.training.ensemble import load_ensemble
from federated_standin import CALLS, FAIL_AFTER_CALLS, KILL_AT_ROUND, InProcessGrid, write_cohort

STANDIN = "federated_standin"
SITES = {"TCGA": 6, "UTSW": 8, "EGD": 5, "NYU": 6}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    return write_cohort(tmp_path_factory.mktemp("fl") / "prepared", SITES, size=16)


@pytest.fixture(autouse=True)
def _reset_standin():
    CALLS.clear(), FAIL_AFTER_CALLS.clear(), KILL_AT_ROUND.clear()
    yield
    CALLS.clear(), FAIL_AFTER_CALLS.clear(), KILL_AT_ROUND.clear()


def make_setup(cohort, out, partition="sites", trainer=STANDIN, resume=False, classifier=None, task="idh", **federated):
    config = preset_config("demo")
    config.classifier.channels, config.classifier.batch_size = (4, 8), 8
    for key, value in {"rounds": 2, **federated}.items():
        setattr(config.federated, key, value)
    for key, value in (classifier or {}).items():
        setattr(config.classifier, key, value)
    subjects = [LabelledSubject(s.subject_id, s.site, s.label(task))
                for s in load_prepared_dir(cohort, sites=["TCGA", "UTSW", "EGD"])]
    plan = make_partition_plan(partition, subjects, TASK_CLASSES[task], seed=0, holdout_fraction=0.2)
    out.mkdir(parents=True, exist_ok=True)
    setup = FederatedSetup(out_dir=str(out), task=task, study=config.to_dict(), plan=plan.to_dict(),
                           data_dir=str(cohort), test_sites=["NYU"], trainer=trainer, resume=resume)
    sources = [ClientSource(c.name, str(cohort), c.subject_ids, trainer=trainer) for c in plan.clients]
    return setup, sources


def run(setup, sources, secure=False):
    if secure:
        grid = InProcessGrid(make_secure_client_app(sources), len(sources))
        return serve(grid, setup, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={}))
    return serve(InProcessGrid(make_client_app(sources), len(sources)), setup)


def test_fedavg_with_the_real_classifier_writes_the_run_folder(cohort, tmp_path):
    setup, sources = make_setup(cohort, tmp_path / "run", trainer="catphish.training.classifier",
                                classifier={"augment": False})
    summary = run(setup, sources)
    rows = read_rounds_csv(tmp_path / "run" / "rounds.csv")
    assert [r["round"] for r in rows] == ["1", "2"]
    assert all(r["clients_ok"] == "3" for r in rows)
    for site in ("TCGA", "UTSW", "EGD"):  # measured bytes per client and direction
        assert all(int(r[f"bytes_down_{site}"]) > 1000 and int(r[f"bytes_up_{site}"]) > 1000 for r in rows)
    assert summary["bytes_total"] == sum(int(r["bytes_down"]) + int(r["bytes_up"]) for r in rows)
    predictions = read_predictions(tmp_path / "run" / "predictions.csv")
    assert len(predictions) == SITES["NYU"] and {p.site for p in predictions} == {"NYU"}
    assert {(p.mode, p.fold, p.task) for p in predictions} == {("federated", "ensemble", "idh")}
    weights = load_tensors(tmp_path / "run" / "model" / "idh-fold0.safetensors")
    final = load_checkpoint(tmp_path / "run")
    assert final["round"] == 2 and all(np.array_equal(weights[k].numpy(), final["arrays"][k]) for k in weights)
    assert (tmp_path / "run" / "rounds.png").stat().st_size > 1000
    ensemble = load_ensemble(tmp_path / "run")  # the same model folder as every mode: `catphish predict` reads it
    assert ensemble.mode == "federated" and ensemble.config.classifier.channels == (4, 8)


def test_fedprox_sends_mu_and_a_schedule_spanning_all_rounds(cohort, tmp_path):
    setup, sources = make_setup(cohort, tmp_path / "run", strategy="fedprox", proximal_mu=0.25, rounds=3,
                                local_epochs=2)
    run(setup, sources)
    assert {c["proximal_mu"] for c in CALLS} == {0.25}
    assert sorted({c["optimizer_state"]["epoch"] for c in CALLS}) == [0, 2, 4]
    assert {c["optimizer_state"]["total_epochs"] for c in CALLS} == {6}


def test_dropout_is_tolerated_and_recorded(cohort, tmp_path):
    setup, sources = make_setup(cohort, tmp_path / "run", rounds=4, dropout_probability=0.4, min_clients=1)
    run(setup, sources)
    rows = read_rounds_csv(tmp_path / "run" / "rounds.csv")
    assert len(rows) == 4 and sum(int(r["clients_failed"]) for r in rows) > 0
    assert all(int(r["clients_ok"]) >= 1 for r in rows)


def test_all_clients_dropping_fails_clearly_after_retries(cohort, tmp_path):
    setup, sources = make_setup(cohort, tmp_path / "run", dropout_probability=1.0, retries=2)
    with pytest.raises(CatphishError, match=r"round 1: fewer than federated.min_clients=2 clients .* in 3 attempt"):
        run(setup, sources)


def test_a_site_failing_keeps_the_last_global_model_and_resume_continues(cohort, tmp_path):
    setup, sources = make_setup(cohort, tmp_path / "run", rounds=3, retries=1)
    FAIL_AFTER_CALLS["n"] = 3  # round 1 trains; from round 2 on every site fails
    with pytest.raises(CatphishError, match="the last global model \\(round 1\\) is kept in .*checkpoint"):
        run(setup, sources)
    assert load_checkpoint(tmp_path / "run")["round"] == 1
    assert len(read_rounds_csv(tmp_path / "run" / "rounds.csv")) == 1
    FAIL_AFTER_CALLS.clear()
    setup.resume = True
    summary = run(setup, sources)
    assert summary["rounds"] == 3 and load_checkpoint(tmp_path / "run")["round"] == 3


def test_killed_run_resumes_from_the_last_round_and_ends_where_an_unbroken_run_ends(cohort, tmp_path):
    reference, sources = make_setup(cohort, tmp_path / "unbroken", rounds=3)
    run(reference, sources)
    setup, sources = make_setup(cohort, tmp_path / "killed", rounds=3)
    KILL_AT_ROUND["round"] = 3
    with pytest.raises(KeyboardInterrupt):
        run(setup, sources)
    KILL_AT_ROUND.clear()
    assert load_checkpoint(tmp_path / "killed")["round"] == 2
    CALLS.clear()
    setup.resume = True
    run(setup, sources)
    assert len(CALLS) == 3  # only round 3 was trained again
    unbroken = load_tensors(tmp_path / "unbroken" / "model" / "idh-fold0.safetensors")
    resumed = load_tensors(tmp_path / "killed" / "model" / "idh-fold0.safetensors")
    assert all(torch.allclose(unbroken[k].float(), resumed[k].float()) for k in unbroken)
    assert [r["round"] for r in read_rounds_csv(tmp_path / "killed" / "rounds.csv")] == ["1", "2", "3"]


def test_central_dp_reports_epsilon_every_round(cohort, tmp_path):
    setup, sources = make_setup(cohort, tmp_path / "run", rounds=3, differential_privacy="server_fixed",
                                noise_multiplier=0.5, weighting="uniform")
    summary = run(setup, sources)
    epsilons = [float(r["epsilon"]) for r in read_rounds_csv(tmp_path / "run" / "rounds.csv")]
    assert epsilons == sorted(epsilons) and epsilons[-1] == pytest.approx(21.44, abs=0.01)
    assert summary["privacy"]["idh"]["delta"] == 1e-5 and summary["privacy"]["idh"]["releases"] == 3


def test_compression_cuts_the_measured_upload(cohort, tmp_path):
    up = {}
    for method in ("none", "float16", "int8"):
        setup, sources = make_setup(cohort, tmp_path / method, rounds=1, compression=method)
        up[method] = run(setup, sources)["bytes_up"]
    assert up["int8"] < up["float16"] < up["none"]  # the stand-in's tensors are tiny: headers dominate


def test_label_skew_validates_on_the_shared_holdout_and_clients_evaluate(cohort, tmp_path):
    setup, sources = make_setup(cohort, tmp_path / "run", partition="label_skew", weighting="class_balanced",
                                evaluate_clients=True)
    run(setup, sources)
    rows = read_rounds_csv(tmp_path / "run" / "rounds.csv")
    assert all(0.0 <= float(r["val_accuracy"]) <= 1.0 and r["val_loss"] for r in rows)
    assert all(0.0 <= float(r["eval_accuracy"]) <= 1.0 for r in rows)
    assert json.loads(json.dumps(setup.plan))["holdout"]


def test_synthetic_pretraining_starts_from_the_given_weights(cohort, tmp_path):
    from federated_standin import build_classifier

    model = build_classifier(None, 2, 2)
    with torch.no_grad():
        model[3].weight.fill_(0.123)
    save_tensors(tmp_path / "synthetic.safetensors", dict(model.state_dict()))
    setup, sources = make_setup(cohort, tmp_path / "run", rounds=1)
    setup.initial_weights = str(tmp_path / "synthetic.safetensors")
    run(setup, sources)
    assert all(torch.allclose(c["weights"]["3.weight"], torch.full((256, 5), 0.123)) for c in CALLS)


def test_secure_aggregation_matches_plain_fedavg(cohort, tmp_path):
    plain, sources = make_setup(cohort, tmp_path / "plain")
    secure, _ = make_setup(cohort, tmp_path / "secure", secure_aggregation=True)
    run(plain, sources)
    summary = run(secure, sources, secure=True)
    assert summary["secure_aggregation"]["protocol"].startswith("SecAgg+")
    a = load_tensors(tmp_path / "plain" / "model" / "idh-fold0.safetensors")
    b = load_tensors(tmp_path / "secure" / "model" / "idh-fold0.safetensors")
    for name in a:
        if a[name].is_floating_point():
            assert torch.allclose(a[name], b[name], atol=1e-4), name
    plain_up = read_rounds_csv(tmp_path / "plain" / "rounds.csv")[0]["bytes_up"]
    secure_up = read_rounds_csv(tmp_path / "secure" / "rounds.csv")[0]["bytes_up"]
    assert int(secure_up) > int(plain_up)  # four exchanges per round instead of one


def test_a_client_without_data_for_the_task_is_refused_at_the_start(cohort, tmp_path):
    setup, sources = make_setup(cohort, tmp_path / "run")
    empty = tmp_path / "empty"
    shutil.copytree(cohort / "TCGA", empty / "TCGA")
    sources[0] = ClientSource("TCGA", str(empty), ("no-such-subject",), trainer=STANDIN)
    with pytest.raises(CatphishError, match="client 'TCGA' has no training subjects labelled for task 'idh'"):
        run(setup, sources)
    assert not (tmp_path / "run" / "rounds.csv").exists()


def test_tumour_type_trains_both_stages_and_writes_stage_rows(cohort, tmp_path):
    setup, sources = make_setup(cohort, tmp_path / "run", task="tumor_type")
    summary = run(setup, sources)
    assert summary["stages"] == ["stage1", "stage2"]
    for stage in ("stage1", "stage2"):
        assert len(read_rounds_csv(tmp_path / "run" / stage / "rounds.csv")) == 2
    assert {c["weights"]["5.weight"].shape[0] for c in CALLS} == {2}  # both stages are binary models
    predictions = read_predictions(tmp_path / "run" / "predictions.csv")
    assert {p.stage for p in predictions} == {"combined", "stage1", "stage2"}
    combined = [p for p in predictions if p.stage == "combined"]
    assert all(abs(sum(p.probabilities.values()) - 1) < 1e-5 for p in combined)
    model_config = read_json(tmp_path / "run" / "model" / "config.json")  # stand-in weights: no load_ensemble here
    assert [s["name"] for s in model_config["stages"]] == ["stage1", "stage2"] and model_config["mode"] == "federated"
