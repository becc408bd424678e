"""Plots of a benchmark suite run (matplotlib, the ``bench`` extra).

``python bench/plots.py results.json --out DIR`` draws, from the JSON that
``bench/suite.py --out DIR`` writes, whichever of these the run has data for:

``roundtrip_latency.png``
    distribution (CDF) of small-message round-trip latency per client;
``task_latency.png``
    distribution (CDF) of OCS task round-trip latency, no-op vs ``wrnrd_until``;
``throughput.png``
    round trips per second and bulk read MiB/s per client, with the targets;
``recovery.png``
    time from device back up to ``degraded`` cleared, per outage;
``links.png``
    CPU and resident memory of one process driving many links.
"""

import argparse
import json
import os
import sys

from benchutil import LogHistogram

MIB = 1 << 20
FILES = ("roundtrip_latency.png", "task_latency.png", "throughput.png", "recovery.png", "links.png")


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, out, name):
    path = os.path.join(out, name)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def roundtrip_latency(plt, report, out):
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    low, high = [], []
    for name, data in report["histograms"].items():
        xs, ys = LogHistogram.from_dict(data).cdf()
        if xs:
            xs = [x * 1e6 for x in xs]
            ax.step(xs, ys, where="post", label=name, linestyle="--" if "no timeout" in name else "-")
            low.append(xs[0])
            high.append(next(x for x, y in zip(xs, ys) if y >= 0.999))
    ax.set_xscale("log")
    if low:
        # the body of the distributions, up to the slowest client's 99.9th percentile
        ax.set_xlim(min(low) * 0.8, max(high) * 1.5)
    ax.set_xlabel("round-trip latency, µs (log scale, up to the 99.9th percentile)")
    ax.set_ylabel("fraction of round trips")
    p = report["parameters"]
    ax.set_title(f"Small-message round trips on loopback ({p['payload_bytes']} B + '\\n', placement {p['placement']})")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return _save(fig, out, "roundtrip_latency.png")


def task_latency(plt, report, out):
    samples = report.get("samples_s")
    if not samples:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    labels = {"noop": "connect (no-op floor)", "wrnrd_until": "wrnrd_until", "device_elapsed": "of which the device"}
    for key, label in labels.items():
        values = sorted(v * 1e3 for v in samples.get(key, ()))
        if values:
            n = len(values)
            ax.step(values, [(i + 1) / n for i in range(n)], where="post", label=f"{label} (n={n})",
                    linestyle=":" if key == "device_elapsed" else "-")
    ax.set_xscale("log")
    ax.set_xlabel("task round trip, ms (log scale)")
    ax.set_ylabel("fraction of calls")
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title(f"OCS task latency through crossbar: wrnrd_until / no-op = {report['ratio_median']:.2f}x (median), "
                 f"{report['ratio_p99']:.2f}x (p99)", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    return _save(fig, out, "task_latency.png")


def _bars(ax, names, values, base, target, unit, title):
    colours = ["0.55" if n.startswith("bare") else ("C0" if "socs_tcp" in n else "C1") for n in names]
    y = list(range(len(names)))[::-1]
    ax.barh(y, values, color=colours)
    ax.set_yticks(y, names, fontsize=8)
    for yi, v in zip(y, values):
        ax.text(v, yi, f" {v:,.0f} ({v / base:.2f}x)", va="center", fontsize=7)
    ax.axvline(base * target, color="C3", linestyle="--", linewidth=1, label=f"target {target}x baseline")
    ax.set_xlim(0, max(values) * 1.35)
    ax.set_xlabel(unit)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="lower right")


def throughput(plt, parts, out):
    rt, bulk = parts.get("roundtrip"), parts.get("bulk")
    panels = [p for p in (rt, bulk) if p]
    if not panels:
        return None
    fig, axes = plt.subplots(len(panels), 1, figsize=(7.5, 2.6 * len(panels) + 0.4), squeeze=False)
    i = 0
    if rt:
        names = list(rt["summary"])
        values = [rt["summary"][n]["rate"] for n in names]
        _bars(axes[i][0], names, values, values[0], rt["parameters"]["target_ratio"], "round trips per second",
              "Small-message round trips (higher is better)")
        i += 1
    if bulk:
        names = list(bulk["summary"])
        values = [bulk["summary"][n]["mib_per_s"] for n in names]
        _bars(axes[i][0], names, values, values[0], bulk["parameters"]["target_ratio"], "MiB/s (median transfer)",
              f"Bulk read of {bulk['parameters']['bytes'] / MIB:g} MiB (higher is better)")
    return _save(fig, out, "throughput.png")


