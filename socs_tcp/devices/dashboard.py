"""Grafana dashboard for a device file: one panel per published field.

Layer 4, pure logic: a :class:`~socs_tcp.devices.DeviceSpec` in, dashboard
JSON out; no sockets, no Grafana.  The dashboard reads what OCS's
``InfluxDBAgent`` writes for a :class:`DeviceAgent` (``socs_tcp_agents.device``):
the measurement is the agent address (``<address_root>.<instance-id>``),
the tag ``feed`` the feed name, and each feed field an InfluxDB field of the
same name.  So the queries have the shape of the shipped dashboards in
``deploy/grafana/dashboards`` (raw InfluxQL, ``$timeFilter``,
``GROUP BY time($__interval)``), for the data source the deployment
provisions (uid ``ocs-influxdb``, see ``deploy/grafana/provisioning``):

- a template variable ``$agent``: every measurement that carries the device
  file's feed (``SHOW MEASUREMENTS WHERE "feed" = '<feed>'``), several or all
  selectable;
- one panel per field of ``polling.feed_fields``, in file order: numbers
  (``float``, ``int``) as a time series of ``mean()`` per interval, with the
  field's unit and its warning and alarm limits drawn as coloured threshold
  bands (pressures on a logarithmic axis); text and booleans as a ``stat`` panel of the latest value;
- a row with the link health of the same agents (``link_health`` feed):
  connected, and the latency of the last transaction.

Entry points: :func:`make_dashboard` (a dict), :func:`dashboard_json` (text)
and :func:`add_cli`, the ``dashboard`` subcommand of
``python -m socs_tcp.devices``.
"""

from __future__ import annotations

import json
import re
import sys
from typing import Any

__all__ = ["DEFAULT_DATASOURCE", "HEALTH_FEED", "grafana_unit", "thresholds", "make_dashboard",
           "dashboard_json", "add_cli"]

#: uid of the InfluxDB data source in ``deploy/grafana/provisioning/datasources/influxdb.yaml``.
DEFAULT_DATASOURCE = "ocs-influxdb"

#: Feed with the link health that every socs_tcp agent publishes next to its data feed.
HEALTH_FEED = "link_health"

# unit text of a device file -> Grafana unit id (anything else becomes a "suffix:" unit)
_UNITS = {
    "mbar": "pressurembar", "bar": "pressurebar", "hpa": "pressurehpa", "kpa": "pressurekpa",
    "psi": "pressurepsi", "inhg": "pressurehg",
    "v": "volt", "mv": "mvolt", "kv": "kvolt", "a": "amp", "ma": "mamp", "ka": "kamp",
    "w": "watt", "kw": "kwatt", "mw": "mwatt", "va": "voltamp", "var": "voltampreact",
    "ohm": "ohm", "kohm": "kohm", "mohm": "mohm", "Ω": "ohm",
    "k": "kelvin", "c": "celsius", "degc": "celsius", "°c": "celsius", "f": "fahrenheit", "degf": "fahrenheit",
    "°f": "fahrenheit",
    "hz": "hertz", "khz": "hertz", "s": "s", "ms": "ms", "us": "µs", "µs": "µs", "min": "m", "h": "h",
    "%": "percent", "percent": "percent", "db": "dB", "dbm": "dBm",
    "m": "lengthm", "mm": "lengthmm", "rpm": "rotrpm", "deg": "degree", "°": "degree",
    "l/min": "flowlpm", "lpm": "flowlpm", "gpm": "flowgpm",
}
# units whose lower-case spelling is ambiguous (M = mega, m = milli/metre): exact matches first
_EXACT_UNITS = {"MOhm": "mohm", "mOhm": "ohm", "kHz": "hertz", "MHz": "hertz", "m": "lengthm", "mm": "lengthmm"}

_GREEN, _ORANGE, _RED = "green", "orange", "red"
_UID_BAD = re.compile(r"[^A-Za-z0-9_-]")


def grafana_unit(unit: str | None) -> str | None:
    """The Grafana unit id for a device file's unit text (``'mbar'`` -> ``'pressurembar'``).

    Units Grafana does not know become a custom suffix (``'suffix: counts'``);
    ``None`` or an empty unit gives ``None`` (no unit).
    """
    if unit is None or not str(unit).strip():
        return None
    text = str(unit).strip()
    if text in _EXACT_UNITS:
        return _EXACT_UNITS[text]
    return _UNITS.get(text.lower(), f"suffix: {text}")


