"""``candidate_source``: LRGD re-ranks a RecBole retriever's full-sort top-N, scored by RecBole's full-mode metrics."""
import glob
import os

import numpy as np
import pytest
import torch
from recbole.data.interaction import Interaction

from conftest import run_live

from recbole_lrgd.errors import LRGDError
from recbole_lrgd.model.ranker import ICLRanker
from recbole_lrgd.quick_start import run
from recbole_lrgd.rerank.blend import reranked_row
from recbole_lrgd.rerank.retriever import Retriever

FULL = {"split": {"LS": "valid_and_test"}, "group_by": "user", "order": "TO", "mode": "full"}


def _cfg(data_path, **extra):
    cfg = {"data_path": data_path, "eval_users": 12, "show_progress": False, "use_gpu": False, "eval_batch_size": 100,
           "epochs": 1, "train_batch_size": 64, "state": "WARNING", "score_cache": False, "eval_args": FULL,
           "metrics": ["Recall", "NDCG", "MRR"], "topk": [1, 2, 5, 10]}
    cfg.update(extra)
    return cfg


def _lrgd_cfg(data_path, llm_dir, source, **extra):
    return _cfg(data_path, llm_path=llm_dir, candidate_source=source, demo_mode="none", **extra)


def _lrgd(data_path, llm_dir, source, **extra):
    return run("LRGD", "tiny", config_dict=_lrgd_cfg(data_path, llm_dir, source, **extra), saved=False)


@pytest.fixture
def seen(monkeypatch):
    """Records, per user id, the retriever's score row and held-out item, and the (history, candidates) LRGD
    scored; ``seen["llm"](user, candidates, row, target)`` gives the LLM's scores when set, else the LLM runs."""
    record = {"retrieved": {}, "target": {}, "scored": {}, "llm": None}
    scores, score_users = Retriever.scores, ICLRanker.score_users

    def retriever_scores(self, users, targets):
        out = scores(self, users, targets)
        for user, target, row in zip(users, targets, out):
            record["retrieved"][int(user)], record["target"][int(user)] = row.clone(), int(target)
        return out

    def ranker_scores(self, users, choice, zero_shot=False):
        for user, history, candidates in users:
            record["scored"][int(user)] = (np.asarray(history).copy(), np.asarray(candidates).copy())
        if record["llm"] is None:
            return score_users(self, users, choice, zero_shot)
        return [np.asarray(record["llm"](int(u), c, record["retrieved"][int(u)], record["target"][int(u)]),
                           dtype=np.float64) for u, _, c in users], None

    monkeypatch.setattr(Retriever, "scores", retriever_scores)
    monkeypatch.setattr(ICLRanker, "score_users", ranker_scores)
    return record


def _as_retriever(user, candidates, row, target):  # an LLM that agrees with the retriever, ties included
    return row[torch.as_tensor(candidates)].double().numpy()


@pytest.mark.parametrize("source", ["Pop", "BPR"])
@pytest.mark.parametrize("how", ["llm scores = retriever scores", "rerank_blend 1.0"])
def test_keeping_the_retrievers_order_gives_recboles_own_full_sort_metrics(tiny_data, tiny_llm_dir, seen,
                                                                          source, how):
    """RecBole's full-sort run of the retriever alone is the reference, user by user; with blend 1.0 the
    LLM's scores cannot matter, so the LLM is never asked (the cheap retriever-alone row)."""
    reference = run(source, "tiny", config_dict=_cfg(tiny_data), saved=True)
    if how.startswith("llm"):
        seen["llm"] = _as_retriever
    lrgd = _lrgd(tiny_data, tiny_llm_dir, source, rerank_blend=1.0 if how.startswith("rerank") else 0.0,
                 rerank_score_all=True)
    assert reference.test_users == lrgd.test_users == 12  # eval_users: the same seeded sample in full mode
    assert lrgd.test_result == reference.test_result
    assert lrgd.test_per_user == reference.test_per_user and len(lrgd.test_per_user["ndcg@10"]) == 12
    if how.startswith("rerank"):
        assert seen["scored"] == {}  # ICLRanker.score_users, the LLM's only way in, was never called
    else:
        assert len(seen["scored"]) == 12 and all(len(c) == 20 for _, c in seen["scored"].values())


def _histories(folder):
    """raw user -> raw items in time order, from the generated .inter file (the last is the test target)."""
    rows = {}
    with open(os.path.join(folder, "tiny", "tiny.inter")) as f:
        next(f)
        for line in f:
            user, item, t = line.split("\t")
            rows.setdefault(user, []).append((float(t), item))
    return {u: [i for _, i in sorted(r)] for u, r in rows.items()}


