"""Pick by name, fail loudly: the one registry type behind every config-named choice.

Methods, objectives, long-tail methods, student loss terms and baselines are registered under
the config field that names them (`ssl.method`, `loss.terms`, `method`, ...); an unknown name
is a `ConfigError` that names that field and lists the choices. There is no default branch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from sb3dr_jax.configs.common import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Name -> object for one config field.

    Args:
      field: the config field whose value is looked up here (used in error messages).
    """

    def __init__(self, field: str):
        self.field = field
        self._items: dict[str, T] = {}

    def register(self, name: str, obj: T | None = None):
        """Registers `obj` under `name`; without `obj`, returns a decorator.

        Raises:
          ValueError: `name` is already registered (two methods may not share a name).
        """

        def add(o: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.field}: {name!r} is registered twice")
            self._items[name] = o
            return o

        return add if obj is None else add(obj)

    def get(self, name: str) -> T:
        """The object registered under `name`.

        Raises:
          ConfigError: unknown name; the message names the field and lists the choices.
        """
        if name not in self._items:
            raise ConfigError(f"{self.field}: unknown {name!r}; choose from {self.names()}")
        return self._items[name]

    def names(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)


def pick(registry: Registry[Callable], name: str, *args, **kwargs):
    """`registry.get(name)(*args, **kwargs)`: build the named variant in one call."""
    return registry.get(name)(*args, **kwargs)