def _level(value: float, alarm: tuple | None, warning: tuple | None) -> str:
    def outside(limits):
        if not limits:
            return False
        low, high = limits
        return (low is not None and value < low) or (high is not None and value > high)
    if outside(alarm):
        return _RED
    if outside(warning):
        return _ORANGE
    return _GREEN


def thresholds(alarm: tuple | None, warning: tuple | None) -> dict:
    """Grafana threshold steps for a field's alarm and warning limits.

    Each limit is ``(low, high)``; either bound may be ``None``.  Grafana
    colours a value with the last step whose ``value`` is at or below it
    (the first step has ``value: None``, meaning minus infinity): red outside
    the alarm limits, orange outside the warning limits, green inside.  A
    value exactly on a high limit already takes the colour above it (Grafana
    has no open upper bounds); a value on a low limit is inside.
    """
    bounds = sorted({b for limits in (alarm, warning) if limits for b in limits if b is not None})
    if not bounds:
        return {"mode": "absolute", "steps": [{"color": _GREEN, "value": None}]}
    steps = [{"color": _level(bounds[0] - max(1.0, abs(bounds[0])), alarm, warning), "value": None}]
    for i, bound in enumerate(bounds):
        # the colour of the interval that starts at this bound, taken inside it
        upper = bounds[i + 1] if i + 1 < len(bounds) else bound + 2 * max(1.0, abs(bound))
        colour = _level((bound + upper) / 2, alarm, warning)
        if colour != steps[-1]["color"]:
            steps.append({"color": colour, "value": bound})
    return {"mode": "absolute", "steps": steps}


def _describe_limits(field) -> str:
    parts = []
    for word, limits in (("alarm", field.alarm), ("warning", field.warning)):
        if not limits:
            continue
        low, high = limits
        if low is not None and high is not None:
            parts.append(f"{word} outside {low:g} .. {high:g}")
        elif low is not None:
            parts.append(f"{word} below {low:g}")
        elif high is not None:
            parts.append(f"{word} above {high:g}")
    return "; ".join(parts)


def _datasource(uid: str) -> dict:
    return {"type": "influxdb", "uid": uid}


def _target(query: str, uid: str, ref: str = "A", fmt: str = "time_series") -> dict:
    return {"refId": ref, "datasource": _datasource(uid), "rawQuery": True, "resultFormat": fmt,
            "query": query, "alias": "$measurement"}


def _feed_query(select: str, feed: str, fill: str | None = "null") -> str:
    tail = f" GROUP BY time($__interval) fill({fill})" if fill else ""
    return f"SELECT {select} FROM /^$agent$/ WHERE \"feed\" = '{feed}' AND $timeFilter{tail}"


def _quote_field(name: str) -> str:
    return '"' + name.replace('"', '\\"') + '"'


def _field_panel(field, feed: str, block: str, uid: str, panel_id: int, grid: dict) -> dict:
    unit = grafana_unit(field.unit)
    limits = _describe_limits(field)
    what = (field.description or "").strip().rstrip(".")
    text = f"Field '{field.name}' of the '{feed}' feed (block '{block}')"
    if what:
        text += f": {what}"
    text += "."
    if field.unit:
        text += f" Unit: {field.unit}."
    if limits:
        text += f" Limits from the device file: {limits}."
    numeric = field.type in ("float", "int")
    defaults: dict[str, Any] = {"color": {"mode": "palette-classic" if numeric else "thresholds"}}
    if unit:
        defaults["unit"] = unit
    panel = {"id": panel_id, "title": field.name if not field.unit else f"{field.name} [{field.unit}]",
             "description": text, "datasource": _datasource(uid), "gridPos": grid}
    if numeric:
        has_limits = bool(field.alarm or field.warning)
        defaults["thresholds"] = thresholds(field.alarm, field.warning)
        defaults["custom"] = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 0, "pointSize": 3,
                              "showPoints": "auto", "spanNulls": False,
                              "thresholdsStyle": {"mode": "line+area" if has_limits else "off"}}
        if unit and unit.startswith("pressure") and field.type == "float":
            # vacuum readings span decades: a logarithmic axis
            defaults["custom"]["scaleDistribution"] = {"type": "log", "log": 10}
        panel.update({
            "type": "timeseries",
            "fieldConfig": {"defaults": defaults, "overrides": []},
            "options": {"legend": {"showLegend": True, "displayMode": "list", "placement": "bottom", "calcs": []},
                        "tooltip": {"mode": "multi", "sort": "none"}},
            "targets": [_target(_feed_query(f"mean({_quote_field(field.name)})", feed), uid)],
        })
        panel["description"] += (" Averaged per interval; gaps are cycles without a reading "
                                 "(the device was unreachable: acq degraded).")
    else:
        defaults["thresholds"] = {"mode": "absolute", "steps": [{"color": "text", "value": None}]}
        if field.type == "bool":
            defaults["mappings"] = [{"type": "value", "options": {
                "true": {"text": "true", "color": _GREEN, "index": 0},
                "false": {"text": "false", "color": _RED, "index": 1}}}]
        panel.update({
            "type": "stat",
            "fieldConfig": {"defaults": defaults, "overrides": []},
            "options": {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "/.*/", "values": False},
                        "colorMode": "value", "graphMode": "none", "textMode": "value", "justifyMode": "auto",
                        "orientation": "auto"},
            "targets": [_target(_feed_query(f"last({_quote_field(field.name)})", feed, fill=None), uid,
                                fmt="table")],
        })
        panel["description"] += " Shows the latest value in the time range."
    return panel


