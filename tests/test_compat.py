"""recbole_lrgd.compat: each shim is needed on this stack and works once applied.

"Needed" is shown in a fresh interpreter that never imports recbole_lrgd: it first runs plain RecBole,
then loads compat.py on its own and applies only the shim the later scenarios depend on (numpy's aliases),
leaving out the ones under test. It starts at the first test and runs while this process does the "works"
half. Another fresh interpreter checks where the shims are applied: by the entry points, not on import.
"""

from __future__ import annotations

import json
import pickle
import random
import subprocess
import sys
import textwrap
import warnings
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from recbole_lrgd import compat

COMPAT_FILE = Path(compat.__file__).resolve()
DATA_METRICS = ["ItemCoverage", "AveragePopularity", "GiniIndex", "TailPercentage"]

_PROBE_HEAD = """
import json, sys
CONFIG = json.loads(sys.argv[1])
RESULTS = {}

def probe(name, fn):
    try:
        fn()
    except Exception as exc:
        RESULTS[name] = f"{type(exc).__name__}: {exc}"
    else:
        RESULTS[name] = "ok"
"""

_PROBE_TAIL = """
print("PROBES " + json.dumps(RESULTS))
"""

# One fresh interpreter that never imports recbole_lrgd. First plain RecBole 1.2.1, no compat at all:
PROBE_SCRIPT = """
import numpy as np

def ndcg():
    from recbole.evaluator.metrics import NDCG
    NDCG({"topk": [2], "metric_decimal_place": 4}).metric_info(np.array([[True, False]]), np.array([1]))

def config():
    from recbole.config import Config
    Config(model="BPR", dataset="tiny", config_dict=CONFIG)

def unknown_model():
    from recbole.utils import get_model
    get_model("NoSuchModel")

probe("numpy_alias", ndcg)
probe("config", config)
probe("unknown_model", unknown_model)

# Then compat.py loaded by path, applying only the numpy shim: RecBole now runs far enough to reach the
# torch.load, Collector and dok_matrix problems, whose shims are left out.
import importlib.util
spec = importlib.util.spec_from_file_location("lrgd_compat_alone", sys.argv[2])
compat = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = compat
spec.loader.exec_module(compat)
compat.shim_numpy_aliases()

from recbole.config import Config
from recbole.data import create_dataset, data_preparation
from recbole.model.general_recommender import BPR, LightGCN
from recbole.trainer import Trainer

config = Config(model="BPR", dataset="tiny", config_dict=CONFIG)
train, valid, test = data_preparation(config, create_dataset(config))
trainer = Trainer(config, BPR(config, train.dataset))
trainer.fit(train, None, saved=True)  # no validation: saves a checkpoint without evaluating

probe("torch_load", lambda: trainer.evaluate(test, load_best_model=True))
probe("collector", lambda: trainer.evaluate(test, load_best_model=False))
lightgcn_config = Config(model="LightGCN", dataset="tiny", config_dict=CONFIG)
probe("dok", lambda: LightGCN(lightgcn_config, train.dataset))
"""


def write_tiny_dataset(data_path: Path) -> None:
    """30 users x 10 of 40 items, fixed seed: RecBole atomic file data_path/tiny/tiny.inter."""
    rng = random.Random(0)
    lines = ["user_id:token\titem_id:token\ttimestamp:float"]
    stamp = 0
    for user in range(1, 31):
        for item in rng.sample(range(1, 41), 10):
            stamp += 1
            lines.append(f"{user}\t{item}\t{stamp}")
    (data_path / "tiny").mkdir(parents=True, exist_ok=True)
    (data_path / "tiny" / "tiny.inter").write_text("\n".join(lines) + "\n")


