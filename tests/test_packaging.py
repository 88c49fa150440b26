"""The installed package: the wheel ships the YAML defaults and the console script, a normal
(non-editable) install runs from another folder on its packaged defaults, and a default the plugin
expects but cannot find is an error.

The wheel is built offline from a copy of the sources (no stale ``build/`` of the checkout), and
installed with ``--no-deps`` into a temporary venv that sees this environment's site-packages
through a ``.pth`` file (``--system-site-packages`` would give the base interpreter's, not this
venv's). Those folders are plain ``sys.path`` entries there, so this checkout's editable install
(a ``.pth`` finder) stays inactive and the venv imports the wheel's copy.
"""
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from recbole_lrgd import cli, properties_files
from recbole_lrgd.config import build_config
from recbole_lrgd.errors import LRGDError

ROOT = Path(__file__).resolve().parent.parent
PROPERTIES = ROOT / "properties"
SOURCES = ("setup.cfg", "pyproject.toml", "README.md", "recbole_lrgd", "properties")


def _yaml_names(folder: Path):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.yaml"))


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    src, dist = tmp_path_factory.mktemp("src"), tmp_path_factory.mktemp("dist")
    for name in SOURCES:
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy
        copy(ROOT / name, src / name, **({"ignore": shutil.ignore_patterns("__pycache__")}
                                          if (ROOT / name).is_dir() else {}))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                    "-w", str(dist), str(src)], check=True)
    (whl,) = dist.glob("recbole_lrgd-*.whl")
    return whl


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory):
    """A venv holding the wheel (non-editable), and a clean environment to run it from another folder."""
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", "--clear", str(venv)], check=True)
    python = venv / "bin" / "python"
    # install before the .pth exists, so pip sees no recbole_lrgd (this checkout's) in the venv
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index",
                    str(wheel)], check=True)
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    outer = [p for p in sys.path if os.path.basename(p) in ("site-packages", "dist-packages")]
    Path(purelib, "_outer_env.pth").write_text("\n".join(outer) + "\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PYTHONNOUSERSITE="1", OMP_NUM_THREADS="1")
    run_dir = tmp_path_factory.mktemp("elsewhere")
    return {"bin": venv / "bin", "purelib": Path(purelib), "env": env, "cwd": run_dir}


def _run(installed, *args):
    return subprocess.run([str(a) for a in args], cwd=installed["cwd"], env=installed["env"],
                          capture_output=True, text=True, timeout=300)


@pytest.mark.packaging
def test_wheel_ships_every_default_every_module_and_the_console_script(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = sorted(n[len("recbole_lrgd/properties/"):] for n in names if n.startswith("recbole_lrgd/properties/"))
    assert {"overall.yaml", "model/LRGD.yaml"} <= set(shipped)
    assert shipped == _yaml_names(PROPERTIES)  # a YAML added to properties/ but not shipped fails here
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "recbole_lrgd").rglob("*.py")}
    assert modules - names == set()  # setup.cfg lists the packages: a new subpackage must be added there
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "recbole-lrgd = recbole_lrgd.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


@pytest.mark.packaging
def test_installed_wheel_runs_from_another_folder_on_its_packaged_defaults(installed, tiny_llm_dir):
    # LRGD on ml-100k runs at all only with the packaged uni19 and movie_title (else one error line)
    script = installed["bin"] / "recbole-lrgd"
    done = _run(installed, script, "--eval_users=5", "--demo_mode=none", f"--llm_path={tiny_llm_dir}",
                "--show_progress=False", "--state=WARNING")
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("LRGD on ml-100k (5 test users")
    assert "ndcg@10: " in done.stdout

    # ... and it read them from the venv's package, not this checkout: remove one, and the error names it
    dataset_yaml = installed["purelib"] / "recbole_lrgd" / "properties" / "dataset" / "ml-100k.yaml"
    dataset_yaml.unlink()
    broken = _run(installed, script, "--eval_users=5", f"--llm_path={tiny_llm_dir}")
    assert broken.returncode == 2
    assert broken.stderr.splitlines()[-1] == (f"error: broken install: missing {dataset_yaml} "
                                             "(the plugin's defaults; reinstall recbole_lrgd)")


def test_a_checkout_reads_the_repository_properties():
    """Editable install or source checkout: properties/ stays at the root and is read in place."""
    assert properties_files.properties_dir() == PROPERTIES
    assert properties_files.run_properties("LRGD", "ml-100k", plugin_model=True) == [
        str(PROPERTIES / f) for f in ("overall.yaml", "model/LRGD.yaml", "dataset/ml-100k.yaml")]


def test_a_user_dataset_or_recbole_model_without_a_yaml_reads_only_overall_yaml():
    found = properties_files.run_properties("SASRec", "my-data", plugin_model=False)
    assert found == [str(PROPERTIES / "overall.yaml")]


@pytest.mark.parametrize("missing", ["overall.yaml", "model/LRGD.yaml"])
def test_a_missing_default_is_an_error(tmp_path, monkeypatch, missing):
    copy = tmp_path / "properties"
    shutil.copytree(PROPERTIES, copy)
    (copy / missing).unlink()
    monkeypatch.setattr(properties_files, "properties_dir", lambda: copy)
    with pytest.raises(LRGDError, match=f"broken install: missing {copy / missing} "):
        build_config("LRGD", "ml-100k")


def test_cli_help_lists_every_flag(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    own = out[out.index("options:"):].split("\n\n")[0]  # the flags' section; the config keys follow it
    options = [line.split()[0] for line in own.splitlines() if line.startswith("  -")]
    assert options == ["-h,", "--model", "--dataset", "--config_files", "--result_file", "--benchmark"]
