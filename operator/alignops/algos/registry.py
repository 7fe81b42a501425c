"""A tiny name -> object registry shared by every family of algorithms.

Trainers look algorithms up by the names used in an ``AlignmentJob`` manifest, so a typo must
fail loudly and say what would have worked.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Generic, Iterator, Tuple, TypeVar

T = TypeVar("T")

__all__ = ["Registry", "UnknownNameError"]


class UnknownNameError(ValueError, KeyError):
    """Raised for a name that is not registered.

    Subclasses both ``ValueError`` (a bad config value) and ``KeyError`` (a failed lookup), so
    callers can catch whichever reads more naturally.
    """

    def __init__(self, kind: str, name: object, known: Tuple[str, ...]):
        self.kind = kind
        self.name = name
        self.known = known
        super().__init__(f"unknown {kind} {name!r}; known: {', '.join(known)}")

    def __str__(self) -> str:  # KeyError would otherwise repr() the message, adding quotes
        return str(self.args[0])


class Registry(Generic[T]):
    """Maps names to objects (usually functions).

    ``kind`` is the human name used in error messages, e.g. ``"preference loss"``.
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: Dict[str, T] = {}
        self._traits: Dict[str, Any] = {}

    def register(self, name: str, traits: Any = None) -> Callable[[T], T]:
        """Decorator: ``@REG.register("dpo", traits=...)`` stores the decorated object under
        ``name``, with ``traits`` (what callers need to know of it: the data it takes, the models
        it needs) so that they branch on a trait, never on a name."""

        def decorator(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = obj
            self._traits[name] = traits
            return obj

        return decorator

    def traits(self, name: str) -> Any:
        """The traits registered with ``name``; raises :class:`UnknownNameError` for an unknown one."""
        self.get(name)
        return self._traits[name]

    def get(self, name: str) -> T:
        """The object registered under ``name``; raises :class:`UnknownNameError` otherwise."""
        try:
            return self._entries[name]
        except (KeyError, TypeError):  # TypeError: unhashable name from a malformed config
            raise UnknownNameError(self.kind, name, self.names()) from None

    def names(self) -> Tuple[str, ...]:
        """Registered names, sorted."""
        return tuple(sorted(self._entries))

    def __contains__(self, name: object) -> bool:
        try:
            return name in self._entries
        except TypeError:
            return False

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, names={list(self.names())})"
