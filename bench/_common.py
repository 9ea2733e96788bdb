"""Shared benchmark plumbing: machine description, percentiles, the JSON result line."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from datetime import datetime, timezone
from pathlib import Path

RESULTS = Path(__file__).with_name("results")


def machine() -> str:
    return f"{os.cpu_count()} cores, Python {platform.python_version()}, {platform.machine()}"


def git_rev() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent).stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def percentile_us(samples_ns: list[int], pct: float) -> int:  # float-ok: percentile rank
    if not samples_ns:
        return 0
    ordered = sorted(samples_ns)
    index = min(len(ordered) - 1, int(len(ordered) * pct / 100))
    return ordered[index] // 1_000


def emit(name: str, result: dict, *, smoke: bool) -> None:
    line = {"bench": name, "at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), "git": git_rev(), "machine": machine()}
    line.update(result)
    line["smoke"] = smoke
    text = json.dumps(line, sort_keys=False)
    print(text, flush=True)
    RESULTS.mkdir(exist_ok=True)
    target = RESULTS / (f"{name}.smoke.jsonl" if smoke else f"{name}.jsonl")
    with open(target, "a") as fh:
        fh.write(text + "\n")
