"""``[tool.pooltender.lint]`` in pyproject.toml, validated strictly.

Keys (all optional)::

    [tool.pooltender.lint]
    select = ["POL001", "POL00"]      # codes or code prefixes; default: every rule
    ignore = ["POL005"]              # applied after select
    exclude = ["migrations/*"]      # globs, matched against relative paths and path parts
    db-names = ["db"]               # names of the Flask-SQLAlchemy extension object
    pool-size-limit = 50            # POL006: a pool_size literal above this is reported
    max-overflow-limit = 100        # POL006: a max_overflow literal above this is reported
    relationships = ["posts"]       # POL008: extra lazy relationship names to know about
    sqlalchemy-version = "1.3"      # the pinned version, when the project files do not say
    flask-sqlalchemy-version = "2.5"

``db-names`` entries are identifiers (``db``) or dotted paths of identifiers
(``extensions.db``); anything else (``db.session``, ``app.db()``, ``""``) cannot name the
extension object and is a :class:`ConfigError` rather than a silently ignored entry.

An unknown key, a wrong type or an unknown code is a :class:`ConfigError` (exit 2 on the CLI):
a typo in a linter's configuration silently disabling a rule is the failure this prevents.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from pooltender.lint.options import DEFAULT_EXCLUDE as DEFAULT_EXCLUDE
from pooltender.lint.options import LintConfig as LintConfig
from pooltender.lint.versions import Pins, parse_version, read_pins


class ConfigError(ValueError):
    """The configuration (file or flags) cannot be used; the message names the key."""


def known_codes() -> tuple[str, ...]:
    from pooltender.lint.rules import ALL_CODES

    return ALL_CODES


def resolve_codes(patterns: Iterable[str], *, what: str) -> set[str]:
    """Expand codes or prefixes (``POL00``, ``ALL``; the old ``PT003`` / ``PT00`` spellings
    too, for one release) to known codes; unknown ones are errors listing the valid codes."""
    from pooltender.lint.rules import canonical_pattern

    codes = known_codes()
    out: set[str] = set()
    for raw in patterns:
        pattern = canonical_pattern(raw.strip())
        if not pattern:
            continue
        if pattern == "ALL":
            out.update(codes)
            continue
        matched = [c for c in codes if c.startswith(pattern)]
        if not matched:
            raise ConfigError(
                f"{what}: unknown rule code {raw!r} (valid: {', '.join(codes)}, a prefix of "
                "them, or ALL; the old PTxxx codes are accepted as aliases)"
            )
        out.update(matched)
    return out


def split_codes(values: Iterable[str]) -> list[str]:
    """``["POL001,POL002", "POL003"]`` -> ``["POL001", "POL002", "POL003"]``."""
    return [c for v in values for c in v.replace(" ", ",").split(",") if c]


def find_pyproject(start: Path) -> Path | None:
    """The nearest pyproject.toml at or above ``start``."""
    start = start.resolve()
    for directory in (start, *start.parents):
        candidate = directory / "pyproject.toml"
        if candidate.is_file():
            return candidate
    return None


_KEYS = {
    "select",
    "ignore",
    "exclude",
    "extend-exclude",
    "db-names",
    "pool-size-limit",
    "max-overflow-limit",
    "relationships",
    "sqlalchemy-version",
    "flask-sqlalchemy-version",
}

_DB_NAME = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


def check_db_names(names: Iterable[str], origin: str) -> tuple[str, ...]:
    """Validate ``db-names``: each entry must be usable as the extension object's name."""
    out = []
    for name in names:
        if not _DB_NAME.match(name) or name.split(".")[-1] in ("session", "query", "engine"):
            raise ConfigError(
                f"{origin}: db-names entry {name!r} cannot name a Flask-SQLAlchemy extension "
                "object: give an identifier (db) or a dotted path of identifiers "
                "(extensions.db), not an expression or its .session"
            )
        out.append(name)
    return tuple(out)


