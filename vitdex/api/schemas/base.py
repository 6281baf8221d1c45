"""What every response schema built from a lower layer's dict shares."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Self


class FromDict:
    """A dataclass schema made from the JSON-ready dict a lower layer returns.

    The keys must be exactly the fields: a missing or unknown one is a ``TypeError``, so a
    change of shape below fails the API's tests instead of silently dropping a field.
    """

    #: Fields holding schemas of their own, by name: the value is a dict, a list of
    #: dicts or null, and each dict becomes that schema.
    nested: ClassVar[Mapping[str, type[FromDict]]] = {}

    @classmethod
    def of(cls, data: Mapping[str, Any]) -> Self:
        """The schema of ``data`` (see the class docstring)."""
        values = dict(data)
        for name, schema in cls.nested.items():
            value = values.get(name)
            if isinstance(value, Mapping):
                values[name] = schema.of(value)
            elif isinstance(value, list):
                values[name] = [schema.of(item) for item in value]
        return cls(**values)
