"""Run the queries of the provisioned Grafana dashboards without Grafana.

Layer 6 (deployment), pure logic: no sockets.  The dashboards in
``deploy/grafana/dashboards`` use raw InfluxQL with Grafana's macros and
template variables.  This module expands them the way Grafana's InfluxDB
data source does, so the same queries can be run against a real InfluxDB
(tests, the picture in the docs, a quick look without Grafana):

- :func:`load_dashboards` - the dashboard JSON files of a directory.
- :func:`iter_targets` - every ``(panel, target)`` of a dashboard, rows included.
- :func:`resolve_variables` - evaluates the query variables in order (a
  variable may use the ones before it), through a callable that runs a
  query and returns InfluxDB series; applies each variable's ``regex``.
- :func:`interpolate` - replaces ``$timeFilter``, ``$__interval``,
  ``$__interval_ms`` and the variables in a query.  A multi-value (or
  "include All") variable becomes a regular expression alternative of
  escaped values, ``(a|b)``, as Grafana formats it for InfluxQL; a single
  value of such a variable is escaped too.  An unknown ``$name`` is an error,
  so a typo in a dashboard cannot pass unnoticed.
- :func:`column_values` - the non-null values of one column of a query result.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger("socs_tcp_stack.dashboards")

__all__ = ["DASHBOARD_DIR", "ALL", "load_dashboards", "iter_targets", "regex_escape", "format_value",
           "interpolate", "variable_values", "resolve_variables", "column_values", "expand_target"]

#: ``deploy/grafana/dashboards`` of a source checkout (may not exist in an installed package).
DASHBOARD_DIR = Path(__file__).resolve().parent.parent / "deploy" / "grafana" / "dashboards"

#: The value Grafana stores for an "All" selection.
ALL = "$__all"

_INTERVAL_RE = re.compile(r"^(\d+)(ms|s|m|h|d)$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
# $name, ${name}, ${name:format}, [[name]]
_VARIABLE_RE = re.compile(r"\$\{(\w+)(?::(\w+))?\}|\[\[(\w+)\]\]|\$(\w+)")
_REGEX_SPECIAL = re.compile(r"[\\^$*+?.()|\[\]{}/]")


def load_dashboards(directory: str | Path = DASHBOARD_DIR) -> dict[str, dict]:
    """The dashboards (parsed JSON) of ``*.json`` in *directory*, by file stem, sorted by name.

    Raises:
        FileNotFoundError: *directory* does not exist or holds no ``.json`` file.
        ValueError: a file is not valid JSON or not a dashboard (no ``panels``),
            naming the file.
    """
    directory = Path(directory)
    files = sorted(directory.glob("*.json")) if directory.is_dir() else []
    if not files:
        raise FileNotFoundError(f"no dashboard JSON files in {directory}")
    out = {}
    for path in files:
        try:
            data = json.loads(path.read_text())
        except ValueError as exc:
            raise ValueError(f"{path} is not valid JSON: {exc}") from None
        if not isinstance(data, dict) or not isinstance(data.get("panels"), list):
            raise ValueError(f"{path} is not a Grafana dashboard (no 'panels' list)")
        out[path.stem] = data
    return out


def iter_targets(dashboard: Mapping[str, Any]) -> Iterator[tuple[dict, dict]]:
    """Yield ``(panel, target)`` for every query of every panel, including panels inside rows."""
    def walk(panels: Sequence[dict]) -> Iterator[tuple[dict, dict]]:
        for panel in panels:
            yield from ((panel, target) for target in panel.get("targets", []))
            yield from walk(panel.get("panels", []))
    yield from walk(dashboard.get("panels", []))


def regex_escape(value: str) -> str:
    """*value* with the characters that are special in a regular expression (and ``/``) escaped."""
    if not isinstance(value, str):
        raise TypeError(f"value must be a str, got {type(value).__name__}: {value!r}")
    return _REGEX_SPECIAL.sub(lambda m: "\\" + m.group(0), value)


def format_value(values: Sequence[str], regex: bool) -> str:
    """How a variable's selected *values* appear in a query.

    With *regex* (a multi-value or "include All" variable, or the ``:regex``
    format) the values are escaped and, if more than one, joined as
    ``(a|b|c)``.  Otherwise the single value is inserted as it is.
    """
    values = list(values)
    if not values:
        raise ValueError("a variable needs at least one value to be interpolated")
    if regex:
        escaped = [regex_escape(v) for v in values]
        return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"
    if len(values) != 1:
        raise ValueError(f"a single-value variable got several values: {values!r}")
    return values[0]


def _interval_ms(interval: str) -> int:
    match = _INTERVAL_RE.match(interval) if isinstance(interval, str) else None
    if not match:
        raise ValueError(f"interval must look like '500ms', '10s', '1m', '2h' or '1d', got {interval!r}")
    return int(match.group(1)) * _UNIT_MS[match.group(2)]


def interpolate(query: str, variables: Mapping[str, Sequence[str]] | None = None,
                regex_variables: Sequence[str] = (), time_filter: str = "time > now() - 5m",
                interval: str = "1s") -> str:
    """Expand Grafana's macros and template variables in an InfluxQL *query*.

    Args:
        query: the raw query of a panel target or a variable.
        variables: selected values by variable name.
        regex_variables: names of the variables that are multi-value or
            "include All" (interpolated as an escaped regular expression).
        time_filter: what ``$timeFilter`` becomes.
        interval: what ``$__interval`` becomes (``$__interval_ms`` is the same in ms).

    Raises:
        ValueError: a ``$name`` that is neither a macro nor a known variable,
            or a bad *interval*.
    """
    if not isinstance(query, str):
        raise TypeError(f"query must be a str, got {type(query).__name__}: {query!r}")
    variables = dict(variables or {})
    macros = {"timeFilter": time_filter, "__interval": interval, "__interval_ms": str(_interval_ms(interval))}
    regex_names = set(regex_variables)

    def replace(match: re.Match) -> str:
        name = match.group(1) or match.group(3) or match.group(4)
        fmt = match.group(2)
        if name in macros:
            return macros[name]
        if name not in variables:
            raise ValueError(f"unknown variable ${name} in query {query!r}; known: {sorted(variables)}")
        if fmt not in (None, "regex", "raw"):
            raise ValueError(f"unsupported variable format ${{{name}:{fmt}}} in query {query!r}")
        as_regex = fmt == "regex" or (fmt is None and name in regex_names)
        return format_value(variables[name], as_regex)

    return _VARIABLE_RE.sub(replace, query)


def variable_values(query: str, series: Sequence[Mapping[str, Any]], regex: str = "") -> list[str]:
    """The values of a query variable from the series its *query* returned, as Grafana picks them.

    ``SHOW FIELD KEYS`` and ``SHOW RETENTION POLICIES`` give their first
    column, everything else its second column when there is one (``SHOW TAG
    VALUES`` gives ``key, value``), else its first.  A non-empty *regex*
    (``/pattern/flags``) keeps only the matching values, and replaces each
    by its first capture group when the pattern has one.  Duplicates are dropped,
    order kept.
    """
    upper = query.upper()
    value_first = "SHOW FIELD KEYS" in upper or "SHOW RETENTION POLICIES" in upper
    found = []
    for item in series:
        for row in item.get("values") or []:
            value = row[0] if value_first or len(row) < 2 else row[1]
            if value is not None:
                found.append(str(value))
    if regex:
        pattern = _compile_js_regex(regex)
        kept = []
        for value in found:
            match = pattern.search(value)
            if match:
                kept.append(match.group(1) if pattern.groups else value)
        found = kept
    return list(dict.fromkeys(found))


def _compile_js_regex(text: str) -> re.Pattern:
    """``/pattern/flags`` (or a bare pattern) as a Python pattern."""
    flags = 0
    if len(text) >= 2 and text.startswith("/") and text.rfind("/") > 0:
        end = text.rfind("/")
        for flag in text[end + 1:]:
            if flag == "i":
                flags |= re.IGNORECASE
            elif flag not in "gm":
                raise ValueError(f"unsupported regex flag {flag!r} in {text!r}")
        text = text[1:end]
    try:
        return re.compile(text, flags)
    except re.error as exc:
        raise ValueError(f"bad variable regex {text!r}: {exc}") from None


def resolve_variables(dashboard: Mapping[str, Any], run_query: Callable[[str], Sequence[Mapping[str, Any]]],
                      selected: Mapping[str, Sequence[str]] | None = None, **interpolate_kwargs: Any,
                      ) -> tuple[dict[str, list[str]], list[str]]:
    """Evaluate the dashboard's template variables, in order, as Grafana does on load.

    Each ``query`` variable's query is interpolated with the variables before
    it and run with *run_query* (a callable taking InfluxQL and returning
    InfluxDB series, e.g. ``lambda q: influx.query(q, db="ocs_feeds")``).
    ``custom`` variables take their comma-separated ``query``, ``constant``
    ones their ``query``.  The selection is *selected[name]* when given (each
    value must be among the options), otherwise every option (the "All"
    choice, which ``[ALL]`` also selects).

    Returns:
        ``(values, regex_names)``: the selected values by name, and the names
        of the multi-value / "include All" variables, ready for :func:`interpolate`.

    Raises:
        ValueError: a variable has no options, or a selected value is not one of them.
    """
    selected = dict(selected or {})
    values: dict[str, list[str]] = {}
    regex_names: list[str] = []
    for var in (dashboard.get("templating") or {}).get("list", []):
        name, kind = var.get("name"), var.get("type")
        if kind == "query":
            query = var.get("query")
            if isinstance(query, Mapping):  # newer Grafana stores {"query": ..., "refId": ...}
                query = query.get("query", "")
            text = interpolate(query, values, regex_names, **interpolate_kwargs)
            options = variable_values(text, run_query(text), var.get("regex") or "")
        elif kind == "custom":
            options = [v.strip() for v in str(var.get("query", "")).split(",") if v.strip()]
        elif kind == "constant":
            options = [str(var.get("query", ""))]
        else:
            log.debug("variable %s of type %s is not evaluated", name, kind)
            continue
        if not options:
            raise ValueError(f"variable ${name} has no options (query: {var.get('query')!r})")
        chosen = list(selected.pop(name, [ALL]))
        if chosen == [ALL]:
            chosen = list(options)
        unknown = [v for v in chosen if v not in options]
        if unknown or not chosen:
            raise ValueError(f"variable ${name}: {unknown or chosen!r} not among its options {options!r}")
        values[name] = chosen
        if var.get("multi") or var.get("includeAll"):
            regex_names.append(name)
    if selected:
        raise ValueError(f"selected values for unknown variables: {sorted(selected)}")
    return values, regex_names


def expand_target(target: Mapping[str, Any], values: Mapping[str, Sequence[str]], regex_names: Sequence[str],
                  **interpolate_kwargs: Any) -> str:
    """The InfluxQL of one panel *target* with everything interpolated.

    Raises:
        ValueError: the target is not a raw InfluxQL query.
    """
    query = target.get("query")
    if not target.get("rawQuery") or not isinstance(query, str) or not query.strip():
        raise ValueError(f"target {target.get('refId')!r} is not a raw InfluxQL query: {dict(target)!r}")
    return interpolate(query, values, regex_names, **interpolate_kwargs)


def column_values(series: Sequence[Mapping[str, Any]], column: str | None = None) -> list[Any]:
    """Non-null values of *column* (every column but ``time`` when ``None``) over all *series*."""
    out = []
    for item in series:
        columns = item.get("columns") or []
        wanted = [i for i, c in enumerate(columns) if (c == column if column is not None else c != "time")]
        for row in item.get("values") or []:
            out.extend(row[i] for i in wanted if row[i] is not None)
    return out
