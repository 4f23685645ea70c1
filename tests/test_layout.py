"""The layout's promises, checked from the source: the serving runtime is torch-free, the package holds
only its own folder, every module says what it holds."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "mmadapter"
# Where the installed names live in the source tree (pyproject.toml's package-dir).
SOURCE_OF = {"mmadapter.export": ROOT / "export", "mmadapter.kernels": ROOT / "kernels", "mmadapter": PACKAGE}
# What a serving install has none of; `onnx` the package, not onnxruntime.
FORBIDDEN_TOP = {"torch", "torchvision", "open_clip", "triton", "onnx", "onnxscript"}
FORBIDDEN_OURS = ("mmadapter.export", "mmadapter.kernels")
# The one exception, by name: the ExecuTorch engine (opened only for --engine executorch) hands ExecuTorch
# torch tensors, because executorch.runtime's Python bindings import torch themselves and take its tensors.
ALLOWED = {(m, "mmadapter.runtime.engines.executorch") for m in ("torch", "torch.from_numpy")}


def module_file(name: str) -> Path | None:
    """The source file of one of our modules, or None if it is not ours."""
    for prefix, folder in sorted(SOURCE_OF.items(), key=lambda item: -len(item[0])):
        if name == prefix or name.startswith(prefix + "."):
            rest = name[len(prefix):].lstrip(".").split(".") if name != prefix else []
            base = folder.joinpath(*rest)
            for candidate in (base / "__init__.py", base.with_suffix(".py")):
                if candidate.is_file():
                    return candidate
            return None
    return None


def imported_modules(path: Path, name: str) -> set[str]:
    """Every module an import statement anywhere in the file names (lazy imports inside functions too),
    with the packages a dotted import also runs (``a.b.c`` imports ``a`` and ``a.b`` first)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import module`
    with_parents = set()
    for module in found:
        parts = module.split(".")
        with_parents.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return with_parents


def runtime_import_closure() -> dict[str, str]:
    """Every module reachable by import from mmadapter/runtime/, mapped to the module that imports it."""
    start = [f"mmadapter.runtime.{'.'.join(p.relative_to(PACKAGE / 'runtime').with_suffix('').parts)}"
             .removesuffix(".__init__").removesuffix(".") for p in (PACKAGE / "runtime").rglob("*.py")]
    start = [s if s != "mmadapter.runtime." else "mmadapter.runtime" for s in start] + ["mmadapter.runtime"]
    seen: dict[str, str] = {s: "(start)" for s in start}
    todo = list(start)
    while todo:
        name = todo.pop()
        path = module_file(name)
        if path is None:
            continue
        for dep in imported_modules(path, name):
            if dep not in seen:
                seen[dep] = name
                if module_file(dep) is not None:
                    todo.append(dep)
    return seen


def test_runtime_imports_nothing_of_the_training_or_export_side():
    closure = runtime_import_closure()
    assert "mmadapter.runtime.model" in closure and "mmadapter.runtime.engines.openvino" in closure
    bad = {m: by for m, by in closure.items()
           if (m.split(".")[0] in FORBIDDEN_TOP and (m, by) not in ALLOWED)
           or any(m == f or m.startswith(f + ".") for f in FORBIDDEN_OURS)}
    assert not bad, f"the serving runtime reaches (module: imported by) {bad}"


def test_the_closure_sees_lazy_imports(tmp_path):
    """The checker itself: an import inside a function counts, so the test above can fail."""
    source = tmp_path / "m.py"
    source.write_text("def f():\n    import torch\n    from mmadapter.export import pipeline\n")
    found = imported_modules(source, "mmadapter.runtime.m")
    assert {"torch", "mmadapter.export", "mmadapter.export.pipeline"} <= found


def test_package_path_is_its_own_folder_and_walking_it_ends():
    import mmadapter

    assert [Path(p).resolve() for p in mmadapter.__path__] == [PACKAGE.resolve()]
    names = [m.name for m in pkgutil.walk_packages(mmadapter.__path__, "mmadapter.", onerror=lambda _: None)]
    assert "mmadapter.runtime.model" in names
    assert not [n for n in names if n.startswith(("mmadapter.mmadapter", "mmadapter.tests", "mmadapter.benchmarks"))]


def test_no_second_copy_of_the_package_imports():
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("mmadapter.mmadapter")
    assert "mmadapter.mmadapter" not in sys.modules


def python_files(*folders: str) -> list[Path]:
    return sorted(p for f in folders for p in (ROOT / f).rglob("*.py") if "__pycache__" not in p.parts)


def test_every_module_says_what_it_holds():
    missing = [str(p.relative_to(ROOT)) for p in python_files("mmadapter", "export", "kernels", "benchmarks")
               if p.read_text().strip() and ast.get_docstring(ast.parse(p.read_text())) is None]
    assert not missing, f"modules without a docstring: {missing}"


@pytest.mark.parametrize(("call", "home"), [("InferenceSession(", "mmadapter/runtime/engines/onnxruntime.py"),
                                            ("compile_model(", "mmadapter/runtime/engines/openvino.py")])
def test_each_engine_is_opened_in_one_place(call, home):
    """Runtime, validation, calibration, accuracy and benchmarks all open graphs through
    mmadapter.runtime.engines.open_session: one construction site per engine library."""
    sites = [f"{p.relative_to(ROOT)}:{i}" for p in python_files("mmadapter", "export", "benchmarks")
             for i, line in enumerate(p.read_text().splitlines(), 1) if call in line]
    assert len(sites) == 1 and sites[0].startswith(home + ":"), sites


MAX_FUNCTION_LINES = 80  # kernels/ is exempt: a Triton kernel is one function by nature


def test_no_function_is_longer_than_the_limit():
    long = []
    for path in python_files("mmadapter", "export", "benchmarks", "tests"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"
