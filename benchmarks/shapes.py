"""Random-weight stand-ins for real LLMs: speed and memory do not depend on the weights' values, and no 1.5B or 8B
weights install offline, so a model built from the real model's config alone measures what the real one would."""
from __future__ import annotations

SHAPES = {  # config.json fields of the real models (Hugging Face)
    "smollm2-135m": {"model_type": "llama", "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
                     "num_attention_heads": 9, "num_key_value_heads": 3, "vocab_size": 49152,
                     "max_position_embeddings": 8192, "tie_word_embeddings": True, "rope_theta": 100000.0},
    "qwen2.5-1.5b": {"model_type": "qwen2", "hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28,
                     "num_attention_heads": 12, "num_key_value_heads": 2, "vocab_size": 151936,
                     "max_position_embeddings": 32768, "tie_word_embeddings": True, "rope_theta": 1000000.0},
    "llama-3.1-8b": {"model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
                     "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
                     "max_position_embeddings": 131072, "tie_word_embeddings": False, "rope_theta": 500000.0},
}


def random_model(shape: str, dtype: str = "bfloat16", device: str = "cpu"):
    """A seeded random-weight causal LM of ``shape``, built in ``dtype`` on ``device`` (no float32 copy), in eval mode."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    fields = dict(SHAPES[shape])
    config = AutoConfig.for_model(fields.pop("model_type"), **fields)
    torch.manual_seed(0)
    with torch.device(device):
        try:
            model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
        except TypeError:  # transformers before 4.56 names it torch_dtype
            model = AutoModelForCausalLM.from_config(config, torch_dtype=getattr(torch, dtype))
    return model.eval()
