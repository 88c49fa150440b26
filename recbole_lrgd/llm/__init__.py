"""The LLM side of LRGD: loading a causal LM, building prompts, scoring candidates."""
