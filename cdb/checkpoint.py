"""Orbax checkpoints of a running experiment, so an interrupted ``cdb.run`` can resume.

A checkpoint folder holds one sub-folder per checkpoint, named by the rounds done (the last
two are kept), each with

* ``carry/``: the per-seed state (environment state, agent state, observation, seed keys),
* ``history/``: the per-round metrics and evaluations recorded so far,
* ``meta/``: JSON with the rounds done, the run's configuration (agent, environment, parameters,
  seeds, ``seed_range``, ``eval_every``, the key and its PRNG) and one SHA-256 over every array
  in ``carry`` and ``history`` and the rounds done and configuration,
* ``_CHECKPOINT_METADATA`` (orbax's) with the mark ``{"cdb_run_checkpoint": 2}``.

Only sub-folders with that mark are checkpoints (those written before the mark by their
``carry`` / ``history`` / ``meta`` items): any other folder in ``checkpoint_dir``, all-digit
names included, is never read, replaced or removed. Saving is synchronous: ``save`` returns
when the checkpoint is on disk, and a failed save raises at once, leaving no thread behind.

Resuming checks, in order:

1. that the configuration has no callable that :func:`cdb.config.describe` can describe
   neither by its name nor by its code (an object shown by its memory address:
   :func:`cdb.config.unidentified_callables`), else a ``ValueError`` naming where it sits,
   since a changed one would pass unnoticed;
2. that the saved configuration equals the new one except for ``rounds`` (else a
   ``ValueError`` naming the fields that differ);
3. that the saved state has the tree structure, shapes and dtypes of the state this code's
   ``init`` builds (else a ``ValueError`` naming the first paths that differ: the code changed);
4. that the arrays, rounds done and configuration read back have the saved checksum, and that
   the saved history holds exactly the rounds done.

A checkpoint that fails 4. or cannot be read (empty, truncated, flipped bytes, an edited
``done``) is reported with a warning, removed, and the previous one is used; if none can be
read the run stops with a ``ValueError``. Because round ``t``'s keys depend only on the seed's key
and ``t`` (:mod:`cdb.keys`), a resumed run reproduces the uninterrupted run's curves exactly.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import warnings
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from cdb.config import config_differences, unidentified_callables, unidentified_error

#: The mark in a checkpoint's ``_CHECKPOINT_METADATA`` (``custom_metadata``) and its format:
#: 2 = the checksum covers the rounds done and the configuration too.
MARK, FORMAT = "cdb_run_checkpoint", 2
_ITEMS = ("carry", "history", "meta")

__all__ = ["RunCheckpointer", "checksum", "config_differences", "is_run_checkpoint"]


def is_run_checkpoint(folder: str | Path) -> bool:
    """Whether ``folder`` is a finished checkpoint written by ``cdb.run`` (it carries the mark)."""
    try:
        metadata = json.loads((Path(folder) / "_CHECKPOINT_METADATA").read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(metadata, dict):
        return False
    custom = metadata.get("custom_metadata")
    if isinstance(custom, dict) and MARK in custom:
        return True
    handlers = metadata.get("item_handlers")  # written before the mark: recognised by its items
    return isinstance(handlers, dict) and sorted(handlers) == sorted(_ITEMS)


@dataclasses.dataclass(frozen=True)
class _RunCheckpointSteps(ocp.path.step.NameFormat):
    """Orbax's step folders (``4``, ``8``, ...), restricted to the folders that carry the mark."""

    standard: Any = dataclasses.field(default_factory=ocp.path.step.standard_name_format)

    def build_name(self, step: int) -> str:
        return self.standard.build_name(step)

    def find_all(self, base_path):
        return (m for m in self.standard.find_all(base_path) if is_run_checkpoint(m.path))

    def find_step(self, base_path, step: int):
        found = self.standard.find_step(base_path, step)
        if not is_run_checkpoint(found.path):
            raise ValueError(f"{found.path} is not a checkpoint written by cdb.run")
        return found


