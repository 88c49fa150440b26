"""A RecBole model trains once per settings and data (``trained_models.fit_once``): its own row and a fusion row's
prior share the training, and an interrupted training resumes to the very weights of an uninterrupted one."""
import glob
import os

import pytest
import torch
from recbole.trainer import Trainer

import recbole_lrgd.trained_models as trained_models
from recbole_lrgd.quick_start import run


def _cfg(data_path, **extra):
    return {"data_path": data_path, "eval_users": 8, "use_gpu": False, "state": "WARNING", "eval_batch_size": 100,
            "show_progress": False, "score_cache": False, "train_batch_size": 16, "epochs": 4, **extra}


class Interrupted(Exception):
    pass


def _kept(folder, model):
    (path,) = glob.glob(os.path.join(folder, f"trained-{model}-tiny-*.pth"))
    return path, torch.load(path, map_location="cpu", weights_only=False)


@pytest.mark.parametrize("model", ["SASRec", "BPR"])  # dropout and a shuffled loader; numpy's negative sampling
def test_an_interrupted_training_resumes_to_the_weights_of_an_uninterrupted_one(tiny_data, monkeypatch, model):
    """Each epoch after the interruption ends with the weights it ends with uninterrupted, and so does the kept
    best epoch, its validation result and the test metrics."""
    weights = {}  # (run, epoch) -> the weights at the end of that epoch
    real_epoch, real_save = Trainer._train_epoch, trained_models._save_state

    def recording_epoch(self, train_data, epoch_idx, *args, **kwargs):
        loss = real_epoch(self, train_data, epoch_idx, *args, **kwargs)
        weights[self.config["checkpoint_dir"], epoch_idx] = {k: v.clone() for k, v in self.model.state_dict().items()}
        return loss

    def save_then_stop(trainer, loaders, epoch, seconds, path):
        real_save(trainer, loaders, epoch, seconds, path)
        if epoch == 1:
            raise Interrupted

    monkeypatch.setattr(Trainer, "_train_epoch", recording_epoch)
    straight = run(model, "tiny", config_dict=_cfg(tiny_data, checkpoint_dir="straight"))
    _, expected = _kept("straight", model)
    monkeypatch.setattr(trained_models, "_save_state", save_then_stop)
    with pytest.raises(Interrupted):
        run(model, "tiny", config_dict=_cfg(tiny_data, checkpoint_dir="cut"))
    assert not glob.glob("cut/trained-*.pth") and len(glob.glob("cut/trained-*.pth.resume")) == 1
    monkeypatch.setattr(trained_models, "_save_state", real_save)
    weights = {key: w for key, w in weights.items() if key[0] == "straight"}
    (state,) = glob.glob("cut/trained-*.pth.resume")
    seconds_at_cut = torch.load(state, weights_only=False)["seconds"]
    resumed = run(model, "tiny", config_dict=_cfg(tiny_data, checkpoint_dir="cut"))
    assert sorted(epoch for where, epoch in weights if where == "cut") == [2, 3]  # the epochs after the cut alone
    for epoch in (2, 3):
        for name, w in weights["straight", epoch].items():
            assert torch.equal(weights["cut", epoch][name], w), (epoch, name)
    path, got = _kept("cut", model)
    assert sorted(os.listdir("cut")) == sorted([os.path.basename(path), os.path.basename(path) + ".lock"])
    assert 0 < seconds_at_cut < got["training_seconds"] == resumed.fit_time  # both sittings counted
    assert got["epoch"] == expected["epoch"] and got["best_valid_result"] == expected["best_valid_result"]
    for name, w in expected["state_dict"].items():
        assert torch.equal(got["state_dict"][name], w), name
    assert resumed.test_result == straight.test_result and resumed.best_valid_result == straight.best_valid_result


