"""Evaluation results on screen (a table with each protocol in words) and on disk (``metrics.json`` beside the
checkpoint or samples they score, one entry per file)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from lightning_gen.files import atomic_write
from lightning_gen.metrics.registry import EvaluationSettings, MetricResult


def format_table(results: list[MetricResult]) -> str:
    lines = [f"{'metric':<24} {'value':>12}  protocol"]
    for result in results:
        p = result.protocol
        if "features" in p:
            where = (f"{p['features']} features, {p.get('num_generated')} samples vs {p.get('num_real')} "
                     f"{p.get('real_split')} images")
        elif "mixture" in p:
            where = f"{p.get('num_generated')} samples of the {p['mixture']} mixture, {p.get('high_quality')}"
        else:
            where = f"{p.get('num_images')} {p.get('split')} images, {p.get('estimator', 'exact')}"
        lines.append(f"{result.name:<24} {result.value:>12.5f}  {where}")
    return "\n".join(lines)


def write_metrics_json(ckpt_path: str, results: list[MetricResult], settings: EvaluationSettings) -> Path:
    """Merge this checkpoint's results into ``metrics.json`` beside it (one entry per checkpoint file)."""
    path = Path(ckpt_path).parent / "metrics.json"
    everything = json.loads(path.read_text()) if path.is_file() else {}
    everything[Path(ckpt_path).name] = {
        "evaluated_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "settings": {k: v for k, v in settings.__dict__.items() if k not in ("progress", "cache_dir")},
        "results": [r.to_dict() for r in results],
    }
    atomic_write(path, lambda temporary: temporary.write_text(json.dumps(everything, indent=2) + "\n"))
    return path
