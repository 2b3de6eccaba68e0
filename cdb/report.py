"""Text helpers for benchmark and sweep reports: a header naming the command and machine, markdown tables."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

import jax


def header() -> str:
    """The command line, the machine and the JAX backend, printed first by every benchmark."""
    cpu = platform.processor() or platform.machine()
    lines = [
        f"command: python {' '.join(sys.argv)}",
        f"machine: {platform.node()} | {cpu} | {os.cpu_count()} cores | python {platform.python_version()}",
        f"jax {jax.__version__} | backend {jax.default_backend()} | devices {jax.devices()}",
    ]
    return "\n".join(lines)


def output_dir(path: str | os.PathLike) -> Path:
    """``path`` as a ``Path``, created with its parents if missing."""
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    return out


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    """A GitHub markdown table of ``rows`` (dicts) with the given ``columns``, in that order."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(r[c]) for c in columns) + " |" for r in rows]
    return "\n".join(lines)
