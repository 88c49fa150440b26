"""Config -> dataset -> fit -> evaluate, for LRGD and RecBole models through one loop.

Inputs (config keys, data files) are checked before anything is written (log file, tensorboard folder,
checkpoint) or loaded (the LLM), so bad input fails with a one-line ``LRGDError`` and leaves nothing half-done.
"""
from __future__ import annotations

import contextlib
import difflib
import glob
import importlib
import importlib.util
import logging
import os
import pkgutil
import time
from logging import getLogger
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
import yaml
from recbole.config import Config
from recbole.data import create_dataset, create_samplers, get_dataloader
from recbole.data.dataloader import NegSampleEvalDataLoader
from recbole.evaluator.register import metrics_dict
from recbole.utils import get_model, get_trainer, init_logger, init_seed, set_color

from recbole_lrgd.data.candidates import (FixedCandidateEvalDataLoader, draw_negatives, interacted_negatives,
                                         item_distribution, read_candidates_file, sample_user_subset, user_items)
from recbole_lrgd import compat
from recbole_lrgd.console import FILE_ONLY, keep_file_only_records_off_the_console
from recbole_lrgd import distributed as dist
from recbole_lrgd.data.atomic import check_atomic_files
from recbole_lrgd.data.titles import check_title_coverage, item_file_header
from recbole_lrgd.errors import LRGDError
from recbole_lrgd.evaluator import register_metrics
from recbole_lrgd.evaluator.collector import PerUserCollector
from recbole_lrgd.held_logs import held_logs, replay
from recbole_lrgd.model import LRGD
from recbole_lrgd.model.lrgd import check_prompt_budget
from recbole_lrgd.model.retriever import Retriever, check_rerank_keys, load_or_train, source_model
from recbole_lrgd.llm.loader import check_llm_device, llm_summary, load_config_llm
from recbole_lrgd.properties_files import properties_dir, run_properties
from recbole_lrgd.trainer import LRGDTrainer, eval_user_count
from recbole_lrgd.validate import check_values, check_writable_folder, warn_unknown_keys

PLUGIN_MODELS = {"LRGD": (LRGD, LRGDTrainer)}
EVAL_ARGS_KEYS = ("split", "group_by", "order", "mode")
PLUGIN_ONLY_METRICS = ("effectd",)
# where RecBole's get_model looks for a model: one module per model, named by its class's name in lower case
RECBOLE_MODEL_PACKAGES = ("general_recommender", "context_aware_recommender", "sequential_recommender",
                          "knowledge_aware_recommender", "exlib_recommender")


def properties_files(model: str, dataset: str) -> List[str]:
    """The plugin's YAML defaults for a run, in RecBole's order: overall, model, dataset; a missing
    expected file is an ``LRGDError`` (``recbole_lrgd/properties_files.py``)."""
    return run_properties(model, dataset, plugin_model=model in PLUGIN_MODELS)


def check_model_name(model: str) -> None:
    """A name that is neither the plugin's model nor RecBole's is an ``LRGDError`` that suggests the nearest
    known name, ignoring case (``lrgd`` -> ``LRGD``, ``sasrec`` -> ``SASRec``)."""
    if model in PLUGIN_MODELS:
        return
    try:
        get_model(model)
        return
    except (ValueError, AttributeError):  # no module of that name; or a module of it, but in another case
        pass
    found = {name.lower(): name for name in PLUGIN_MODELS}  # lower-case name -> plugin model or RecBole module
    for package in RECBOLE_MODEL_PACKAGES:
        spec = importlib.util.find_spec(f"recbole.model.{package}")
        found.update({m.name: f"recbole.model.{package}.{m.name}"
                      for m in pkgutil.iter_modules(spec.submodule_search_locations)})
    close = difflib.get_close_matches(model.lower(), list(found), n=1)
    hint = f"; did you mean {_model_class_name(found[close[0]])!r}?" if close else ""
    raise LRGDError(f"`model_name` [{model}] is not the name of an existing model{hint}")


