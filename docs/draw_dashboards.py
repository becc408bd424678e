"""Draw the Grafana dashboards from real data of the local stack, without Grafana.

Starts the local stack with InfluxDB (:func:`socs_tcp_stack.localstack.build_stack`:
crossbar, the SCPI simulator, ``scpi-psu``, ``tcp-bus``, the registry and the
InfluxDB publisher), plays a short scenario through ``OCSClient`` - set
points, then an outage of the instrument and its return - and then runs every
panel query of every dashboard in ``deploy/grafana/dashboards`` exactly as
the tests do (:mod:`socs_tcp_stack.dashboards`), drawing each panel with matplotlib
where its ``gridPos`` puts it.  Output: ``docs/_static/dashboards.png``.

Usage, from the root of a checkout with the ``docs`` and ``stack`` extras
installed and ``influxd`` on PATH::

    python docs/draw_dashboards.py [--output docs/_static/dashboards.png]

The drawing follows Grafana closely enough to show what each panel shows; it
is not a pixel copy of Grafana.
"""

import argparse
import datetime as dt
import logging
import re
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.dates as mdates  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402

from socs_tcp.simulators.scpi import ScpiSimulator  # noqa: E402
from socs_tcp_stack import dashboards as dash  # noqa: E402
from socs_tcp_stack.localstack import DATABASE, build_stack  # noqa: E402

log = logging.getLogger("draw_dashboards")

ROOT = Path(__file__).resolve().parent.parent

# Grafana's dark theme and its named colours
BACKGROUND = "#111217"
PANEL = "#181b1f"
BORDER = "#2c3235"
TEXT = "#ccccdc"
NAMED = {"green": "#73bf69", "dark-green": "#37872d", "red": "#f2495c", "orange": "#ff9830",
         "blue": "#5794f2", "light-blue": "#8ab8ff", "purple": "#b877d9", "text": "#6e7580",
         "yellow": "#fade2a", "transparent": PANEL}
PALETTE = ["#73bf69", "#f2cc0c", "#8ab8ff", "#ff780a", "#f2495c", "#5794f2", "#b877d9", "#705da0",
           "#37872d", "#fade2a"]
UNITS = {"volt": "V", "amp": "A", "celsius": "°C", "s": "s", "ops": "ops/s"}

GRID_UNIT_W = 0.62   # inches per Grafana grid column (24 per row)
GRID_UNIT_H = 0.36   # inches per grid row unit
TITLE_H = 0.9        # inches for each dashboard's title band


def color_of(name):
    return NAMED.get(name, name or TEXT)


# ---------------------------------------------------------------- scenario


def scenario(local, outage_start, outage_length, duration, out):
    """Set points, an outage of the instrument, its return; returns (start, outage_from, outage_to) epoch s."""
    stack = local.stack
    psu = stack.client("scpi-psu")
    bus = stack.client("tcp-bus")
    t0 = time.time()

    def at(offset):
        delay = t0 + offset - time.time()
        if delay > 0:
            time.sleep(delay)

    def setup(volts):
        for command in (f"VOLT {volts}", "CURR 0.5", "OUTP ON"):
            reply = psu.command(command=command)
            if reply.status != 0 or not reply.session["success"]:
                log.warning("command %s failed: %s", command, reply.session.get("messages"))

    setup(1.0)
    out("scenario: 1.0 V")
    at(outage_start / 2)
    setup(2.5)
    out("scenario: 2.5 V")
    bus.wrnrd_until(data="*IDN?\n", eot="\\n")
    at(outage_start)
    port = local.simulator.port
    local.simulator.stop()
    outage_from = time.time()
    out(f"scenario: instrument gone for {outage_length:.0f} s")
    at(outage_start + outage_length)
    local.simulator = ScpiSimulator(port=port).start()
    outage_to = time.time()
    out("scenario: instrument back (it rebooted: output off until set again)")
    deadline = time.monotonic() + 30
    while psu.acq.status().session.get("degraded") and time.monotonic() < deadline:
        time.sleep(0.2)
    setup(2.0)
    out("scenario: 2.0 V")
    at(duration)
    return t0, outage_from, outage_to