def recbole_settings(root: Path) -> dict[str, Any]:
    """Small, fast RecBole settings; every file RecBole writes goes under root."""
    return {
        "data_path": str(root / "data"),
        "checkpoint_dir": str(root / "saved"),
        "epochs": 1,
        "train_batch_size": 128,
        "eval_batch_size": 4096,
        "embedding_size": 8,
        "metrics": ["Recall", *DATA_METRICS],
        "topk": [5],
        "valid_metric": "Recall@5",
        "seed": 2020,
        "reproducibility": True,
        "show_progress": False,
    }


class ProbeRun:
    """A probe script running in a fresh interpreter; results() waits for it and parses its report."""

    def __init__(self, body: str, root: Path) -> None:
        write_tiny_dataset(root / "data")
        script = root / "probe.py"
        script.write_text(_PROBE_HEAD + textwrap.dedent(body) + _PROBE_TAIL)
        self._stdout, self._stderr = root / "stdout.txt", root / "stderr.txt"
        with self._stdout.open("w") as stdout, self._stderr.open("w") as stderr:  # files: no pipe to fill up
            self._proc = subprocess.Popen(
                [sys.executable, str(script), json.dumps(recbole_settings(root)), str(COMPAT_FILE)],
                cwd=root,
                stdout=stdout,
                stderr=stderr,
            )
        self._results: dict[str, str] | None = None

    def results(self) -> dict[str, str]:
        if self._results is None:
            returncode = self._proc.wait(timeout=180)
            reports = [line for line in self._stdout.read_text().splitlines() if line.startswith("PROBES ")]
            assert reports, f"probe script failed (rc={returncode}):\n{self._stderr.read_text()[-3000:]}"
            self._results = json.loads(reports[-1][len("PROBES ") :])
        return self._results

    def stop(self) -> None:
        if self._proc.poll() is None:  # only when no test read the report
            self._proc.kill()
            self._proc.wait()


