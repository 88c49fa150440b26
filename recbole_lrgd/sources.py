"""The Config and data of a run's other RecBole model (``candidate_source``'s retriever, ``prior_model``'s prior),
built as ``quick_start.run(<model>, ...)`` builds them, so it is the very model of that model's own row; then
loaded or trained (``rerank.retriever.load_or_train``)."""
from __future__ import annotations

from typing import Any, Dict, List, Optional

from recbole.config import Config
from recbole.data import create_dataset
from recbole.utils import init_seed

from recbole_lrgd import distributed as dist
from recbole_lrgd.checkpoints import source_model
from recbole_lrgd.config import build_config
from recbole_lrgd.data.candidates import user_items
from recbole_lrgd.data.loaders import prepare_data
from recbole_lrgd.rerank.retriever import Retriever, load_or_train


def build_retriever_config(source: str, dataset: str, config_file_list: Optional[List[str]],
                           config_dict: Optional[Dict[str, Any]], valid_users: Optional[int]) -> Config:
    """The Config of ``candidate_source``'s model: RecBole's defaults for it under the run's own files and keys
    (data, split, seed, training), as ``run(<model>, ...)`` builds it, so the retriever is the model of the
    retriever-alone row. Its test loader holds every test user: LRGD's sample is among them. It validates
    (early stopping) on ``valid_users`` (LRGD's ``retriever_valid_users``: LRGD's own ``valid_users`` is its
    LLM validation)."""
    config = build_config(source_model(source), dataset, config_file_list, config_dict, warn_unknown=False)
    config["eval_users"], config["valid_users"] = None, valid_users
    return config


def prepare_retriever(config: Config, source: str) -> Retriever:
    """The retriever over its own Config's data, built and seeded as ``run`` does: loaded from a checkpoint,
    or trained (and cached) first. Rank 0 goes first, so under a launcher it trains and the others load."""
    init_seed(config["seed"], config["reproducibility"])
    with dist.main_first():
        dataset = create_dataset(config)
        seen = user_items(dataset)  # every item of each user, before a sequential build() augments the rows
        train, valid, test = prepare_data(config, dataset)
        return load_or_train(config, source, train, valid, test, seen)
