"""The plugin's settings: one frozen dataclass per user of them, one field per key of the plugin's YAML.

``properties/overall.yaml`` and ``properties/model/LRGD.yaml`` write each key's default and meaning (RecBole's
convention); a field here holds the key's type, the values it accepts (``Rule``) and what it changes
(``Changes``). Everything else is derived from the fields: ``validate.check_values``' rules (``RULES``), the
optimizer state's identity (``SCORE_KEYS`` and ``OptimizerSettings.identity``), a trained RecBole model's
(``NOT_TRAINING_KEYS``), and with ``keys.py`` ``--help`` and ``docs/keys.md``.
Each class is built whole by ``from_config``; a variant is ``dataclasses.replace``.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from enum import Enum
from numbers import Real
from typing import (TYPE_CHECKING, Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Type,
                    TypeVar, Union)

from recbole_lrgd.errors import LRGDError

if TYPE_CHECKING:
    from dataclasses import Field


# the names of the choices, here so that checking a config needs no torch
DTYPE_NAMES = {"float32": "float32", "fp32": "float32", "float16": "float16", "fp16": "float16",
               "bfloat16": "bfloat16", "bf16": "bfloat16", "float64": "float64"}  # name -> torch attribute
SCORER_MODES = ("likelihood", "verbalizer", "generate")
TITLE_SCORES = ("mean", "sum", "first")  # likelihood mode: how a title's token log-probs make its score
DEMO_MODES = ("none", "random", "nearest", "lrgd")  # lrgd: chosen by the two-stage optimizer in fit
SCOPES = ("global", "per_user")
DEMO_FORMAT_NAMES = ("next_item", "listed", "contrast")  # llm/prompt.py's DEMO_FORMATS


# -- what a key accepts --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Rule:
    """What a key accepts: ``ok(value)``, described as ``expected`` in the error."""

    ok: Callable[[Any], bool]
    expected: str
    options: Tuple[Any, ...] = ()  # a choice's values


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def integer(low: int, none: str = "", only: Sequence[int] = (), word: str = "") -> Rule:
    """An integer >= ``low`` (or one of ``only``), or the string ``word`` where given; ``none`` describes what
    ``~`` means, where allowed."""
    expected = " or ".join(map(str, only)) if only else ("a positive integer" if low == 1 else f"an integer >= {low}")
    return Rule(lambda v: (none and v is None) or (word and v == word) or (is_int(v) and (v in only if only else v >= low)),
                expected + (f" or {word}" if word else "") + (f" or ~ ({none})" if none else ""))


def number(low: float, high: Optional[float] = None, above: bool = False, word: str = "") -> Rule:
    """A number in [low, high] (``above``: > low), or the string ``word`` where given."""
    def ok(v: Any) -> bool:
        if word and v == word:
            return True
        if not isinstance(v, Real) or isinstance(v, bool):
            return False
        return (v > low if above else v >= low) and (high is None or v <= high)
    expected = f"a number {'>' if above else '>='} {low}" + (f" and <= {high}" if high is not None else "")
    return Rule(ok, expected + (f" or {word}" if word else ""))


def choice(options: Sequence[str], none: bool = False) -> Rule:
    options = tuple(options)
    return Rule(lambda v: v in options or (none and v is None), "one of " + ", ".join(options) + (" or ~" if none else ""),
                options)


def boolean(word: str = "", none: bool = False) -> Rule:
    return Rule(lambda v: isinstance(v, bool) or (word and v == word) or (none and v is None),
                "True or False" + (f" or {word}" if word else "") + (" or ~" if none else ""))


def text(none: bool = True) -> Rule:
    """A string, or ~ where ``none``; a key that cannot be ~ cannot be empty either (a folder, a field, a metric)."""
    if none:
        return Rule(lambda v: isinstance(v, str) or v is None, "a string or ~")
    return Rule(lambda v: isinstance(v, str) and v.strip() != "", "a non-empty string")


# -- what a key changes ----------------------------------------------------------------------------------
class Changes(Enum):
    """Which identity a key enters: a saved optimizer state (and a cached score) is reused only where every key
    that changes its scores is the same."""

    NOTHING = "nothing"      # where things go, batch sizes, how a saved state is used
    MODEL = "model"          # the model's identity (llm.model_identity: files, resolved dtype, device type)
    SCORES = "scores"        # every LLM score: in SCORE_KEYS, the state's context
    OPTIMIZER = "optimizer"  # the optimizer's choices: in OptimizerSettings.identity
    TRAINING = "training"    # what a RecBole model learns (early stopping's users): in a trained model's identity


def setting(rule: Rule, changes: Changes = Changes.NOTHING, key: str = "", recbole: bool = False) -> Any:
    """A settings field: its ``rule``, what it ``changes``, its config ``key`` where the field's name differs,
    and ``recbole`` for a key RecBole owns (its default is RecBole's, not the plugin's YAML)."""
    return field(metadata={"rule": rule, "changes": changes, "key": key, "recbole": recbole})


def config_key(spec: Field) -> str:
    """The config key of a settings field."""
    return spec.metadata.get("key") or spec.name


S = TypeVar("S", bound="Settings")


class Settings:
    """A frozen group of keys, built whole from a RecBole config (or any mapping) by ``from_config``."""

    @classmethod
    def from_config(cls: Type[S], config: Mapping[str, Any]) -> S:
        """The group's values; a key the config lacks is an ``LRGDError`` (the plugin's YAML sets them all)."""
        values = {}
        for spec in fields(cls):
            if "rule" not in spec.metadata:  # a nested group
                values[spec.name] = GROUP_TYPES[spec.name].from_config(config)
                continue
            key = config_key(spec)
            if key not in config:
                raise LRGDError(f"the config has no {key!r}: the plugin's YAML sets every key")
            value = config[key]
            values[spec.name] = float(value) if spec.type in ("float", float) else value
        return cls(**values)

    def flat(self) -> Dict[str, Any]:
        """Every key's value by field name, a nested group's included: a record for a log or a saved state."""
        out: Dict[str, Any] = {}
        for spec in fields(self):
            value = getattr(self, spec.name)
            out.update(value.flat() if "rule" not in spec.metadata else {spec.name: value})
        return out


@dataclass(frozen=True)
class EvalSettings(Settings):
    """Who is evaluated, for every model (``properties/overall.yaml``)."""

    eval_users: Optional[int] = setting(integer(1, none="all users"))
    valid_users: Optional[int] = setting(integer(1, none="no validation for LRGD, all users for RecBole models"),
                                         Changes.TRAINING)
    slices: bool = setting(boolean())
    candidates_file: Optional[str] = setting(text())


@dataclass(frozen=True)
class LLMSettings(Settings):
    """Which model, and where and how it loads (``llm/loader.py``)."""

    llm_path: Optional[str] = setting(text(), Changes.MODEL)
    llm_device: Optional[str] = setting(text(), Changes.MODEL)
    llm_dtype: str = setting(choice(["auto", *DTYPE_NAMES]), Changes.MODEL)
    llm_cache_dir: Optional[str] = setting(text())
    llm_device_map: Optional[str] = setting(text())


@dataclass(frozen=True)
class ScorerSettings(Settings):
    """How the LLM's outputs become candidate scores (``llm/scorer.py``, ``llm/title_score.py``,
    ``llm/generate.py``)."""

    scorer_mode: str = setting(choice(SCORER_MODES), Changes.SCORES)
    title_score: str = setting(choice(TITLE_SCORES), Changes.SCORES)
    title_score_tokens: int = setting(integer(1), Changes.SCORES)
    candidate_batch_size: int = setting(integer(1))
    user_batch_size: Union[int, str] = setting(integer(1, word="auto"))
    max_new_tokens: int = setting(integer(1), Changes.SCORES)
    title_match_threshold: float = setting(number(0, 1), Changes.SCORES)
    score_cache: bool = setting(boolean())
    score_cache_dir: str = setting(text(none=False))


@dataclass(frozen=True)
class PromptSettings(Settings):
    """What a prompt shows and how (``llm/prompt.py``, ``model/ranker.py``)."""

    demo_format: str = setting(choice(DEMO_FORMAT_NAMES), Changes.SCORES)
    demo_negatives: int = setting(integer(1), Changes.SCORES)
    list_candidates: Union[bool, str, None] = setting(boolean("auto", none=True), Changes.SCORES)
    max_his_len: int = setting(integer(1), Changes.SCORES)
    max_prompt_tokens: Optional[int] = setting(integer(1, none="no limit"), Changes.SCORES)
    max_title_tokens: Optional[int] = setting(integer(1, none="whole titles"), Changes.SCORES)
    prompt_instruction: Optional[str] = setting(text(), Changes.SCORES)
    title_field: str = setting(text(none=False), Changes.SCORES)

    @property
    def listed(self) -> Optional[bool]:
        """Whether prompts list the candidates; None: as the scorer's mode prefers (``auto``)."""
        return None if self.list_candidates in (None, "auto") else bool(self.list_candidates)