def test_a_finished_training_is_loaded_not_trained_again(tiny_data, monkeypatch):
    """Loaded, with its validation result; metrics that read the training data (ItemCoverage) work as after a fit."""
    metrics = {"metrics": ["Hit", "NDCG", "ItemCoverage", "AveragePopularity"]}
    first = run("BPR", "tiny", config_dict=_cfg(tiny_data, **metrics))

    def no_training(*args, **kwargs):
        raise AssertionError("trained again")

    monkeypatch.setattr(Trainer, "fit", no_training)
    again = run("BPR", "tiny", config_dict=_cfg(tiny_data, **metrics))
    assert "itemcoverage@10" in again.test_result and again.test_result == first.test_result and again.best_valid_result == first.best_valid_result
    assert again.best_valid_score == first.best_valid_score
    # the fit time of a loaded model is its training's
    assert again.fit_time == first.fit_time == _kept("saved", "BPR")[1]["training_seconds"] > 0
    with pytest.raises(AssertionError, match="trained again"):  # another training setting: another model
        run("BPR", "tiny", config_dict=_cfg(tiny_data, learning_rate=0.01))
    assert len(glob.glob("saved/trained-BPR-tiny-*.pth")) == 1
    # without saved nothing is kept and RecBole's fit runs
    with pytest.raises(AssertionError, match="trained again"):
        run("BPR", "tiny", config_dict=_cfg(tiny_data, checkpoint_dir="unsaved"), saved=False)
    assert not glob.glob("unsaved/trained-*")


def test_a_damaged_resume_state_trains_from_the_start(tiny_data, caplog):
    straight = run("BPR", "tiny", config_dict=_cfg(tiny_data, checkpoint_dir="straight"))
    path, _ = _kept("straight", "BPR")
    damaged = os.path.join("damaged", os.path.basename(path))
    os.makedirs("damaged")
    for suffix, data in ((".best", b"x"), (".resume", b"not a torch file")):
        with open(damaged + suffix, "wb") as f:
            f.write(data)
    with caplog.at_level("WARNING"):
        again = run("BPR", "tiny", config_dict=_cfg(tiny_data, checkpoint_dir="damaged"))
    assert "cannot resume from" in caplog.text and "training from the start" in caplog.text
    assert again.test_result == straight.test_result and os.path.isfile(damaged)


def test_a_model_with_its_own_trainer_trains_as_before(tiny_data):
    """RecVAE's trainer keeps two optimizers: its row trains with RecBole's fit, nothing kept here."""
    first = run("RecVAE", "tiny", config_dict=_cfg(tiny_data, epochs=2))
    again = run("RecVAE", "tiny", config_dict=_cfg(tiny_data, epochs=2))
    assert again.test_result == first.test_result and not glob.glob("saved/trained-*")


def test_a_baselines_row_and_a_fusion_rows_prior_are_one_training(tiny_data, tiny_llm_dir, monkeypatch):
    """The prior at weight 1 ranks as the prior's own row; the second run loads the row's training."""
    row = run("BPR", "tiny", config_dict=_cfg(tiny_data))

    def no_training(*args, **kwargs):
        raise AssertionError("trained again")

    monkeypatch.setattr(Trainer, "fit", no_training)
    fused = run("LRGD", "tiny", config_dict=_cfg(tiny_data, llm_path=tiny_llm_dir, demo_mode="none",
                                                 prior_model="BPR", prior_weight=1), saved=False)
    assert fused.test_result["ndcg@10"] == row.test_result["ndcg@10"]
    assert fused.test_per_user == row.test_per_user


class _Config(dict):
    """What ``training_settings`` reads of RecBole's Config: the final dict, by key."""

    @property
    def final_config_dict(self):
        return self


_BASE = {"model": "SASRec", "learning_rate": 0.001, "seed": 2020, "valid_metric": "NDCG@10", "worker": 0,
         "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "group_by": "user", "mode": "uni19"},
         "valid_users": None, "eval_users": 100, "slices": False, "candidates_file": None, "num_demos": 3,
         "metrics": ["NDCG"], "topk": [10], "checkpoint_dir": "saved", "gpu_id": "0"}


@pytest.mark.parametrize("key, value, changes", [
    ("eval_users", 7, False), ("slices", True, False), ("candidates_file", "c.tsv", False), ("num_demos", 9, False),
    ("metrics", ["Hit"], False), ("topk", [5], False), ("checkpoint_dir", "elsewhere", False),
    ("eval_args", {**_BASE["eval_args"], "mode": {"valid": "uni19", "test": "full"}}, False),
    ("valid_users", 300, True), ("seed", 1, True), ("learning_rate", 0.01, True), ("valid_metric", "Hit@10", True),
    ("eval_args", {**_BASE["eval_args"], "mode": "uni99"}, True)])
def test_a_trained_models_identity_holds_the_keys_that_change_what_it_learns(key, value, changes):
    """Where a run's test is evaluated and reported, and LRGD's own keys, leave the trained model shared; its
    validation (early stopping's users, metric and candidates), seed and training keys make it another."""
    before = trained_models.training_settings(_Config(_BASE))
    after = trained_models.training_settings(_Config({**_BASE, key: value}))
    assert (after != before) is changes
