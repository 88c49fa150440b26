"""The retriever of ``candidate_source`` and its cached checkpoint.

With ``candidate_source`` set, LRGD is evaluated over the whole catalogue: a RecBole model ranks every item
for a test user and LRGD re-ranks its top ``rerank_top`` (``LRGDTrainer.evaluate``). The retriever is either
trained here, on the same split in the same run, with RecBole's own Trainer and that model's RecBole defaults
(``source.py`` builds its Config and data as ``run(<model>, ...)`` would, so it is the very model of the
retriever-alone row), or loaded from a checkpoint RecBole's Trainer saved.

A trained retriever is kept in ``checkpoint_dir`` under a name keyed by the model, the config keys that can
change its training and a hash of the training and validation data, written atomically, so a re-run, or
another rank under a launcher, loads it instead of training again.
"""
from __future__ import annotations

import hashlib
import os
from functools import lru_cache
from logging import getLogger
from typing import Any, Dict

import numpy as np
import torch
import yaml
from recbole.utils import get_model, get_trainer, init_seed, set_color

from recbole_lrgd.errors import LRGDError
from recbole_lrgd.digest import digest
from recbole_lrgd.properties_files import properties_dir

# config keys that cannot change what a retriever learns: where things go, what is logged, which device
# and how many processes, which metrics are reported (early stopping reads valid_metric alone), and the
# test phase (the data hash covers the data itself); LRGD's own keys (properties/model/LRGD.yaml) are
# left out too
NOT_TRAINING_KEYS = ("gpu_id", "use_gpu", "device", "state", "data_path", "checkpoint_dir", "show_progress",
                     "save_dataset", "dataset_save_path", "save_dataloaders", "dataloaders_save_path", "log_wandb",
                     "wandb_project", "worker", "metrics", "topk", "eval_batch_size", "eval_users", "candidates_file",
                     "test_neg_sample_args", "local_rank", "nproc", "world_size", "offset", "ip", "port",
                     "single_spec", "config_files", "result_file", "slices")


def is_checkpoint(source: str) -> bool:
    """Whether a ``candidate_source`` (or ``prior_model``) names a checkpoint file rather than a model."""
    return str(source).endswith(".pth")


@lru_cache(maxsize=2)
def _checkpoint(path: str, mtime: float) -> Dict[str, Any]:
    """A RecBole checkpoint, read once per file version (its model name is needed before the run starts)."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)  # it pickles RecBole's Config
    except Exception as exc:  # a truncated or foreign file: torch raises several types
        raise LRGDError(f"candidate_source {path} is not a RecBole checkpoint ({type(exc).__name__})") from None
    if not isinstance(checkpoint, dict) or not {"config", "state_dict"} <= set(checkpoint):
        raise LRGDError(f"candidate_source {path} is not a RecBole checkpoint (no config and state_dict)")
    return checkpoint


def read_checkpoint(path: str) -> Dict[str, Any]:
    """The checkpoint at ``path`` (``torch.load`` on the CPU), an ``LRGDError`` when it is not RecBole's."""
    return _checkpoint(os.path.abspath(path), os.path.getmtime(path))


def source_model(source: str) -> str:
    """The RecBole model of a ``candidate_source``: the name itself, or the model its checkpoint holds."""
    return str(read_checkpoint(source)["config"]["model"]) if is_checkpoint(source) else str(source)


def check_source(config, key: str) -> None:
    """``config[key]`` (``candidate_source``, ``prior_model``) names a model LRGD can use: ~, a RecBole model, or a
    checkpoint of this dataset (one ``LRGDError``). Its type is its settings field's rule (``validate.check_values``)."""
    source = config[key]
    if source is None:
        return
    if is_checkpoint(source):
        if not os.path.isfile(source):
            raise LRGDError(f"{key} {source} does not exist (a RecBole checkpoint .pth)")
        checkpoint_dataset = read_checkpoint(source)["config"]["dataset"]
        if checkpoint_dataset != config["dataset"]:
            raise LRGDError(f"{key} {source} was trained on {checkpoint_dataset!r}, not {config['dataset']!r}")
        return
    try:
        get_model(source)
    except ValueError:
        raise LRGDError(f"{key} {source!r} is neither a RecBole model name (Pop, BPR, SASRec...) "
                        "nor a checkpoint .pth") from None


