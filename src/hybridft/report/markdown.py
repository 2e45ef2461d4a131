"""report.md: the run's report for people and diffs, rendered from report.json's content."""

from __future__ import annotations

import json


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    return "" if v is None else str(v)


def kept_evaluation(stage: dict) -> str:
    """The score of the weights a stage handed on: its best evaluation when it restored the best
    weights (keep_best), else its last one; a stage over unlabeled text that trains no head is not evaluated."""
    (metric, best), = [(k, v) for k, v in stage["best_metric"].items() if k != "step"]
    if best is None:
        return "not evaluated"
    if stage.get("keep_best", True):
        return f"{metric} {_fmt(best)} (best)"
    return f"{metric} {_fmt(stage['evaluations'][-1][metric])} (last)"


def render_markdown(r: dict) -> str:
    lines = headline(r) + metric_tables(r) + generative_sections(r) + class_tables(r) + stage_tables(r)
    for s in r["stages"]:
        lines += stage_details(s)
    if r.get("mix") and "chosen_point" in r["mix"]:
        lines += merge_section(r)
    elif r.get("mix"):
        lines += mix_section(r["mix"]) + models_compared(r)
    lines += ["", "## Data", "", "```json", json.dumps(r["data"], indent=2), "```", ""]
    return "\n".join(lines)


def headline(r: dict) -> list[str]:
    lines = [f"# {r['name']}: {r['task']}", "",
             f"Model `{r['model']}`, seed {r['seed']}, wall time {r['wall_time_s']:.1f} s, "
             f"peak memory {r['peak_memory_mb']:.0f} MB.", "",
             f"Trainable parameters {r['params']['trainable']:,} of {r['params']['total']:,} "
             f"({100 * r['params']['trainable'] / max(r['params']['total'], 1):.2f}%).", ""]
    dist = r.get("distributed")
    if dist and dist["processes"] > 1:
        per = ", ".join(f"{mb:.0f}" for mb in dist["peak_memory_mb_per_process"])
        steps = ", ".join(f"{mb:.0f}" for mb in dist.get("step_memory_mb_per_process", []))
        lines += [f"Distributed: {dist['strategy']} on {dist['processes']} processes; peak memory per process "
                  f"({dist['memory']}): {per} MB" + (f"; at the training steps: {steps} MB." if steps else "."), ""]
    if r["trust_remote_code"]:
        lines += ["**trust_remote_code was ON for this run.**", ""]
    return lines


def metric_tables(r: dict) -> list[str]:
    lines = ["## Validation metrics", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in r["metrics"].items()]
    if r["test_metrics"]:
        lines += ["", "## Test metrics", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in r["test_metrics"].items()]
    return lines


def class_tables(r: dict) -> list[str]:
    lines = []
    if r["per_class"]:
        lines += ["", "## Per class", "", "| class | precision | recall | f1 | support |", "|---|---|---|---|---|"]
        lines += [f"| {c} | {_fmt(m['precision'])} | {_fmt(m['recall'])} | {_fmt(m['f1'])} | {m['support']} |"
                  for c, m in r["per_class"].items()]
    if r["confusion_matrix"]:
        labels = r["labels"]
        lines += ["", "## Confusion matrix (rows: gold, columns: predicted)", "",
                  "| | " + " | ".join(labels) + " |", "|---" * (len(labels) + 1) + "|"]
        lines += [f"| **{labels[i]}** | " + " | ".join(str(x) for x in row) + " |"
                  for i, row in enumerate(r["confusion_matrix"])]
    return lines


def stage_tables(r: dict) -> list[str]:
    lines = ["", "## Stages", "",
             "| stage | selectors | objectives | trainable | steps | train time (s) | samples/s | "
             "evaluation of the weights it kept |",
             "|---|---|---|---|---|---|---|---|"]
    for s in r["stages"]:
        sel = ", ".join(c["name"] for c in s["select"])
        obj = ", ".join(f"{c['name']}x{c['weight']:g}" for c in s["objectives"])
        lines.append(f"| {s['name']} | {sel} | {obj} | {s['trainable_params']:,} | {s['steps']} | "
                     f"{s['train_time_s']:.1f} | {s['samples_per_s']:.1f} | {kept_evaluation(s)} |")
    return lines


