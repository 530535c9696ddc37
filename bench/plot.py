"""``make bench``'s ``results.png``: requests/s against connections, one panel per scenario, a line per server."""

from __future__ import annotations

from pathlib import Path

from bench.plan import NGINX, Row, Scenario


def plot(out: Path, rows: list[Row], plan: list[Scenario]) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install -e '.[bench]'): no results.png", flush=True)
        return
    columns = 4
    lines = (len(plan) + columns - 1) // columns
    fig, axes = plt.subplots(lines, columns, figsize=(5 * columns, 4 * lines), squeeze=False)
    for index, sc in enumerate(plan):
        ax = axes[index // columns][index % columns]
        for server in sc.servers:
            if server == NGINX:
                continue
            points = sorted((r.connections, r.result.rps) for r in rows
                            if r.scenario == sc.name and r.server == server and not r.result.skipped)
            if points:
                ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=server)
        ax.set_title(sc.name)
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted({r.connections for r in rows}))
        ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.set_xlabel("connections")
        ax.set_ylabel("requests/s")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    for index in range(len(plan), lines * columns):
        axes[index // columns][index % columns].axis("off")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels))
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.savefig(out / "results.png", dpi=80)
    plt.close(fig)