@dataclass(frozen=True)
class DemoSettings(Settings):
    """Which demonstrations a user sees: the policy and its K, seeded by RecBole's ``seed``."""

    demo_mode: str = setting(choice(DEMO_MODES, none=True))
    num_demos: int = setting(integer(0), Changes.OPTIMIZER)
    seed: int = setting(integer(0), Changes.OPTIMIZER, recbole=True)

    @property
    def mode(self) -> str:
        return self.demo_mode or "none"


@dataclass(frozen=True)
class OptimizerSettings(Settings):
    """The two-stage demonstration optimizer (``demo_mode: lrgd``), with the ``demos`` it chooses K of."""

    demos: DemoSettings
    stages: int = setting(integer(1, only=(1, 2)), key="lrgd_stages")
    scope: str = setting(choice(SCOPES), Changes.OPTIMIZER, key="lrgd_scope")
    library_size: int = setting(integer(1), Changes.OPTIMIZER)
    pool_size: int = setting(integer(1), Changes.OPTIMIZER)
    probe_users: int = setting(integer(1), Changes.OPTIMIZER)
    probe_negatives: int = setting(integer(1), Changes.OPTIMIZER)
    perturb_num: int = setting(integer(0), Changes.OPTIMIZER)
    perturb_rate: float = setting(number(0, 1), Changes.OPTIMIZER)
    lambda_std: float = setting(number(0), Changes.OPTIMIZER)
    lambda_redundancy: float = setting(number(0), Changes.OPTIMIZER)
    lambda_copy: float = setting(number(0), Changes.OPTIMIZER)
    lambda_reg: float = setting(number(0), Changes.OPTIMIZER)
    token_budget: Optional[int] = setting(integer(1, none="no budget"), Changes.OPTIMIZER, key="demo_token_budget")
    stage2_steps: int = setting(integer(0), Changes.OPTIMIZER)
    stage2_patience: int = setting(integer(1), Changes.OPTIMIZER)
    stage2_candidates: int = setting(integer(1), Changes.OPTIMIZER)
    effect_temperature: Union[float, str] = setting(number(0, above=True, word="auto"), Changes.OPTIMIZER)
    state_file: Optional[str] = setting(text(), key="demo_state_file")
    warm_start: bool = setting(boolean())
    fallback_zero_shot: bool = setting(boolean())

    @property
    def num_demos(self) -> int:
        return self.demos.num_demos

    @property
    def seed(self) -> int:
        return self.demos.seed

    @property
    def set_size(self) -> int:
        """Demonstrations the optimizer chooses: the set (global) or the library users retrieve from."""
        return self.num_demos if self.scope == "global" else max(self.num_demos, self.library_size)

    @property
    def lambdas(self) -> Dict[str, float]:
        return {"std": self.lambda_std, "redundancy": self.lambda_redundancy, "copy": self.lambda_copy,
                "reg": self.lambda_reg}

    def identity(self) -> Dict[str, Any]:
        """The settings that decide the optimizer's scores and choices, by field name (its K and seed too)."""
        return {spec.name: getattr(self, spec.name) for spec in settings_fields(OptimizerSettings)
                if spec.metadata["changes"] is Changes.OPTIMIZER}

    def with_seed(self, seed: int) -> "OptimizerSettings":
        return replace(self, demos=replace(self.demos, seed=seed))


