"""RecBole's data preparation with replayable candidates: every model's eval loaders hold the same seeded users
and, in a sampled mode, the same pre-drawn (or ``candidates_file``) candidates (``FixedCandidateEvalDataLoader``)."""
from __future__ import annotations

from logging import getLogger
from typing import TYPE_CHECKING, Any, Dict, Optional, Tuple

import numpy as np
import torch
from recbole.config import Config
from recbole.data import create_samplers, get_dataloader
from recbole.data.dataloader import NegSampleEvalDataLoader

from recbole_lrgd.data.candidates import (FixedCandidateEvalDataLoader, draw_negatives, interacted_negatives,
                                         item_distribution, read_candidates_file, sample_user_subset, user_items)
from recbole_lrgd.errors import LRGDError

if TYPE_CHECKING:
    from recbole.data.dataset import Dataset


# Under a leave-one-out split a sequential model's rows are a user's interactions after the first, each the target
# of those before it: it has a test row for users with 3 interactions or more and a validation row from 4, where a
# general model has them from 2 and 3. Every model evaluates the users that both kinds have.
LEAVE_ONE_OUT_MIN_INTERACTIONS = {"valid": 4, "test": 3}


def evaluable(config: Config, counts: np.ndarray, uids: np.ndarray, phase: str) -> np.ndarray:
    """The users of ``uids`` (a phase's rows) that every model has a ``phase`` row for, given each user's
    interaction count (``counts``, by user id): all of them unless RecBole splits leave-one-out itself (not from
    the pre-split files of ``benchmark_filename``)."""
    if config["benchmark_filename"] or "LS" not in (config["eval_args"]["split"] or {}):
        return uids
    kept = uids[counts[uids] >= LEAVE_ONE_OUT_MIN_INTERACTIONS[phase]]
    left_out = len(np.unique(uids)) - len(np.unique(kept))
    if left_out:
        getLogger(__name__).info(
            f"{phase}: {left_out:,} users with fewer than {LEAVE_ONE_OUT_MIN_INTERACTIONS[phase]} interactions left "
            "out, as a sequential model has no row for them: every model evaluates the same users")
    return kept


def _eval_loader(config: Config, used, dataset, sampler, phase: str, n_users: Optional[int]):
    """The eval loader of a phase: a seeded sample of the users every model can evaluate (the same for every
    model and eval mode), with fixed, pre-drawn candidates in a sampled mode."""
    loader_cls = get_dataloader(config, phase)
    sampled = issubclass(loader_cls, NegSampleEvalDataLoader) and sampler is not None
    if sampled and phase == "test" and config["candidates_file"]:
        return _candidates_file_loader(config, dataset, sampler, used)
    uid_field = dataset.uid_field
    rows = dataset.inter_feat[uid_field].numpy()
    uids = evaluable(config, used["counts"], rows, phase)
    if len(uids) == 0 < len(rows):
        raise LRGDError(f"no user has a {phase} row that every model has: under leave-one-out that needs "
                        f"{LEAVE_ONE_OUT_MIN_INTERACTIONS[phase]} interactions or more")
    keep = sample_user_subset(uids, n_users, config["seed"])
    if len(keep) < len(dataset.inter_feat[uid_field].unique()):
        mask = torch.isin(dataset.inter_feat[uid_field], torch.as_tensor(keep))
        dataset = dataset.copy(dataset.inter_feat[mask])
    if not sampled:
        return loader_cls(config, dataset, sampler, shuffle=False)
    args = config[f"{phase}_neg_sample_args"]
    probs = item_distribution(used["item_ids"], dataset.item_num, args["distribution"], args.get("alpha", 1.0))
    negatives = draw_negatives(used["items"], probs, dataset, int(args["sample_num"]),
                               config["seed"] + (1 if phase == "test" else 0))
    return FixedCandidateEvalDataLoader(config, dataset, sampler, negatives)


def _candidates_file_loader(config: Config, dataset, sampler, used: Dict[str, Any]):
    """The test loader of ``candidates_file``: the file's users (``eval_users`` of them, sampled), each ranking its
    target and the first N-1 other ids of its line (LLMRank's protocol), for LRGD and RecBole models alike. Negatives a
    user interacted with (``user_items``) are kept, as the file gives them, with a warning. A user no model of the
    other kind could evaluate (``evaluable``) has no test item here either."""
    uid_field, iid_field = dataset.uid_field, dataset.iid_field
    uids, iids = dataset.inter_feat[uid_field].numpy(), dataset.inter_feat[iid_field].numpy()
    if len(np.unique(uids)) != len(uids):
        raise LRGDError("candidates_file needs one held-out test item per user (leave-one-out: "
                        "eval_args split {'LS': 'valid_and_test'})")
    kept = set(evaluable(config, used["counts"], uids, "test").tolist())
    targets = {u: i for u, i in zip(uids.tolist(), iids.tolist()) if u in kept}
    negatives = read_candidates_file(config["candidates_file"], dataset.field2token_id[uid_field],
                                     dataset.field2token_id[iid_field], targets,
                                     int(config["test_neg_sample_args"]["sample_num"]))
    # eval_users: a seeded sample of the file's users, the same for every model (the file is checked whole first)
    keep = sample_user_subset(np.array(sorted(negatives), dtype=np.int64), config["eval_users"], config["seed"])
    negatives = {int(u): negatives[int(u)] for u in keep}
    interacted = interacted_negatives(negatives, used["items"])
    if interacted:
        total = sum(negs.size for negs in negatives.values())
        getLogger(__name__).warning(
            f"candidates_file {config['candidates_file']}: {len(interacted):,} of {len(negatives):,} users have "
            f"items they interacted with among their negatives ({sum(interacted.values()):,} of {total:,} "
            "negatives), which their metrics count as wrong answers")
    mask = torch.isin(dataset.inter_feat[uid_field], torch.as_tensor(sorted(negatives)))
    return FixedCandidateEvalDataLoader(config, dataset.copy(dataset.inter_feat[mask]), sampler, negatives)


def prepare_data(config: Config, dataset: Dataset) -> Tuple[Any, Any, Any]:
    """RecBole's data_preparation, with replayable candidates and ``eval_users``/``valid_users``."""
    # the whole interaction table, before a sequential build() replaces it by augmented rows
    uids = np.asarray(dataset.inter_feat[dataset.uid_field])
    used = {"items": user_items(dataset), "item_ids": np.array(dataset.inter_feat[dataset.iid_field]),
            "counts": np.bincount(uids, minlength=dataset.user_num)}
    built = dataset.build()
    train_ds, valid_ds, test_ds = built
    train_sampler, valid_sampler, test_sampler = create_samplers(config, dataset, built)
    train = get_dataloader(config, "train")(config, train_ds, train_sampler, shuffle=config["shuffle"])
    valid = _eval_loader(config, used, valid_ds, valid_sampler, "valid", config["valid_users"])
    test = _eval_loader(config, used, test_ds, test_sampler, "test", config["eval_users"])
    return train, valid, test
