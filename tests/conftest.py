"""Shared fixtures: a tiny random LLaMA with a byte-level tokenizer, and a tiny RecBole dataset.

Nothing is downloaded: the model is built from a config and saved to a temporary folder, so the
loader's "local folder" path is what the tests exercise.
"""
import contextlib
import os
import shlex
import signal
import socket
import subprocess
import uuid
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import pytest

from recbole_lrgd import compat
from recbole_lrgd.llm.tiny import save_tiny_llm

compat.apply()  # tests that use RecBole directly, not through build_config


def free_port() -> int:
    """A local TCP port free now, for a launch's main process."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


LAUNCH_MARK = "LRGD_TEST_LAUNCH"  # an environment variable every process of one launch inherits


def launch(cmd: Sequence[str], env: Optional[Dict[str, str]] = None, **kwargs) -> subprocess.Popen:
    """Start ``cmd`` (``accelerate launch`` and its workers, say), its stderr in its stdout, marked so that ``finish``
    can find every process it starts: torchrun puts each worker in a session of its own, out of reach of a process
    group kill."""
    mark = uuid.uuid4().hex
    proc = subprocess.Popen(list(cmd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**(os.environ if env is None else env), LAUNCH_MARK: mark}, **kwargs)
    proc.mark = mark
    return proc


def marked(mark: str) -> List[int]:
    """The processes whose environment holds ``mark`` (``launch``'s)."""
    wanted, found = f"{LAUNCH_MARK}={mark}".encode(), []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if wanted in f.read().split(b"\0"):
                    found.append(int(pid))
        except OSError:  # gone, or not ours
            continue
    return found


def finish(proc: subprocess.Popen, timeout: float = 300) -> Tuple[int, str]:
    """(exit status, output) of a ``launch``ed command. Past ``timeout`` every process of the launch is killed and
    the test fails with its output: the workers hold the output pipe, so killing the launcher alone would leave the
    test waiting on them."""
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        for pid in marked(proc.mark):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"{shlex.join(proc.args)[:300]} ran past {timeout} s:\n{out[-3000:]}")
    return proc.returncode, out


@pytest.fixture(scope="session")
def tiny_llm_dir(tmp_path_factory):
    """A folder holding a tiny random LLaMA and its tokenizer, loadable by ``llm_path``."""
    return save_tiny_llm(str(tmp_path_factory.mktemp("tiny-llama")))


@pytest.fixture(scope="session")
def tiny_llm(tiny_llm_dir):
    from recbole_lrgd.llm.loader import load_llm

    return load_llm(tiny_llm_dir, device="cpu", dtype="float32")


def write_tiny_dataset(root, name: str = "tiny", n_users: int = 30, n_items: int = 40, seed: int = 0,
                       title_header: str = "title:token"):
    """A RecBole atomic dataset: every user 6..10 distinct items in time order, every item a title."""
    rng = np.random.default_rng(seed)
    folder = os.path.join(root, name)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, f"{name}.inter"), "w") as f:
        f.write("user_id:token\titem_id:token\ttimestamp:float\n")
        for u in range(n_users):
            items = rng.choice(n_items, size=int(rng.integers(6, 11)), replace=False)
            for t, i in enumerate(items):
                f.write(f"u{u}\ti{i}\t{1000 * u + t}\n")
    with open(os.path.join(folder, f"{name}.item"), "w") as f:
        f.write(f"item_id:token\t{title_header}\n")
        for i in range(n_items):
            f.write(f"i{i}\tThe Item Number {i}\n")
    return folder


@pytest.fixture
def tiny_data(tmp_path, monkeypatch):
    """A tiny dataset under tmp_path, with the CWD moved there so RecBole's log/ and saved/ land in tmp."""
    write_tiny_dataset(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    return str(tmp_path)


class StubScorer:
    """Stands in for the LLM: ``score_fn(prompt, target_title)`` gives the scores, target known to the test."""

    mode = "likelihood"
    chunk_users = 1

    def __init__(self, tokenizer, targets, score_fn):
        self.tokenizer, self.targets, self.score_fn = tokenizer, targets, score_fn

    def score(self, prompt):
        return np.asarray(self.score_fn(prompt, self.targets[prompt.history]), dtype=np.float64)

    def score_many(self, prompts):
        return [self.score(p) for p in prompts]


def install_stub_scorer(monkeypatch, score_fn):
    """Make LRGD score with ``score_fn``. The test side reads the label to tell the stub the target
    (keyed by the user's shown history) and removes it from what the model sees."""
    from recbole_lrgd.model.lrgd import LRGD

    original = LRGD.score_users

    def score_users(self, interaction, *args, **kwargs):
        pos = interaction["label"] == 1
        max_his_len = self.ranker.settings.max_his_len
        targets = {tuple(self.titles[i] for i in seq[:n][-max_his_len:]): self.titles[t] for seq, n, t in zip(
            interaction[self.ITEM_SEQ][pos].tolist(), interaction[self.ITEM_SEQ_LEN][pos].tolist(),
            interaction[self.ITEM_ID][pos].tolist())}
        label = interaction.interaction.pop("label")  # the model must not need it
        self.ranker.scorer = StubScorer(self.ranker.scorer.tokenizer, targets, score_fn)
        try:
            return original(self, interaction, *args, **kwargs)
        finally:
            interaction.interaction["label"] = label

    monkeypatch.setattr(LRGD, "score_users", score_users)


def yaml_config(**overrides):
    """RecBole's and the plugin's defaults as a mapping (RecBole's overall.yaml, then properties/overall.yaml and
    properties/model/LRGD.yaml), with ``overrides``: settings built by hand read the YAML, never repeat it."""
    import recbole
    import yaml

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    config = {}
    for path in (os.path.join(os.path.dirname(recbole.__file__), "properties", "overall.yaml"),
                 os.path.join(root, "properties", "overall.yaml"),
                 os.path.join(root, "properties", "model", "LRGD.yaml")):
        with open(path, encoding="utf-8") as f:
            config.update(yaml.safe_load(f))
    config.update(overrides)
    return config


def scorer_settings(**overrides):
    """``ScorerSettings`` of the YAML's defaults with ``overrides`` (by key), for a scorer built by hand."""
    from recbole_lrgd.settings import ScorerSettings

    return ScorerSettings.from_config(yaml_config(**overrides))


def run_live(model: str, dataset: str, config_file_list=None, config_dict=None, saved: bool = True):
    """``quick_start.run`` for a test that needs the run's live objects too: ``(built, result)``, where ``built``
    holds the config, the loaders, the model and its trainer (``quick_start.Built``) and ``result`` is the
    ``RunResult`` that ``run`` would have returned."""
    from recbole_lrgd import quick_start

    built = quick_start.build(model, dataset, config_file_list, config_dict)
    return built, quick_start.fit_and_test(built, saved)
