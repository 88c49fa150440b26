"""RecBole's own ``amazon-beauty`` atomic schema, loaded by name through run() with the plugin's dataset file.

The files follow RecBole's Amazon 2014 atomic files (more columns than LRGD needs, ratings, token_seq
categories): ``properties/dataset/amazon-beauty.yaml`` must load titles as raw strings. Those files are
not 5-core (the shared copy is, and loads as published): the test adds the 5-core keys, as the
dataset file's comment says to. Where ``../shared/data/amazon-beauty`` holds the real data, the fixture is a dense
real slice of it (real users, ASINs, titles and times; the columns it lacks are filled in);
elsewhere a generated dataset in the same schema.
"""
import os

import numpy as np
import pandas as pd
import pytest

from conftest import run_live

from recbole_lrgd.config import build_config
from recbole_lrgd.errors import LRGDError
from recbole_lrgd.quick_start import run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = [os.path.join(ROOT, "..", "shared", "data", "amazon-beauty"), os.path.join(ROOT, "shared", "data",
                                                                                     "amazon-beauty")]
ITEM_HEADER = ("item_id:token\ttitle:token\tsales_type:token\tsales_rank:float\tcategories:token_seq\t"
               "price:float\tbrand:token")
INTER_HEADER = "user_id:token\titem_id:token\trating:float\ttimestamp:float"


def _core(df: pd.DataFrame, k: int = 5) -> pd.DataFrame:
    """Iterative k-core of a (user, item) table, as RecBole's inter-num filters compute it."""
    while True:
        n = len(df)
        df = df[df.user.map(df.user.value_counts()) >= k]
        df = df[df.item.map(df.item.value_counts()) >= k]
        if len(df) == n:
            return df


def _real_slice(folder: str, top_items: int = 60):
    """Every interaction with the 60 most popular items (dense enough for a 5-core of ~180 users)."""
    inter = pd.read_csv(os.path.join(folder, "amazon-beauty.inter"), sep="\t", dtype=str)
    inter.columns = ["user", "item", "timestamp"]
    inter = inter[inter.item.isin(inter.item.value_counts().index[:top_items])]
    items = pd.read_csv(os.path.join(folder, "amazon-beauty.item"), sep="\t", dtype=str, keep_default_na=False)
    items.columns = ["item", "title"]
    return inter, items[items.item.isin(set(inter.item))]


def _generated(n_users: int = 60, n_items: int = 36, seed: int = 0):
    rng = np.random.default_rng(seed)
    rows = [(f"A{u:05d}XYZ", f"B00{i:05d}", str(1400000000 + 86400 * (u * 20 + t)))
            for u in range(n_users)
            for t, i in enumerate(rng.choice(n_items, size=int(rng.integers(3, 12)), replace=False))]
    inter = pd.DataFrame(rows, columns=["user", "item", "timestamp"])
    items = pd.DataFrame({"item": [f"B00{i:05d}" for i in range(n_items)],
                          "title": [f"Rose & Shea Butter Body Lotion, {i} fl oz (Pack of 2)" for i in range(n_items)]})
    return inter, items


def write_amazon_beauty(root: str):
    """``<root>/amazon-beauty/amazon-beauty.{inter,item}`` in RecBole's Amazon 2014 atomic schema.
    Returns (inter, items) as written (raw tokens) and whether the slice is real."""
    real = next((f for f in SHARED if os.path.isfile(os.path.join(f, "amazon-beauty.inter"))), None)
    inter, items = _real_slice(real) if real else _generated()
    rng = np.random.default_rng(1)
    folder = os.path.join(root, "amazon-beauty")
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "amazon-beauty.inter"), "w", encoding="utf-8") as f:
        f.write(INTER_HEADER + "\n")
        for u, i, t in inter[["user", "item", "timestamp"]].itertuples(index=False):
            f.write(f"{u}\t{i}\t{float(rng.integers(1, 6))}\t{t}\n")
    with open(os.path.join(folder, "amazon-beauty.item"), "w", encoding="utf-8") as f:
        f.write(ITEM_HEADER + "\n")
        for k, (i, title) in enumerate(items[["item", "title"]].itertuples(index=False)):
            brand = title.split()[0]
            f.write(f"{i}\t{title}\tBeauty\t{1000.0 + 37 * k}\tBeauty Skin_Care Body\t{5.0 + k % 20}\t{brand}\n")
    return inter, items, real is not None


