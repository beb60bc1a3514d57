"""Options described as data, and the discovery of plug-ins.

Feature backends and clustering models declare their options as
:class:`Option` values; the command line turns them into flags in one place,
the API takes them as keyword arguments, and neither needs to know any
backend. Each backend or model is one module of its package, found by
:func:`discover_plugins`: adding one is adding a file.
"""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from typing import Any, ClassVar, Iterable


@dataclass(frozen=True)
class Option:
    """An option of a backend or model, offered on the command line as ``--NAME``."""

    name: str
    type: Any  # int, float, str or bool
    default: Any
    help: str
    choices: tuple[str, ...] | None = None  # the allowed values of a str option
    # Whether the value changes features or pair scores (and so belongs in
    # the cache key); False for how many pairs are compared or how many
    # images go through a model at once, so changing those reuses the cache.
    changes_features: bool = True

    @property
    def flag(self) -> str:
        return flag_of(self.name)


def flag_of(name: str) -> str:
    """The command-line flag of an option: ``hash_size`` -> ``--hash-size``."""
    return "--" + name.replace("_", "-")


class Configurable:
    """A plug-in configured by its ``options``: values left at None take the
    option's default; the result is ``self.params``."""

    name: ClassVar[str]
    options: ClassVar[tuple[Option, ...]] = ()

    def __init__(self, **values: Any):
        known = {o.name: o for o in self.options}
        unknown = set(values) - set(known)
        if unknown:
            raise ValueError(f"{self.name} has no option {', '.join(sorted(unknown))}")
        self.params: dict[str, Any] = {
            name: (values[name] if values.get(name) is not None else opt.default) for name, opt in known.items()
        }
        for name, opt in known.items():
            if opt.choices is not None and self.params[name] is not None and self.params[name] not in opt.choices:
                raise ValueError(f"{opt.flag} must be one of {', '.join(opt.choices)}")
        self.check_params()

    def check_params(self) -> None:
        """Raise ValueError with a user-facing message for impossible options."""


def discover_plugins(package: str, path: Iterable[str], base: type) -> dict[str, type]:
    """Name -> class of every subclass of ``base`` defined in the modules of
    ``package`` (except ``base`` modules and private ones), sorted by name."""
    found: dict[str, type] = {}
    for info in sorted(pkgutil.iter_modules(path), key=lambda m: m.name):
        if info.name.startswith("_") or info.name == "base":
            continue
        module = importlib.import_module(f"{package}.{info.name}")
        for obj in vars(module).values():
            if isinstance(obj, type) and issubclass(obj, base) and obj.__module__ == module.__name__ \
                    and getattr(obj, "name", None):
                found[obj.name] = obj
    return dict(sorted(found.items()))