@dataclass(frozen=True)
class RerankSettings(Settings):
    """Re-ranking a retriever's full ranking, and fusion with a prior model on sampled candidates (``rerank/``)."""

    candidate_source: Optional[str] = setting(text())
    rerank_top: int = setting(integer(1))
    rerank_blend: float = setting(number(0, 1))
    rerank_score_all: bool = setting(boolean())
    retriever_valid_users: Optional[int] = setting(integer(1, none="all users"))
    prior_model: Optional[str] = setting(text())
    prior_weight: Union[float, str] = setting(number(0, 1, word="auto"))


GROUPS: Tuple[type, ...] = (EvalSettings, LLMSettings, ScorerSettings, PromptSettings, DemoSettings,
                            OptimizerSettings, RerankSettings)
GROUP_TYPES = {"demos": DemoSettings}  # nested groups, by field name


def settings_fields(group: type) -> Iterator:
    """The key fields of a group, a nested group's included (its own first)."""
    for spec in fields(group):
        if "rule" in spec.metadata:
            yield spec
        else:
            yield from settings_fields(GROUP_TYPES[spec.name])


def all_fields() -> List[Any]:
    """Every key field once: each group's own (a nested group is one of ``GROUPS`` too)."""
    return [spec for group in GROUPS for spec in fields(group) if "rule" in spec.metadata]


def key_fields() -> Dict[str, Any]:
    """Every key field by its config key."""
    return {config_key(spec): spec for spec in all_fields()}


RULES: Dict[str, Rule] = {config_key(spec): spec.metadata["rule"] for spec in all_fields()}
# keys that change every LLM score besides the model's own identity: the optimizer state's context
SCORE_KEYS: Tuple[str, ...] = tuple(sorted(config_key(spec) for spec in all_fields()
                                           if spec.metadata["changes"] is Changes.SCORES))
# the plugin's keys that cannot change what a RecBole model learns: all but those of RecBole's own (seed) and those
# that change a training
NOT_TRAINING_KEYS: Tuple[str, ...] = tuple(sorted(config_key(spec) for spec in all_fields()
                                                  if not spec.metadata["recbole"]
                                                  and spec.metadata["changes"] is not Changes.TRAINING))
