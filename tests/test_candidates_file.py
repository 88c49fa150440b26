"""``candidates_file``: LLMRank-format fixed candidate lists, ranked by LRGD and RecBole models alike."""
import os

import numpy as np
import pytest

from conftest import install_stub_scorer, run_live

from recbole_lrgd.data.candidates import read_candidates_file
from recbole_lrgd.errors import LRGDError
from recbole_lrgd.quick_start import run


def _cfg(data_path, **extra):
    cfg = {"data_path": data_path, "eval_users": 12, "show_progress": False, "use_gpu": False,
           "eval_batch_size": 100, "epochs": 1, "train_batch_size": 64, "state": "WARNING", "score_cache": False}
    cfg.update(extra)
    return cfg


def _histories(folder, name="tiny"):
    """raw user -> raw items in time order, read back from the generated .inter file."""
    hist = {}
    with open(os.path.join(folder, name, f"{name}.inter")) as f:
        next(f)
        for line in f:
            u, i, t = line.split("\t")
            hist.setdefault(u, []).append((float(t), i))
    return {u: [i for _, i in sorted(rows)] for u, rows in hist.items()}


def _write_file(tmp_path, hist, users, n_items=40):
    """Lines of 22 ids the user never saw; for even users the target sits at position 3 (and is removed).
    Returns the path and raw user -> the candidates every model must rank (target + first 19 others)."""
    expected, lines = {}, []
    for k, u in enumerate(users):
        target = hist[u][-1]
        others = [f"i{j}" for j in range(n_items) if f"i{j}" not in hist[u]]
        others = list(np.random.default_rng(k).permutation(others)[:22])
        line = others[:3] + [target] + others[3:] if k % 2 == 0 else others
        lines.append(f"{u}\t{' '.join(line)}")
        expected[u] = [target] + others[:19]
    path = tmp_path / "tiny.random"
    path.write_text("\n".join(lines) + "\n")
    return str(path), expected


def _raw_sets(built):
    """raw user -> raw candidate items, from a run's test loader (``built.test_data``)."""
    data = built.test_data
    ds = data._dataset
    users, items = ds.field2id_token[ds.uid_field], ds.field2id_token[ds.iid_field]
    return {users[uid]: [items[i] for i in cands] for uid, cands in data.candidate_sets().items()}


def test_every_model_ranks_exactly_the_files_candidates(tiny_data, tiny_llm_dir, tmp_path, monkeypatch):
    hist = _histories(tiny_data)
    users = ["u3", "u7", "u8", "u15", "u22"]  # 5 users, fewer than eval_users: only these are evaluated
    path, expected = _write_file(tmp_path, hist, users)
    seen = []

    def oracle(prompt, target):  # records what LRGD was shown; ranks the target first
        seen.append(sorted(prompt.candidates))
        return np.array([float(c == target) for c in prompt.candidates])

    install_stub_scorer(monkeypatch, oracle)
    cfg = _cfg(tiny_data, candidates_file=path)
    lrgd = run_live("LRGD", "tiny", config_dict={**cfg, "llm_path": tiny_llm_dir, "demo_mode": "none"}, saved=False)
    pop = run_live("Pop", "tiny", config_dict=cfg, saved=False)
    sasrec = run_live("SASRec", "tiny", config_dict=cfg, saved=True)
    for built, result in (lrgd, pop, sasrec):
        assert result.test_users == len(users)
        sets = _raw_sets(built)
        assert set(sets) == set(users)
        for u in users:
            assert sets[u] == expected[u]  # target first, then the file's first 19 non-target ids in order
    titles = {f"i{j}": f"The Item Number {j}" for j in range(40)}
    assert sorted(seen) == sorted(sorted(titles[i] for i in expected[u]) for u in users)
    assert lrgd[1].test_result["hit@1"] == pytest.approx(1.0)
    assert 0.0 <= pop[1].test_result["ndcg@10"] <= 1.0 and 0.0 <= sasrec[1].test_result["ndcg@10"] <= 1.0


