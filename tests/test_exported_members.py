"""Every module in shared/, agents/ and dashboard/ declares its public surface (httpx's
`tests/test_exported_members.py`): `__all__` exists, names only what the module has, and leaves
out no public class or function the module defines. A name starting with `_` is private."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from types import ModuleType

import pytest

PACKAGES = ("shared", "agents", "dashboard")


def modules() -> list[ModuleType]:
    found = []
    for package_name in PACKAGES:
        package = importlib.import_module(package_name)
        found.append(package)
        for info in pkgutil.walk_packages(package.__path__, prefix=f"{package_name}."):
            found.append(importlib.import_module(info.name))
    return found


MODULES = modules()


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__)
def test_module_declares_what_it_exports(module: ModuleType) -> None:
    exported = getattr(module, "__all__", None)
    assert exported is not None, f"{module.__name__} has no __all__"
    assert len(exported) == len(set(exported)), "a name is listed twice"
    missing = [name for name in exported if not hasattr(module, name)]
    assert not missing, f"__all__ names what {module.__name__} does not have: {missing}"
    defined = [
        name
        for name, member in vars(module).items()
        if not name.startswith("_")
        and (inspect.isclass(member) or inspect.isfunction(member))
        and member.__module__ == module.__name__
    ]
    left_out = sorted(set(defined) - set(exported))
    assert not left_out, f"public but not in {module.__name__}.__all__: {left_out}"
