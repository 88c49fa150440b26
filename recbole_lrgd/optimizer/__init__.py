"""LRGD's fit: two-stage demonstration optimization (docs/theory.md)."""
