"""The package's import arrows point down (see README, Contributing): engine below methods, no
cycles, no method reaching into another method, dataset names tested only inside data/."""
import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "scob_fast"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _imports(name: str, path: Path) -> set[str]:
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            subs = {f"{base}.{alias.name}" for alias in node.names}
            known = {s for s in subs if s in MODULES}
            found |= known
            if len(known) < len(subs):
                found.add(base)
    return {i for i in found if i in MODULES and i != name}


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _arrows(source_prefix: str, target_prefix: str) -> list[str]:
    return [f"{m} -> {d}" for m, deps in GRAPH.items() if m.startswith(source_prefix)
            for d in deps if d.startswith(target_prefix)]


@pytest.mark.parametrize("lower, upper", [
    ("scob_fast.engine", "scob_fast.methods"), ("scob_fast.engine", "scob_fast.data"),
    ("scob_fast.engine", "scob_fast.config"), ("scob_fast.engine", "scob_fast.training"),
    ("scob_fast.methods", "scob_fast.data"), ("scob_fast.methods", "scob_fast.training"),
    ("scob_fast.methods", "scob_fast.config"), ("scob_fast.models", "scob_fast.methods"),
    ("scob_fast.models", "scob_fast.engine"), ("scob_fast.data", "scob_fast.models"),
    ("scob_fast.data", "scob_fast.methods"), ("scob_fast.data", "scob_fast.engine"),
    ("scob_fast.ops", "scob_fast.models"), ("scob_fast.ops", "scob_fast.methods"),
])
def test_no_import_points_up(lower, upper):
    assert _arrows(lower, upper) == []


def test_methods_do_not_reach_into_each_other():
    def folder(name):
        parts = name.split(".")
        return parts[2] if len(parts) > 2 and parts[1] == "methods" else None
    shared = {None, "base", "losses"}
    crossing = [f"{m} -> {d}" for m, deps in GRAPH.items() if folder(m) not in shared
                for d in deps if folder(d) not in shared and folder(d) != folder(m)]
    assert crossing == []


def test_no_import_cycle():
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in GRAPH:
        if v not in index:
            visit(v)
    assert cycles == []


def test_dataset_names_are_tested_only_in_the_data_registry():
    pattern = re.compile(r"""==\s*["'](demo|coco2014|voc20\d\d|nuswide|cub)["']|["'](demo|coco2014)["']\s*==""")
    offenders = [name for name, path in MODULES.items()
                 if not name.startswith("scob_fast.data") and pattern.search(path.read_text())]
    assert offenders == []


def test_triton_interpret_is_read_in_one_place():
    readers = [name for name, path in MODULES.items()
               if "TRITON_INTERPRET" in (text := path.read_text()) and "environ" in text]
    assert readers == ["scob_fast.env"]


def test_kernels_are_a_subpackage():
    kernels = PACKAGE / "kernels"
    assert (kernels / "__init__.py").is_file()
    assert {"masked_attention.py", "label_contrastive.py"} <= {p.name for p in kernels.glob("*.py")}
    assert not (PACKAGE.parent / "kernels").exists(), "the Triton bodies live in scob_fast/kernels only"