def _health_panels(uid: str, first_id: int, y: int) -> list[dict]:
    connected = {
        "id": first_id, "type": "state-timeline", "title": "Device connected",
        "description": "Whether the agent's link to the device was up (field 'connected' of the "
                       "'link_health' feed, 1 = up).",
        "datasource": _datasource(uid), "gridPos": {"h": 6, "w": 12, "x": 0, "y": y},
        "fieldConfig": {"defaults": {
            "color": {"mode": "thresholds"},
            "thresholds": {"mode": "absolute", "steps": [{"color": _RED, "value": None}, {"color": _GREEN, "value": 1}]},
            "mappings": [{"type": "value", "options": {"0": {"text": "down", "color": _RED, "index": 0},
                                                        "1": {"text": "up", "color": _GREEN, "index": 1}}}],
            "min": 0, "max": 1}, "overrides": []},
        "options": {"showValue": "never", "mergeValues": True, "rowHeight": 0.8,
                    "legend": {"showLegend": False, "displayMode": "list", "placement": "bottom"}},
        "targets": [_target(_feed_query('last("connected")', HEALTH_FEED, fill="previous"), uid)],
    }
    latency = {
        "id": first_id + 1, "type": "timeseries", "title": "Transaction latency",
        "description": "Time of the agent's last transaction with the device (field 'latency_last' of the "
                       "'link_health' feed), averaged per interval.",
        "datasource": _datasource(uid), "gridPos": {"h": 6, "w": 12, "x": 12, "y": y},
        "fieldConfig": {"defaults": {"unit": "s", "color": {"mode": "palette-classic"},
                                     "custom": {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 0,
                                                "spanNulls": False}}, "overrides": []},
        "options": {"legend": {"showLegend": True, "displayMode": "list", "placement": "bottom", "calcs": []},
                    "tooltip": {"mode": "multi", "sort": "none"}},
        "targets": [_target(_feed_query('mean("latency_last")', HEALTH_FEED), uid)],
    }
    return [connected, latency]