def test_a_bad_id_is_an_error_naming_the_line(tiny_data, tmp_path):
    hist = _histories(tiny_data)
    path, _ = _write_file(tmp_path, hist, ["u1", "u2", "u4"])
    lines = open(path).read().splitlines()
    lines[2] = lines[2].replace(lines[2].split("\t")[1].split()[5], "B00NOSUCH")
    open(path, "w").write("\n".join(lines) + "\n")
    with pytest.raises(LRGDError, match=r"tiny\.random line 3: item 'B00NOSUCH' is not in the dataset") as info:
        run("Pop", "tiny", config_dict=_cfg(tiny_data, candidates_file=path), saved=False)
    assert "\n" not in str(info.value)


def test_missing_file_and_full_ranking_are_errors(tiny_data, tmp_path):
    with pytest.raises(LRGDError, match="candidates_file .*nope.txt does not exist"):
        run("Pop", "tiny", config_dict=_cfg(tiny_data, candidates_file=str(tmp_path / "nope.txt")), saved=False)
    path = tmp_path / "c.txt"
    path.write_text("u1\ti1 i2\n")
    full = {"split": {"LS": "valid_and_test"}, "group_by": "user", "order": "TO", "mode": "full"}
    with pytest.raises(LRGDError, match="candidates_file needs a sampled eval mode"):
        run("Pop", "tiny", config_dict=_cfg(tiny_data, candidates_file=str(path), eval_args=full), saved=False)


USERS = {"[PAD]": 0, "a": 1, "b": 2, "c": 3}
ITEMS = {"[PAD]": 0, **{f"x{k}": k for k in range(1, 11)}}
TARGETS = {1: 5, 2: 7}  # c (id 3) has no held-out item


def _read(tmp_path, text, num=3):
    path = tmp_path / "cands.txt"
    path.write_text(text)
    return read_candidates_file(str(path), USERS, ITEMS, TARGETS, num)


def test_parsing_follows_llmrank(tmp_path):
    table = _read(tmp_path, "a\tx1 x5 x2 x3 x4\n\nb\tx9 x8 x10 x1\n")
    np.testing.assert_array_equal(table[1], [[1, 2, 3]])  # target x5 removed, first 3 others
    np.testing.assert_array_equal(table[2], [[9, 8, 10]])
    assert set(table) == {1, 2}


@pytest.mark.parametrize("text,match", [
    ("a\tx1 x2 x3\nb x1 x2 x3\n", "line 2: expected user_id, a tab"),
    ("a\tx1 x2 x3\nzz\tx1 x2 x3\n", "line 2: user 'zz' is not in the dataset"),
    ("a\tx1 x2 x3\nc\tx1 x2 x3\n", "line 2: user 'c' has no held-out test item"),
    ("a\tx1 x2 x3\na\tx1 x2 x3\n", "line 2: user 'a' already has candidates on line 1"),
    ("a\tx1 x2 x5\n", "line 1: 2 candidates besides the target, 3 needed"),
    ("a\tx1 x2 x2 x3\n", "line 1: item 'x2' is listed twice"),
    ("a\tx1 [PAD] x3\n", "line 1: item '\\[PAD\\]' is not in the dataset"),
    ("\n", "holds no candidate lines"),
])
def test_bad_lines_name_the_first_bad_line(tmp_path, text, match):
    with pytest.raises(LRGDError, match=match) as info:
        _read(tmp_path, text)
    assert "cands.txt" in str(info.value) and "\n" not in str(info.value)


