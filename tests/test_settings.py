"""The settings fields are the one home of each plugin key's type and effect: every YAML key has a field, every
field a YAML line, and every field marked as changing scores changes the identity saved work is keyed by."""
from __future__ import annotations

import dataclasses

import pytest

from recbole_lrgd.errors import LRGDError
from recbole_lrgd.keys import plugin_keys
from recbole_lrgd.optimizer.state import score_context, state_identity
from recbole_lrgd.settings import (GROUPS, RULES, SCORE_KEYS, Changes, OptimizerSettings, PromptSettings, all_fields,
                                   config_key, key_fields)
from recbole_lrgd.validate import check_values, recbole_keys
from conftest import yaml_config


def _yaml_keys() -> set:
    return {k.key for _, keys in plugin_keys() for k in keys}


def test_every_yaml_key_has_a_settings_field_or_is_recboles():
    fields = key_fields()
    missing = sorted(k for k in _yaml_keys() if k not in fields and k not in recbole_keys())
    assert missing == [], f"YAML keys without a settings field: {missing}"


def test_every_plugin_field_has_a_yaml_line():
    yaml_keys = _yaml_keys()
    missing = sorted(config_key(s) for s in all_fields() if not s.metadata["recbole"] and config_key(s) not in yaml_keys)
    assert missing == [], f"settings fields without a YAML line: {missing}"


def test_each_plugin_key_has_one_field():
    keys = [config_key(s) for group in GROUPS for s in dataclasses.fields(group) if "rule" in s.metadata]
    assert len(keys) == len(set(keys))


@pytest.mark.parametrize("key", sorted(_yaml_keys() - recbole_keys()) + ["seed"])
def test_each_keys_rule_takes_its_default_and_names_a_bad_value(key):
    """Each of the plugin's keys: the YAML's default passes the key's rule, and a value the rule refuses is
    check_values' one error naming the key."""
    defaults = yaml_config()
    rule = RULES[key]
    assert rule.ok(defaults[key]), (key, defaults[key])
    bad = next(v for v in ("not-a-value", -5, 1.5, [1], {"a": 1}, "") if not rule.ok(v))
    with pytest.raises(LRGDError, match=f"^{key} must be "):
        check_values({**defaults, key: bad})


def test_what_each_key_changes_is_named():
    """Which saved work a key invalidates, written out: marking a key takes a deliberate edit here."""
    marked = {c: sorted(k for k, s in key_fields().items() if s.metadata["changes"] is c) for c in Changes}
    assert marked == {
        Changes.NOTHING: ["candidate_batch_size", "candidate_source", "candidates_file", "demo_mode",
                          "demo_state_file", "eval_users", "fallback_zero_shot", "llm_cache_dir", "llm_device_map",
                          "lrgd_stages", "prior_model", "prior_weight", "rerank_blend", "rerank_score_all",
                          "rerank_top", "retriever_valid_users", "score_cache", "score_cache_dir", "slices",
                          "user_batch_size", "warm_start"],
        Changes.MODEL: ["llm_device", "llm_dtype", "llm_path"],
        Changes.SCORES: ["demo_format", "demo_negatives", "list_candidates", "max_his_len", "max_new_tokens",
                         "max_prompt_tokens", "max_title_tokens", "prompt_instruction", "scorer_mode", "title_field",
                         "title_match_threshold", "title_score", "title_score_tokens"],
        Changes.OPTIMIZER: ["demo_token_budget", "effect_temperature", "lambda_copy", "lambda_redundancy",
                            "lambda_reg", "lambda_std", "library_size", "lrgd_scope", "num_demos", "perturb_num",
                            "perturb_rate", "pool_size", "probe_negatives", "probe_users", "seed",
                            "stage2_candidates", "stage2_patience", "stage2_steps"],
        Changes.TRAINING: ["valid_users"]}


def _other_value(spec, value):
    """A valid value of ``spec``'s key other than ``value``."""
    rule = spec.metadata["rule"]
    if isinstance(value, bool):
        return not value
    tries = [o for o in rule.options if o != value] if rule.options else []
    if isinstance(value, (int, float)):
        tries += [value + 1, value - 1, value / 2, value * 2]
    tries += ["other text", 7, 0.5, None]
    for candidate in tries:
        if candidate != value and rule.ok(candidate):
            return candidate
    raise AssertionError(f"no other value for {config_key(spec)}")


def _identity(config) -> str:
    return state_identity(OptimizerSettings.from_config(config).identity(), score_context(config))


# what enters the saved optimizer state's identity (TRAINING enters a trained RecBole model's: test_trained_models)
STATE = (Changes.MODEL, Changes.SCORES, Changes.OPTIMIZER)


@pytest.fixture(scope="module")
def base_config():
    return {**yaml_config(), "dataset": "ml-100k", "device": "cpu", "demo_mode": "lrgd"}


@pytest.mark.parametrize("key", [k for k, s in key_fields().items() if s.metadata["changes"] in STATE])
def test_a_key_that_changes_scores_changes_the_saved_states_identity(key, base_config, tiny_llm_dir):
    spec = key_fields()[key]
    config = dict(base_config)
    if key == "llm_path":
        other = tiny_llm_dir
    elif key == "llm_device":
        other = "meta"
    elif key == "llm_dtype":
        other = "float64"  # auto resolves to bfloat16 or float32, by the CPU: never to this
    else:
        other = _other_value(spec, config[key])
    assert _identity({**config, key: other}) != _identity(config)


@pytest.mark.parametrize("key", [k for k, s in key_fields().items()
                                 if s.metadata["changes"] not in STATE and not s.metadata["recbole"]
                                 and k not in ("demo_mode",)])
def test_a_key_that_changes_no_score_leaves_the_identity_alone(key, base_config):
    spec = key_fields()[key]
    value = base_config.get(key)
    other = {"llm_cache_dir": "elsewhere", "score_cache_dir": "elsewhere", "candidate_source": "BPR"}.get(
        key, _other_value(spec, value))
    assert _identity({**base_config, key: other}) == _identity(base_config)


def test_score_keys_are_the_fields_that_change_every_score():
    assert set(SCORE_KEYS) == {"scorer_mode", "max_his_len", "max_prompt_tokens", "max_title_tokens",
                               "prompt_instruction", "list_candidates", "title_field", "max_new_tokens",
                               "title_match_threshold", "title_score", "title_score_tokens", "demo_format",
                               "demo_negatives"}


def test_settings_are_built_whole_and_frozen():
    config = yaml_config()
    prompt = PromptSettings.from_config(config)
    with pytest.raises(dataclasses.FrozenInstanceError):
        prompt.max_his_len = 3
    assert dataclasses.replace(prompt, max_his_len=3).max_his_len == 3 and prompt.max_his_len == config["max_his_len"]
    with pytest.raises(LRGDError, match="the config has no 'max_his_len'"):
        PromptSettings.from_config({k: v for k, v in config.items() if k != "max_his_len"})
