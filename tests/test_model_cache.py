"""The converted-model cache: a GGUF converted once, then loaded from a folder with the same logits;
a partial or corrupt entry rebuilt; a changed file or dtype a new entry; a lost write race harmless."""
import glob
import os

import numpy as np
import pytest
import torch

from recbole_lrgd.llm import loader, model_cache
from recbole_lrgd.llm.tiny import CHAT_TEMPLATE, make_tokenizer

TEXT = "Toy Story (1995), Heat (1995) and a café"


def write_tiny_gguf(path: str, seed: int = 0) -> str:
    """A tiny random LLaMA as a float32 GGUF (llama.cpp's names), with tiny.py's byte-level vocabulary."""
    import gguf

    vocab = make_tokenizer().get_vocab()
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    n, hidden, inter, layers, heads, kv_heads = len(tokens), 32, 64, 2, 4, 2
    w = gguf.GGUFWriter(path, "llama")
    w.add_context_length(256)
    w.add_embedding_length(hidden)
    w.add_block_count(layers)
    w.add_feed_forward_length(inter)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_rope_dimension_count(hidden // heads)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_vocab_size(n)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([1] * (n - 5) + [3] * 5)  # the last five are tiny.py's special tokens
    w.add_token_scores([0.0] * n)
    w.add_token_merges([])
    w.add_eos_token_id(vocab["<eos>"])
    w.add_pad_token_id(vocab["<pad>"])
    w.add_chat_template(CHAT_TEMPLATE)
    rng = np.random.default_rng(seed)

    def weight(name, *shape):
        w.add_tensor(name, (rng.standard_normal(shape) * 0.1).astype(np.float32))

    weight("token_embd.weight", n, hidden)  # no output.weight: tied embeddings
    kv = hidden * kv_heads // heads
    for i in range(layers):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(hidden, np.float32))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(hidden, np.float32))
        for name, shape in (("attn_q", (hidden, hidden)), ("attn_k", (kv, hidden)), ("attn_v", (kv, hidden)),
                            ("attn_output", (hidden, hidden)), ("ffn_gate", (inter, hidden)),
                            ("ffn_up", (inter, hidden)), ("ffn_down", (hidden, inter))):
            weight(f"blk.{i}.{name}.weight", *shape)
    w.add_tensor("output_norm.weight", np.ones(hidden, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture
def tiny_gguf(tmp_path):
    return write_tiny_gguf(str(tmp_path / "tiny.gguf"))


def config_for(path, cache_dir, dtype="float32"):
    return {"llm_path": path, "llm_device": "cpu", "device": "cpu", "llm_dtype": dtype, "llm_device_map": None,
            "llm_cache_dir": cache_dir}


def load(cfg):
    """A fresh load in this process (past the per-process memo): ``(model, tokenizer, log line)``."""
    loader.forget_loaded()
    model, tokenizer = loader.load_config_llm(cfg)
    return model, tokenizer, loader.llm_summary(cfg)


def transformers_conversion(path, dtype):
    """transformers' own load of a GGUF (the whole state dict at once): what the streamed conversion must equal."""
    from transformers import AutoModelForCausalLM

    folder, name = os.path.split(path)
    return AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=getattr(torch, dtype))


def assert_same_model(model, reference):
    assert model.state_dict().keys() == reference.state_dict().keys()
    for name, tensor in reference.state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        assert getattr(model.generation_config, key) == getattr(reference.generation_config, key), key


def logits(model, tokenizer):
    with torch.no_grad():
        return model(torch.tensor([tokenizer(TEXT)["input_ids"]])).logits


def entries(cache_dir):
    return sorted(os.listdir(cache_dir)) if os.path.isdir(cache_dir) else []


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_second_load_comes_from_the_cache_and_equals_the_conversion(tiny_gguf, tmp_path, dtype):
    cache = str(tmp_path / "cache")
    fresh, fresh_tok, _ = load(config_for(tiny_gguf, None, dtype))  # cache off: converted, nothing written
    assert entries(cache) == []
    first, first_tok, line = load(config_for(tiny_gguf, cache, dtype))
    assert "(converted)" in line and len(entries(cache)) == 1
    cached, cached_tok, line = load(config_for(tiny_gguf, cache, dtype))
    assert "(converted-model cache)" in line and f"dtype {dtype}" in line
    assert cached.dtype == getattr(torch, dtype)
    assert cached.lm_head.weight.data_ptr() == cached.model.embed_tokens.weight.data_ptr()  # still tied
    assert cached_tok(TEXT)["input_ids"] == fresh_tok(TEXT)["input_ids"]
    assert cached_tok.chat_template == fresh_tok.chat_template and cached_tok.pad_token == fresh_tok.pad_token
    assert torch.equal(logits(cached, cached_tok), logits(fresh, fresh_tok))
    assert torch.equal(logits(first, first_tok), logits(fresh, fresh_tok))
    reference = transformers_conversion(tiny_gguf, dtype)  # streamed tensor by tensor, yet transformers' weights
    for model in (fresh, first, cached):
        assert_same_model(model, reference)


def _drop_marker(entry):
    os.remove(os.path.join(entry, model_cache.MARKER))


def _first_shard(entry):
    return sorted(glob.glob(os.path.join(entry, "model*.safetensors")))[0]


def _truncate_weights(entry):
    path = _first_shard(entry)
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def _scramble_weights(entry):  # same size, unreadable header: only loading can tell
    path = _first_shard(entry)
    with open(path, "r+b") as f:
        f.write(b"\xff" * 64)


def _drop_tokenizer(entry):
    os.remove(os.path.join(entry, "tokenizer.json"))


@pytest.mark.parametrize("corrupt", [_drop_marker, _truncate_weights, _scramble_weights, _drop_tokenizer])
def test_partial_or_corrupt_entry_is_rebuilt(tiny_gguf, tmp_path, caplog, corrupt):
    cache = str(tmp_path / "cache")
    cfg = config_for(tiny_gguf, cache)
    model, tok, _ = load(cfg)
    want = logits(model, tok)
    del model  # its weights are the entry's mapped files, corrupted next
    (name,) = entries(cache)
    corrupt(os.path.join(cache, name))
    with caplog.at_level("WARNING", logger=model_cache.__name__):
        rebuilt, rebuilt_tok, line = load(cfg)
    assert "(converted)" in line and "rebuilding" in caplog.text
    assert entries(cache) == [name]  # the same entry, complete again; nothing discarded left behind
    assert torch.equal(logits(rebuilt, rebuilt_tok), want)
    again, again_tok, line = load(cfg)
    assert "(converted-model cache)" in line
    assert torch.equal(logits(again, again_tok), want)


def test_changed_file_or_dtype_makes_a_new_entry(tiny_gguf, tmp_path):
    cache = str(tmp_path / "cache")
    load(config_for(tiny_gguf, cache))
    st = os.stat(tiny_gguf)
    os.utime(tiny_gguf, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # same bytes, new mtime: maybe replaced
    _, _, line = load(config_for(tiny_gguf, cache))
    assert "(converted)" in line and len(entries(cache)) == 2
    _, _, line = load(config_for(tiny_gguf, cache, "bfloat16"))
    assert "(converted)" in line and len(entries(cache)) == 3
    assert any("-bfloat16-" in e for e in entries(cache))


def test_a_writer_that_loses_the_race_uses_the_winners_entry(tiny_gguf, tmp_path):
    cache = str(tmp_path / "cache")
    model, tok, _ = load(config_for(tiny_gguf, cache))
    ident = model_cache.identity(tiny_gguf, torch.float32)
    entry = model_cache.entry_dir(cache, ident)
    winner = os.stat(_first_shard(entry)).st_mtime_ns
    assert model_cache.store(entry, model, tok, ident)  # the rename finds the entry in place
    assert entries(cache) == [os.path.basename(entry)]  # no temporary folder left
    assert os.stat(_first_shard(entry)).st_mtime_ns == winner


def test_a_dead_writers_temporary_folder_is_removed_a_live_ones_kept(tiny_gguf, tmp_path):
    cache = str(tmp_path / "cache")
    ident = model_cache.identity(tiny_gguf, torch.float32)
    entry = model_cache.entry_dir(cache, ident)
    os.makedirs(cache)
    dead, live = (os.path.join(cache, f".{os.path.basename(entry)}.tmp-{n}") for n in ("dead", "live"))
    for folder in (dead, live):
        os.makedirs(folder)
    old = os.path.getmtime(dead) - 2 * model_cache.STALE_S
    os.utime(dead, (old, old))
    load(config_for(tiny_gguf, cache))
    assert entries(cache) == sorted([os.path.basename(entry), os.path.basename(live)])


@pytest.mark.default_llm
def test_default_gguf_from_the_cache_equals_its_conversion(tmp_path):
    """SmolLM2 in the run's default dtype: the cached copy gives the converted model's logits exactly."""
    cfg = config_for(None, str(tmp_path / "cache"), "auto")
    converted, tok, line = load(cfg)
    assert "(converted)" in line
    cached, cached_tok, line = load(cfg)
    assert "(converted-model cache)" in line
    assert cached_tok(TEXT)["input_ids"] == tok(TEXT)["input_ids"]
    assert cached_tok.chat_template == tok.chat_template
    assert torch.equal(logits(cached, cached_tok), logits(converted, tok))
    assert_same_model(cached, transformers_conversion(loader.default_llm_path(), str(cached.dtype).split(".")[1]))
    loader.forget_loaded()


def test_the_tokenizer_alone_is_read_where_the_model_reads_it_and_kept_for_it(tiny_gguf, tmp_path, monkeypatch):
    """Checks before the model loads take the tokenizer alone: from the GGUF file while there is no complete
    entry, from the entry once there is one; the model's load then reuses it rather than reading it again."""
    from transformers import AutoTokenizer

    cfg = config_for(tiny_gguf, str(tmp_path / "cache"))
    entry = model_cache.entry_dir(cfg["llm_cache_dir"], model_cache.identity(tiny_gguf, torch.float32))
    reads = []
    real = AutoTokenizer.from_pretrained

    def from_pretrained(folder, **kwargs):
        reads.append((folder, kwargs.get("gguf_file")))
        return real(folder, **kwargs)

    monkeypatch.setattr(AutoTokenizer, "from_pretrained", from_pretrained)
    for source in ((os.path.dirname(tiny_gguf), "tiny.gguf"), (entry, None)):
        loader.forget_loaded()
        reads.clear()
        tokenizer = loader.load_config_tokenizer(cfg)
        assert reads == [source] and loader._load.cache_info().currsize == 0  # no model loaded
        assert loader.load_config_llm(cfg)[1] is tokenizer and reads == [source]
    assert tokenizer(TEXT)["input_ids"] == make_tokenizer()(TEXT)["input_ids"]
    loader.forget_loaded()


def test_dequantizing_a_block_of_rows_at_a_time_gives_the_same_values(monkeypatch):
    from gguf import GGMLQuantizationType, dequantize, quantize

    from recbole_lrgd.llm import gguf_folder

    rows = np.random.default_rng(0).standard_normal((10, 64)).astype(np.float32)
    quantized = quantize(rows, GGMLQuantizationType.Q8_0)
    monkeypatch.setattr(gguf_folder, "DEQUANTIZE_BYTES", 3 * 64 * 4)  # three rows a block: 4 blocks, the last short
    calls = []

    def counted(data, kind):
        calls.append(len(data))
        return dequantize(data, kind)

    got = gguf_folder._dequantize(counted, quantized, GGMLQuantizationType.Q8_0)
    assert calls == [1, 3, 3, 3, 1] and np.array_equal(got, dequantize(quantized, GGMLQuantizationType.Q8_0))
