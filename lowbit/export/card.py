"""The model card (README.md) ``lowbit push`` uploads with a checkpoint.

Built from what the folder records: config.json's ``quantization_config`` (any format),
lowbit_report.json (method, source model, calibration data, weight error) and an evaluation
table when there is one (``lowbit_eval.json`` beside the checkpoint, or ``eval`` in the report).
Pure functions of the folder's files: no network.
"""
from __future__ import annotations

import json
from pathlib import Path

from .. import __version__
from ..models.checkpoint import REPORT_FILE

EVAL_FILE = "lowbit_eval.json"

_VLLM_QUANTIZATION = {"gptq": "gptq", "awq": "awq", "compressed-tensors": "compressed-tensors"}


def describe_quantization(qc: dict | None) -> dict:
    """Format, method, bits, group size, symmetry, act-order of any quantization_config lowbit reads."""
    if not isinstance(qc, dict):
        return {}
    fmt = qc.get("quant_method")
    if fmt == "lowbit":
        return {"format": "lowbit", "method": qc.get("method"), "bits": qc.get("bits"),
                "group_size": qc.get("group_size"), "sym": qc.get("sym"), "act_order": qc.get("desc_act")}
    if fmt == "gptq":
        return {"format": f"gptq ({qc.get('checkpoint_format', 'gptq')})", "bits": qc.get("bits"),
                "group_size": qc.get("group_size"), "sym": qc.get("sym"), "act_order": qc.get("desc_act")}
    if fmt == "awq":
        return {"format": f"awq ({qc.get('version', 'gemm')})", "bits": qc.get("bits", qc.get("w_bit")),
                "group_size": qc.get("group_size", qc.get("q_group_size")), "sym": not qc.get("zero_point", True)}
    if fmt == "compressed-tensors":
        groups = qc.get("config_groups") or {}
        w = (next(iter(groups.values()), {}) or {}).get("weights") or {}
        return {"format": f"compressed-tensors ({qc.get('format')})", "bits": w.get("num_bits"),
                "group_size": w.get("group_size") or -1, "sym": w.get("symmetric")}
    return {"format": str(fmt)}


def _read_json(path: Path) -> dict | list | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def eval_rows(folder: Path, report: dict) -> list[dict]:
    """Evaluation results as table rows: lowbit_eval.json (an object or a list of objects), else report['eval']."""
    data = _read_json(folder / EVAL_FILE)
    if data is None:
        data = report.get("eval")
    if isinstance(data, dict):
        data = data.get("rows", [data])
    if not isinstance(data, list):
        return []
    return [row for row in data if isinstance(row, dict) and row]


def _cell(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v).replace("|", "\\|")


def markdown_table(rows: list[dict]) -> str:
    keys: list[str] = []
    for row in rows:
        keys += [k for k, v in row.items() if k not in keys and not isinstance(v, (dict, list))]
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(_cell(row.get(k)) for k in keys) + " |" for row in rows]
    return "\n".join(lines)


def _is_hub_id(s: str | None) -> bool:
    if not s or s.startswith((".", "/", "~")) or s.endswith(".gguf") or Path(s).exists():
        return False
    parts = s.split("/")
    return len(parts) == 2 and all(parts)


def model_card(folder: str | Path, repo_id: str) -> str:
    """README.md text for the checkpoint in ``folder`` published as ``repo_id``."""
    folder = Path(folder)
    config = _read_json(folder / "config.json") or {}
    report = _read_json(folder / REPORT_FILE)
    report = report if isinstance(report, dict) else {}
    q = describe_quantization(config.get("quantization_config"))
    lowbit_qc = report.get("quantization_config") or {}
    method = q.get("method") or lowbit_qc.get("method")
    source = report.get("source")
    calibration = report.get("calibration")
    rows = eval_rows(folder, report)

    fmt = (config.get("quantization_config") or {}).get("quant_method")
    tags = ["lowbit", "quantized"] + [t for t in (fmt, method, q.get("bits") and f"{q['bits']}-bit") if t]
    front = ["---", "library_name: transformers", "tags:"] + [f"- {t}" for t in dict.fromkeys(tags)]
    if _is_hub_id(source):
        front.append(f"base_model: {source}")
    front.append("---")

    out = front + ["", f"# {repo_id.split('/')[-1]}", ""]
    summary = f"{q.get('bits')}-bit" if q.get("bits") else "Quantized"
    out.append(f"{summary} quantization{f' of `{source}`' if source else ''} made with lowbit "
               f"{report.get('lowbit_version', __version__)}.")
    out += ["", "## Quantization", "", "| setting | value |", "|---|---|"]
    settings = {"method": method, **{k: v for k, v in q.items() if k != "method"}}
    group = settings.get("group_size")
    if group == -1:
        settings["group_size"] = "-1 (one group per output channel)"
    out += [f"| {k} | {_cell(v)} |" for k, v in settings.items() if v is not None]
    if report.get("mean_rel_weight_error") is not None:
        out.append(f"| mean relative weight error | {report['mean_rel_weight_error']:.4g} |")
    out += ["", "## Calibration data", ""]
    if isinstance(calibration, dict) and calibration.get("dataset"):
        out.append(", ".join(f"{k}: {_cell(v)}" for k, v in calibration.items() if v is not None))
    elif method in ("gptq", "awq"):
        out.append("Not recorded.")
    else:
        out.append(f"None: {method or 'this method'} needs no calibration data.")
    if rows:
        out += ["", "## Evaluation", "", markdown_table(rows)]
    out += ["", "## Use", ""] + _usage(fmt, repo_id)
    return "\n".join(out) + "\n"


def _usage(fmt: str | None, repo_id: str) -> list[str]:
    lines = ["```python", "import lowbit", f'model = lowbit.load("{repo_id}")', "```"]
    if fmt in _VLLM_QUANTIZATION:
        lines = ["```bash", f"vllm serve {repo_id} --quantization {_VLLM_QUANTIZATION[fmt]}", "```", "",
                 "```python", "from transformers import AutoModelForCausalLM",
                 f'model = AutoModelForCausalLM.from_pretrained("{repo_id}")', "```", ""] + lines
    return lines