# ---------------------------------------------------------------- queries


def run_panels(influx, board, time_filter, interval):
    """``[(panel, [(target, series), ...]), ...]`` with every panel's queries run."""
    def run(query):
        return influx.query(query, db=DATABASE, epoch="ms")

    values, regex_names = dash.resolve_variables(board, run, time_filter=time_filter, interval=interval)
    out = []
    for panel in _panels(board):
        results = []
        for target in panel.get("targets", []):
            query = dash.expand_target(target, values, regex_names, time_filter=time_filter, interval=interval)
            results.append((target, run(query)))
        out.append((panel, results))
    return out


def _panels(board):
    for panel in board["panels"]:
        yield panel
        yield from panel.get("panels", [])


def _rename(name, panel):
    for step in panel.get("transformations", []):
        if step["id"] == "renameByRegex":
            pattern = step["options"]["regex"]
            replacement = re.sub(r"\$(\d+)", r"\\\1", step["options"]["renamePattern"])
            name = re.sub(pattern, replacement, name)
    return name


def _columns(panel, target, series):
    """``(label, times, values)`` for each value column of each series, labelled as Grafana's alias does."""
    alias = target.get("alias") or "$measurement.$col"
    out = []
    for item in series:
        columns = item["columns"]
        for i, column in enumerate(columns):
            if column == "time":
                continue
            label = alias.replace("$measurement", item["name"]).replace("$col", column)
            times = [row[0] / 1000.0 for row in item["values"]]
            values = [row[i] for row in item["values"]]
            out.append((_rename(label, panel), times, values))
    return out


def _mapping(panel):
    mappings = panel.get("fieldConfig", {}).get("defaults", {}).get("mappings") or []
    table = {}
    for mapping in mappings:
        if mapping.get("type") == "value":
            for key, option in mapping["options"].items():
                table[key] = option
    return table


def _mapped(value, mapping):
    if value is None:
        return None, None
    key = str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)
    option = mapping.get(key)
    if option:
        return option.get("text", key), color_of(option.get("color"))
    return key, None


# ---------------------------------------------------------------- drawing


def _style(ax, title):
    ax.set_facecolor(PANEL)
    for spine in ax.spines.values():
        spine.set_color(BORDER)
    ax.tick_params(colors=TEXT, labelsize=7)
    ax.set_title(title, color=TEXT, fontsize=9, loc="left", pad=4)


def _time_axis(ax, t_range):
    ax.set_xlim(*(dt.datetime.fromtimestamp(t) for t in t_range))
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S"))
    ax.xaxis.set_major_locator(mdates.AutoDateLocator(maxticks=6))


def draw_timeseries(ax, panel, results, t_range):
    unit = panel["fieldConfig"]["defaults"].get("unit")
    n = 0
    for target, series in results:
        for label, times, values in _columns(panel, target, series):
            # nulls stay gaps, as Grafana draws them (spanNulls off)
            xs = [dt.datetime.fromtimestamp(t) for t in times]
            ys = [float("nan") if v is None else v for v in values]
            ax.plot(xs, ys, color=PALETTE[n % len(PALETTE)], linewidth=1.2, label=label)
            n += 1
    _time_axis(ax, t_range)
    ax.grid(color=BORDER, linewidth=0.5)
    if unit in UNITS:
        ax.set_ylabel(UNITS[unit], color=TEXT, fontsize=7)
    if n:
        legend = ax.legend(loc="upper left", fontsize=6, frameon=False, ncol=min(n, 3), labelcolor=TEXT)
        legend.set_zorder(5)
        lo, hi = ax.get_ylim()
        ax.set_ylim(lo, hi + (hi - lo) * 0.35)   # room for the legend


