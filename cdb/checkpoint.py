"""Orbax checkpoints of a running experiment, so an interrupted ``cdb.run`` can resume.

A checkpoint folder holds one sub-folder per checkpoint, named by the rounds done (the last
two are kept), each with

* ``carry/``: the per-seed state (environment state, agent state, observation, seed keys),
* ``history/``: the per-round metrics and evaluations recorded so far,
* ``meta/``: JSON with the rounds done, the run's configuration (agent, environment, parameters,
  seeds, ``seed_range``, ``eval_every``, the key and its PRNG) and the SHA-256 of every array
  in ``carry`` and ``history``.

Resuming checks, in order: that the saved configuration equals the new one except for
``rounds`` (else a ``ValueError`` naming the fields that differ); that the arrays read back
have the saved checksum. A checkpoint that cannot be read (empty, truncated, flipped bytes) is
reported with a warning, removed, and the previous one is used; if none can be read the run
stops with a ``ValueError``. Because round ``t`` always uses the key ``fold_in(seed_key, t)``,
a resumed run reproduces the uninterrupted run's curves exactly.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import warnings
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp


class RunCheckpointer:
    """Saves and restores ``cdb.run`` progress in ``directory`` (keeps the last ``max_to_keep`` blocks)."""

    def __init__(self, directory: str | Path, config: dict[str, Any], max_to_keep: int = 2):
        self.directory = Path(directory).absolute()
        self.config = _plain(config)
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest(self) -> int | None:
        return self.manager.latest_step()

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def save(self, done: int, carry: Any, blocks: list[dict], evals: list[dict]) -> None:
        history = {
            "metrics": {k: np.concatenate([b[k] for b in blocks], axis=1) for k in blocks[0]},
            "evals": {k: np.stack([e[k] for e in evals], axis=1) for k in evals[0]} if evals[0] else {},
        }
        meta = {"done": done, "config": self.config, "sha256": checksum(carry, history)}
        self.manager.save(
            done,
            args=ocp.args.Composite(
                carry=ocp.args.StandardSave(carry),
                history=ocp.args.StandardSave(history),
                meta=ocp.args.JsonSave(meta),
            ),
        )
        self.manager.wait_until_finished()

    def restore(self, carry_like: Any):
        """``(carry, rounds_done, blocks, evals)`` from the latest readable checkpoint, or ``None``
        when no checkpoint can be read (each unreadable one is removed with a warning)."""
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, carry_like)
        discarded = []
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
                saved = meta["config"]
                done = int(meta["done"])
            except Exception as err:  # noqa: BLE001 - any unreadable checkpoint falls back the same way
                discarded.append(self._discard(step, f"its meta data cannot be read ({type(err).__name__}: {err})"))
                continue
            # ``rounds`` may differ: resuming with more rounds extends the run, with fewer truncates it.
            differences = config_differences(_without_rounds(saved), _without_rounds(self.config))
            if differences:
                raise ValueError(
                    f"checkpoint_dir={str(self.directory)!r} was written by a different experiment "
                    f"configuration; differing fields (saved -> now): {'; '.join(differences)}"
                )
            try:
                restored = self.manager.restore(
                    step,
                    args=ocp.args.Composite(
                        carry=ocp.args.StandardRestore(abstract), history=ocp.args.StandardRestore()
                    ),
                )
                carry, history = restored["carry"], jax.tree.map(np.asarray, restored["history"])
                ok = checksum(carry, history) == meta.get("sha256")
            except Exception as err:  # noqa: BLE001
                discarded.append(self._discard(step, f"its arrays cannot be read ({type(err).__name__}: {err})"))
                continue
            if not ok:
                discarded.append(self._discard(step, "its arrays do not match the checksum saved with them"))
                continue
            n_evals = next(iter(history["evals"].values())).shape[1] if history["evals"] else 1
            evals = [{k: v[:, i] for k, v in history["evals"].items()} for i in range(n_evals)]
            return carry, done, [history["metrics"]], evals
        if discarded:
            raise ValueError(
                f"checkpoint_dir={str(self.directory)!r}: no checkpoint there can be read (those after rounds "
                f"{sorted(discarded)} were damaged and are removed); run again to start from round 0"
            )
        return None

    def _discard(self, step: int, reason: str) -> int:
        warnings.warn(
            f"cdb.run: the checkpoint after round {step} in {str(self.directory)!r} is unusable ({reason}); "
            "removing it and falling back to the previous checkpoint",
            RuntimeWarning,
            stacklevel=3,
        )
        shutil.rmtree(self.directory / str(step), ignore_errors=True)
        self.manager.reload()
        return step

    def close(self) -> None:
        self.manager.close()


def checksum(carry: Any, history: Any) -> str:
    """SHA-256 over the dtypes, shapes and bytes of every array of ``carry`` and ``history``, in tree order."""
    h = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_flatten_with_path((carry, history))[0]:
        a = np.ascontiguousarray(np.asarray(leaf))
        h.update(f"{jax.tree_util.keystr(path)}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def config_differences(saved: Any, now: Any, path: str = "config", limit: int = 8) -> list[str]:
    """Where two JSON configurations differ: ``["config.agent.selector.type: 'EETS' -> 'Passive'", ...]``."""
    out: list[str] = []

    def walk(a, b, where):
        if len(out) >= limit:
            return
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b), key=str):
                if k not in a or k not in b:
                    out.append(f"{where}.{k}: {_short(a.get(k, '<absent>'))} -> {_short(b.get(k, '<absent>'))}")
                else:
                    walk(a[k], b[k], f"{where}.{k}")
        elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
            for i, (x, y) in enumerate(zip(a, b, strict=True)):
                walk(x, y, f"{where}[{i}]")
        elif a != b:
            out.append(f"{where}: {_short(a)} -> {_short(b)}")

    walk(saved, now, path)
    return out


def _short(value: Any, width: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def _plain(config):
    return json.loads(json.dumps(config, default=str))


def _without_rounds(config):
    config = _plain(config)
    config.pop("rounds", None)
    return config