class RunCheckpointer:
    """Saves and restores ``cdb.run`` progress in ``directory`` (keeps the last ``max_to_keep`` blocks)."""

    def __init__(self, directory: str | Path, config: dict[str, Any], max_to_keep: int = 2):
        self.directory = Path(directory).absolute()
        self.config = _plain(config)
        self._steps = _RunCheckpointSteps()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, enable_async_checkpointing=False, step_name_format=self._steps
        )
        handlers = {
            "carry": ocp.StandardCheckpointHandler(),
            "history": ocp.StandardCheckpointHandler(),
            "meta": ocp.JsonCheckpointHandler(),
        }
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)

    def latest(self) -> int | None:
        return self.manager.latest_step()

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def save(self, done: int, carry: Any, blocks: list[dict], evals: list[dict]) -> None:
        target = self.directory / self._steps.build_name(done)
        if target.exists():
            raise ValueError(
                f"cdb.run: checkpoint_dir={str(self.directory)!r} holds a folder {target.name!r} that is not a "
                f"checkpoint of this run, where the checkpoint after round {done} goes; it is left as it is. "
                "Move it away, or pass a checkpoint_dir that holds nothing else"
            )
        history = {
            "metrics": {k: np.concatenate([b[k] for b in blocks], axis=1) for k in blocks[0]},
            "evals": {k: np.stack([e[k] for e in evals], axis=1) for k in evals[0]} if evals[0] else {},
        }
        unidentified = unidentified_callables(self.config)
        if unidentified and not self.steps():
            warnings.warn(
                f"cdb.run: the checkpoints in {str(self.directory)!r} cannot be resumed: the configuration holds "
                f"callables that can be described neither by a name nor by their code ({'; '.join(unidentified[:4])}); "
                "give them a repr that says what they compute, or name them with cdb.config.named(fn, 'a_name')",
                RuntimeWarning,
                stacklevel=4,
            )
        fields = {"format": FORMAT, "done": done, "config": self.config}
        meta = {**fields, "sha256": checksum(carry, history, fields)}
        self.manager.save(
            done,
            args=ocp.args.Composite(
                carry=ocp.args.StandardSave(carry),
                history=ocp.args.StandardSave(history),
                meta=ocp.args.JsonSave(meta),
            ),
            custom_metadata={MARK: FORMAT},
        )

    def restore(self, carry_like: Any):
        """``(carry, rounds_done, blocks, evals)`` from the latest readable checkpoint, or ``None``
        when there is none (each unreadable one is removed with a warning)."""
        steps = sorted(self.manager.all_steps(), reverse=True)
        unidentified = unidentified_callables(self.config)
        if steps and unidentified:
            raise unidentified_error(
                f"cdb.run: checkpoint_dir={str(self.directory)!r} holds checkpoints to resume (rounds {steps[::-1]})",
                unidentified,
                "A resumed run could go on with other functions of those names than the run that saved them, so "
                "it does not resume.",
            )
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, carry_like)
        discarded = []
        for step in steps:
            try:
                meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
                saved = meta["config"]
                done = int(meta["done"])
                saved_layout = _layout(self.manager.item_metadata(step)["carry"])
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
            layout_differences = _layout_differences(saved_layout, _layout(carry_like))
            if layout_differences:
                raise ValueError(
                    f"cdb.run: checkpoint_dir={str(self.directory)!r} holds a state of another layout than the one "
                    f"this code's init builds for the same configuration, so the agent's or the environment's code "
                    f"changed since it was saved; first differing paths (saved -> now): "
                    f"{'; '.join(layout_differences)}. Resume with the code that saved it, or start afresh in an "
                    "empty checkpoint_dir"
                )
            try:
                restored = self.manager.restore(
                    step,
                    args=ocp.args.Composite(
                        carry=ocp.args.StandardRestore(abstract), history=ocp.args.StandardRestore()
                    ),
                )
                carry, history = restored["carry"], jax.tree.map(np.asarray, restored["history"])
                problem = _check_history(carry, history, meta, done)
            except Exception as err:  # noqa: BLE001
                discarded.append(self._discard(step, f"its arrays cannot be read ({type(err).__name__}: {err})"))
                continue
            if problem is not None:
                discarded.append(self._discard(step, problem))
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
        shutil.rmtree(self.directory / self._steps.build_name(step), ignore_errors=True)
        self.manager.reload()
        return step

    def close(self) -> None:
        self.manager.close()


def checksum(carry: Any, history: Any, fields: dict[str, Any] | None = None) -> str:
    """SHA-256 over the dtypes, shapes and bytes of every array of ``carry`` and ``history``, in
    tree order, then over ``fields`` (what else decides what is resumed) as sorted JSON."""
    h = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_flatten_with_path((carry, history))[0]:
        a = np.ascontiguousarray(np.asarray(leaf))
        h.update(f"{jax.tree_util.keystr(path)}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    if fields is not None:
        h.update(json.dumps(fields, sort_keys=True).encode())
    return h.hexdigest()


def _check_history(carry: Any, history: dict, meta: dict, done: int) -> str | None:
    """Why a restored checkpoint cannot be trusted (``None`` if it can): its checksum, and a
    history that does not hold exactly ``done`` rounds."""
    if meta.get("format") == FORMAT:
        ok = checksum(carry, history, {k: meta.get(k) for k in ("format", "done", "config")}) == meta.get("sha256")
    else:  # written before the checksum covered the rounds done and the configuration
        ok = checksum(carry, history) == meta.get("sha256")
    if not ok:
        return "its arrays or its meta data do not match the checksum saved with them"
    lengths = {np.shape(v)[1] for v in history["metrics"].values() if np.ndim(v) >= 2}
    if lengths and lengths != {done}:
        return f"its meta data says {done} rounds are done, but its history holds {sorted(lengths)} rounds"
    return None


def _layout(tree: Any) -> dict[str, str]:
    """``{"agent_state.w": "float32[3, 2]", ...}`` of a state or of orbax's metadata of a saved one
    (which spells a dataclass's fields as dict keys: both give the same paths)."""
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        names = [str(getattr(k, "name", getattr(k, "key", getattr(k, "idx", k)))) for k in path]
        out[".".join(names)] = f"{np.dtype(leaf.dtype).name}{list(np.shape(leaf))}"
    return out


def _layout_differences(saved: dict[str, str], now: dict[str, str], limit: int = 6) -> list[str]:
    paths = [p for p in sorted(set(saved) | set(now)) if saved.get(p) != now.get(p)]
    return [f"carry.{p}: {saved.get(p, '<absent>')} -> {now.get(p, '<absent>')}" for p in paths[:limit]]


def _plain(config):
    return json.loads(json.dumps(config, default=str))


def _without_rounds(config):
    config = _plain(config)
    config.pop("rounds", None)
    return config
