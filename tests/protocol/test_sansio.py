"""protocol is sans-IO: no sockets, TLS, event loops, threads or daemon code."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import protocol

FORBIDDEN = {"socket", "ssl", "selectors", "select", "asyncio", "threading", "multiprocessing",
             "subprocess", "concurrent", "qemud", "client", "certs"}
PACKAGE = Path(protocol.__file__).parent

_PROBE = """
import importlib, json, pkgutil, sys
import protocol
names = [m.name for m in pkgutil.iter_modules(protocol.__path__)]
for name in names:
    importlib.import_module("protocol." + name)
print(json.dumps({"modules": sorted(sys.modules), "submodules": names}))
"""


def test_importing_protocol_pulls_in_no_io_modules() -> None:
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True,
                         check=True, timeout=60, cwd=PACKAGE.parent)
    result = json.loads(out.stdout)
    assert {"connection", "fields", "doc"} <= set(result["submodules"])
    loaded = {name.split(".")[0] for name in result["modules"]}
    assert loaded & FORBIDDEN == set()


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
              and node.func.id == "__import__"):
            raise AssertionError(f"{path}: dynamic __import__")
    return found


def test_sources_import_no_io_modules() -> None:
    sources = sorted(PACKAGE.rglob("*.py"))
    assert len(sources) >= 8
    for path in sources:
        assert _imports(path) & FORBIDDEN == set(), path
        text = path.read_text(encoding="utf-8")
        for word in ("import socket", "import ssl", "import asyncio", "import threading",
                     "import selectors", "importlib.import_module"):
            assert word not in text, f"{path}: {word}"
