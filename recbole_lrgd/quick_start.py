"""Config -> dataset -> fit -> evaluate, for LRGD and RecBole models through one loop.

Inputs (config keys, data files) are checked before anything is written (log file, tensorboard folder,
checkpoint) or loaded (the LLM), so bad input fails with a one-line ``LRGDError`` and leaves nothing half-done.
"""
from __future__ import annotations

import contextlib
import logging
import os
import time
from logging import Logger, getLogger
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Tuple, TypeVar

import numpy as np
from recbole.config import Config
from recbole.data import create_dataset
from recbole.trainer import Trainer
from recbole.utils import get_model, get_trainer, init_logger, init_seed, set_color

from recbole_lrgd import distributed as dist
from recbole_lrgd.config import PLUGIN_MODELS, build_config
from recbole_lrgd.console import FILE_ONLY, keep_file_only_records_off_the_console
from recbole_lrgd.data.candidates import FixedCandidateEvalDataLoader, candidates_digest
from recbole_lrgd.data.loaders import prepare_data
from recbole_lrgd.evaluator.slices import Slices, slice_table, user_slices
from recbole_lrgd.data.titles import check_title_coverage
from recbole_lrgd.errors import LRGDError
from recbole_lrgd.evaluator.collector import PerUserCollector
from recbole_lrgd.held_logs import held_logs, replay
from recbole_lrgd.llm.loader import check_llm_device, llm_summary, load_config_llm
from recbole_lrgd.model.lrgd import LRGD, check_prompt_budget
from recbole_lrgd.rerank.fuse import Fusion
from recbole_lrgd.results import RunResult
from recbole_lrgd.sources import build_retriever_config, prepare_retriever
from recbole_lrgd.trained_models import fit_once
from recbole_lrgd.trainer import eval_user_count

if TYPE_CHECKING:
    from recbole_lrgd.rerank.retriever import Retriever

T = TypeVar("T")


def run(model: str = "LRGD", dataset: str = "ml-100k", config_file_list: Optional[List[str]] = None,
        config_dict: Optional[Dict[str, Any]] = None, saved: bool = True) -> Optional[RunResult]:
    """Run one model on one dataset: ``build`` it, then ``fit_and_test`` it; None on a rank with nothing to do.

    Under ``accelerate launch`` (or torchrun) every rank calls this. For LRGD each rank builds the
    same data and demonstrations, scores its shard of the users and gets everyone's scores, so all
    ranks return the metrics of a single-process run; only rank 0 logs to the console and the log
    file and may write a saved dataset (the others wait for it). A RecBole baseline is not sharded:
    rank 0 runs it alone and the other ranks return None at once.
    """
    built = build(model, dataset, config_file_list, config_dict)
    return None if built is None else fit_and_test(built, saved)


@dataclass(frozen=True)
class Built:
    """The live objects of one run, ready to fit and test (``build``)."""

    config: Config
    train_data: Any
    valid_data: Any
    test_data: Any
    model: Any
    trainer: Any
    logger: Logger
    retriever_time: Optional[float] = None


def build(model: str = "LRGD", dataset: str = "ml-100k", config_file_list: Optional[List[str]] = None,
          config_dict: Optional[Dict[str, Any]] = None) -> Optional[Built]:
    """The config, the data, the log and the model with its trainer; None on a rank other than 0 for a RecBole
    baseline. Inputs are checked, and the data and the LLM loaded, before the log file is written.

    With ``candidate_source`` LRGD re-ranks a retriever's full-sort top-N: the retriever gets its own
    Config and data (``sources.build_retriever_config``), is trained or loaded (``prepare_retriever``,
    rank 0 first) after LRGD's data, and goes to the trainer, whose ``evaluate`` ranks the whole catalogue with it.
    """
    dist.init()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    config = build_config(model, dataset, config_file_list, config_dict)
    is_plugin = model in PLUGIN_MODELS
    sources = {key: config[key] for key in ("candidate_source", "prior_model") if is_plugin and config[key]}
    source_configs = {key: build_retriever_config(source, dataset, config_file_list, config_dict,
                                                  config["retriever_valid_users"]) for key, source in sources.items()}
    if dist.launched():
        for each in (config, *source_configs.values()):
            _configure_rank(each, visible)
        if not is_plugin and not dist.is_main():
            return None
    if is_plugin:  # this rank's device (a launcher sets it above), before the data
        check_llm_device(config)
    init_seed(config["seed"], config["reproducibility"])
    # the data, then the LLM, before the log file: bad data (read by RecBole, which writes nothing without
    # save_dataset) or a model that will not load is one line with nothing written; what they log is held
    # for the log file
    with held_logs() as held:
        train_data, valid_data, test_data = _load_data(config, is_plugin)
    logger = _setup_logging(config, is_plugin, held)
    retrievers, retriever_time = {}, None
    if sources:  # the retriever of candidate_source, or the prior of prior_model
        retrievers, retriever_time = _timed(lambda: {key: prepare_retriever(source_configs[key], source)
                                                     for key, source in sources.items()})
    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model_obj, trainer = _build_model_and_trainer(config, model, train_data, logger, retrievers)
    return Built(config, train_data, valid_data, test_data, model_obj, trainer, logger, retriever_time)