def stage_details(s: dict) -> list[str]:
    lines = ["", f"### Stage {s['name']}: where the {s['trainable_params']:,} trainable entries are", "",
             "| module | trainable |", "|---|---|"]
    lines += [f"| {module} | {count:,} |" for module, count in s["trainable_by_module"].items()]
    if s.get("dtypes"):
        d = s["dtypes"]
        lines += ["", f"Precision: frozen weights {d['frozen_weights']}, trained weights {d['trained_weights']}, "
                  f"optimizer state {d['optimizer_state']}; forward in {d['forward']}."]
    if s.get("init") == "pretrained":
        lines += ["", "This stage started again from the pretrained weights and a new head; teachers named "
                  "previous were the model as the stage before left it."]
    if s.get("pooling") == "mean":
        lines += ["", "Its head read the mean of the last layer's tokens (pooling: mean), not the first token."]
    cache = s.get("prefix_cache")
    if isinstance(cache, dict):
        lines += ["", f"Prefix cache: embeddings + {cache['frozen_layers']} frozen layers computed for "
                  f"{cache['computed']:,} examples and read back {cache['hits']:,} times "
                  f"({cache['cached_examples']:,} kept, {cache['cached_mb']:.0f} MB)."]
    elif cache:
        lines += ["", f"Prefix cache {cache}."]
    return lines + pseudo_label_rounds(s) + importance_masks(s)


def pseudo_label_rounds(s: dict) -> list[str]:
    rounds = s.get("objective_details", {}).get("pseudo_label", {}).get("rounds", [])
    if not rounds:
        return []
    lines = ["", "Pseudo-labels:", "", "| epoch | pool | kept | per class | accuracy vs gold (checked) |",
             "|---|---|---|---|---|"]
    for round_ in rounds:
        per_class = ", ".join(f"{k} {v}" for k, v in round_["per_class"].items())
        kept = f"{round_['kept']:,}" if round_["kept"] else "none confident: the previous round's labels stay"
        lines.append(f"| {round_['epoch']} | {round_['pool']:,} | {kept} | {per_class} | "
                     f"{_fmt(round_['accuracy_vs_gold'])} ({round_['checked_against_gold']:,}) |")
    return lines


def importance_masks(s: dict) -> list[str]:
    lines = []
    for summary in s.get("selectors", []):
        if summary.get("name") == "importance":
            lines += ["", f"Importance mask: {summary['by']} {summary['value']:g}, "
                      f"{summary['selected_entries']:,} of {summary['scored_entries']:,} scored entries selected."]
            if summary["candidates"]:
                lines += ["", "| candidate | held-out score |", "|---|---|"]
                lines += [f"| {k} | {_fmt(v)} |" for k, v in summary["candidates"].items()]
    return lines


def mix_section(mix: dict) -> list[str]:
    metric = mix["metric"]
    rule = (f"one-standard-error rule: within {mix['tolerance']:.4f} of the best, the mix closest to M_fine"
            if mix.get("rule") == "one_se" else "the best validation score")
    lines = ["", f"## Weight interpolation with the pretrained model (global alpha {mix['chosen_alpha']:g}; "
             f"final mix: {mix['final']})", "",
             f"alpha is the weight of the pretrained model; 0 is the fine-tuned model. Chosen by {rule}.", "",
             f"| alpha | {metric} |", "|---|---|"]
    lines += [f"| {p['alpha']:g} | {_fmt(p[metric])} |" for p in mix["curve"]]
    if mix.get("per_layer"):
        pl = mix["per_layer"]
        chosen = "chosen" if mix.get("final") == "per_layer" else "not chosen"
        lines += ["", f"Per-layer alphas ({chosen}): " + ", ".join(f"{k} {v:g}" for k, v in pl["alphas"].items())
                  + f": {metric} {_fmt(pl['metrics'][metric])}."]
    if mix.get("learned"):
        ln = mix["learned"]
        shown = ", ".join(f"{k} {v:.3f}" for k, v in list(ln["alphas"].items())[:8])
        lines += ["", f"Learned mixing coefficients ({ln['granularity']}, "
                  f"{'chosen' if mix.get('final') == 'learned' else 'not chosen'}): {shown}"
                  f"{' ...' if len(ln['alphas']) > 8 else ''}: {metric} {_fmt(ln['metrics'][metric])}."]
    if mix.get("ensemble"):
        lines += ["", "Output-level mixing with M_pre + a head trained on its frozen encoder "
                  "(alpha weighs M_pre's probabilities):", "", f"| alpha | {metric} |", "|---|---|"]
        lines += [f"| {p['alpha']:g} | {_fmt(p.get(metric))} |" for p in mix["ensemble"]["curve"]]
    return lines