def draw_state_timeline(ax, panel, results, t_range):
    mapping = _mapping(panel)
    rows = []
    for target, series in results:
        rows += _columns(panel, target, series)
    rows.sort(key=lambda r: r[0])
    for i, (_label, times, values) in enumerate(rows):
        y = len(rows) - 1 - i
        start = None
        current = None
        for t, v in zip(times + [t_range[1]], values + [object()]):
            if v != current:
                if start is not None and current is not None:
                    text, color = _mapped(current, mapping)
                    # a bucket may start before the range: draw from the range's start, as Grafana does
                    x0 = mdates.date2num(dt.datetime.fromtimestamp(max(start, t_range[0])))
                    x1 = mdates.date2num(dt.datetime.fromtimestamp(t))
                    ax.broken_barh([(x0, x1 - x0)], (y - 0.4, 0.8), facecolors=color or PALETTE[0],
                                   edgecolor=PANEL, linewidth=0.5)
                    if x1 - x0 > (mdates.date2num(dt.datetime.fromtimestamp(t_range[1]))
                                  - mdates.date2num(dt.datetime.fromtimestamp(t_range[0]))) * 0.07:
                        ax.text(x0 + (x1 - x0) * 0.01, y, text, va="center", ha="left", fontsize=6,
                                color="#111217" if color not in (NAMED["text"], NAMED["purple"]) else TEXT)
                start, current = t, v
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([r[0] for r in reversed(rows)], fontsize=6, color=TEXT)
    ax.set_ylim(-0.6, len(rows) - 0.4)
    _time_axis(ax, t_range)


def draw_stat(ax, panel, results):
    mapping = _mapping(panel)
    fixed = color_of(panel["fieldConfig"]["defaults"].get("color", {}).get("fixedColor"))
    decimals = panel["fieldConfig"]["defaults"].get("decimals")
    cells = []
    for target, series in results:
        for label, _, values in _columns(panel, target, series):
            last = next((v for v in reversed(values) if v is not None), None)
            text, color = _mapped(last, mapping) if mapping else (None, None)
            if text is None:
                text = "-" if last is None else (f"{last:.{decimals}f}" if decimals is not None else str(last))
            cells.append((label, text, color))
    ax.set_xticks([])
    ax.set_yticks([])
    n = max(1, len(cells))
    for i, (label, text, color) in enumerate(sorted(cells)):
        x0 = i / n
        if panel["options"].get("colorMode") == "background":
            ax.add_patch(plt.Rectangle((x0 + 0.004, 0.05), 1 / n - 0.008, 0.9, color=color or NAMED["text"],
                                       transform=ax.transAxes))
            fg = BACKGROUND if color not in (NAMED["text"], NAMED["purple"]) else TEXT
        else:
            fg = fixed
        ax.text(x0 + 0.5 / n, 0.68, label, ha="center", va="center", fontsize=6 if n > 4 else 7,
                color=TEXT if fg == fixed else fg, transform=ax.transAxes)
        ax.text(x0 + 0.5 / n, 0.32, text, ha="center", va="center", fontsize=10 if n > 4 else 14,
                color=fg, weight="bold", transform=ax.transAxes)


def draw_table(ax, panel, results):
    ax.set_xticks([])
    ax.set_yticks([])
    header, rows = None, []
    for _target, series in results:
        for item in series:
            columns = ["agent"] + [_rename(c, panel) for c in item["columns"] if c != "time"]
            header = header or columns
            for row in item["values"]:
                rows.append([item["name"]] + [("-" if v is None else (f"{v:.6g}" if isinstance(v, float) else str(v)))
                                              for c, v in zip(item["columns"], row) if c != "time"])
    if not header:
        return
    table = ax.table(cellText=rows, colLabels=header, loc="upper center", cellLoc="left")
    table.auto_set_font_size(False)
    table.set_fontsize(7)
    table.scale(1, 1.4)
    for cell in table.get_celld().values():
        cell.set_facecolor(PANEL)
        cell.set_edgecolor(BORDER)
        cell.get_text().set_color(TEXT)