@pytest.fixture
def amazon_beauty(tmp_path, monkeypatch):
    inter, items, real = write_amazon_beauty(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    return str(tmp_path), inter, items, real


def _cfg(data_path, **extra):
    return {"data_path": data_path, "eval_users": 12, "show_progress": False, "use_gpu": False,
            "eval_batch_size": 100, "epochs": 1, "train_batch_size": 256, "state": "WARNING", **extra}


FIVE_CORE = {"user_inter_num_interval": "[5,inf)", "item_inter_num_interval": "[5,inf)"}


def test_amazon_beauty_loads_by_name_with_raw_titles_and_5_core(amazon_beauty, tiny_llm_dir):
    data_path, inter, items, _ = amazon_beauty
    config = build_config("LRGD", "amazon-beauty", config_dict=_cfg(data_path, llm_path=tiny_llm_dir, **FIVE_CORE))
    assert config["user_inter_num_interval"] == "[5,inf)" and config["item_inter_num_interval"] == "[5,inf)"
    assert config["eval_args"]["mode"] == {"valid": "uni19", "test": "uni19"} and config["eval_args"]["order"] == "TO"
    assert config["eval_args"]["split"] == {"LS": "valid_and_test"} and config["title_field"] == "title"

    built, result = run_live("LRGD", "amazon-beauty", config_dict=_cfg(
        data_path, llm_path=tiny_llm_dir, demo_mode="random", score_cache=False, max_title_tokens=None, **FIVE_CORE),
        saved=False)  # whole titles: the tiny LLM's tokens are bytes, so a 32-token cap cuts at 32 bytes
    model = built.model
    ds = built.test_data._dataset
    core = _core(inter)
    raw_items = ds.field2id_token[ds.iid_field]
    assert set(raw_items[1:]) == set(core.item)  # RecBole's 5-core equals the iterative 5-core
    assert set(ds.field2id_token[ds.uid_field][1:]) == set(core.user)
    assert len(core) < len(inter)  # the filter really removed something
    assert not set(ds.field2type) & {"rating", "sales_type", "sales_rank", "categories", "price", "brand"}
    title_of = dict(zip(items.item, items.title))
    for iid in range(1, len(raw_items)):  # whole raw strings, not split into words
        assert model.titles[iid] == title_of[raw_items[iid]]
    assert result.test_users == 12
    assert 0.0 <= result.test_result["ndcg@10"] <= 1.0


def test_a_recbole_baseline_runs_on_the_same_files(amazon_beauty, tiny_llm_dir):
    """Pop reads every user and item of the files (no filter by default) and ranks LRGD's very candidates."""
    data_path, inter, _, _ = amazon_beauty
    built, result = run_live("Pop", "amazon-beauty", config_dict=_cfg(data_path), saved=False)
    ds = built.test_data._dataset
    assert set(ds.field2id_token[ds.iid_field][1:]) == set(inter.item)
    assert set(ds.field2id_token[ds.uid_field][1:]) == set(inter.user)
    assert result.test_users == 12
    for cands in built.test_data.candidate_sets().values():
        assert len(np.unique(cands)) == 20
    _, lrgd = run_live("LRGD", "amazon-beauty", config_dict=_cfg(data_path, llm_path=tiny_llm_dir, demo_mode="none"),
                       saved=False)
    assert lrgd.candidates == result.candidates


@pytest.mark.parametrize("name", ["amazon-beauty", "amazon-sports-outdoors", "amazon-toys-games",
                                  "amazon-video-games-18"])
def test_missing_files_say_where_to_put_them(tmp_path, monkeypatch, name):
    """No local files: one line naming both files and the folder, before RecBole tries to download."""
    monkeypatch.chdir(tmp_path)
    folder = os.path.join(str(tmp_path), "data", name)
    with pytest.raises(LRGDError) as info:
        run("Pop", name, config_dict=_cfg(str(tmp_path / "data")), saved=False)
    msg = str(info.value)
    assert f"unknown dataset {name!r}" in msg and "\n" not in msg
    assert f"{name}.inter" in msg and f"{name}.item" in msg and folder in msg
    assert not os.path.exists(folder) and not os.path.exists(os.path.join(str(tmp_path), "log"))


@pytest.mark.parametrize("name", ["amazon-beauty", "amazon-sports-outdoors", "amazon-toys-games",
                                  "amazon-video-games-18"])
def test_dataset_files_follow_the_protocol(tmp_path, name):
    """Each dataset file: raw-string titles, leave-one-out in time order with uni19; 5-core filtering only
    for RecBole's sports files (the shared copies arrive filtered and load as published)."""
    folder = tmp_path / name
    folder.mkdir()
    (folder / f"{name}.inter").write_text(INTER_HEADER + "\nu1\ti1\t5.0\t1\n")  # one line: an empty file is an error
    (folder / f"{name}.item").write_text(ITEM_HEADER + "\ni1\tA title\tBeauty\t1.0\tBeauty\t5.0\tBrand\n")
    config = build_config("LRGD", name, config_dict={"data_path": str(tmp_path), "use_gpu": False})
    assert config["load_col"] == {"inter": ["user_id", "item_id", "timestamp"], "item": ["item_id", "title"]}
    interval = "[5,inf)" if name == "amazon-sports-outdoors" else "[0,inf)"  # [0,inf): RecBole's default, no filter
    assert config["user_inter_num_interval"] == interval and config["item_inter_num_interval"] == interval
    assert config["eval_args"] == {"split": {"LS": "valid_and_test"}, "group_by": "user", "order": "TO",
                                   "mode": {"valid": "uni19", "test": "uni19"}}
    assert config["title_field"] == "title"