class Retriever:
    """A RecBole model, trained or loaded, that ranks the whole catalogue for LRGD's test users.

    ``scores`` are RecBole's own full-sort scores (``Trainer._full_sort_batch_eval`` of the model's own
    Trainer, on its own test loader's rows for those users), with the padding item and the user's history
    at -inf as RecBole's general full-sort evaluation sets them: every item of the user in any split but
    the targets. A sequential model's own full sort keeps the history; here it is excluded for every model.
    """

    def __init__(self, model, trainer, test_data, user_items: Dict[int, np.ndarray], path: str):
        self.model, self.trainer, self.test_data, self.path = model, trainer, test_data, path
        self.user_items = user_items
        dataset = test_data._dataset
        self.model.eval()
        trainer.tot_item_num = dataset.item_num  # as Trainer.evaluate sets them before _full_sort_batch_eval
        trainer.item_tensor = dataset.get_item_feature().to(trainer.device)
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
        scores = self.trainer._full_sort_batch_eval((batch[0], None, batch[2], batch[3]))[1]
        scores = scores.detach().cpu().clone()  # its own dtype (Pop: float64), as RecBole's collector gets it
        for k, (user, target) in enumerate(zip(users, targets)):
            history = np.setdiff1d(self.user_items.get(int(user), np.zeros(0, dtype=np.int64)), [int(target)])
            scores[k, torch.from_numpy(history.astype(np.int64))] = -np.inf
        return scores


def training_settings(config) -> Dict[str, Any]:
    """The config keys that can change what the retriever learns: all but ``NOT_TRAINING_KEYS`` and LRGD's
    own; of eval_args the split, order, grouping and the validation mode (early stopping reads it)."""
    with open(os.path.join(properties_dir(), "model", "LRGD.yaml"), encoding="utf-8") as f:
        lrgd_keys = set(yaml.safe_load(f))
    settings = {k: v for k, v in config.final_config_dict.items()
                if k not in NOT_TRAINING_KEYS and k not in lrgd_keys and k != "eval_args"}
    eval_args = dict(config["eval_args"])
    mode = eval_args.pop("mode")
    settings["eval_args"] = {**eval_args, "valid_mode": mode.get("valid") if isinstance(mode, dict) else mode}
    return settings


def data_fingerprint(*datasets) -> str:
    """A hash of every feature tensor of the datasets' interactions, users and items, and of their id maps."""
    h = hashlib.sha1()
    for dataset in datasets:
        for feat in (dataset.inter_feat, dataset.user_feat, dataset.item_feat):
            for field in sorted(feat.interaction if feat is not None else {}):
                h.update(field.encode() + b"\0" + feat[field].numpy().tobytes())
        for field in (dataset.uid_field, dataset.iid_field):
            h.update("\0".join(map(str, dataset.field2id_token[field])).encode("utf-8"))
    return h.hexdigest()


def checkpoint_path(config, train_data, valid_data) -> str:
    """Where the retriever of this model, config and data is kept."""
    key = digest({"model": config["model"], "settings": training_settings(config),
                  "data": data_fingerprint(train_data._dataset, *([valid_data._dataset] if valid_data else []))})
    return os.path.join(config["checkpoint_dir"], f"retriever-{config['model']}-{config['dataset']}-{key[:12]}.pth")


def _train(config, train_data, valid_data, path: str) -> None:
    """Train as ``quick_start.run`` trains a RecBole model (same seeding, Trainer and early stopping), the
    best validation epoch saved by RecBole's Trainer under a temporary name, then moved to ``path``."""
    logger = getLogger()
    logger.info(set_color("retriever", "green") + f": training {config['model']} (no checkpoint at {path})")
    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    tmp = f"{path}.tmp{os.getpid()}"
    trainer.saved_model_file = tmp
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    try:
        trainer.fit(train_data, valid_data, saved=True, show_progress=config["show_progress"])
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _load(path: str, config, train_data):
    """The model of a RecBole checkpoint on this run's data: built from the checkpoint's own config (its
    hyper-parameters) on this run's device, with its weights and other parameters (Pop's counts)."""
    checkpoint = read_checkpoint(path)
    saved_config = checkpoint["config"]
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


def load_or_train(config, source: str, train_data, valid_data, test_data, user_items: Dict[int, np.ndarray]
                  ) -> Retriever:
    """The retriever of ``source`` (a model name or a checkpoint .pth) over the data of its own ``config``:
    a checkpoint is loaded; a model is loaded from its cached checkpoint, trained (and cached) only when
    there is none. Under a launcher call it inside ``dist.main_first()``: rank 0 trains, the others load."""
    path = source if is_checkpoint(source) else checkpoint_path(config, train_data, valid_data)
    if not is_checkpoint(source):
        if os.path.isfile(path):
            getLogger().info(set_color("retriever", "green") + f": {config['model']} loaded from {path}")
        else:
            _train(config, train_data, valid_data, path)
    model = _load(path, config, train_data)
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    return Retriever(model, trainer, test_data, user_items, path)

