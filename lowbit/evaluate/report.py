"""Render a comparison report (``compare.compare``'s dict): a Markdown table, JSON, a PNG.

    write_report(report, output_dir, overwrite=False) -> {"md": path, "json": path, "png": path}

The folder appears only complete (``lowbit.outdir.atomic_output_dir``).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from ..errors import LowbitError
from ..outdir import atomic_output_dir
from .speed import fmt_num

MIB = 2**20
COLUMNS = ("method", "bits", "size MiB", "smaller", "prefill tok/s", "decode tok/s", "decode speed",
           "perplexity", "quality", "peak MiB")


def _bits(row: dict) -> str:
    if row.get("bits") is None:
        return "?"
    g = row.get("group_size")
    return f"{row['bits']} (g{g})" if g and row["bits"] < 16 and row["method"] in ("rtn", "gptq", "awq") else str(row["bits"])


def _stat(stat: dict) -> str:
    return f"{fmt_num(stat['median'])} [{fmt_num(stat['min'])}-{fmt_num(stat['max'])}]"


def table_rows(report: dict) -> list[tuple[str, ...]]:
    rows = []
    for r in report["rows"]:
        rows.append((r["label"], _bits(r), f"{r['weight_bytes'] / MIB:.1f}", f"{r['size_ratio']:.2f}x",
                     _stat(r["bench"]["prefill_tok_s"]), _stat(r["bench"]["decode_tok_s"]),
                     f"{r['speedup_decode']:.2f}x", f"{r['perplexity']:.3f}", f"{r['quality_pct']:.1f}%",
                     f"{r['peak_bytes'] / MIB:.0f}"))
    return rows


def markdown_table(report: dict) -> str:
    rows = [COLUMNS] + table_rows(report)
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]

    def line(cells):
        return "| " + " | ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))) + " |"

    sep = "|" + "|".join("-" * (w + 1) + ":" if i else ":" + "-" * (w + 1) for i, w in enumerate(widths)) + "|"
    return "\n".join([line(rows[0]), sep] + [line(r) for r in rows[1:]])


def notes(report: dict) -> list[str]:
    s = report["settings"]
    first = report["rows"][0]
    out = [
        f"Base model: `{report['base']}`; baseline row: `{report['baseline']}`. Device {s['device']}; float parts "
        f"run in {s['dtype']}" + (" (the fp16 baseline too)." if s["dtype"] != "float16" else "."),
        f"Perplexity: {s['dataset']} ({s['split']}), {first['windows']} windows x {s['seq_len']} tokens "
        f"({first['tokens']} predicted tokens), non-overlapping (GPTQ protocol); the same windows for every row.",
        f"Speed: greedy generation, batch {s['batch_size']}, prompt {s['prompt_len']} tokens, {s['new_tokens']} new "
        f"tokens; median [min-max] of {s['repeats']} runs after {s['warmup']} warm-up; all rows measured in one "
        "process, one after another.",
        "size MiB: weights with float tensors counted at 16 bits (as a 16-bit checkpoint stores them); "
        "smaller = baseline size / size; decode speed = decode tok/s / baseline's; "
        "quality = baseline perplexity / perplexity.",
        f"peak MiB: {first['peak_kind']} during generation.",
        f"Total run time: {report['seconds']:.0f} s.",
    ]
    if s.get("calibration") and any(r["method"] in ("gptq", "awq") for r in report["rows"]):
        c = s["calibration"]
        out.append(f"Calibration (gptq/awq): {c.get('dataset')} ({c.get('split')}), {c.get('n_samples')} x "
                   f"{c.get('seq_len')} tokens, seed {c.get('seed')}.")
    return out


def render_markdown(report: dict) -> str:
    parts = [f"# lowbit compare: {report['base']}", "", markdown_table(report), ""]
    parts += [f"- {n}" for n in notes(report)]
    if report["skipped"]:
        parts += ["", "## Not run", ""]
        parts += [f"- **{s['label']}**: {s['reason']}" for s in report["skipped"]]
    parts += ["", "![size vs perplexity and decode speed](report.png)", ""]
    return "\n".join(parts)


def render_png(report: dict, path: Path) -> None:
    """Two panels: size vs perplexity (scatter), decode tok/s with min-max error bars (bars)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise LowbitError("report.png needs matplotlib: pip install 'lowbit[plot]'") from e
    rows = report["rows"]
    labels = [r["label"] for r in rows]
    colors = [f"C{i}" for i in range(len(rows))]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 5), dpi=110)
    sizes = [r["weight_bytes"] / MIB for r in rows]
    ppls = [r["perplexity"] if math.isfinite(r["perplexity"]) else float("nan") for r in rows]
    ax1.scatter(sizes, ppls, s=90, c=colors, zorder=3)
    for x, y, name in zip(sizes, ppls, labels):
        ax1.annotate(name, (x, y), textcoords="offset points", xytext=(7, 5), fontsize=11)
    ax1.axhline(rows[0]["perplexity"], color="gray", ls="--", lw=1, label=f"baseline ({rows[0]['label']})")
    ax1.set_xlabel("weights (MiB, float tensors at 16 bits)")
    ax1.set_ylabel(f"perplexity ({report['settings']['dataset']}, lower is better)")
    ax1.set_title("Size vs perplexity")
    ax1.set_xlim(0, max(sizes) * 1.2)
    ax1.margins(y=0.2)
    ax1.grid(alpha=0.3)
    ax1.legend(loc="best")
    med = [r["bench"]["decode_tok_s"]["median"] for r in rows]
    err = [[m - r["bench"]["decode_tok_s"]["min"] for m, r in zip(med, rows)],
           [r["bench"]["decode_tok_s"]["max"] - m for m, r in zip(med, rows)]]
    bars = ax2.bar(labels, med, yerr=err, capsize=6, color=colors, zorder=3)
    top = max(m + e for m, e in zip(med, err[1])) or 1.0
    for bar, r, hi in zip(bars, rows, err[1]):
        x, h = bar.get_x() + bar.get_width() / 2, bar.get_height()
        if h > 0.2 * top:  # inside the bar, clear of the error bar drawn at its top
            ax2.text(x, h / 2, f"{r['speedup_decode']:.2f}x", ha="center", va="center", color="white",
                     fontsize=12, fontweight="bold", zorder=4)
        else:  # too short to hold the label: above its error bar
            ax2.text(x, h + hi + 0.02 * top, f"{r['speedup_decode']:.2f}x", ha="center", va="bottom",
                     fontsize=12, fontweight="bold", zorder=4)
    s = report["settings"]
    ax2.set_ylabel("decode tokens/s (median, bars: min-max)")
    ax2.set_title(f"Decode speed, batch {s['batch_size']} on {s['device']} ({s['repeats']} runs)")
    ax2.grid(axis="y", alpha=0.3)
    fig.suptitle(f"lowbit compare: {Path(str(report['base'])).name}", fontsize=13)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_report(report: dict, output_dir: "str | Path", overwrite: bool = False) -> dict[str, Path]:
    """report.md, report.json and report.png in ``output_dir`` (written atomically)."""
    out = Path(output_dir)
    with atomic_output_dir(out, overwrite) as tmp:
        (tmp / "report.md").write_text(render_markdown(report))
        (tmp / "report.json").write_text(json.dumps(report, indent=2))
        render_png(report, tmp / "report.png")
    return {"md": out / "report.md", "json": out / "report.json", "png": out / "report.png"}
