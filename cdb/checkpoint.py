"""Orbax checkpoints of a running experiment, so an interrupted ``cdb.run`` can resume.

A checkpoint holds the per-seed carry (environment state, agent state, observation, seed keys),
the metrics recorded so far and the number of rounds done. Because round ``t`` always uses the
key ``fold_in(seed_key, t)``, a resumed run reproduces the uninterrupted run's curves exactly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp


class RunCheckpointer:
    """Saves and restores ``cdb.run`` progress in ``directory`` (keeps the last two blocks)."""

    def __init__(self, directory: str | Path, config: dict[str, Any], max_to_keep: int = 2):
        self.config = config
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep)
        self.manager = ocp.CheckpointManager(Path(directory).absolute(), options=options)

    def latest(self) -> int | None:
        return self.manager.latest_step()

    def save(self, done: int, carry: Any, blocks: list[dict], evals: list[dict]) -> None:
        if isinstance(carry.env_state, list):
            raise NotImplementedError("checkpointing is supported for pure-JAX environments only")
        history = {
            "metrics": {k: np.concatenate([b[k] for b in blocks], axis=1) for k in blocks[0]},
            "evals": {k: np.stack([e[k] for e in evals], axis=1) for k in evals[0]} if evals[0] else {},
        }
        self.manager.save(
            done,
            args=ocp.args.Composite(
                carry=ocp.args.StandardSave(carry),
                history=ocp.args.StandardSave(history),
                meta=ocp.args.JsonSave({"done": done, "config": self.config}),
            ),
        )
        self.manager.wait_until_finished()

    def restore(self, carry_like: Any):
        """Returns ``(carry, rounds_done, blocks, evals)`` from the latest checkpoint."""
        step = self.manager.latest_step()
        meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        # ``rounds`` may grow: resuming a finished run with more rounds extends it.
        if _without_rounds(meta["config"]) != _without_rounds(self.config):
            raise ValueError(
                "the checkpoint was written by a different experiment configuration; "
                f"saved {meta['config']!r}, now {self.config!r}"
            )
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, carry_like)
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(carry=ocp.args.StandardRestore(abstract), history=ocp.args.StandardRestore()),
        )
        history = jax.tree.map(np.asarray, restored["history"])
        n_evals = next(iter(history["evals"].values())).shape[1] if history["evals"] else 1
        evals = [{k: v[:, i] for k, v in history["evals"].items()} for i in range(n_evals)]
        return restored["carry"], int(meta["done"]), [history["metrics"]], evals

    def close(self) -> None:
        self.manager.close()


def _without_rounds(config):
    import json

    config = json.loads(json.dumps(config, default=str))
    config.pop("rounds", None)
    return config