def fit_and_test(built: Built, saved: bool = True) -> RunResult:
    """Fit the model (LRGD: choose its demonstrations), test it, log and return the result. With ``saved`` a
    RecBole model trained by RecBole's own Trainer is kept in ``checkpoint_dir`` and loaded by a later run with
    the same settings and data (``trained_models.fit_once``); an interrupted training resumes."""
    config, trainer, logger, is_plugin = built.config, built.trainer, built.logger, isinstance(built.model, LRGD)
    show_progress = config["show_progress"]
    kept = saved and type(trainer) is Trainer  # trained once per settings and data, kept, resumable: its fit
    # time is the training's, summed over the runs that trained it, whichever run loads it
    if kept:
        best_valid_score, best_valid_result, fit_time = fit_once(
            trainer, built.train_data, built.valid_data, show_progress=show_progress)
    else:
        (best_valid_score, best_valid_result), fit_time = _timed(lambda: trainer.fit(
            built.train_data, built.valid_data, saved=saved, show_progress=show_progress))
    init_seed(config["seed"], config["reproducibility"])
    test_result, eval_time = _timed(lambda: trainer.evaluate(
        built.test_data, load_best_model=saved and not is_plugin, show_progress=show_progress))
    logger.info(set_color("best valid ", "yellow") + f": {best_valid_result}")
    logger.info(set_color("test result", "yellow") + f": {test_result}")
    test_users = eval_user_count(built.test_data)
    per_user = trainer.eval_collector.per_user_metrics()
    slices = user_slices(built.train_data._dataset, built.test_data._dataset) if config["slices"] else None
    if slices is not None:
        for line in slice_table(per_user, slices):
            logger.info(line)
    logger.info(f"fit time {fit_time:.1f}s" + (" (the kept training's)" if kept else "")
                + f", test time {eval_time:.1f}s, test users {test_users}"
                + (f", retriever {built.retriever_time:.1f}s" if built.retriever_time is not None else ""))
    lrgd = built.model if is_plugin else None
    target_in_top_n = getattr(trainer, "target_in_top_n", None)
    return RunResult(
        model=config["model"], dataset=config["dataset"], test_result=dict(test_result or {}),
        best_valid_score=best_valid_score, valid_score_bigger=config["valid_metric_bigger"],
        best_valid_result=best_valid_result, fit_time=fit_time, eval_time=eval_time, test_users=test_users,
        candidates=candidates_digest(built.test_data), test_per_user=per_user,
        retriever_time=built.retriever_time, target_in_top_n=target_in_top_n,
        rerank_top=config["rerank_top"] if target_in_top_n is not None else None,
        demonstrations=str(lrgd.choice) if lrgd else "",
        global_demo_users=tuple(int(u) for u in lrgd.global_demo_users) if lrgd else (),
        fit=lrgd.fit_result if lrgd else None, score_counts=lrgd.score_counts() if lrgd else None,
        prior_weight=None if getattr(trainer, "fusion", None) is None else float(trainer.fusion.weight),
        slices=slices)


def dataset_slices(dataset: str, config_file_list: Optional[List[str]] = None,
                   config_dict: Optional[Dict[str, Any]] = None) -> Slices:
    """The slices of the test users a run of this config evaluates, from its data alone (no model: the split
    and the users' sample are every model's)."""
    config = build_config("Pop", dataset, config_file_list, config_dict, warn_unknown=False)
    init_seed(config["seed"], config["reproducibility"])
    train_data, _, test_data = prepare_data(config, create_dataset(config))
    return user_slices(train_data._dataset, test_data._dataset)