def merge_section(r: dict) -> list[str]:
    """The merge methods' grids beside M_fine, each method's best, and the chosen model on
    validation and test."""
    mix, metric = r["mix"], r["mix"]["metric"]
    point = mix["chosen_point"]
    chosen = f"{mix['chosen_method']} " + ", ".join(f"{k} {v:g}" for k, v in point.items()) if point else \
        "none: M_fine kept"
    rule = (f"the one-standard-error rule (within {mix['tolerance']:.4f} of the best, M_fine first)"
            if mix.get("rule") == "one_se" else "the best score")
    methods = mix["method"] if isinstance(mix["method"], list) else [mix["method"]]
    lines = ["", f"## Merge: {', '.join(methods)} (chosen: {chosen})", "",
             f"Models merged with M_pre: {', '.join(mix['models'])}"
             + (f", weights {', '.join(f'{w:g}' for w in mix['weights'])}" if mix.get("weights") else "")
             + f". Chosen on validation by {rule}.", "",
             f"| method | point | validation {metric} |", "|---|---|---|",
             f"| M_fine | | {_fmt(mix['fine_tuned'][metric])} |"]
    for p in mix["curve"]:
        shown = ", ".join(f"{k} {p[k]:g}" for k in ("alpha", "scale", "density") if k in p)
        lines.append(f"| {p['method']} | {shown} | {_fmt(p[metric])} |")
    test = mix.get("test", {})
    lines += ["", f"| model | validation {metric} | test {metric} |", "|---|---|---|",
              f"| M_fine | {_fmt(mix['fine_tuned'][metric])} | {_fmt(test.get('fine_tuned', {}).get(metric))} |"]
    for name, best in mix.get("methods", {}).items():
        shown = ", ".join(f"{k} {v:g}" for k, v in best["point"].items())
        lines.append(f"| best {name} ({shown}) | {_fmt(best['validation'][metric])} | "
                     f"{_fmt(best.get('test', {}).get(metric))} |")
    lines += [f"| chosen ({chosen}) | {_fmt(mix['chosen'][metric])} | {_fmt(test.get('chosen', {}).get(metric))} |",
              f"| final model (after any later stages) | {_fmt(r['metrics'].get(metric))} | "
              f"{_fmt((r.get('test_metrics') or {}).get(metric))} |"]
    return lines


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def generative_sections(r: dict) -> list[str]:
    """Language models: the metrics before training, and generated examples beside the references."""
    lines = []
    start = next((s["start_metrics"] for s in r["stages"] if s.get("start_metrics")), None)
    if start:
        shown = ", ".join(f"{k} {_fmt(start[k])} -> {_fmt(r['metrics'].get(k))}" for k in start)
        lines += ["", f"Validation before training -> after: {shown}."]
    for split, samples in r.get("samples", {}).items():
        lines += ["", f"## Generated ({split}, first {len(samples)})", "", "| source | reference | generated |",
                  "|---|---|---|"]
        lines += [f"| {_cell(x['source'])} | {_cell(x['reference'])} | {_cell(x['generated'])} |" for x in samples]
    return lines


def models_compared(r: dict) -> list[str]:
    """One table: M_pre with a trained head, M_fine, the mixes, the ensemble and the final model,
    on validation (where the choices were made) and test (where they are judged)."""
    mix, metric = r["mix"], r["mix"]["metric"]
    test = mix.get("test", {})
    rows = [("M_fine (alpha 0)", mix.get("fine_tuned"), test.get("fine_tuned")),
            (f"M_mix, global alpha {mix['chosen_alpha']:g}", mix["chosen"], test.get("global"))]
    if mix.get("per_layer"):
        rows.append(("M_mix, per-layer alphas", mix["per_layer"]["metrics"], test.get("per_layer")))
    if mix.get("learned"):
        rows.append(("M_mix, learned coefficients", mix["learned"]["metrics"], test.get("learned")))
    if mix.get("ensemble"):
        ens = mix["ensemble"]
        rows.insert(0, ("M_pre + head trained on its frozen encoder", ens["pretrained_with_head"],
                        ens.get("test", {}).get("pretrained_with_head")))
        rows.append((f"output ensemble, alpha {ens['chosen_alpha']:g}", ens["chosen"], ens.get("test", {}).get("chosen")))
    rows.append((f"final model (mix: {mix['final']}, then any later stages)", r["metrics"], r["test_metrics"]))
    lines = ["", "## Models compared", "", "Choices (alphas) were made on validation.", "",
             f"| model | validation {metric} | test {metric} |", "|---|---|---|"]
    lines += [f"| {name} | {_fmt((v or {}).get(metric))} | {_fmt((t or {}).get(metric))} |" for name, v, t in rows]
    return lines
