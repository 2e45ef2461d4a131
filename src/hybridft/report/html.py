"""report.html: one self-contained page per run (plots are inline SVG; no network, no files beside it).

Loss curves per objective with the stage boundaries, the validation metric over steps, the
confusion matrix, the alpha sweep of a mix stage, and the tables of report.md.
"""

from __future__ import annotations

import html
import io
import json
from pathlib import Path

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#1d1d1f;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.2em}h2{margin-top:1.8em;border-bottom:1px solid #ddd;padding-bottom:.2em}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ddd;padding:.25em .6em;text-align:right}
th{background:#f4f4f6}td:first-child,th:first-child{text-align:left}.muted{color:#666}
.plots{display:flex;flex-wrap:wrap;gap:1em}.plot svg{max-width:100%;height:auto}
.flag{background:#fff3cd;border:1px solid #e0c36a;padding:.4em .8em;border-radius:4px}
"""


def _svg(fig) -> str:
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", bbox_inches="tight")
    text = buffer.getvalue()
    return text[text.index("<svg"):]


def _figure(width=6.4, height=3.4):
    """A figure outside pyplot: no backend is chosen or switched, so a notebook's plots are left as
    they were, and nothing needs closing."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    ax = fig.subplots()
    ax.grid(alpha=0.3)
    return fig, ax


def loss_plot(records: list[dict]) -> str | None:
    """Every logged loss term over optimizer steps, with dashed lines where a stage begins."""
    train = [r for r in records if "loss" in r and "stage" in r and "eval/loss" not in r]
    if not train:
        return None
    fig, ax = _figure()
    keys = sorted({k for r in train for k in r if k == "loss" or k.startswith("loss/")})
    for key in keys:
        points = [(r["step"], r[key]) for r in train if r.get(key) is not None]
        if points:
            ax.plot(*zip(*points, strict=True), label=key, linewidth=1.2 if key == "loss" else 0.9, alpha=0.9)
    seen = []
    for r in train:
        if r["stage"] not in seen:
            seen.append(r["stage"])
            ax.axvline(r["step"], color="#999", linestyle="--", linewidth=0.8)
            ax.text(r["step"], ax.get_ylim()[1], f" {r['stage']}", fontsize=8, va="top", color="#555")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss")
    ax.legend(fontsize=8)
    return _svg(fig)


def eval_plot(records: list[dict], metric: str) -> str | None:
    key = f"eval/{metric}"
    points = [(r["step"], r[key]) for r in records if r.get(key) is not None]
    if not points:
        return None
    fig, ax = _figure()
    ax.plot(*zip(*points, strict=True), marker="o", markersize=3)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(f"validation {metric}")
    return _svg(fig)


def confusion_plot(matrix: list[list[int]], labels: list[str]) -> str | None:
    if not matrix:
        return None
    fig, ax = _figure(3.2 + 0.3 * len(labels), 2.8 + 0.3 * len(labels))
    ax.grid(False)
    ax.imshow(matrix, cmap="Blues")
    for i, row in enumerate(matrix):
        for j, value in enumerate(row):
            ax.text(j, i, str(value), ha="center", va="center", fontsize=9,
                    color="white" if value > max(map(max, matrix)) / 2 else "black")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("gold")
    return _svg(fig)


def mix_plot(mix: dict) -> str | None:
    metric = mix["metric"]
    fig, ax = _figure()
    curve = [(p["alpha"], p[metric]) for p in mix["curve"]]
    ax.plot(*zip(*curve, strict=True), marker="o", markersize=3, label="weight mix")
    if mix.get("ensemble"):
        ens = [(p["alpha"], p.get(metric)) for p in mix["ensemble"]["curve"] if p.get(metric) is not None]
        if ens:
            ax.plot(*zip(*ens, strict=True), marker="s", markersize=3, label="output ensemble")
    ax.axvline(mix["chosen_alpha"], color="#c33", linestyle="--", linewidth=0.9, label="chosen")
    ax.set_xlabel("alpha (weight of the pretrained model)")
    ax.set_ylabel(f"validation {metric}")
    ax.legend(fontsize=8)
    return _svg(fig)


def _cell(v) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    return html.escape("" if v is None else str(v))


def _table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def render_html(r: dict, records: list[dict]) -> str:
    e = html.escape
    stages = {s["name"] for s in r["stages"]}  # not the trial and probe runs a mix or a CV choice logs too
    records = [x for x in records if x.get("stage") in stages]
    params = r["params"]
    parts = [f"<h1>{e(r['name'])}: {e(r['task'])}</h1>",
             f"<p class='muted'>Model <code>{e(str(r['model']))}</code>, seed {r['seed']}, wall time "
             f"{r['wall_time_s']:.1f} s, peak memory {r['peak_memory_mb']:.0f} MB, trainable parameters "
             f"{params['trainable']:,} of {params['total']:,} "
             f"({100 * params['trainable'] / max(params['total'], 1):.2f}%).</p>"]
    if r.get("trust_remote_code"):
        parts.append("<p class='flag'>trust_remote_code was ON for this run.</p>")
    parts.append("<h2>Metrics</h2>")
    rows = [[k, v, (r.get("test_metrics") or {}).get(k)] for k, v in r["metrics"].items()]
    parts.append(_table(["metric", "validation", "test"], rows))
    plots = [p for p in (loss_plot(records), eval_plot(records, r["selection_metric"])) if p]
    if plots:
        parts.append("<h2>Training</h2><div class='plots'>" + "".join(f"<div class='plot'>{p}</div>" for p in plots)
                     + "</div>")
    if r.get("per_class"):
        parts.append("<h2>Per class</h2>")
        parts.append(_table(["class", "precision", "recall", "f1", "support"],
                            [[c, m["precision"], m["recall"], m["f1"], m["support"]] for c, m in r["per_class"].items()]))
    confusion = confusion_plot(r.get("confusion_matrix"), r["labels"]) if isinstance(r["labels"], list) else None
    if confusion:
        parts.append(f"<h2>Confusion matrix</h2><div class='plot'>{confusion}</div>")
    parts.append("<h2>Stages</h2>")
    parts.append(_table(["stage", "selectors", "objectives", "trainable", "steps", "train time (s)", "samples/s"],
                        [[s["name"], ", ".join(c["name"] for c in s["select"]),
                          ", ".join(f"{c['name']}×{c['weight']:g}" for c in s["objectives"]), f"{s['trainable_params']:,}",
                          s["steps"], s["train_time_s"], s["samples_per_s"]] for s in r["stages"]]))
    if r.get("mix") and "chosen_point" in r["mix"]:
        mix, point = r["mix"], r["mix"]["chosen_point"]
        chosen = f"{mix['chosen_method']} " + ", ".join(f"{k} {v:g}" for k, v in point.items()) if point else \
            "M_fine kept"
        parts.append(f"<h2>Merge</h2><p>Chosen: {e(chosen)}; every point is in report.md.</p>")
    elif r.get("mix"):
        mix = r["mix"]
        parts.append(f"<h2>Mixing with the pretrained model</h2><p>Global alpha {mix['chosen_alpha']:g}, "
                     f"final mix: {e(mix['final'])}.</p><div class='plot'>{mix_plot(mix)}</div>")
    parts.append("<h2>Data</h2><pre>" + e(json.dumps(r["data"], indent=2)) + "</pre>")
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>" + e(r["name"]) +
            f" - hybridft report</title><style>{STYLE}</style></head><body>" + "".join(parts) + "</body></html>")


def read_records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] if path.is_file() else []


