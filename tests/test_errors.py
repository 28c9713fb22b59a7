"""The exception tree drawn in shared/errors.py is the one HemoStat raises (httpx's
`_exceptions.py`): every exception class in agents/, shared/ and dashboard/ is a HemoStatError,
and the drawing names every class in shared/errors.py at its place in the tree."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from pathlib import Path
from types import ModuleType

from shared import errors
from shared.errors import HemoStatError

PACKAGES = ("agents", "shared", "dashboard")


def modules() -> list[ModuleType]:
    found = []
    for package_name in PACKAGES:
        package = importlib.import_module(package_name)
        found.append(package)
        for info in pkgutil.walk_packages(package.__path__, prefix=f"{package_name}."):
            found.append(importlib.import_module(info.name))
    return found


def exception_classes() -> dict[str, type[BaseException]]:
    """Every exception class defined (not imported) in our packages, by qualified name."""
    out = {}
    for module in modules():
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ == module.__name__ and issubclass(cls, BaseException):
                out[f"{module.__name__}.{cls.__qualname__}"] = cls
    return out


def test_every_exception_class_is_a_hemostat_error() -> None:
    classes = exception_classes()
    assert "shared.errors.HemoStatError" in classes
    outside = sorted(name for name, cls in classes.items() if not issubclass(cls, HemoStatError))
    assert not outside, f"outside the tree in shared/errors.py: {outside}"


def drawn_tree() -> dict[str, str]:
    """The docstring's drawing as {class: parent}, read from the indentation of the names."""
    doc = errors.__doc__ or ""
    parents: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    for line in doc.splitlines():
        match = re.match(r"^(\s*(?:[│ ]   )*(?:[├└]── )?)([A-Z]\w+)(?:\s|$)", line)
        if not match or not line.startswith("    "):
            continue
        depth = len(match.group(1))
        name = match.group(2)
        while stack and stack[-1][0] >= depth:
            stack.pop()
        parents[name] = stack[-1][1] if stack else ""
        stack.append((depth, name))
    return parents


def test_the_docstring_draws_every_class_in_errors_where_it_is() -> None:
    defined = {
        name: cls
        for name, cls in inspect.getmembers(errors, inspect.isclass)
        if cls.__module__ == errors.__name__
    }
    drawn = drawn_tree()
    assert set(drawn) == set(defined)
    for name, parent in drawn.items():
        cls = defined[name]
        if parent:
            assert cls.__bases__ == (defined[parent],), name
        else:
            assert cls is HemoStatError


def test_every_class_of_the_tree_is_raised_somewhere() -> None:
    # "Nothing unused": each class of the tree, or a class derived from it, is raised in our code.
    root = Path(__file__).resolve().parent.parent
    source = "\n".join(
        path.read_text()
        for package in PACKAGES
        for path in (root / package).rglob("*.py")
        if path != root / "shared" / "errors.py"
    )
    made = {
        cls
        for cls in exception_classes().values()
        if re.search(rf"(?<!class )\b{cls.__name__}\(", source)
    }
    unused = [
        name
        for name in drawn_tree()
        if not any(issubclass(cls, getattr(errors, name)) for cls in made)
    ]
    assert not unused, f"never raised: {unused}"
