"""CLI: ``python -m recbole_lrgd.theory --layer 0 [--layer 1 ...] [--llm_path PATH] [--prompt-file F]``.

Prints the per-head equivalence table of ``equivalence_table`` and a per-layer summary. The
prompt file marks its parts: ``<demo>..</demo>`` around each demonstration and one
``<query>..</query>`` around the user's part; everything else is zero-shot context.
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from recbole_lrgd.errors import LRGDError

DEFAULT_PROMPT = (
    "You are a movie recommender. From a user's watch history, name the movie they will watch next.\n"
    "Example 1: <demo>User history: Toy Story, Heat, Casino, Sabrina -> next: Fargo</demo>\n"
    "Example 2: <demo>User history: Alien, Aliens, The Terminator, Star Wars -> next: Predator</demo>\n"
    "Now the user: <query>User history: Jumanji, Babe, Braveheart, Apollo 13 -> next:</query>"
)


def feature_counts(max_features: int, min_features: int = 64) -> List[int]:
    """Powers of two from ``min_features`` up to ``max_features``."""
    if max_features < min_features:
        raise LRGDError(f"--max-features must be at least {min_features}")
    out, m = [], min_features
    while m <= max_features:
        out.append(m)
        m *= 2
    return out


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recbole_lrgd.theory", description=__doc__.split("\n\n")[0])
    parser.add_argument("--layer", type=int, action="append", help="layer index (repeatable; default 0)")
    parser.add_argument("--llm_path", "--llm-path", default=None, help="HF id, folder or .gguf (default SmolLM2-135M-Instruct)")
    parser.add_argument("--prompt-file", default=None, help="prompt with <demo>..</demo> and <query>..</query> marks")
    parser.add_argument("--max-features", type=int, default=16384, help="largest M (powers of two from 64)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-center", action="store_true", help="random features on raw keys (no centering/balancing)")
    parser.add_argument("--temperature", type=float, default=1.0, help="scale softmax scores (1 = the real layer)")
    parser.add_argument("--summary-only", action="store_true")
    args = parser.parse_args(argv)
    try:
        from recbole_lrgd.llm.loader import load_llm
        from recbole_lrgd.theory.spans import split_marked_prompt
        from recbole_lrgd.theory.table import equivalence_table, format_summary, format_table, summarize

        marked = DEFAULT_PROMPT
        if args.prompt_file:
            try:
                with open(args.prompt_file, encoding="utf-8") as fh:
                    marked = fh.read()
            except OSError as exc:
                raise LRGDError(f"--prompt-file {args.prompt_file!r}: {exc.strerror}") from None
        model, tokenizer = load_llm(llm_path=args.llm_path, device="cpu", dtype="float32")
        _, ids, split = split_marked_prompt(tokenizer, marked)
        rows = equivalence_table(model, tokenizer, ids, split.demos, split.query, layers=args.layer or [0],
                                 num_features=feature_counts(args.max_features), seed=args.seed,
                                 center_keys=not args.no_center, temperature=args.temperature)
    except LRGDError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"prompt: {len(ids)} tokens, demonstrations {list(split.demos)}, query {split.query}; "
          f"softmax check: {'raw' if args.no_center else 'centered+balanced'} keys, temperature {args.temperature}")
    if not args.summary_only:
        print(format_table(rows))
        print()
    print(format_summary(summarize(rows)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