def pareto_plot(board: dict) -> str:
    """Metric against trainable parameters (log scale), error bars over seeds, the front joined."""
    fig, ax = _figure()
    rows = board["rows"]
    for r in rows:
        ax.errorbar(r["trainable_params"], r["metric_mean"], yerr=r["metric_std"], marker="o", capsize=3,
                    color="#c33" if r["pareto"] else "#36c")
        ax.annotate(r["strategy"], (r["trainable_params"], r["metric_mean"]), fontsize=8,
                    xytext=(4, 4), textcoords="offset points")
    front = sorted((r["trainable_params"], r["metric_mean"]) for r in rows if r["pareto"])
    if len(front) > 1:
        ax.plot(*zip(*front, strict=True), color="#c33", linewidth=0.8, linestyle="--")
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters")
    ax.set_ylabel(board["metric"])
    return _svg(fig)


def comparison_html(board: dict) -> str:
    metric = board["metric"]
    rows = [[r["strategy"], f"{r['metric_mean']:.4f} ± {r['metric_std']:.4f}", f"{r['trainable_params']:,}",
             f"{100 * r['trainable_params'] / r['total_params']:.2f}%", r["wall_time_s"], r["samples_per_s"],
             r["peak_memory_mb"], "★" if r["pareto"] else ""] for r in board["rows"]]
    body = (f"<h1>Leaderboard</h1><p class='muted'>{html.escape(metric)}, mean ± std over seeds {board['seeds']}; "
            "★ marks the Pareto front of the metric against trainable parameters.</p>"
            + _table(["strategy", metric, "trainable", "% of total", "wall time (s)", "train samples/s",
                      "peak memory (MB)", "Pareto"], rows)
            + f"<h2>Metric against trainable parameters</h2><div class='plot'>{pareto_plot(board)}</div>")
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>hybridft comparison</title>"
            f"<style>{STYLE}</style></head><body>{body}</body></html>")
