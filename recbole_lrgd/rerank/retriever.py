"""The retriever of ``candidate_source`` and its cached checkpoint.

With ``candidate_source`` set, LRGD is evaluated over the whole catalogue: a RecBole model ranks every item
for a test user and LRGD re-ranks its top ``rerank_top`` (``LRGDTrainer.evaluate``). The retriever is either
trained here, on the same split in the same run, with RecBole's own Trainer and that model's RecBole defaults
(``sources.py`` builds its Config and data as ``run(<model>, ...)`` would, so it is the very model of the
retriever-alone row), or loaded from a checkpoint RecBole's Trainer saved.

A trained retriever is kept in ``checkpoint_dir`` (``trained_models.fit_once``), so a re-run, another rank
under a launcher, or the model's own baseline row with the same settings loads it instead of training again.
"""
from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Dict, Optional

import numpy as np
import torch
from recbole.utils import get_model, get_trainer, init_seed

from recbole_lrgd.checkpoints import is_checkpoint, read_checkpoint
from recbole_lrgd.errors import LRGDError
from recbole_lrgd.trained_models import fit_once

if TYPE_CHECKING:
    from recbole.config import Config
    from recbole.data.dataloader import AbstractDataLoader
    from recbole.model.abstract_recommender import AbstractRecommender


class Retriever:
    """A RecBole model, trained or loaded, that ranks the whole catalogue for LRGD's test users.

    ``scores`` are RecBole's own full-sort scores (``Trainer._full_sort_batch_eval`` of the model's own
    Trainer, on its own test loader's rows for those users), with the padding item and the user's history
    at -inf as RecBole's general full-sort evaluation sets them: every item of the user in any split but
    the targets. A sequential model's own full sort keeps the history; here it is excluded for every model.
    """

    def __init__(self, config: Config, model: AbstractRecommender, test_data: AbstractDataLoader,
                 user_items: Dict[int, np.ndarray], path: str):
        self.model, self.test_data, self.path, self.user_items = model, test_data, path, user_items
        dataset = test_data._dataset
        self.model.eval()
        # the model's own Trainer, private to this retriever, set up for a full sort as Trainer.evaluate sets it up
        self._trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
        self._trainer.tot_item_num = dataset.item_num
        self._trainer.item_tensor = dataset.get_item_feature().to(self._trainer.device)
        if hasattr(test_data, "user_df"):  # a general model's loader: one row per user
            uids = test_data.user_df[dataset.uid_field].numpy()
        else:  # a sequential model's: one row per test interaction (leave-one-out: one per user)
            uids = dataset.inter_feat[dataset.uid_field].numpy()
        self._row = {int(u): k for k, u in enumerate(uids)}

    @torch.no_grad()
    def scores(self, users: np.ndarray, targets: np.ndarray) -> torch.Tensor:
        """(len(users), item_num) scores on the CPU, in the model's own dtype; ``targets[k]`` is user k's
        held-out item."""
        missing = [int(u) for u in users if int(u) not in self._row]
        if missing:
            raise LRGDError(f"user id {missing[0]} has no test row in the retriever's data")
        batch = self.test_data.collate_fn([self._row[int(u)] for u in users])
        scores = self._trainer._full_sort_batch_eval((batch[0], None, batch[2], batch[3]))[1]
        scores = scores.detach().cpu().clone()  # its own dtype (Pop: float64), as RecBole's collector gets it
        for k, (user, target) in enumerate(zip(users, targets)):
            history = np.setdiff1d(self.user_items.get(int(user), np.zeros(0, dtype=np.int64)), [int(target)])
            scores[k, torch.from_numpy(history.astype(np.int64))] = -np.inf
        return scores


def _trained(config, train_data, valid_data) -> str:
    """The kept checkpoint of the model of ``config`` (``trained_models.fit_once``), built and seeded as
    ``quick_start.run`` builds and seeds it, trained first when there is none."""
    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    fit_once(trainer, train_data, valid_data, show_progress=config["show_progress"])
    return trainer.saved_model_file


def _load(path: str, config, train_data):
    """The model of a RecBole checkpoint on this run's data: built from the checkpoint's own config (its
    hyper-parameters) on this run's device, with its weights and other parameters (Pop's counts)."""
    checkpoint = read_checkpoint(path)
    saved_config = copy.deepcopy(checkpoint["config"])  # the read checkpoint is shared (cached): set a copy's device
    saved_config["device"] = config["device"]
    try:
        model = get_model(saved_config["model"])(saved_config, train_data._dataset).to(config["device"])
        model.load_state_dict(checkpoint["state_dict"])
        other = checkpoint.get("other_parameter")
        model.load_other_parameter(other and {k: v.to(config["device"]) if torch.is_tensor(v) else v
                                              for k, v in other.items()})
    except (RuntimeError, KeyError) as exc:
        raise LRGDError(f"candidate_source {path} does not fit this dataset "
                        f"({str(exc).splitlines()[0][:200]})") from None
    return model


def load_or_train(config: Config, source: str, train_data: AbstractDataLoader, valid_data: Optional[AbstractDataLoader],
                  test_data: AbstractDataLoader, user_items: Dict[int, np.ndarray]) -> Retriever:
    """The retriever of ``source`` (a model name or a checkpoint .pth) over the data of its own ``config``:
    a checkpoint is loaded; a model is loaded from its cached checkpoint, trained (and cached) only when
    there is none. Under a launcher call it inside ``dist.main_first()``: rank 0 trains, the others load."""
    path = source if is_checkpoint(source) else _trained(config, train_data, valid_data)
    return Retriever(config, _load(path, config, train_data), test_data, user_items, path)

