"""The house plan's rules that import-linter cannot see (docs/ARCHITECTURE.md, "Packages"):
one exception root per package, and every route declares its response model and sits on
a router with a path prefix."""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: package -> (module, class) of its one exception root
ROOTS = {
    "hub": ("hub.core.errors", "EdgeloopError"),
    "edge_agent": ("edge_agent.errors", "AgentError"),
    "model_packager": ("model_packager.errors", "PackagerError"),
    "simulators": ("simulators.errors", "SimulatorError"),
    "edgeloop_cli": ("edgeloop_cli.errors", "CliError"),
}
#: exceptions that must stay outside their root, and why
OUTSIDE = {
    # torch.multiprocessing/ProcessPool pickling needs nothing special; none today
}


def _modules(package: str) -> list[str]:
    top = importlib.import_module(package)
    names = [package]
    for found in pkgutil.walk_packages(top.__path__, package + "."):
        if found.name.rsplit(".", 1)[-1] == "__main__":
            continue
        names.append(found.name)
    return names


@pytest.mark.parametrize("package", sorted(ROOTS))
def test_every_exception_derives_from_the_package_root(package: str) -> None:
    module, name = ROOTS[package]
    root = getattr(importlib.import_module(module), name)
    strays = []
    for module_name in _modules(package):
        try:
            mod = importlib.import_module(module_name)
        except ImportError as exc:  # an optional extra (tflite) missing here: say so
            pytest.fail(f"{module_name} does not import: {exc}")
        for cls_name, cls in inspect.getmembers(mod, inspect.isclass):
            if cls.__module__ != module_name or not issubclass(cls, BaseException):
                continue
            if not issubclass(cls, root) and f"{module_name}.{cls_name}" not in OUTSIDE:
                strays.append(f"{module_name}.{cls_name}({cls.__bases__})")
    assert not strays, f"exceptions outside {package}'s root {name}: {strays}"


def _route_decorators(path: Path) -> list[tuple[int, str, set[str]]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for deco in node.decorator_list:
            if (
                isinstance(deco, ast.Call)
                and isinstance(deco.func, ast.Attribute)
                and deco.func.attr in {"get", "post", "put", "patch", "delete"}
            ):
                found.append((node.lineno, node.name, {k.arg for k in deco.keywords if k.arg}))
    return found


def test_every_route_declares_its_response_model() -> None:
    """``response_model=`` on each route (None for files, pages and 204s), so the OpenAPI
    document says exactly what comes back."""
    missing, seen = [], 0
    for folder in ("hub/api", "hub/ui"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for line, func, keywords in _route_decorators(path):
                seen += 1
                if "response_model" not in keywords:
                    missing.append(f"{path.relative_to(ROOT)}:{line} {func}")
    assert seen > 50, f"found only {seen} routes: has the API moved?"
    assert not missing, f"routes without response_model: {missing}"


def test_every_route_sits_on_a_router_with_a_prefix() -> None:
    """``@X.get(...)`` only on an ``X = APIRouter(prefix=...)`` (a module whose paths have
    several roots has one router per root, gathered into its ``router``)."""
    loose, seen = [], 0
    for folder in ("hub/api/routes", "hub/ui"):
        for path in sorted((ROOT / folder).glob("*.py")):
            tree = ast.parse(path.read_text())
            prefixed = {
                target.id
                for node in tree.body
                if isinstance(node, ast.Assign)
                and isinstance(node.value, ast.Call)
                and getattr(node.value.func, "id", None) == "APIRouter"
                and any(k.arg == "prefix" for k in node.value.keywords)
                for target in node.targets
                if isinstance(target, ast.Name)
            }
            for node in ast.walk(tree):
                if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    continue
                for deco in node.decorator_list:
                    if isinstance(deco, ast.Call) and isinstance(deco.func, ast.Attribute):
                        owner = deco.func.value
                        if deco.func.attr in {"get", "post", "put", "patch", "delete"}:
                            seen += 1
                            if not (isinstance(owner, ast.Name) and owner.id in prefixed):
                                loose.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert seen > 50
    assert not loose, f"routes on a router without a prefix: {loose}"