def test_candidates_are_the_retrievers_top_n_without_history(tiny_data, tiny_llm_dir, seen):
    """BPR's top 8 recomputed here from the reference run's model (RecBole's own weights), with the user's
    items but the target removed by hand from the raw data, equal LRGD's candidates in order; Pop's are the
    items of highest count in RecBole's own Pop that the user does not have (ties at the boundary either way)."""
    reference, _ = run_live("BPR", "tiny", config_dict=_cfg(tiny_data), saved=True)
    _lrgd(tiny_data, tiny_llm_dir, "BPR", rerank_top=8, rerank_score_all=True)
    ds = reference.test_data._dataset
    user_ids, item_ids = ds.field2token_id[ds.uid_field], ds.field2token_id[ds.iid_field]
    hist = _histories(tiny_data)
    model = reference.model.eval()
    assert len(seen["scored"]) == 12
    for user, (_, candidates) in seen["scored"].items():
        raw = ds.field2id_token[ds.uid_field][user]
        history = [item_ids[i] for i in hist[raw][:-1]]
        assert seen["target"][user] == item_ids[hist[raw][-1]]
        with torch.no_grad():
            scores = model.full_sort_predict(Interaction({ds.uid_field: torch.tensor([user_ids[raw]])})).view(-1)
        scores[[0] + history] = -np.inf
        assert candidates.tolist() == torch.topk(scores, 8).indices.tolist()
        assert not set(candidates.tolist()) & set(history + [0])

    seen["scored"].clear()
    _lrgd(tiny_data, tiny_llm_dir, "Pop", rerank_top=8, rerank_score_all=True)
    assert len(seen["scored"]) == 12  # every test user's candidates are checked below
    counts = run_live("Pop", "tiny", config_dict=_cfg(tiny_data), saved=False)[0].model.item_cnt.view(-1).numpy()
    for user, (_, candidates) in seen["scored"].items():
        raw = ds.field2id_token[ds.uid_field][user]
        allowed = set(range(1, ds.item_num)) - {item_ids[i] for i in hist[raw][:-1]}
        assert len(candidates) == 8 and set(candidates.tolist()) <= allowed
        assert counts[candidates].min() >= max(counts[i] for i in allowed - set(candidates.tolist()))


def test_a_sequential_retriever_offers_no_history_item_either(tiny_data, tiny_llm_dir, seen):
    """RecBole's own SASRec full sort keeps the user's history; the retriever drops it for every model."""
    built, _ = run_live("LRGD", "tiny", config_dict=_lrgd_cfg(tiny_data, tiny_llm_dir, "SASRec", rerank_top=30,
                                                              rerank_score_all=True), saved=False)
    ds = built.test_data._dataset
    hist = _histories(tiny_data)
    assert len(seen["scored"]) == 12
    for user, (_, candidates) in seen["scored"].items():
        history = hist[ds.field2id_token[ds.uid_field][user]][:-1]
        offered = {ds.field2id_token[ds.iid_field][i] for i in candidates}
        assert len(candidates) == min(30, 40 - len(history)) and not offered & set(history)


def test_a_target_outside_the_top_n_is_a_miss(tiny_data, tiny_llm_dir, seen):
    """An oracle LLM puts the target first whenever the retriever offers it: per user, Recall@1 and @2 are 1
    exactly when the target is among the retriever's top 2, and 0 (a miss) otherwise."""
    seen["llm"] = lambda user, candidates, row, target: [float(c == target) for c in candidates]
    result = _lrgd(tiny_data, tiny_llm_dir, "Pop", rerank_top=2, rerank_score_all=True)
    offered = {u: seen["target"][u] in c.tolist() for u, (_, c) in seen["scored"].items()}
    assert set(offered.values()) == {True, False}  # both kinds of user
    for k in (1, 2):
        assert result.test_per_user[f"recall@{k}"] == {u: float(hit) for u, hit in offered.items()}
        assert result.test_per_user[f"mrr@{k}"] == {u: float(hit) for u, hit in offered.items()}


