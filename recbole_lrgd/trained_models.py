"""A RecBole model trained once per model, training settings and data, kept in ``checkpoint_dir``, and resumable.

A baseline's own row (``run("SASRec", ...)`` with ``saved``), the prior of a fusion row (``prior_model``) and
the retriever of a re-ranking row (``candidate_source``) train the same model when their settings and data agree:
``fit_once`` trains it the first time and keeps RecBole's best-epoch checkpoint as
``trained-<model>-<dataset>-<key>.pth``, the key a hash of the config keys that can change what it learns and of
the training and validation data; later runs (and the other ranks under a launcher) load it.

A training by RecBole's own ``Trainer`` (most models: Pop, BPR, SASRec...) writes, after every validation, what it
needs to go on exactly where it was: the model, the optimizer, the early-stopping counters and every random
generator it draws from (torch's, numpy's, Python's, its loaders'). An interrupted training run again resumes
after its last validation and, on a CPU with the same number of threads, ends with the very weights an
uninterrupted one would (on a GPU, as reproducible as RecBole's own training). A model with a trainer of its own
(RecVAE, KGAT...) trains in one go.
The partial files (``.best`` and ``.resume`` beside the final name) are removed when the training ends; a lock
(``.lock``, left in place) keeps two processes from training the same model at once.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import os
import random
import time
from logging import getLogger
from typing import TYPE_CHECKING, Any, Dict, Iterator, Optional, Tuple

import numpy as np
import torch
from recbole.trainer import AbstractTrainer, Trainer
from recbole.utils import set_color

from recbole_lrgd.digest import digest
from recbole_lrgd.settings import NOT_TRAINING_KEYS
from recbole_lrgd.whole_file import write_whole

if TYPE_CHECKING:
    from recbole.config import Config
    from recbole.data.dataloader import AbstractDataLoader
    from recbole.data.dataset import Dataset


# RecBole's config keys that cannot change what a model learns: where things go, what is logged, which device and
# how many processes, which metrics are reported (early stopping reads valid_metric alone), and the test phase (the
# data hash covers the data itself); the plugin's own such keys are its settings fields' (settings.NOT_TRAINING_KEYS)
RECBOLE_NOT_TRAINING_KEYS = ("gpu_id", "use_gpu", "device", "state", "data_path", "checkpoint_dir", "show_progress",
                             "save_dataset", "dataset_save_path", "save_dataloaders", "dataloaders_save_path",
                             "log_wandb", "wandb_project", "worker", "metrics", "topk", "eval_batch_size",
                             "test_neg_sample_args", "local_rank", "nproc", "world_size", "offset", "ip", "port",
                             "single_spec", "config_files", "result_file")


def training_settings(config: Config) -> Dict[str, Any]:
    """The config keys that can change what the model learns: all but RecBole's and the plugin's that cannot
    (``RECBOLE_NOT_TRAINING_KEYS``, ``settings.NOT_TRAINING_KEYS``); of eval_args the split, order, grouping and
    the validation mode (early stopping reads it)."""
    left_out = {*RECBOLE_NOT_TRAINING_KEYS, *NOT_TRAINING_KEYS, "eval_args"}
    settings = {k: v for k, v in config.final_config_dict.items() if k not in left_out}
    if config["worker"]:  # loader processes draw the negative samples with seeds of their own
        settings["worker"] = config["worker"]
    eval_args = dict(config["eval_args"])
    mode = eval_args.pop("mode")
    settings["eval_args"] = {**eval_args, "valid_mode": mode.get("valid") if isinstance(mode, dict) else mode}
    return settings


def data_fingerprint(*datasets: Dataset) -> str:
    """A hash of every feature tensor of the datasets' interactions, users and items, and of their id maps."""
    h = hashlib.sha1()
    for dataset in datasets:
        for feat in (dataset.inter_feat, dataset.user_feat, dataset.item_feat):
            for field in sorted(feat.interaction if feat is not None else {}):
                h.update(field.encode() + b"\0" + feat[field].numpy().tobytes())
        for field in (dataset.uid_field, dataset.iid_field):
            h.update("\0".join(map(str, dataset.field2id_token[field])).encode("utf-8"))
    return h.hexdigest()


def checkpoint_path(config: Config, train_data: AbstractDataLoader, valid_data: Optional[AbstractDataLoader]) -> str:
    """Where the trained model of this model, config and data is kept."""
    key = digest({"model": config["model"], "settings": training_settings(config),
                  "data": data_fingerprint(train_data._dataset, *([valid_data._dataset] if valid_data else []))})
    return os.path.join(config["checkpoint_dir"], f"trained-{config['model']}-{config['dataset']}-{key[:12]}.pth")