def draw(boards_results, t_range, output, subtitle):
    heights = [max(p["gridPos"]["y"] + p["gridPos"]["h"] for p, _ in results) for _, _, results in boards_results]
    width = 24 * GRID_UNIT_W
    total = sum(h * GRID_UNIT_H + TITLE_H for h in heights) + 0.5
    fig = plt.figure(figsize=(width, total), facecolor=BACKGROUND)
    fig.text(0.01, 1 - 0.25 / total, subtitle, color=TEXT, fontsize=9, va="top")
    top = 0.5
    for (name, board, results), height in zip(boards_results, heights):
        fig.text(0.01, 1 - (top + 0.35) / total, board["title"], color="#ffffff", fontsize=13, weight="bold",
                 va="top")
        variables = ", ".join(f"${v['name']}" for v in board["templating"]["list"])
        fig.text(0.99, 1 - (top + 0.4) / total, f"{name}.json   variables: {variables} = All", color=TEXT,
                 fontsize=8, va="top", ha="right")
        top += TITLE_H
        for panel, panel_results in results:
            grid = panel["gridPos"]
            if panel["type"] == "row":
                fig.text(0.01, 1 - (top + grid["y"] * GRID_UNIT_H + 0.05) / total, panel["title"], color=TEXT,
                         fontsize=10, weight="bold", va="top")
                continue
            pad_x, pad_top, pad_bottom = 0.55, 0.45, 0.4
            left = (grid["x"] * GRID_UNIT_W + pad_x) / width
            w = (grid["w"] * GRID_UNIT_W - pad_x - 0.15) / width
            y_top = top + grid["y"] * GRID_UNIT_H + pad_top
            h_in = grid["h"] * GRID_UNIT_H - pad_top - pad_bottom
            if panel["type"] == "state-timeline":
                left += 1.4 / width   # room for the row labels
                w -= 1.4 / width
            ax = fig.add_axes([left, 1 - (y_top + h_in) / total, w, h_in / total])
            _style(ax, panel["title"])
            if panel["type"] == "timeseries":
                draw_timeseries(ax, panel, panel_results, t_range)
            elif panel["type"] == "state-timeline":
                draw_state_timeline(ax, panel, panel_results, t_range)
            elif panel["type"] == "stat":
                draw_stat(ax, panel, panel_results)
            elif panel["type"] == "table":
                draw_table(ax, panel, panel_results)
        top += height * GRID_UNIT_H
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=80, facecolor=BACKGROUND)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "_static" / "dashboards.png")
    parser.add_argument("--dashboards", type=Path, default=ROOT / "deploy" / "grafana" / "dashboards")
    parser.add_argument("--duration", type=float, default=75.0, help="seconds of data to draw")
    parser.add_argument("--outage-start", type=float, default=30.0, help="seconds from the start")
    parser.add_argument("--outage-length", type=float, default=15.0, help="seconds without the instrument")
    parser.add_argument("--workdir", help="keep the stack's configuration, logs and data here")
    args = parser.parse_args(argv)
    if not 0 < args.outage_start < args.outage_start + args.outage_length < args.duration:
        parser.error("need 0 < --outage-start < --outage-start + --outage-length < --duration")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    def out(text):
        sys.stdout.write(text + "\n")
        sys.stdout.flush()

    boards = dash.load_dashboards(args.dashboards)
    out("starting the local stack with InfluxDB ...")
    local = build_stack(args.workdir, sample_rate=4.0, influxdb=True, registry_wait_time=1,
                        agent_args={"scpi-psu": ["--timeout", "1"], "tcp-bus": ["--timeout", "1"]})
    try:
        t0, outage_from, outage_to = scenario(local, args.outage_start, args.outage_length, args.duration, out)
        time.sleep(2.0)   # let the publisher write the last points
        t1 = time.time()
        time_filter = f"time >= {int(t0 * 1000)}ms and time <= {int(t1 * 1000)}ms"   # as Grafana writes it
        results = [(name, board, run_panels(local.influxdb, board, time_filter, "1s"))
                   for name, board in boards.items()]
    finally:
        out("stopping ...")
        local.stop()
    start = dt.datetime.fromtimestamp(t0)
    subtitle = (f"Drawn by docs/draw_dashboards.py from the local stack on {start:%Y-%m-%d}: the SCPI simulator "
                f"was stopped from {dt.datetime.fromtimestamp(outage_from):%H:%M:%S} to "
                f"{dt.datetime.fromtimestamp(outage_to):%H:%M:%S} (the instrument came back with its output off "
                f"until set again).")
    draw(results, (t0, t1), args.output, subtitle)
    out(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