@pytest.mark.parametrize("blend", [0.0, 0.5])
def test_users_whose_target_is_not_offered_are_not_llm_scored_and_their_metrics_do_not_change(tiny_data, tiny_llm_dir,
                                                                                             seen, blend):
    """Recall/NDCG/MRR@k, k <= N, read only where the target ranks: below all N candidates when it is not one of
    them, whatever their order. So the LLM is asked about the other users only, with the same metrics, per user."""
    seen["llm"] = lambda user, candidates, row, target: [float((user * 7919 + c * 104729) % 13) for c in candidates]
    keys = {"rerank_top": 4, "rerank_blend": blend, "topk": [1, 2, 4], "valid_metric": "NDCG@4"}
    every = _lrgd(tiny_data, tiny_llm_dir, "Pop", rerank_score_all=True, **keys)
    offered = {u for u, (_, c) in seen["scored"].items() if seen["target"][u] in c.tolist()}
    assert len(seen["scored"]) == 12 and 0 < len(offered) < 12
    seen["scored"].clear()
    skipped = _lrgd(tiny_data, tiny_llm_dir, "Pop", **keys)
    assert set(seen["scored"]) == offered
    assert skipped.test_per_user == every.test_per_user and skipped.test_result == every.test_result
    # every user is scored where the metrics could tell: a metric of the recommended items themselves, or a
    # top-k deeper than N (there ties among the retriever's scores below the N are broken by torch.topk)
    for other in ({"metrics": ["Recall", "ShannonEntropy"], "valid_metric": "Recall@4"}, {"topk": [1, 4, 5]}):
        seen["scored"].clear()
        _lrgd(tiny_data, tiny_llm_dir, "Pop", **{**keys, **other})
        assert len(seen["scored"]) == 12


def test_reranked_row_orders_the_top_n_by_the_blend_and_the_rest_by_the_retriever():
    retrieved = torch.tensor([-np.inf, 5.0, 4.0, 3.0, 2.0, 1.0, -np.inf, 2.0], dtype=torch.float64)
    top = np.array([1, 2, 3])

    def order(row):
        finite = torch.isfinite(row)
        return sorted(torch.nonzero(finite).view(-1).tolist(), key=lambda i: -row[i].item())

    assert order(reranked_row(retrieved, top, np.array([0.0, 1.0, 2.0]), 0.0))[:3] == [3, 2, 1]  # the LLM's order
    assert order(reranked_row(retrieved, top, np.array([0.0, 1.0, 2.0]), 1.0))[:3] == [1, 2, 3]  # the retriever's
    # z(llm) = [-0.71, -0.71, 1.41], z(retriever) = [1.22, 0, -1.22]: halfway, 0.26 > 0.09 > -0.35
    row = reranked_row(retrieved, top, np.array([0.0, 0.0, 3.0]), 0.5)
    assert order(row)[:3] == [1, 3, 2]
    assert row[4] == row[7] < row[2] and row[5] < row[4]  # below the N, the retriever's order, ties kept
    assert torch.isinf(row[[0, 6]]).all() and (row[[0, 6]] < 0).all()  # padding and history stay -inf
    tied = reranked_row(retrieved, top, np.array([1.0, 1.0, 0.0]), 0.0)
    assert tied[1] == tied[2] > tied[3]  # LLM ties stay ties


def test_the_retriever_is_trained_once(tiny_data, tiny_llm_dir, monkeypatch):
    """The second run loads the checkpoint (RecBole's fit would fail); a changed training key trains anew;
    the cached .pth as candidate_source gives the same metrics."""
    from recbole.trainer import Trainer

    first = _lrgd(tiny_data, tiny_llm_dir, "BPR")
    cached = glob.glob(os.path.join(tiny_data, "saved", "trained-BPR-tiny-*.pth"))
    assert len(cached) == 1

    def no_training(*args, **kwargs):
        raise AssertionError("the retriever was trained again")

    monkeypatch.setattr(Trainer, "fit", no_training)
    assert _lrgd(tiny_data, tiny_llm_dir, "BPR").test_result == first.test_result
    assert _lrgd(tiny_data, tiny_llm_dir, cached[0]).test_result == first.test_result
    with pytest.raises(AssertionError, match="trained again"):
        _lrgd(tiny_data, tiny_llm_dir, "BPR", learning_rate=0.01)


def test_the_retriever_stops_early_on_retriever_valid_users(tiny_data, tiny_llm_dir, monkeypatch):
    """LRGD's valid_users is its own LLM validation; the retriever's training validates on retriever_valid_users
    (sampled as valid_users samples a RecBole model's), all users by default."""
    from recbole_lrgd import sources as source
    from recbole_lrgd.trainer import eval_user_count

    real, seen = source.load_or_train, []

    def recording(config, candidate_source, train, valid, test, user_items):
        seen.append((config["valid_users"], eval_user_count(valid)))
        return real(config, candidate_source, train, valid, test, user_items)
    monkeypatch.setattr(source, "load_or_train", recording)
    _lrgd(tiny_data, tiny_llm_dir, "BPR", retriever_valid_users=5)
    _lrgd(tiny_data, tiny_llm_dir, "BPR")
    everyone = run("BPR", "tiny", config_dict=_cfg(tiny_data, eval_users=None), saved=False).test_users
    assert seen == [(5, 5), (None, everyone)]
    assert len(glob.glob(os.path.join(tiny_data, "saved", "trained-BPR-tiny-*.pth"))) == 2  # two trainings


