"""report.md and report.html of a search: the trials, Optuna's optimisation history, parameter
importances and parallel coordinates (its matplotlib backend, embedded as PNG so that the page is
one self-contained file), the confirmation runs and the final score."""

from __future__ import annotations

import base64
import html
import io
import warnings
from pathlib import Path

from ..folders import write_atomic


def fmt(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def trials_table(summary: dict) -> tuple[list[str], list[list[str]]]:
    names = sorted({p for t in summary["trials"] for p in t["params"]})
    header = ["trial", "state", summary["metric"], *names, "seconds", "steps trained", "why it failed"]
    rows = [[str(t["number"]), t["state"], fmt(t["value"]), *(fmt(t["params"].get(p)) for p in names),
             fmt(t["seconds"]), fmt(t["steps"]), t["failure"] or ""] for t in summary["trials"]]
    return header, rows


def confirm_table(summary: dict) -> tuple[list[str], list[list[str]]]:
    header = ["trial", f"{summary['metric']} mean ± SD", "per seed", "chosen"]
    chosen = (summary["chosen"] or {}).get("trial")
    rows = [[str(r["trial"]), f"{r['mean']:.4f} ± {r['sd']:.4f}", ", ".join(f"{v:.4f}" for v in r["values"]),
             "★" if r["trial"] == chosen else ""] for r in summary["confirm"]]
    return header, rows


def final_lines(summary: dict) -> list[str]:
    final = summary["final"]
    if final is None:
        return ["No configuration was chosen: no trial finished."]
    lines = [f"Chosen: trial {summary['chosen']['trial']}, written as best.yaml (`hybridft run best.yaml` "
             "reproduces it).",
             "Validation (the recipe's own, scored once): " + ", ".join(f"{k}={v:.4f}" for k, v in
                                                                        final["metrics"].items())]
    if final.get("test_metrics"):
        lines.append("Test: " + ", ".join(f"{k}={v:.4f}" for k, v in final["test_metrics"].items()))
    return lines


def markdown(summary: dict) -> str:
    def table(header, rows):
        return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
                *("| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows), ""]

    done = sum(t["state"] == "complete" for t in summary["trials"])
    lines = [f"# Search {summary['study']}", "",
             f"{summary['direction']} {summary['metric']} on rows held out of train; {len(summary['trials'])} "
             f"trials ({done} complete).", "", "## Trials", "", *table(*trials_table(summary))]
    if summary["confirm"]:
        lines += ["## Confirmation (the top trials with more seeds)", "", *table(*confirm_table(summary))]
    lines += ["## Final", "", *(f"{line}\n" for line in final_lines(summary))]
    return "\n".join(lines)


def plots(study) -> list[tuple[str, str]]:
    """(title, PNG as base64) of each Optuna plot the study has enough trials for."""
    import matplotlib.pyplot as plt  # Optuna's plots draw through pyplot; each figure is closed once saved
    from optuna.visualization import matplotlib as views

    out = []
    for title, draw in (("Optimisation history", views.plot_optimization_history),
                        ("Parameter importances", views.plot_param_importances),
                        ("Parallel coordinates", views.plot_parallel_coordinate)):
        try:
            with warnings.catch_warnings():  # Optuna marks these plots experimental, and says so each time
                warnings.simplefilter("ignore")
                axes = draw(study)
        except (ValueError, RuntimeError, ZeroDivisionError):  # too few finished trials or parameters for it
            continue
        figure = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
        if title == "Parallel coordinates":  # an axis per parameter: give each room for its tick labels
            figure.set_size_inches(max(6.4, 1.2 * (1 + len({p for t in study.get_trials(deepcopy=False) for p in t.params}))), 4.8)
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
        plt.close(figure)
        out.append((title, base64.b64encode(buffer.getvalue()).decode("ascii")))
    return out


def page(summary: dict, study) -> str:
    def table(header, rows):
        head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

    parts = [f"<h1>Search {html.escape(summary['study'])}</h1>", "<h2>Trials</h2>", table(*trials_table(summary))]
    for title, png in plots(study):
        parts.append(f"<h2>{html.escape(title)}</h2><img alt='{html.escape(title)}' src='data:image/png;base64,{png}'>")
    if summary["confirm"]:
        parts += ["<h2>Confirmation</h2>", table(*confirm_table(summary))]
    parts += ["<h2>Final</h2>", *(f"<p>{html.escape(line)}</p>" for line in final_lines(summary))]
    style = ("body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
             "padding:2px 6px;font-size:90%}img{max-width:100%}")
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>hybridft search</title>"
            f"<style>{style}</style></head><body>{''.join(parts)}</body></html>")


def write_report(out: Path, summary: dict, study) -> None:
    write_atomic(out / "report.md", markdown(summary))
    write_atomic(out / "report.html", page(summary, study))
