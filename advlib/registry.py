"""Named registries: recipes, attack objectives and attack presets are looked up by name.

A registry is a dict filled by a decorator (``@OBJECTIVES.register("dag")``) or by
``REGISTRY.add(name, value)``; a paper module registers its own entries when it is imported, so
adding one touches one file; a name not yet registered is looked for in the modules installed
packages declare as ``advlib.plugins`` entry points (:func:`load_plugins`). Looking up an unknown name raises ``ValueError`` listing the
registered names, and :meth:`Registry.build` rejects unknown parameters by name (a typo must not
silently become a new cache key).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """A name -> entry mapping with clear errors.

    Args:
        kind: what the entries are (used in error messages), e.g. ``"recipe"``.
        hint: added to the unknown-name error (e.g. where more entries come from).
    """

    def __init__(self, kind: str, hint: str = "") -> None:
        self.kind = kind
        self.hint = hint
        self._entries: dict[str, T] = {}

    def add(self, name: str, entry: T, replace: bool = False) -> T:
        """Register ``entry`` under ``name`` (a second registration of a name is an error unless
        ``replace``)."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"a {self.kind} name must be a non-empty string, got {name!r}")
        if name in self._entries and not replace and self._entries[name] is not entry:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = entry
        return entry

    def register(self, name: str, replace: bool = False) -> Callable[[T], T]:
        """Decorator form of :meth:`add`."""
        return lambda entry: self.add(name, entry, replace)

    def __getitem__(self, name: str) -> T:
        if isinstance(name, str) and name not in self._entries:
            load_plugins()  # a paper's entries register when its module is imported
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise ValueError(f"unknown {self.kind} {name!r}; registered: {', '.join(sorted(self._entries))}"
                             f"{f' ({self.hint})' if self.hint else ''}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def items(self):
        return self._entries.items()

    def build(self, name: str, **params):
        """Call the entry registered under ``name`` (a class or factory) with ``params``.

        Raises:
            ValueError: unknown name, or a parameter the entry does not take (named).
        """
        factory = self[name]
        check_params(factory, params, f"{self.kind} {name!r}")
        return factory(**params)


#: the entry-point group of modules that register entries (the papers' rooms, in pyproject.toml;
#: another installed package can add its own recipes, objectives and presets the same way)
PLUGIN_GROUP = "advlib.plugins"
_plugins_loaded: list[str] = []


def load_plugins() -> list[str]:
    """Import, once, every module that installed packages declare under the entry-point group
    :data:`PLUGIN_GROUP`, so that looking a name up (``RECIPES.build("mtd")``, a command line's
    ``--recipe``) finds what a paper registers without the caller importing the paper. Returns
    the modules' names."""
    if not _plugins_loaded:
        from importlib.metadata import distributions

        _plugins_loaded.append("")  # loading may look names up: no recursion
        # every distribution's entry points, not entry_points()'s first per name: a stale
        # ``*.egg-info`` in the working directory must not hide the installed metadata
        eps = {ep.value: ep for d in distributions() for ep in d.entry_points if ep.group == PLUGIN_GROUP}
        for value, ep in sorted(eps.items()):
            ep.load()
            _plugins_loaded.append(value)
    return [m for m in _plugins_loaded if m]


def check_params(factory: Callable, params: dict, what: str) -> None:
    """Raise ``ValueError`` naming any key of ``params`` that ``factory`` does not accept."""
    sig = inspect.signature(factory)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values()):
        return
    known = [n for n, p in sig.parameters.items()
             if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)]
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise ValueError(f"{what} has no parameter {', '.join(map(repr, unknown))}; "
                         f"it takes {', '.join(known) or 'none'}")


__all__ = ["Registry", "check_params"]
