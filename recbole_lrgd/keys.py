"""The plugin's config keys as its YAML files write them: each key's default and its comment.

``properties/overall.yaml`` and ``properties/model/LRGD.yaml`` are the one place a default and its
meaning are written. ``--help`` lists the keys from here, and ``docs/keys.md`` is generated from here
(``python -m recbole_lrgd.keys > docs/keys.md``; a test fails when the file is stale).
"""
from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from itertools import groupby
from typing import List, Tuple

import yaml

from recbole_lrgd.properties_files import properties_dir

# the plugin's YAMLs that hold its keys, with the heading each gets in the reference
KEY_FILES: Tuple[Tuple[str, str], ...] = (
    ("overall.yaml", "Every model (LRGD and RecBole's baselines)"),
    ("model/LRGD.yaml", "LRGD"),
)
HELP_WIDTH = 32  # the flag column of --help's key list; a longer flag pushes its meaning right
_KEY_LINE = re.compile(r"^(?P<key>[A-Za-z_]\w*):(?P<value>[^#]*)(?:#\s?(?P<comment>.*))?$")
_MORE_COMMENT = re.compile(r"^\s+#\s*(?P<comment>.*)$")


@dataclass(frozen=True)
class KeyDoc:
    """One key of a YAML: its default as written there and its comment, joined into one line."""

    key: str
    default: str
    meaning: str
    section: str  # the YAML's own heading comment above the key, or ""


def read_keys(path: str) -> List[KeyDoc]:
    """The top-level keys of a plugin YAML, in file order. A key whose value spans several lines (a mapping)
    shows the loaded value in flow style."""
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    with open(path, encoding="utf-8") as f:
        loaded = yaml.safe_load(f) or {}
    keys: List[dict] = []
    section, in_heading = "", False
    for line in lines:
        match = _KEY_LINE.match(line)
        if match:
            value = match["value"].strip() or yaml.safe_dump(loaded[match["key"]], default_flow_style=True).strip()
            keys.append({"key": match["key"], "default": value, "meaning": [match["comment"] or ""],
                         "section": section})
        elif line.startswith("#"):  # a heading comment, possibly over several lines
            heading = line.lstrip("# ").strip()
            section = f"{section} {heading}" if in_heading else heading
        elif (more := _MORE_COMMENT.match(line)) and keys:
            keys[-1]["meaning"].append(more["comment"])
        in_heading = line.startswith("#")
    return [KeyDoc(k["key"], k["default"], " ".join(p.strip() for p in k["meaning"] if p.strip()), k["section"])
            for k in keys]


def plugin_keys() -> List[Tuple[str, List[KeyDoc]]]:
    """(heading, keys) for each of ``KEY_FILES``."""
    return [(heading, read_keys(str(properties_dir() / name))) for name, heading in KEY_FILES]


def help_text() -> str:
    """``--help``'s list: one line per key, ``--key=default  meaning``."""
    out = []
    for heading, keys in plugin_keys():
        out.append(f"{heading} keys (--key=value; default and meaning from the plugin's YAML):")
        out += [f"  {f'--{k.key}={k.default}':<{HELP_WIDTH}}  {k.meaning}" for k in keys]
    return "\n".join(out)


def reference_markdown() -> str:
    """``docs/keys.md``: every plugin key, its default and its meaning, grouped as the YAMLs group them."""
    out = ["# Config keys", "",
           "Generated from the plugin's YAML files by `python -m recbole_lrgd.keys > docs/keys.md`: the YAML is the "
           "one place a default and its meaning are written. Any RecBole key works beside these.", ""]
    for (name, _), (heading, keys) in zip(KEY_FILES, plugin_keys()):
        out += [f"## {heading} (`properties/{name}`)", ""]
        for section, group in groupby(keys, key=lambda k: k.section):
            out += [f"*{section}*", ""] if section else []
            out += ["| key | default | meaning |", "|---|---|---|"]
            out += [f"| `{k.key}` | `{k.default}` | {k.meaning.replace('|', chr(92) + '|')} |" for k in group]
            out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    sys.stdout.write(reference_markdown())