def _model_class_name(found: str) -> str:
    """A plugin model's name, or the model class a RecBole module holds (the module's name if it will not import:
    an exlib model without its backend, lightgbm or xgboost)."""
    if found in PLUGIN_MODELS:
        return found
    stem = found.rsplit(".", 1)[1]
    try:
        module = importlib.import_module(found)
    except ImportError:
        return stem
    return next((name for name, obj in vars(module).items() if name.lower() == stem and isinstance(obj, type)), stem)


def _check_eval_args(eval_args: Any, where: str) -> None:
    """RecBole merges configs shallowly: a partial eval_args silently drops the other keys."""
    if not isinstance(eval_args, dict):
        raise LRGDError(f"eval_args {where} must be a mapping of {', '.join(EVAL_ARGS_KEYS)}, not {eval_args!r}")
    missing = [k for k in EVAL_ARGS_KEYS if k not in eval_args]
    if missing:
        raise LRGDError(f"eval_args {where} is incomplete (missing {', '.join(missing)}): RecBole replaces the "
                        f"whole dict, so give all of {', '.join(EVAL_ARGS_KEYS)}")


def _read_user_config(files: List[str], config_dict: Optional[Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
    """Every user file parses to a mapping (an empty file to none), and every eval_args given is complete.
    Returns path -> its keys and values, for the files RecBole will read (the empty ones are left out)."""
    loaded_files: Dict[str, Dict[str, Any]] = {}
    for path in files:
        if not os.path.isfile(path):
            raise LRGDError(f"config file {path!r} does not exist")
        try:
            with open(path, encoding="utf-8") as f:
                loaded = yaml.safe_load(f)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark else ""
            raise LRGDError(f"config file {path!r}{where} is not valid YAML: {getattr(exc, 'problem', exc)}") from None
        if loaded is None:
            continue
        if not isinstance(loaded, dict):
            raise LRGDError(f"config file {path!r} holds a {type(loaded).__name__}, not key: value lines")
        if "eval_args" in loaded:
            _check_eval_args(loaded["eval_args"], f"in {path}")
        loaded_files[path] = loaded
    if config_dict and "eval_args" in config_dict:
        _check_eval_args(config_dict["eval_args"], "in config_dict")
    return loaded_files


def build_config(model: str = "LRGD", dataset: str = "ml-100k", config_file_list: Optional[List[str]] = None,
                 config_dict: Optional[Dict[str, Any]] = None, warn_unknown: bool = True) -> Config:
    """A RecBole Config with the plugin's properties below the user's files and dict, checked: unknown keys
    get a warning (unless ``warn_unknown`` is False: a second config of the same keys), bad values and data
    an ``LRGDError``."""
    compat.apply()  # RecBole 1.2.1 on this stack; before the first Config(), for every entry point
    register_metrics()  # ``metrics: [..., EffectD]``
    user_files = _read_user_config(list(config_file_list or []), config_dict)
    files = properties_files(model, dataset) + list(user_files)
    model_arg = PLUGIN_MODELS[model][0] if model in PLUGIN_MODELS else model
    try:
        check_model_name(model)
        try:
            config = Config(model=model_arg, dataset=dataset, config_file_list=files, config_dict=config_dict)
        except ValueError as exc:
            if "loss_type is CE" not in str(exc):
                raise
            # CE-loss sequential models (SASRec, GRU4Rec, BERT4Rec...) train without sampled negatives
            config = Config(model=model_arg, dataset=dataset, config_file_list=files,
                            config_dict={**(config_dict or {}), "train_neg_sample_args": None})
    except (ValueError, TypeError, NotImplementedError, RuntimeError, SyntaxError) as exc:
        raise LRGDError(_config_error(exc)) from None
    if "eval_args" in config.cmd_config_dict:  # RecBole fills a partial one from its own defaults
        _check_eval_args(config.cmd_config_dict["eval_args"], "on the command line")
    if dist.is_main() and warn_unknown:
        given = {f"in {path}": list(keys) for path, keys in user_files.items()}
        given.update({"in config_dict": list(config_dict or {}), "on the command line": list(config.cmd_config_dict)})
        warn_unknown_keys(given, glob.glob(os.path.join(properties_dir(), "**", "*.yaml"), recursive=True))
    check_values(config)
    validate_config(config, is_plugin=model in PLUGIN_MODELS)
    if model not in PLUGIN_MODELS:
        drop_plugin_only_metrics(config)
    return config


def _config_error(exc: Exception) -> str:
    """RecBole's Config refusing a value, as one line (with the metric names where it names no metric)."""
    line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if line.startswith("There is no metric named"):
        line = f"metrics: {line[0].lower()}{line[1:]} (RecBole's: {', '.join(sorted(metrics_dict))})"
    return line


def drop_plugin_only_metrics(config: Config) -> None:
    """EffectD compares LRGD with and without demonstrations: RecBole baselines have no such thing."""
    config["metrics"] = [m for m in config["metrics"] if m.lower() not in PLUGIN_ONLY_METRICS]
    if config["valid_metric"].split("@")[0].lower() in PLUGIN_ONLY_METRICS:
        config["valid_metric"] = f"{config['metrics'][0]}@{max(config['topk'])}"
        config["valid_metric_bigger"] = True


def _eval_mode(config: Config, phase: str) -> str:
    mode = config["eval_args"]["mode"]
    return str(mode[phase] if isinstance(mode, dict) else mode)


def validate_config(config: Config, is_plugin: bool) -> None:
    """Catch bad input before anything is written."""
    _check_eval_args(config["eval_args"], "in the final config")
    dataset, data_path = config["dataset"], config["data_path"]
    given = config.external_config_dict.get("data_path")  # RecBole's data_path is <given>/<dataset>, or ml-100k's copy
    if isinstance(given, str) and os.path.exists(given) and not os.path.isdir(given):
        raise LRGDError(f"data_path {given} is a file, not a folder: set it to the folder that holds "
                        f"{dataset}/{dataset}.inter")
    inter = os.path.join(data_path, f"{dataset}.inter")
    if not os.path.isfile(inter):
        raise LRGDError(f"unknown dataset {dataset!r}: no {inter} (put {dataset}.inter and {dataset}.item "
                        f"under {data_path}, or set data_path to their parent folder)")
    test_neg = config["test_neg_sample_args"] or {}
    sampled = test_neg.get("distribution", "none") != "none" and test_neg.get("sample_num", "none") != "none"
    if sampled:
        block = 1 + int(test_neg["sample_num"])
        if int(config["eval_batch_size"]) < block:
            raise LRGDError(f"eval_batch_size {config['eval_batch_size']} is smaller than one user's block "
                            f"of {block} rows (1 positive + {test_neg['sample_num']} negatives)")
    check_atomic_files(config)
    if is_plugin:
        _check_rerank(config)
    candidates_file = config["candidates_file"]
    if candidates_file:
        if not os.path.isfile(candidates_file):
            raise LRGDError(f"candidates_file {candidates_file} " + (
                "is a folder, not a file" if os.path.isdir(candidates_file) else "does not exist"))
        if not os.access(candidates_file, os.R_OK):
            raise LRGDError(f"candidates_file {candidates_file} cannot be read (no read permission)")
        if not sampled:
            raise LRGDError(f"candidates_file needs a sampled eval mode (uniN or popN, N-1 negatives per user), "
                            f"not {_eval_mode(config, 'test')!r}")
    if is_plugin:
        if not sampled and not config["candidate_source"]:
            raise LRGDError(f"LRGD ranks sampled candidates: eval_args mode {_eval_mode(config, 'test')!r} must be "
                            "uniN or popN (e.g. uni19), or set candidate_source to re-rank a retriever's full ranking")
        if config["title_field"] not in item_file_header(data_path, dataset):
            raise LRGDError(f"{os.path.join(data_path, dataset + '.item')} has no title field "
                            f"{config['title_field']!r}: set title_field to one of its columns")
        state_file = config["demo_state_file"]
        if config["demo_mode"] == "lrgd" and state_file:  # written after stage 1's first unit of work
            if os.path.isdir(state_file):
                raise LRGDError(f"demo_state_file {state_file} is a folder, not a file")
            check_writable_folder(os.path.dirname(os.path.abspath(state_file)), "the folder of demo_state_file")


def _check_rerank(config: Config) -> None:
    """``candidate_source`` and its keys: the retriever's full ranking is re-ranked on the test users only,
    with one held-out item each, by RecBole's top-k metrics (EffectD compares sampled candidate lists)."""
    check_rerank_keys(config)
    if not config["candidate_source"]:
        return
    if config["candidates_file"]:
        raise LRGDError("candidates_file and candidate_source both set: give fixed candidates or a retriever, not both")
    full = {"split": {"LS": "valid_and_test"}, "group_by": "user", "order": "TO", "mode": "full"}
    if _eval_mode(config, "test") != "full":
        raise LRGDError(f"candidate_source re-ranks a full ranking: set eval_args to {full} "
                        f"(test mode {_eval_mode(config, 'test')!r} now)")
    if "LS" not in (config["eval_args"]["split"] or {}):
        raise LRGDError(f"candidate_source needs one held-out test item per user: eval_args split {{'LS': ...}}, "
                        f"as in {full}")
    if _eval_mode(config, "valid") == "full" and config["valid_users"] is not None:
        raise LRGDError("candidate_source re-ranks test users only: validate LRGD on sampled candidates "
                        "(eval_args mode {'valid': 'uni19', 'test': 'full'}) or set valid_users to ~")
    if any(m.lower() in PLUGIN_ONLY_METRICS for m in config["metrics"]):
        raise LRGDError("EffectD compares sampled candidate lists: drop it from metrics with candidate_source")


def _eval_loader(config: Config, used, dataset, sampler, phase: str, n_users: Optional[int]):
    """The eval loader of a phase: a seeded user sample (the same for every model and eval mode), with
    fixed, pre-drawn candidates in a sampled mode."""
    loader_cls = get_dataloader(config, phase)
    sampled = issubclass(loader_cls, NegSampleEvalDataLoader) and sampler is not None
    if sampled and phase == "test" and config["candidates_file"]:
        return _candidates_file_loader(config, dataset, sampler, used["items"])
    uid_field = dataset.uid_field
    keep = sample_user_subset(dataset.inter_feat[uid_field].numpy(), n_users, config["seed"])
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


def _candidates_file_loader(config: Config, dataset, sampler, seen: Dict[int, np.ndarray]):
    """The test loader of ``candidates_file``: the file's users (``eval_users`` of them, sampled), each ranking its
    target and the first N-1 other ids of its line (LLMRank's protocol), for LRGD and RecBole models alike. Negatives a
    user interacted with (``seen``: ``user_items``) are kept, as the file gives them, with a warning."""
    uid_field, iid_field = dataset.uid_field, dataset.iid_field
    uids, iids = dataset.inter_feat[uid_field].numpy(), dataset.inter_feat[iid_field].numpy()
    if len(np.unique(uids)) != len(uids):
        raise LRGDError("candidates_file needs one held-out test item per user (leave-one-out: "
                        "eval_args split {'LS': 'valid_and_test'})")
    targets = dict(zip(uids.tolist(), iids.tolist()))
    negatives = read_candidates_file(config["candidates_file"], dataset.field2token_id[uid_field],
                                     dataset.field2token_id[iid_field], targets,
                                     int(config["test_neg_sample_args"]["sample_num"]))
    # eval_users: a seeded sample of the file's users, the same for every model (the file is checked whole first)
    keep = sample_user_subset(np.array(sorted(negatives), dtype=np.int64), config["eval_users"], config["seed"])
    negatives = {int(u): negatives[int(u)] for u in keep}
    interacted = interacted_negatives(negatives, seen)
    if interacted:
        total = sum(negs.size for negs in negatives.values())
        getLogger(__name__).warning(
            f"candidates_file {config['candidates_file']}: {len(interacted):,} of {len(negatives):,} users have "
            f"items they interacted with among their negatives ({sum(interacted.values()):,} of {total:,} "
            "negatives), which their metrics count as wrong answers")
    mask = torch.isin(dataset.inter_feat[uid_field], torch.as_tensor(sorted(negatives)))
    return FixedCandidateEvalDataLoader(config, dataset.copy(dataset.inter_feat[mask]), sampler, negatives)


def prepare_data(config: Config, dataset) -> Tuple[Any, Any, Any]:
    """RecBole's data_preparation, with replayable candidates and ``eval_users``/``valid_users``."""
    # the whole interaction table, before a sequential build() replaces it by augmented rows
    used = {"items": user_items(dataset), "item_ids": np.array(dataset.inter_feat[dataset.iid_field])}
    built = dataset.build()
    train_ds, valid_ds, test_ds = built
    train_sampler, valid_sampler, test_sampler = create_samplers(config, dataset, built)
    train = get_dataloader(config, "train")(config, train_ds, train_sampler, shuffle=config["shuffle"])
    valid = _eval_loader(config, used, valid_ds, valid_sampler, "valid", config["valid_users"])
    test = _eval_loader(config, used, test_ds, test_sampler, "test", config["eval_users"])
    return train, valid, test


def _retriever_config(source: str, dataset: str, config_file_list: Optional[List[str]],
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


def _check_lrgd_data(config: Config, test_data) -> None:
    """What LRGD's prompts need of the data, checked before its LLM loads: titles for most of the evaluated
    users' candidates (every item in a full ranking), and a prompt budget their shortest prompts fit."""
    if isinstance(test_data, FixedCandidateEvalDataLoader):
        candidates = np.concatenate([np.empty(0, dtype=np.int64), *test_data.candidate_sets().values()])
    else:  # a full ranking: every item is a candidate
        candidates = np.arange(1, test_data._dataset.item_num)
    check_title_coverage(test_data._dataset, config["title_field"], candidates, eval_user_count(test_data))
    check_prompt_budget(config, test_data)


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


def run(model: str = "LRGD", dataset: str = "ml-100k", config_file_list: Optional[List[str]] = None,
        config_dict: Optional[Dict[str, Any]] = None, saved: bool = True) -> Optional[Dict[str, Any]]:
    """Run one model on one dataset; returns RecBole's result dict plus timings and the loaders.

    Under ``accelerate launch`` (or torchrun) every rank calls this. For LRGD each rank builds the
    same data and demonstrations, scores its shard of the users and gets everyone's scores, so all
    ranks return the metrics of a single-process run; only rank 0 logs to the console and the log
    file and may write a saved dataset (the others wait for it). A RecBole baseline is not sharded:
    rank 0 runs it alone and the other ranks return None at once.

    With ``candidate_source`` LRGD re-ranks a retriever's full-sort top-N: the retriever gets its own
    Config and data (``_retriever_config``), is trained or loaded (``prepare_retriever``, rank 0 first)
    after LRGD's data, and goes to the trainer, whose ``evaluate`` ranks the whole catalogue with it.
    """
    dist.init()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    config = build_config(model, dataset, config_file_list, config_dict)
    source = config["candidate_source"] if model in PLUGIN_MODELS else None
    retriever_config = _retriever_config(source, dataset, config_file_list, config_dict,
                                         config["retriever_valid_users"]) if source else None
    if dist.launched():
        for each in (config, retriever_config):
            if each is not None:
                _configure_rank(each, visible)
        if model not in PLUGIN_MODELS and not dist.is_main():
            return None
    if model in PLUGIN_MODELS:  # this rank's device (a launcher sets it above), before the data
        check_llm_device(config)
    init_seed(config["seed"], config["reproducibility"])
    # the data, then the LLM, before the log file: bad data (read by RecBole, which writes nothing without
    # save_dataset) or a model that will not load is one line with nothing written; what they log is held
    # for the log file
    with held_logs() as held:
        # rank 0 first: with save_dataset it writes the processed dataset, which the others then read
        with dist.main_first() if model in PLUGIN_MODELS else contextlib.nullcontext():
            dataset_obj = create_dataset(config)
        getLogger().info(str(dataset_obj))  # as loaded: a sequential build() in prepare_data changes it
        train_data, valid_data, test_data = prepare_data(config, dataset_obj)
        if model in PLUGIN_MODELS:
            _check_lrgd_data(config, test_data)
            load_config_llm(config)
    if dist.is_main():
        init_logger(config)
    else:  # no log file, and only warnings on the console
        logging.basicConfig(level=logging.WARNING, format=f"[rank {dist.world()[0]}] %(levelname)s  %(message)s")
    keep_file_only_records_off_the_console()
    logger = getLogger()
    logger.info(config, extra=FILE_ONLY)
    if model in PLUGIN_MODELS:
        logger.info(llm_summary(config))
    replay(held)
    retriever, retriever_time = None, None
    if retriever_config is not None:
        start = time.time()
        retriever = prepare_retriever(retriever_config, source)
        retriever_time = time.time() - start

    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    if model in PLUGIN_MODELS:
        model_cls, trainer_cls = PLUGIN_MODELS[model]
    else:
        model_cls, trainer_cls = get_model(model), get_trainer(config["MODEL_TYPE"], config["model"])
    model_obj = model_cls(config, train_data._dataset).to(config["device"])
    logger.info(model_obj, extra=FILE_ONLY)
    trainer = trainer_cls(config, model_obj)
    if retriever is not None:
        trainer.use_retriever(retriever)
    PerUserCollector.install(trainer)  # per-user test metrics from RecBole's own ranking, for the benchmark

    start = time.time()
    best_valid_score, best_valid_result = trainer.fit(train_data, valid_data, saved=saved,
                                                      show_progress=config["show_progress"])
    fit_time = time.time() - start
    init_seed(config["seed"], config["reproducibility"])
    start = time.time()
    test_result = trainer.evaluate(test_data, load_best_model=saved and model not in PLUGIN_MODELS,
                                   show_progress=config["show_progress"])
    eval_time = time.time() - start
    logger.info(set_color("best valid ", "yellow") + f": {best_valid_result}")
    logger.info(set_color("test result", "yellow") + f": {test_result}")
    test_users = eval_user_count(test_data)
    logger.info(f"fit time {fit_time:.1f}s, test time {eval_time:.1f}s, test users {test_users}"
                + (f", retriever {retriever_time:.1f}s" if retriever is not None else ""))
    return {
        "model": config["model"], "dataset": config["dataset"],
        "best_valid_score": best_valid_score, "valid_score_bigger": config["valid_metric_bigger"],
        "best_valid_result": best_valid_result, "test_result": dict(test_result or {}),
        "fit_time": fit_time, "eval_time": eval_time, "test_users": test_users, "retriever_time": retriever_time,
        "test_data": test_data, "model_obj": model_obj, "test_per_user": trainer.eval_collector.per_user_metrics(),
        # candidate_source: the share of test users whose held-out item is among the retriever's top rerank_top
        "target_in_top_n": getattr(trainer, "target_in_top_n", None),
    }
