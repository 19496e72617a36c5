"""The package's import structure: the layers contract, no cycles, a torch-free ``--help``."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

import videofusion

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = Path(videofusion.__file__).parent


def test_the_layers_contract_is_kept():
    pytest.importorskip("importlinter", reason="pip install import-linter (dev)")
    # in a process of its own: lint_imports reconfigures logging, disabling existing loggers
    code = ("import sys\nfrom importlinter.cli import lint_imports\n"
            "sys.exit(lint_imports(config_filename='pyproject.toml', no_cache=True))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_top_level_module_has_a_layer():
    tomllib = pytest.importorskip("tomllib", reason="Python 3.11+")
    layers = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"][
        "contracts"][0]["layers"]
    named = {name.strip() for layer in layers for name in layer.split("|")}
    modules = {p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"} | {
        p.parent.name for p in PACKAGE.glob("*/__init__.py")}
    assert modules == named


def test_no_module_imports_itself_back():
    grimp = pytest.importorskip("grimp", reason="pip install import-linter (dev)")
    graph = grimp.build_graph("videofusion", include_external_packages=False)
    cycles = []
    for module in sorted(graph.modules):
        for imported in graph.find_modules_directly_imported_by(module):
            back = graph.find_shortest_chain(importer=imported, imported=module)
            if back:
                cycles.append((module, *back))
    assert cycles == []


def test_help_of_every_command_does_not_import_torch():
    code = (
        "import sys\n"
        "from videofusion.cli import main\n"
        "for argv in (['--help'], *([c, '--help'] for c in sys.argv[1:])):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    commands = ["train", "train-vae", "sample", "info", "bench", "eval", "data"]
    result = subprocess.run([sys.executable, "-c", code, *commands], capture_output=True,
                            text=True, timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr
    assert "usage: videofusion eval" in result.stdout