def _assert_clean_error(tmp, match, **extra):
    with pytest.raises(LRGDError, match=match) as info:
        run("LRGD", "tiny", config_dict=_cfg(tmp, **extra), saved=False)
    assert "\n" not in str(info.value)
    assert not os.path.exists(os.path.join(tmp, "log")), "an error must not leave a half-written log"


def test_bad_rerank_settings_are_one_line_errors_before_anything_is_written(tiny_data, tiny_llm_dir, tmp_path):
    base = {"llm_path": tiny_llm_dir, "candidate_source": "Pop"}
    candidates = tmp_path / "cands.txt"
    candidates.write_text("u1\ti1 i2\n")
    _assert_clean_error(tiny_data, "candidates_file and candidate_source both set",
                        **{**base, "candidates_file": str(candidates)})
    _assert_clean_error(tiny_data, "candidate_source 'NoSuchModel' is neither a RecBole model name",
                        **{**base, "candidate_source": "NoSuchModel"})
    _assert_clean_error(tiny_data, r"candidate_source .*nope\.pth does not exist",
                        **{**base, "candidate_source": str(tmp_path / "nope.pth")})
    _assert_clean_error(tiny_data, "rerank_top must be a positive integer, not 0", **base, rerank_top=0)
    _assert_clean_error(tiny_data, r"rerank_blend must be a number >= 0 and <= 1, not 1\.5", **base, rerank_blend=1.5)
    _assert_clean_error(tiny_data, "candidate_source re-ranks a full ranking: set eval_args to",
                        **base, eval_args={**FULL, "mode": "uni19"})
    _assert_clean_error(tiny_data, "EffectD compares sampled candidate lists",
                        **base, metrics=["Recall", "EffectD"], valid_metric="Recall@10")
    _assert_clean_error(tiny_data, "candidate_source needs one held-out test item per user",
                        **base, eval_args={**FULL, "split": {"RS": [0.8, 0.1, 0.1]}})
    _assert_clean_error(tiny_data, "validate LRGD on sampled candidates", **base, valid_users=6)


def test_lrgd_validates_on_sampled_candidates_and_tests_on_the_full_ranking(tiny_data, tiny_llm_dir):
    result = _lrgd(tiny_data, tiny_llm_dir, "Pop", valid_users=6, eval_args={**FULL, "mode": {"valid": "uni19",
                                                                                               "test": "full"}})
    assert result.test_users == 12 and set(result.best_valid_result) >= {"recall@10", "ndcg@10"}
    assert result.best_valid_score == result.best_valid_result["ndcg@10"]


def test_two_processes_give_the_metrics_of_one(tmp_path, tiny_llm_dir):
    """Under ``accelerate launch`` rank 0 trains the retriever and the other loads it, the users' LLM scores
    are sharded by chunk, and every rank computes the single-process metrics (the tiny LLM really scores)."""
    from conftest import write_tiny_dataset
    from test_distributed import _finish, _start

    write_tiny_dataset(str(tmp_path))
    args = ["--model=LRGD", "--dataset=tiny", f"--data_path={tmp_path}", f"--llm_path={tiny_llm_dir}",
            "--demo_mode=random", "--num_demos=2", "--eval_users=12", "--score_cache=False", "--use_gpu=False",
            "--show_progress=False", "--eval_batch_size=100", "--user_batch_size=2", "--epochs=1",
            "--candidate_source=BPR", "--rerank_top=10", f"--eval_args={FULL}", "--metrics=['Recall','NDCG','MRR']",
            "--topk=[1,5,10]"]
    runs = {n: str(tmp_path / f"run{n}") for n in (1, 2)}
    procs = {n: _start(runs[n], args, n) for n in (1, 2)}
    (one, _, _), (two, _, _) = (_finish(procs[n], runs[n]) for n in (1, 2))
    assert one["world_size"] == 1 and two["world_size"] == 2 and one["test_users"] == two["test_users"] == 12
    assert one["test_result"] == two["test_result"] and "ndcg@10" in one["test_result"]
    assert len(glob.glob(os.path.join(runs[2], "saved", "trained-BPR-tiny-*.pth"))) == 1
