"""Titles, demonstration pools and candidate draws on a tiny RecBole dataset."""
import numpy as np
import pytest
from conftest import write_tiny_dataset

from recbole_lrgd.data.chunks import user_chunks, user_rows
from recbole_lrgd.data.candidates import draw_negatives, item_distribution, sample_user_subset, user_items
from recbole_lrgd.data.demonstrations import DemonstrationPool, training_sequences
from recbole_lrgd.data.titles import UNTITLED, item_titles
from recbole_lrgd.errors import LRGDError
from recbole_lrgd.config import build_config
from recbole_lrgd.data.loaders import prepare_data


def _dataset(root, **cfg):
    from recbole.data import create_dataset

    config = build_config("LRGD", "tiny", config_dict={"data_path": root, "use_gpu": False, "state": "WARNING",
                                                       **cfg})
    return config, create_dataset(config)


def _raw_sequences(root):
    seqs = {}
    with open(f"{root}/tiny/tiny.inter") as f:
        next(f)
        for line in f:
            u, i, t = line.rstrip("\n").split("\t")
            seqs.setdefault(u, []).append((float(t), i))
    return {u: [i for _, i in sorted(v)] for u, v in seqs.items()}


def test_demonstrations_come_from_training_interactions_only(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = str(tmp_path)
    write_tiny_dataset(root)
    config, ds = _dataset(root)
    train, valid, test = prepare_data(config, ds)
    seqs = training_sequences(train._dataset)
    raw = _raw_sequences(root)
    tok = ds.field2id_token
    for uid, seq in seqs.items():
        user = tok["user_id"][uid]
        assert [tok["item_id"][i] for i in seq] == raw[user][:-2]  # validation and test targets left out
    pool = DemonstrationPool(seqs, ds.item_num, max_his_len=3)
    hist, target = pool.demonstration(pool.users[0])
    assert len(hist) <= 3 and target == seqs[int(pool.users[0])][-1]
    cut, _ = pool.demonstration(pool.users[0], cut=1)  # the optimizer's "shorten a history"
    assert list(cut) == list(hist[1:])
    assert len(pool.demonstration(pool.users[0], cut=99)[0]) == 1  # one item is always kept


def test_user_chunks_keep_first_appearance_order_and_every_row():
    users = np.array([7, 7, 3, 9, 3, 7, 1])
    rows = user_rows(users)
    assert [u for u, _ in rows] == [7, 3, 9, 1]
    assert [r.tolist() for _, r in rows] == [[0, 1, 5], [2, 4], [3], [6]]
    chunks = user_chunks(users, 3)
    assert [[(u, r.tolist()) for u, r in chunk] for chunk in chunks] == [[(7, [0, 1, 5]), (3, [2, 4]), (9, [3])],
                                                                         [(1, [6])]]
    assert user_rows(np.array([], dtype=np.int64)) == [] and user_chunks([], 2) == []


def test_nearest_users_rank_by_item_overlap():
    seqs = {1: np.array([1, 2, 3]), 2: np.array([3, 4, 5]), 3: np.array([1, 2, 6]), 4: np.array([7, 8])}
    pool = DemonstrationPool(seqs, n_items=10, max_his_len=10)
    assert pool.nearest_users([1, 2, 3], k=2) == [1, 3]
    assert pool.nearest_users([1, 2, 3], k=2, exclude=1) == [3, 2]
    drawn = [tuple(pool.random_users(2, seed=s)) for s in range(8)]
    assert drawn[0] == tuple(pool.random_users(2, seed=0))  # seeded
    assert all(len(set(d)) == 2 and set(d) <= {1, 2, 3, 4} for d in drawn) and len(set(drawn)) > 1


def test_titles_placeholder_and_missing_field(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = str(tmp_path)
    folder = write_tiny_dataset(root)
    gone = open(f"{folder}/tiny.inter").readlines()[1].split("\t")[1]  # an item some user chose: empty title
    with open(f"{folder}/tiny.item") as f:
        lines = f.readlines()
    with open(f"{folder}/tiny.item", "w") as f:
        f.writelines([lines[0]] + [f"{gone}\t\n" if line.startswith(gone + "\t") else line for line in lines[1:]])
    config, ds = _dataset(root)
    ds.build()  # titles are read from the built dataset, as the model gets it
    titles = item_titles(ds, "title")
    assert titles[ds.token2id("item_id", gone)] == UNTITLED.format(raw_id=gone)
    titled = [t for t in ds.field2id_token["item_id"][1:] if t != gone][0]
    assert titles[ds.token2id("item_id", titled)] == f"The Item Number {titled[1:]}"
    with pytest.raises(LRGDError, match="no title field 'name'"):
        item_titles(ds, "name")


def test_negatives_are_seeded_distinct_and_never_seen_by_the_user(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = str(tmp_path)
    write_tiny_dataset(root)
    config, ds = _dataset(root)
    used = user_items(ds)
    probs = item_distribution(np.asarray(ds.inter_feat["item_id"]), ds.item_num, "uniform")
    _, _, test_ds = ds.build()
    a = draw_negatives(used, probs, test_ds, 19, seed=5)
    b = draw_negatives(used, probs, test_ds, 19, seed=5)
    c = draw_negatives(used, probs, test_ds, 19, seed=6)
    assert all(np.array_equal(a[u], b[u]) for u in a)
    assert any(not np.array_equal(a[u], c[u]) for u in a)
    for uid, negs in a.items():
        assert len(np.unique(negs)) == 19 and 0 not in negs
        assert not set(negs.ravel()) & set(used[uid].tolist())
    sample = sample_user_subset(np.arange(50), 10, 1)
    assert np.array_equal(sample, sample_user_subset(np.arange(50), 10, 1))  # seeded
    assert len(np.unique(sample)) == 10 and np.array_equal(sample, np.sort(sample)) and set(sample) <= set(range(50))
    assert not np.array_equal(sample, sample_user_subset(np.arange(50), 10, 2))
    assert len(sample_user_subset(np.arange(50), None, 1)) == 50


def _eval_users(root, model, dataset="tiny"):
    """{phase: raw ids of the users the phase's loader holds} of ``model``, every user evaluated."""
    from recbole.data import create_dataset

    config = build_config(model, dataset, config_dict={"data_path": root, "use_gpu": False, "state": "WARNING",
                                                       "eval_users": None, "valid_users": None})
    _, valid, test = prepare_data(config, create_dataset(config))
    tokens = valid._dataset.field2id_token["user_id"]
    return {phase: {tokens[u] for u in loader._dataset.inter_feat["user_id"].tolist()}
            for phase, loader in (("valid", valid), ("test", test))}


def test_every_model_evaluates_the_same_users_when_some_have_few_interactions(tmp_path, monkeypatch):
    """Users with 2, 3 and 4 interactions: under leave-one-out a general model (Pop) has their test and validation
    rows from 2 and 3 interactions, a sequential one (SASRec, LRGD) from 3 and 4; every model holds the users that
    both kinds have."""
    monkeypatch.chdir(tmp_path)
    folder = write_tiny_dataset(str(tmp_path))
    with open(f"{folder}/tiny.inter", "a") as f:
        for n in (2, 3, 4):
            f.writelines(f"s{n}\ti{t}\t{50000 + 1000 * n + t}\n" for t in range(n))
    pop, sasrec, lrgd = (_eval_users(str(tmp_path), model) for model in ("Pop", "SASRec", "LRGD"))
    assert pop == sasrec == lrgd
    assert "s2" not in pop["test"] and {"s3", "s4"} <= pop["test"] and len(pop["test"]) == 32
    assert "s3" not in pop["valid"] and "s4" in pop["valid"] and len(pop["valid"]) == 31


def test_no_user_every_model_can_evaluate_is_one_error_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = write_tiny_dataset(str(tmp_path), name="short")
    with open(f"{folder}/short.inter", "w") as f:
        f.write("user_id:token\titem_id:token\ttimestamp:float\n")
        f.writelines(f"u{u}\ti{t}\t{1000 * u + t}\n" for u in range(5) for t in range(2))
    with pytest.raises(LRGDError, match="^no user has a test row that every model has: under leave-one-out that "
                                        "needs 3 interactions or more$"):
        _eval_users(str(tmp_path), "Pop", dataset="short")


def test_only_recboles_own_leave_one_out_split_leaves_users_out():
    from recbole_lrgd.data.loaders import evaluable

    counts, uids = np.array([0, 2, 3, 4, 9]), np.array([1, 2, 3, 4])
    ls = {"benchmark_filename": None, "eval_args": {"split": {"LS": "valid_and_test"}}}
    assert evaluable(ls, counts, uids, "test").tolist() == [2, 3, 4]
    assert evaluable(ls, counts, uids, "valid").tolist() == [3, 4]
    for config in ({**ls, "benchmark_filename": ["train", "valid", "test"]},
                   {**ls, "eval_args": {"split": {"RS": [0.8, 0.1, 0.1]}}}):
        assert evaluable(config, counts, uids, "test").tolist() == [1, 2, 3, 4]