def test_published_data_loads_as_published_and_a_rare_item_is_a_candidate(tmp_path, monkeypatch):
    """``amazon-video-games-18`` arrives filtered (LLMRank's copy, histories cut to 50 after 5-core), so it
    loads as published: an item with fewer than 5 interactions stays, and a candidates file may name it."""
    from collections import Counter

    from conftest import write_tiny_dataset

    name = "amazon-video-games-18"
    write_tiny_dataset(str(tmp_path), name=name)
    monkeypatch.chdir(tmp_path)
    hist = _histories(str(tmp_path), name)
    counts = Counter(i for items in hist.values() for i in items)
    rare = sorted((i for i in counts if counts[i] < 5), key=lambda i: (counts[i], i))
    assert rare  # the test means something: 5-core filtering would drop these
    lines, named = [], {}
    for u in ["u3", "u7", "u8"]:
        others = [i for i in rare if i not in hist[u]][:1]
        others += [f"i{j}" for j in range(40) if f"i{j}" not in hist[u] and f"i{j}" not in others][:21]
        named[u] = others[0]
        lines.append(f"{u}\t{' '.join(others)}")
    path = tmp_path / "games.random"
    path.write_text("\n".join(lines) + "\n")
    built, _ = run_live("Pop", name, config_dict=_cfg(str(tmp_path), candidates_file=str(path)), saved=False)
    ds = built.test_data._dataset
    assert ds.item_num - 1 == len(counts) and ds.user_num - 1 == len(hist)  # every published user and item
    sets = _raw_sets(built)
    assert set(sets) == set(named) and all(named[u] in sets[u] and counts[named[u]] < 5 for u in named)


def test_negatives_the_user_interacted_with_are_kept_with_a_warning(tiny_data, tmp_path, caplog):
    hist = _histories(tiny_data)
    path, expected = _write_file(tmp_path, hist, ["u1", "u2", "u4"])
    lines = open(path).read().splitlines()
    for k, u in ((0, "u1"), (2, "u4")):  # two of u1's and one of u4's own earlier items replace their first ids
        ids = lines[k].split("\t")[1].split()
        own = hist[u][: 2 if u == "u1" else 1]
        lines[k] = f"{u}\t{' '.join(own + ids[len(own):])}"
        expected[u] = [hist[u][-1]] + [i for i in own + ids[len(own):] if i != hist[u][-1]][:19]
    open(path, "w").write("\n".join(lines) + "\n")
    with caplog.at_level("WARNING"):
        built, _ = run_live("Pop", "tiny", config_dict=_cfg(tiny_data, candidates_file=path), saved=False)
    assert [r.getMessage() for r in caplog.records if "among their negatives" in r.getMessage()] == [
        f"candidates_file {path}: 2 of 3 users have items they interacted with among their negatives "
        "(3 of 57 negatives), which their metrics count as wrong answers"]
    assert _raw_sets(built) == {u: expected[u] for u in ("u1", "u2", "u4")}  # kept as the file gives them


def test_eval_users_is_a_seeded_sample_of_the_files_users_the_same_for_every_model(tiny_data, tiny_llm_dir,
                                                                                     tmp_path, monkeypatch):
    hist = _histories(tiny_data)
    users = ["u3", "u7", "u8", "u15", "u22", "u4", "u9"]
    path, expected = _write_file(tmp_path, hist, users)
    install_stub_scorer(monkeypatch, lambda prompt, target: np.array([float(c == target) for c in prompt.candidates]))
    cfg = _cfg(tiny_data, candidates_file=path, eval_users=3)
    lrgd, _ = run_live("LRGD", "tiny", config_dict={**cfg, "llm_path": tiny_llm_dir, "demo_mode": "none"},
                       saved=False)
    pop, _ = run_live("Pop", "tiny", config_dict=cfg, saved=False)
    sampled = _raw_sets(lrgd)
    assert len(sampled) == 3 and set(sampled) < set(users) and _raw_sets(pop) == sampled
    assert all(sampled[u] == expected[u] for u in sampled)
    every, _ = run_live("Pop", "tiny", config_dict={**cfg, "eval_users": None}, saved=False)
    assert set(_raw_sets(every)) == set(users)
