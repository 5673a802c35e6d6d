"""What the connectors' TOML files have in common: one error base, and tables and typed
fields read so that every error names the file, the table and the key."""

from __future__ import annotations

import tomllib
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class ConnectorConfigError(ValueError):
    """A connector's configuration, or a table of the department's it names, does not fit."""


@dataclass(frozen=True)
class Section:
    """One table of a connector TOML file, e.g. ``[hub]``."""

    values: Mapping[str, Any]
    where: str  # "path [name]", the prefix of every error about this table
    error: type[ConnectorConfigError]

    def get(self, key: str, kind: type[T], default: T | None = None) -> T:
        """The value of ``key``, of type ``kind`` (an int is taken for a float); required when
        ``default`` is None. Raises the file's config error naming the key."""
        if key not in self.values:
            if default is None:
                raise self.error(f"{self.where}: {key} is required")
            return default
        value = self.values[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or isinstance(value, bool) != (kind is bool):
            raise self.error(f"{self.where}: {key} must be a {kind.__name__}, got {value!r}")
        return value


@dataclass(frozen=True)
class Backoff:
    """How a connector waits for the hub while it is unreachable (exponential, with jitter)."""

    initial_seconds: float = 0.5
    max_seconds: float = 30.0
    once_attempts: int = 5  # a bounded pass (``--once``) gives up after this many tries

    @classmethod
    def from_section(cls, hub: Section) -> Backoff:
        """From ``retry_initial_seconds``, ``retry_max_seconds`` and ``once_attempts``."""
        default = cls()
        backoff = cls(
            initial_seconds=hub.get("retry_initial_seconds", float, default.initial_seconds),
            max_seconds=hub.get("retry_max_seconds", float, default.max_seconds),
            once_attempts=hub.get("once_attempts", int, default.once_attempts),
        )
        if backoff.once_attempts <= 0:
            raise hub.error(f"{hub.where}: once_attempts must be > 0")
        return backoff


BACKOFF_KEYS = frozenset({"retry_initial_seconds", "retry_max_seconds", "once_attempts"})
"""The ``[hub]`` keys ``Backoff.from_section`` reads."""


def read_toml(
    path: Path, error: type[ConnectorConfigError] = ConnectorConfigError
) -> dict[str, Any]:
    """The parsed file; raises ``error`` naming the file when it cannot be read or parsed."""
    try:
        return tomllib.loads(path.read_text("utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise error(f"{path}: {exc}") from exc


@dataclass(frozen=True)
class ConfigFile:
    """A connector TOML file, read and checked for unknown tables."""

    path: Path
    document: Mapping[str, Any]
    error: type[ConnectorConfigError]

    @classmethod
    def read(
        cls, path: Path, *, tables: Collection[str], error: type[ConnectorConfigError]
    ) -> ConfigFile:
        """Raises ``error`` when the file cannot be read or parsed or has an unknown table."""
        document = read_toml(path, error)
        unknown = set(document) - set(tables)
        if unknown:
            raise error(f"{path}: unknown table(s) {', '.join(sorted(unknown))}")
        return cls(path, document, error)

    def section(self, name: str, keys: Collection[str] | None = None) -> Section:
        """Table ``[name]`` (empty when absent); with ``keys``, any other key is an error."""
        values = self.document.get(name, {})
        if not isinstance(values, dict):
            raise self.error(f"{self.path}: [{name}] must be a table")
        if keys is not None:
            extra = set(values) - set(keys)
            if extra:
                raise self.error(
                    f"{self.path}: unknown key(s) in [{name}]: {', '.join(sorted(extra))}"
                )
        return Section(values, f"{self.path} [{name}]", self.error)

    def relative(self, text: str) -> Path:
        """A path from the file, relative to the file's folder."""
        return self.path.parent / text