def make_dashboard(spec, datasource: str = DEFAULT_DATASOURCE) -> dict:
    """The Grafana dashboard (a JSON-ready dict) for the device file *spec*.

    Args:
        spec (socs_tcp.devices.DeviceSpec): the loaded device file.
        datasource (str): uid of the InfluxDB data source (InfluxQL) holding
            the OCS feeds; the deployment provisions ``ocs-influxdb``.

    Raises:
        ValueError: the device file declares no polling (nothing is
            published, so there is nothing to show), or *datasource* is empty.
    """
    if not isinstance(datasource, str) or not datasource.strip():
        raise ValueError(f"datasource uid must be a non-empty string, got {datasource!r}")
    polling = spec.polling
    if polling is None:
        raise ValueError(f"{spec.name}: the device file has no 'polling' section, so its agent publishes "
                         "no feed and a dashboard would have nothing to show")
    feed, block = polling.feed, polling.block
    fields = list(polling.feed_fields)
    panels: list[dict] = [{"id": 1, "type": "row", "title": f"{spec.title} ('{feed}' feed, $agent)",
                           "collapsed": False, "gridPos": {"h": 1, "w": 24, "x": 0, "y": 0}, "panels": []}]
    y = 1
    width = 8 if len(fields) > 2 else 12
    per_row = 24 // width
    for i, field in enumerate(fields):
        grid = {"h": 8, "w": width, "x": (i % per_row) * width, "y": y + (i // per_row) * 8}
        panels.append(_field_panel(field, feed, block, datasource, len(panels) + 1, grid))
    y += ((len(fields) + per_row - 1) // per_row) * 8
    panels.append({"id": len(panels) + 1, "type": "row", "title": "Link health ($agent)", "collapsed": False,
                   "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})
    panels += _health_panels(datasource, len(panels) + 1, y + 1)
    variable_query = f"SHOW MEASUREMENTS WHERE \"feed\" = '{feed}'"
    uid = _UID_BAD.sub("-", f"socs-tcp-dev-{spec.name}")[:40]
    return {
        "uid": uid,
        "title": f"socs_tcp / {spec.title}",
        "description": f"Feed '{feed}' (block '{block}') of the agents run from the device file '{spec.name}' "
                       f"(DeviceAgent), made by 'python -m socs_tcp.devices dashboard {spec.name}'.",
        "tags": ["socs_tcp", "ocs", "devices", spec.name],
        "timezone": "browser",
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "10s",
        "time": {"from": "now-30m", "to": "now"},
        "timepicker": {"refresh_intervals": ["5s", "10s", "30s", "1m", "5m"]},
        "annotations": {"list": [{"builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                                  "enable": True, "hide": True, "iconColor": "rgba(0, 211, 255, 1)",
                                  "name": "Annotations & Alerts", "type": "dashboard"}]},
        "links": [{"title": "socs_tcp dashboards", "type": "dashboards", "tags": ["socs_tcp"],
                   "asDropdown": True, "includeVars": False, "keepTime": True}],
        "templating": {"list": [{
            "name": "agent", "label": "Agent",
            "description": f"Agents publishing the '{feed}' feed; the measurement is the agent address "
                           "(<address_root>.<instance-id>).",
            "type": "query", "datasource": _datasource(datasource),
            "query": variable_query, "definition": variable_query, "regex": "", "refresh": 2, "sort": 1,
            "multi": True, "includeAll": True, "hide": 0,
            "current": {"selected": True, "text": ["All"], "value": ["$__all"]}, "options": []}]},
        "panels": panels,
    }


def dashboard_json(spec, datasource: str = DEFAULT_DATASOURCE) -> str:
    """:func:`make_dashboard` as indented JSON text, ending with a newline."""
    return json.dumps(make_dashboard(spec, datasource), indent=2, ensure_ascii=False) + "\n"


def _run(args) -> int:
    from . import load  # the loader of this package (socs_tcp.devices)

    try:
        spec = load(args.device)
        text = dashboard_json(spec, args.datasource)
    except (OSError, ValueError) as exc:
        sys.stderr.write(f"{exc}\n")
        return 1
    sys.stdout.write(text)
    return 0


def add_cli(subparsers) -> None:
    """Add ``dashboard NAME_OR_PATH [--datasource UID]`` to the ``python -m socs_tcp.devices`` parser.

    The subcommand prints the dashboard JSON on stdout and returns exit
    status 0, or prints the problem (a bad device file: ``file:line: ...``)
    on stderr and returns 1.  The handler is stored as the ``func`` default
    of the subparser, called with the parsed arguments.
    """
    parser = subparsers.add_parser(
        "dashboard", help="print a Grafana dashboard (JSON) for a device file",
        description="Print a Grafana dashboard for the feed of a device file's agent: one panel per field, "
                    "with units and alarm/warning thresholds, for an InfluxDB (InfluxQL) data source.")
    parser.add_argument("device", metavar="NAME_OR_PATH", help="shipped device name (see 'list') or path to a file")
    parser.add_argument("--datasource", default=DEFAULT_DATASOURCE, metavar="UID",
                        help=f"uid of the Grafana InfluxDB data source (default: {DEFAULT_DATASOURCE}, "
                             "as deploy/grafana/provisioning provisions it)")
    parser.set_defaults(func=_run)