@pytest.fixture(scope="module")
def probes(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Start the fresh interpreter now; the first test that reads its report waits for it."""
    run = ProbeRun(PROBE_SCRIPT, tmp_path_factory.mktemp("probes"))
    yield run
    run.stop()


@pytest.fixture(scope="module")
def recbole_env(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """compat applied, cwd in a temp dir (RecBole writes log/, log_tensorboard/ there), environment restored after."""
    compat.apply()
    root = tmp_path_factory.mktemp("recbole")
    write_tiny_dataset(root / "data")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.delenv("CUDA_VISIBLE_DEVICES", raising=False)  # Config() sets it; undone on exit
        yield SimpleNamespace(root=root, settings=recbole_settings(root))


@pytest.fixture(scope="module")
def trained(recbole_env: SimpleNamespace) -> SimpleNamespace:
    """A BPR model trained one epoch on the tiny dataset, with validation and a saved best checkpoint."""
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.model.general_recommender import BPR
    from recbole.trainer import Trainer

    config = Config(model="BPR", dataset="tiny", config_dict=recbole_env.settings)
    dataset = create_dataset(config)
    train, valid, test = data_preparation(config, dataset)
    trainer = Trainer(config, BPR(config, train.dataset))
    best_score, best_result = trainer.fit(train, valid, saved=True)
    return SimpleNamespace(
        config=config, dataset=dataset, train=train, valid=valid, test=test, trainer=trainer, best_result=best_result
    )


def _state(model: Any) -> dict[str, Any]:
    return {key: value.clone() for key, value in model.state_dict().items()}


def _same_state(left: dict[str, Any], right: dict[str, Any]) -> bool:
    return left.keys() == right.keys() and all(bool((left[key] == right[key]).all()) for key in left)


def test_numpy_aliases(probes: ProbeRun, recbole_env: SimpleNamespace) -> None:
    from recbole.config import Config
    from recbole.evaluator.metrics import NDCG

    config = Config(model="BPR", dataset="tiny", config_dict=recbole_env.settings)
    assert config["model"] == "BPR"
    assert np.float is np.float64 and np.int is np.int_ and np.object is np.object_
    ndcg = NDCG({"topk": [2], "metric_decimal_place": 4}).metric_info(np.array([[True, False]]), np.array([1]))
    assert ndcg.tolist() == [[1.0, 1.0]]

    results = probes.results()
    assert results["numpy_alias"].startswith("AttributeError: module 'numpy' has no attribute 'float'")
    assert results["config"].startswith("AttributeError: `np.float_` was removed in the NumPy 2.0 release")


def test_checkpoint_round_trip(probes: ProbeRun, trained: SimpleNamespace) -> None:
    import torch

    from recbole.model.general_recommender import BPR
    from recbole.trainer import Trainer

    trainer = trained.trainer
    checkpoint = Path(trainer.saved_model_file)
    assert checkpoint.parent == Path(trained.config["checkpoint_dir"]) and checkpoint.is_file()
    saved = _state(trainer.model)
    with torch.no_grad():
        for parameter in trainer.model.parameters():
            parameter.zero_()
    result = trainer.evaluate(trained.test, load_best_model=True)
    assert _same_state(_state(trainer.model), saved)
    assert 0.0 <= result["recall@5"] <= 1.0

    resumed = Trainer(trained.config, BPR(trained.config, trained.train.dataset))
    resumed.resume_checkpoint(str(checkpoint))
    assert resumed.start_epoch == 1 and _same_state(_state(resumed.model), saved)

    # Scoped to RecBole: torch.load itself keeps its weights_only default.
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        torch.load(checkpoint)

    message = probes.results()["torch_load"]
    assert message.startswith("UnpicklingError: Weights only load failed"), message


def test_data_metrics_through_collector(probes: ProbeRun, trained: SimpleNamespace) -> None:
    import torch

    from recbole.evaluator import Collector

    result = trained.trainer.evaluate(trained.test, load_best_model=False)
    assert 0.0 < result["itemcoverage@5"] <= 1.0
    assert result["averagepopularity@5"] > 0
    assert 0.0 <= result["giniindex@5"] <= 1.0
    assert 0.0 <= result["tailpercentage@5"] <= 1.0
    assert "itemcoverage@5" in trained.best_result  # also through fit()'s validation

    collector = Collector(trained.config)
    collector.data_collect(trained.train)
    collector.data_struct.update_tensor("rec.topk", torch.ones(2, 6, dtype=torch.int64))
    struct = collector.get_data_struct()
    assert struct.get("data.num_items") == trained.dataset.item_num
    assert isinstance(struct.get("data.count_items"), Counter)
    assert struct.get("data.count_items") == trained.train.dataset.item_counter  # RecBole's counts, untouched
    assert struct.get("rec.topk").device.type == "cpu" and "rec.topk" not in collector.data_struct
    assert struct.get("rec.topk").tolist() == [[1] * 6] * 2

    message = probes.results()["collector"]
    assert message == "AttributeError: 'int' object has no attribute 'cpu'", message


def test_dok_matrix_update(probes: ProbeRun, recbole_env: SimpleNamespace, trained: SimpleNamespace) -> None:
    import scipy.sparse as sp

    from recbole.config import Config
    from recbole.model.general_recommender import LightGCN

    matrix = sp.dok_matrix((3, 3), dtype=np.float32)
    matrix._update({(0, 1): 1, (np.int64(2), np.int32(0)): 2})
    assert matrix.toarray().tolist() == [[0, 1, 0], [0, 0, 0], [2, 0, 0]]

    config = Config(model="LightGCN", dataset="tiny", config_dict=recbole_env.settings)
    model = LightGCN(config, trained.train.dataset)
    n_nodes = model.n_users + model.n_items
    adjacency = model.norm_adj_matrix.coalesce()
    assert tuple(adjacency.shape) == (n_nodes, n_nodes)
    assert adjacency.values().numel() == 2 * model.interaction_matrix.nnz  # both directions of every interaction

    message = probes.results()["dok"]
    assert message == "AttributeError: 'dok_matrix' object has no attribute '_update'", message


def test_unknown_model_name(probes: ProbeRun, recbole_env: SimpleNamespace) -> None:
    from recbole.config import Config
    from recbole.utils import get_model

    with pytest.raises(ValueError, match=r"`model_name` \[NoSuchModel\] is not the name of an existing model"):
        get_model("NoSuchModel")
    with pytest.raises(ValueError, match="NoSuchModel"):
        Config(model="NoSuchModel", dataset="tiny", config_dict=recbole_env.settings)
    assert get_model("BPR").__name__ == "BPR"

    message = probes.results()["unknown_model"]
    assert message == "ModuleNotFoundError: No module named 'lightgbm'", message


def test_apply_is_idempotent_and_quiet(recbole_env: SimpleNamespace) -> None:
    import recbole.config.configurator as configurator
    import recbole.trainer.trainer as trainer_module

    meta_path = list(sys.meta_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        compat.apply()
        compat.apply()
    assert sys.meta_path == meta_path
    assert configurator.Config.compatibility_settings is compat._compatibility_settings
    assert isinstance(trainer_module.torch, compat._TorchTrustedLoad)
    assert isinstance(trainer_module.torch.__dict__["_torch"], type(np)) and not isinstance(
        trainer_module.torch.__dict__["_torch"], compat._TorchTrustedLoad
    )


# A fresh interpreter: importing the package (and the entry modules) applies nothing; the command line does.
ENTRY_POINT_SCRIPT = """
import json, sys
import numpy as np

ALIASES = json.loads(sys.argv[1])
meta_path = list(sys.meta_path)
aliases = [a for a in ALIASES if a in vars(np)]  # numpy 2 itself has np.bool and np.long
import recbole_lrgd
report = {"package": {"meta_path": sys.meta_path == meta_path, "aliases": aliases == [a for a in ALIASES if a in vars(np)]}}

import recbole.trainer.trainer as trainer_module
from recbole.config import configurator
from recbole.evaluator import register

import recbole_lrgd.quick_start  # the module of run, which imports build_config's
from recbole_lrgd import cli, compat

def applied():
    return {
        "float_alias": vars(np).get("float") is np.float64,
        "config": configurator.Config.compatibility_settings is compat._compatibility_settings,
        "torch_load": isinstance(trainer_module.torch, compat._TorchTrustedLoad),
        "effectd": "effectd" in register.metrics_dict,
        "our_finders": [type(f).__module__ for f in sys.meta_path if type(f).__module__.startswith("recbole_lrgd")],
    }

report["entry_modules"] = applied()
report["cli_rc"] = cli.main(["--model=NoSuchModel"])
report["cli"] = applied()
print("REPORT " + json.dumps(report))
"""


def test_applied_by_the_entry_points_not_on_import(tmp_path: Path) -> None:
    script = tmp_path / "entry.py"
    script.write_text(ENTRY_POINT_SCRIPT)
    done = subprocess.run([sys.executable, str(script), json.dumps(list(compat._NUMPY_ALIASES))], cwd=tmp_path,
                          capture_output=True, text=True, timeout=180)
    reports = [line for line in done.stdout.splitlines() if line.startswith("REPORT ")]
    assert reports, f"rc={done.returncode}:\n{done.stderr[-3000:]}"
    report = json.loads(reports[-1][len("REPORT ") :])
    assert report["package"] == {"meta_path": True, "aliases": True}
    assert report["entry_modules"] == {
        "float_alias": False, "config": False, "torch_load": False, "effectd": False, "our_finders": []
    }
    # the command line goes through quick_start.run and config.build_config; the exlib shim turns an unknown
    # model name into RecBole's ValueError, reported as one error line
    assert report["cli_rc"] == 2
    assert "error: `model_name` [NoSuchModel] is not the name of an existing model" in done.stderr
    assert report["cli"] == {"float_alias": True, "config": True, "torch_load": True, "effectd": True, "our_finders": []}