def _configure_rank(config: Config, visible: Optional[str]) -> None:
    """Under a launcher: this rank's own device (``cuda:{local_rank}``), nothing written and no progress
    bars off rank 0, and no ``llm_device_map`` with several processes on one machine."""
    if visible is None:  # RecBole's Config pins CUDA_VISIBLE_DEVICES to gpu_id ('0'): undo that
        os.environ.pop("CUDA_VISIBLE_DEVICES", None)
    else:
        os.environ["CUDA_VISIBLE_DEVICES"] = visible
    config["device"] = dist.device_for(config["device"])
    if config["llm_device"]:
        config["llm_device"] = str(dist.device_for(config["llm_device"]))
    if config["llm_device_map"] and dist.local_world_size() > 1:
        raise LRGDError("llm_device_map spreads one model over all of a machine's GPUs: run one process per "
                        "machine (accelerate launch --num_processes = --num_machines), or drop llm_device_map")
    if not dist.is_main():
        config["save_dataset"] = config["save_dataloaders"] = False
        config["show_progress"] = False


def _load_data(config: Config, is_plugin: bool) -> Tuple[Any, Any, Any]:
    """The dataset and its train, valid and test loaders (``prepare_data``); for LRGD its data checked
    (``_check_lrgd_data``) and then its LLM loaded."""
    # rank 0 first: with save_dataset it writes the processed dataset, which the others then read
    with dist.main_first() if is_plugin else contextlib.nullcontext():
        dataset_obj = create_dataset(config)
    getLogger().info(str(dataset_obj))  # as loaded: a sequential build() in prepare_data changes it
    train_data, valid_data, test_data = prepare_data(config, dataset_obj)
    if is_plugin:
        _check_lrgd_data(config, test_data)
        load_config_llm(config)
    return train_data, valid_data, test_data


def _check_lrgd_data(config: Config, test_data) -> None:
    """What LRGD's prompts need of the data, checked before its LLM loads: titles for most of the evaluated
    users' candidates (every item in a full ranking), and a prompt budget their shortest prompts fit."""
    if isinstance(test_data, FixedCandidateEvalDataLoader):
        candidates = np.concatenate([np.empty(0, dtype=np.int64), *test_data.candidate_sets().values()])
    else:  # a full ranking: every item is a candidate
        candidates = np.arange(1, test_data._dataset.item_num)
    check_title_coverage(test_data._dataset, config["title_field"], candidates, eval_user_count(test_data))
    check_prompt_budget(config, test_data)


def _setup_logging(config: Config, is_plugin: bool, held: List[logging.LogRecord]) -> Logger:
    """RecBole's log file and console on rank 0 (the config to the file only), warnings alone on the others'
    consoles; then the records held while the data and the LLM loaded."""
    if dist.is_main():
        init_logger(config)
    else:  # no log file, and only warnings on the console
        logging.basicConfig(level=logging.WARNING, format=f"[rank {dist.world()[0]}] %(levelname)s  %(message)s")
    keep_file_only_records_off_the_console()
    logger = getLogger()
    logger.info(config, extra=FILE_ONLY)
    if is_plugin:
        logger.info(llm_summary(config))
    replay(held)
    return logger


def _build_model_and_trainer(config: Config, model: str, train_data, logger: Logger,
                             retrievers: Dict[str, Retriever]) -> Tuple[Any, Any]:
    """The model on the config's device and its Trainer (LRGD's, with the retriever of ``candidate_source`` and
    the prior of ``prior_model`` when set, or RecBole's for the model), collecting per-user test metrics for the
    benchmark."""
    if model in PLUGIN_MODELS:
        model_cls, trainer_cls = PLUGIN_MODELS[model]
        prior = retrievers.get("prior_model")
        extra = {"retriever": retrievers.get("candidate_source"),
                 "fusion": prior and Fusion(prior.model, config["prior_weight"])}
    else:
        model_cls, trainer_cls = get_model(model), get_trainer(config["MODEL_TYPE"], config["model"])
        extra = {}
    model_obj = model_cls(config, train_data._dataset).to(config["device"])
    logger.info(model_obj, extra=FILE_ONLY)
    trainer = trainer_cls(config, model_obj, **extra)
    PerUserCollector.install(trainer)  # per-user test metrics from RecBole's own ranking, for the benchmark
    return model_obj, trainer


def _timed(step: Callable[[], T]) -> Tuple[T, float]:
    """What ``step`` returns, and the seconds it took."""
    start = time.time()
    return step(), time.time() - start