def fit_once(trainer: AbstractTrainer, train_data: AbstractDataLoader, valid_data: Optional[AbstractDataLoader],
             show_progress: bool = False) -> Tuple[float, Optional[Dict], float]:
    """RecBole's ``trainer.fit`` run at most once per model, settings and data: (best validation score, its
    result, the seconds the training took, summed over the runs that trained it). The kept checkpoint is loaded
    when there is one; a training interrupted earlier resumes. Either way the trainer's ``saved_model_file`` is
    the kept checkpoint, which ``evaluate(load_best_model=True)`` loads."""
    config = trainer.config
    path = checkpoint_path(config, train_data, valid_data)
    with _lock(f"{path}.lock"):
        if not os.path.isfile(path):
            _train(trainer, train_data, valid_data, path, show_progress)
        else:
            getLogger().info(set_color("trained", "green") + f": {config['model']} loaded from {path}")
            trainer.eval_collector.data_collect(train_data)  # as fit does: metrics such as ItemCoverage read it
    trainer.saved_model_file = path
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)  # it pickles RecBole's Config
    return checkpoint["best_valid_score"], checkpoint.get("best_valid_result"), checkpoint["training_seconds"]


def _train(trainer, train_data, valid_data, path: str, show_progress: bool) -> None:
    """Train into ``path``: the best epoch saved by RecBole's Trainer under a partial name, the state to resume
    from written after every validation, the best checkpoint moved to ``path`` with its validation result."""
    best, resume = f"{path}.best", f"{path}.resume"
    trainer.saved_model_file = best
    loaders = {"train": train_data, "valid": valid_data}
    resumable = type(trainer) is Trainer  # a trainer of its own may keep more than one optimizer or loop
    finished, earlier, start = False, 0.0, time.time()
    if resumable and os.path.isfile(resume) and os.path.isfile(best):
        finished, earlier = _resume(trainer, loaders, resume)
    else:
        getLogger().info(set_color("trained", "green") + f": training {trainer.config['model']} "
                         f"(no checkpoint at {path})")

    def keep_state(epoch: int, valid_score: float) -> None:
        _save_state(trainer, loaders, epoch, earlier + time.time() - start, resume)

    if finished:
        trainer.eval_collector.data_collect(train_data)
    else:
        trainer.fit(train_data, valid_data, saved=True, show_progress=show_progress,
                    callback_fn=keep_state if resumable else None)
    checkpoint = torch.load(best, map_location="cpu", weights_only=False)
    checkpoint["best_valid_result"] = trainer.best_valid_result
    checkpoint["training_seconds"] = earlier + time.time() - start
    if earlier:
        getLogger().info(set_color("trained", "green") + f": {trainer.config['model']} trained in "
                         f"{checkpoint['training_seconds']:.0f} s over more than one run")
    _save_whole(path, checkpoint)
    for partial in (best, resume):
        if os.path.exists(partial):
            os.remove(partial)


def _save_state(trainer, loaders: Dict[str, Any], epoch: int, seconds: float, path: str) -> None:
    """What ``_resume`` needs to go on after ``epoch`` exactly as the training would have gone on, and the
    seconds spent training so far."""
    state = {"epoch": epoch, "seconds": seconds, "cur_step": trainer.cur_step,
             "best_valid_score": trainer.best_valid_score, "best_valid_result": trainer.best_valid_result,
             "state_dict": trainer.model.state_dict(), "other_parameter": trainer.model.other_parameter(),
             "optimizer": trainer.optimizer.state_dict(),
             "torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
             "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None,
             "loaders": {name: loader.generator.get_state() for name, loader in loaders.items() if loader is not None}}
    _save_whole(path, state)


def _resume(trainer, loaders: Dict[str, Any], path: str) -> Tuple[bool, float]:
    """Restore the state ``_save_state`` wrote: whether the training had already stopped (early stopping, or
    its last epoch), and the seconds it had trained."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)  # generator states live on the CPU
    except Exception as exc:  # a truncated or damaged file (a lost machine): torch raises several types
        getLogger().warning(f"trained: cannot resume from {path} ({type(exc).__name__}): training from the start")
        return False, 0.0
    trainer.model.load_state_dict(state["state_dict"])
    trainer.model.load_other_parameter(state["other_parameter"])
    trainer.optimizer.load_state_dict(state["optimizer"])
    trainer.start_epoch, trainer.cur_step = state["epoch"] + 1, state["cur_step"]
    trainer.best_valid_score, trainer.best_valid_result = state["best_valid_score"], state["best_valid_result"]
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if state.get("cuda") is not None and len(state["cuda"]) == torch.cuda.device_count():  # CUDA was in use
        torch.cuda.set_rng_state_all(state["cuda"])
    for name, generator_state in state["loaders"].items():
        loaders[name].generator.set_state(generator_state)
    getLogger().info(set_color("trained", "green") + f": {trainer.config['model']} resumes its training at epoch "
                     f"{trainer.start_epoch} (best {trainer.config['valid_metric']} so far "
                     f"{trainer.best_valid_score:.4f}) from {path}")
    return trainer.cur_step > trainer.stopping_step or trainer.start_epoch >= trainer.epochs, state["seconds"]


def _save_whole(path: str, obj: Dict[str, Any]) -> None:
    """``torch.save`` written whole or not at all: an interruption never leaves half a checkpoint."""
    buffer = io.BytesIO()
    torch.save(obj, buffer, pickle_protocol=4)
    write_whole(path, buffer.getvalue())


@contextlib.contextmanager
def _lock(path: str) -> Iterator[None]:
    """An exclusive lock on ``path`` while the block runs (the next process waits, then finds the model kept)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