def recovery(plt, report, out):
    outages = report["outages"]
    if not outages:
        return None
    lengths = report["parameters"]["lengths_s"]
    fig, ax = plt.subplots(figsize=(7.5, 4.0))
    for i, length in enumerate(lengths):
        subset = [o for o in outages if o["length_s"] == length]
        n = len(subset)
        xs = [i + (k - (n - 1) / 2) * 0.06 for k in range(n)]
        ax.scatter(xs, [o["observed_s"] for o in subset], color="C0", label="observed by a client" if i == 0 else None)
        ax.scatter(xs, [o["first_good_cycle_s"] for o in subset], color="C2", marker="x",
                   label="first good acq cycle" if i == 0 else None)
    target = report["parameters"]["target_s"]
    ax.axhline(target, color="C3", linestyle="--", linewidth=1, label=f"target {target:g} s")
    ax.set_xticks(range(len(lengths)), [f"down {length:g} s\nafter degraded" for length in lengths])
    ax.set_xlim(-0.5, len(lengths) - 0.5)
    ax.set_ylim(0, max(target, max(o["observed_s"] for o in outages)) * 1.15)
    ax.set_ylabel("device back up -> degraded cleared, s")
    ax.set_title(f"Recovery of the acq session (TCPBusAgent, acq at {report['parameters']['sample_rate_hz']:g} Hz, "
                 "default settings)", fontsize=10)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")
    return _save(fig, out, "recovery.png")


def links(plt, report, out):
    modes = report["modes"]
    if not modes:
        return None
    p = report["parameters"]
    first = next(iter(modes.values()))
    labels = ["idle", f"{p['links']} links\nconnected"]
    cpu = [first["idle"]["cpu_percent"], first["connected"]["cpu_percent"]]
    rss = [first["idle"]["rss_bytes"] / MIB, first["connected"]["rss_bytes"] / MIB]
    for mode, result in modes.items():
        labels.append(f"{p['rate_hz']:g} Hz,\n{'thread per link' if mode == 'threads' else 'one loop'}")
        cpu.append(result["polling"]["cpu_percent"])
        rss.append(result["polling"]["rss_bytes"] / MIB)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(7.5, 3.6))
    colours = ["0.55", "0.7"] + ["C0"] * (len(labels) - 2)
    ax1.bar(range(len(labels)), cpu, color=colours)
    ax1.set_xticks(range(len(labels)), labels, fontsize=7)
    ax1.set_ylabel("CPU, % of one core")
    for x, v in enumerate(cpu):
        ax1.text(x, v, f"{v:.2f}", ha="center", va="bottom", fontsize=7)
    ax2.bar(range(len(labels)), rss, color=colours)
    ax2.set_xticks(range(len(labels)), labels, fontsize=7)
    ax2.set_ylabel("resident memory, MiB")
    for x, v in enumerate(rss):
        ax2.text(x, v, f"{v:.1f}", ha="center", va="bottom", fontsize=7)
    fig.suptitle(f"One process driving {p['links']} links at {p['rate_hz']:g} Hz", fontsize=10)
    return _save(fig, out, "links.png")


def draw_all(results, out):
    """Draw every plot the suite ``results`` have data for into directory ``out``.

    Returns the paths written.

    Raises:
        ImportError: matplotlib is not installed (``pip install -e .[bench]``).
    """
    plt = _pyplot()
    parts = results.get("parts", {})
    paths = []
    try:
        if parts.get("roundtrip"):
            paths.append(roundtrip_latency(plt, parts["roundtrip"], out))
        if parts.get("tasks"):
            paths.append(task_latency(plt, parts["tasks"], out))
        paths.append(throughput(plt, parts, out))
        if parts.get("recovery"):
            paths.append(recovery(plt, parts["recovery"], out))
        if parts.get("links"):
            paths.append(links(plt, parts["links"], out))
    finally:
        plt.close("all")
    return [p for p in paths if p]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", help="results.json written by bench/suite.py --out DIR")
    parser.add_argument("--out", help="directory for the PNG files (default: next to the results)")
    args = parser.parse_args(argv)
    try:
        with open(args.results) as f:
            results = json.load(f)
    except (OSError, ValueError) as e:
        parser.error(f"cannot read {args.results!r}: {e}")
    out = args.out or os.path.dirname(os.path.abspath(args.results))
    os.makedirs(out, exist_ok=True)
    for path in draw_all(results, out):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