def _version_key(table: Mapping[str, Any], key: str, origin: str) -> tuple[int, ...] | None:
    value = table.get(key)
    if value is None:
        return None
    parsed = parse_version(value) if isinstance(value, str) else None
    if parsed is None:
        raise ConfigError(f'{origin}: {key} must be a version string such as "1.4", got {value!r}')
    return parsed


def _str_list(table: Mapping[str, Any], key: str, origin: str) -> list[str]:
    value = table.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{origin}: {key} must be a list of strings, got {value!r}")
    return value


def _int(table: Mapping[str, Any], key: str, default: int, origin: str) -> int:
    value = table.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ConfigError(f"{origin}: {key} must be a non-negative integer, got {value!r}")
    return value


def load_config(
    config_file: Path | None = None,
    *,
    search_from: Path | None = None,
    select: Iterable[str] = (),
    ignore: Iterable[str] = (),
    exclude: Iterable[str] = (),
) -> LintConfig:
    """Read the file (``config_file``, or the nearest pyproject.toml above ``search_from``)
    and apply command-line overrides: ``select`` replaces the file's, ``ignore`` and
    ``exclude`` extend it. Raises :class:`ConfigError`.
    """
    table: Mapping[str, Any] = {}
    origin = "defaults"
    if config_file is not None:
        if not config_file.is_file():
            raise ConfigError(f"config file {config_file} does not exist")
        path: Path | None = config_file
    else:
        path = find_pyproject(search_from or Path.cwd())
    if path is not None:
        origin = str(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"{origin}: cannot read TOML: {exc}") from exc
        tool = data.get("tool", {}).get("pooltender", {})
        table = tool.get("lint", {}) if isinstance(tool, dict) else {}
        if not isinstance(table, dict):
            raise ConfigError(f"{origin}: [tool.pooltender.lint] must be a table")
        unknown = sorted(set(table) - _KEYS)
        if unknown:
            raise ConfigError(
                f"{origin}: unknown key(s) in [tool.pooltender.lint]: {', '.join(unknown)} "
                f"(known: {', '.join(sorted(_KEYS))})"
            )
    cli_select = split_codes(select)
    select_patterns = cli_select or _str_list(table, "select", origin) or ["ALL"]
    selected = resolve_codes(select_patterns, what="select")
    selected -= resolve_codes(
        [*_str_list(table, "ignore", origin), *split_codes(ignore)], what="ignore"
    )
    from pooltender.lint.rules import canonical_pattern

    explicit = {canonical_pattern(p.strip()) for p in select_patterns} & set(known_codes())
    excludes = tuple(_str_list(table, "exclude", origin)) or DEFAULT_EXCLUDE
    excludes += tuple(_str_list(table, "extend-exclude", origin)) + tuple(exclude)
    db_names = check_db_names(_str_list(table, "db-names", origin), origin) or ("db",)
    pins = read_pins(search_from or Path.cwd())
    sa_override = _version_key(table, "sqlalchemy-version", origin)
    fsa_override = _version_key(table, "flask-sqlalchemy-version", origin)
    if sa_override or fsa_override:
        pins = Pins(
            sa_override or pins.sqlalchemy,
            fsa_override or pins.flask_sqlalchemy,
            f"{origin} [tool.pooltender.lint]",
        )
    return LintConfig(
        select=frozenset(selected),
        explicitly_selected=frozenset(explicit),
        exclude=excludes,
        db_names=db_names,
        pool_size_limit=_int(table, "pool-size-limit", 50, origin),
        max_overflow_limit=_int(table, "max-overflow-limit", 100, origin),
        relationships=tuple(_str_list(table, "relationships", origin)),
        pins=pins,
        source=origin,
    )


def default_config(**changes: Any) -> LintConfig:
    """Every rule selected, defaults elsewhere (for the API and tests)."""
    base = LintConfig(select=frozenset(known_codes()))
    return replace(base, **changes)
