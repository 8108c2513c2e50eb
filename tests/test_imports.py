"""Import rules of the package (issue 11).

- Only kestrel_raw/kernel/syscall.py imports ctypes: every other module talks to the kernel in bytes.
- The pure modules (assembler, BTF, codec, ring cursor, event spec, BPF programs, the process context, and the
  kernel's layouts and constants) import neither ctypes nor trio, directly or through anything they import: each is imported alone
  in a fresh interpreter.  The modules are enumerated, not listed, so a module added later is checked too.
- The public namespace: every name in ``kestrel_raw.__all__`` imports, once, from the one module defining it.
"""
from __future__ import annotations

import ast
import importlib
import importlib.util
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import kestrel_raw

ROOT = Path(kestrel_raw.__file__).resolve().parent
REPO = ROOT.parent
SYSCALL_MODULE = ROOT / "kernel" / "syscall.py"

# The pure zone: these packages (every module in them) and modules.
PURE_PACKAGES = ["kestrel_raw.asm", "kestrel_raw.btf", "kestrel_raw.codec", "kestrel_raw.programs",
                 "kestrel_raw.context", "kestrel_raw.filters"]   # context: its I/O runs on threads; tasks.py loads kernel/ when called
PURE_MODULES = ["kestrel_raw.maps.ring", "kestrel_raw.spec", "kestrel_raw.kernel.layout", "kestrel_raw.kernel.uapi"]


def _package_files() -> list[Path]:
    return sorted(ROOT.rglob("*.py"))


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported_roots(tree: ast.AST) -> set[str]:
    """Top-level names of every module ``tree`` imports, wherever the import statement is (functions too),
    and of string literals passed to importlib.import_module / __import__."""
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in ("import_module", "__import__"):
                roots.add(node.args[0].value.split(".")[0])
    return roots


def test_only_the_syscall_module_imports_ctypes():
    files = _package_files()
    assert SYSCALL_MODULE in files and len(files) > 30
    offenders = [str(p.relative_to(REPO)) for p in files
                 if p != SYSCALL_MODULE and "ctypes" in _imported_roots(ast.parse(p.read_text(), str(p)))]
    assert offenders == [], "only kestrel_raw/kernel/syscall.py may import ctypes"


def test_the_scan_sees_every_form_of_import():
    code = ("import ctypes.util\n"
            "def f():\n    from ctypes import c_int\n"
            "import importlib\nm = importlib.import_module('trio.lowlevel')\nn = __import__('os')\n")
    assert _imported_roots(ast.parse(code)) == {"ctypes", "importlib", "trio", "os"}
    assert _imported_roots(ast.parse("from . import syscall\nfrom .x import y\n")) == set()


def _pure_modules() -> list[str]:
    names = []
    for package in PURE_PACKAGES:
        if importlib.util.find_spec(package) is None:
            continue  # a package of the pure zone that was removed: nothing to check
        pkg = importlib.import_module(package)
        names.append(package)
        names += [m.name for m in pkgutil.walk_packages(pkg.__path__, package + ".")]
    names += [m for m in PURE_MODULES if importlib.util.find_spec(m) is not None]
    return names


PURE = _pure_modules()


def test_the_pure_zone_is_enumerated():
    assert {"kestrel_raw.asm", "kestrel_raw.asm.instruction", "kestrel_raw.btf.spec", "kestrel_raw.maps.ring",
            "kestrel_raw.kernel.uapi", "kestrel_raw.kernel.layout"} <= set(PURE)
    assert len(PURE) == len(set(PURE))


@pytest.mark.parametrize("module", PURE)
def test_pure_module_imports_neither_ctypes_nor_trio(module):
    code = (f"import sys, {module}\n"
            "print(' '.join(sorted(m for m in ('ctypes', 'trio') if m in sys.modules)))\n"
            # Every module of the package it loads must be this checkout's: an older installed copy (a stale
            # editable install) could otherwise stand in for a module that does not exist here.
            "print(' '.join(sorted(n for n, m in list(sys.modules.items()) if n.split('.')[0] == 'kestrel_raw'\n"
            f"                     and not (getattr(m, '__file__', None) or '').startswith({str(ROOT)!r}))))\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    loads, foreign = r.stdout.split("\n")[:2]
    assert loads == "", f"importing {module} alone loads {loads}"
    assert foreign == "", f"importing {module} loads modules from outside {ROOT}: {foreign}"


# --- the public namespace ----------------------------------------------------------------------------------

def _top_level_names(tree: ast.Module) -> set[str]:
    """Names a module defines at its top level (def, class, assignment; not imports)."""
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                names |= {n.id for n in ast.walk(target) if isinstance(n, ast.Name)}
    return names


def test_public_names_are_exported_once_and_defined_once():
    public = kestrel_raw.__all__
    assert len(public) == len(set(public)), sorted({n for n in public if public.count(n) > 1})
    defined = {_module_name(p): _top_level_names(ast.parse(p.read_text(), str(p))) for p in _package_files()}
    code = "import kestrel_raw\n"
    owner = {}
    for name in public:
        owners = sorted(m for m, names in defined.items() if name in names)
        assert len(owners) == 1, f"{name} is defined in {owners or 'no module'}"
        owner[name] = owners[0]
        code += (f"from kestrel_raw import {name}\n"
                 f"print({name!r}, getattr({name}, '__module__', 'kestrel_raw'))\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    imported = dict(line.split() for line in r.stdout.splitlines())
    assert list(imported) == list(public)
    for name in public:
        assert imported[name] == owner[name], f"kestrel_raw.{name} comes from {imported[name]}, not {owner[name]}"
