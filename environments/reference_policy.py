"""The SFT reference policy of :class:`~cdb.environments.SequenceDuel`: train once, cache on disk.

``π_ref`` is a tiny causal transformer (:mod:`cdb.models`) fit by maximum likelihood on exact
samples of the environment's teacher ``p_T(y|x)``: every training step draws fresh uniform
prompts and one teacher response per prompt (forward filtering / backward sampling), and takes
an Adam step on the sequence negative log-likelihood ``−Σ_t log π(y_t | x, y_{<t})``.
The smallest achievable expected NLL is the teacher's conditional entropy ``E_x H(p_T(·|x))``
(exact, from the chain's log-partition), so ``nll − entropy`` estimates ``KL(p_T ‖ π_ref)``.

The model reads the prompt and the response as one sequence ``[x_0 … x_{Lp−1}, y_0 … y_{L−1}]``
over the shared vocabulary of ``V`` tokens; the logits at position ``Lp − 1 + t`` predict ``y_t``.

Training is a deterministic function of the configuration, so the trained parameters are cached
with orbax under ``<cache_dir>/reference-<hash>/`` where the hash covers every configuration
field that determines them (:meth:`SequenceDuel.reference_fingerprint` and a recipe version);
a ``meta.json`` beside them records the fingerprint and the training report (final NLL, teacher
entropy, uniform NLL, training time). ``cache_dir`` defaults to ``$CDB_CACHE_DIR`` or
``~/.cache/cdb/reference_policies``.

``ReferencePolicy`` is what an agent receives, the way it would receive an SFT checkpoint: the
model definition (``.model``, ``.config``) and the trained ``.params``, with pure
``log_prob(prompts, responses, params)`` and ``sample(key, prompts, params)`` that jit and vmap.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp

from cdb.models import Policy, TransformerConfig
from cdb.sequences import sample_responses, score_responses
from cdb.validation import check_float, check_int

Array = jax.Array
logger = logging.getLogger(__name__)

RECIPE_VERSION = 1  # bump when the training recipe changes: old cache entries are then ignored
DEFAULT_CACHE_DIR = os.path.join("~", ".cache", "cdb", "reference_policies")


@dataclasses.dataclass(frozen=True)
class ReferenceConfig:
    """Size and SFT training of the reference policy (a :class:`cdb.models.transformer.Transformer`).

    Attributes:
      num_layers: transformer blocks, >= 1.
      d_model: model width, >= 2, a multiple of ``2 · num_heads`` (even head size for RoPE).
      num_heads: attention heads, >= 1 (multi-head attention: as many key / value heads).
      d_ff: hidden width of the SwiGLU feed-forward blocks, >= 1.
      train_steps: Adam steps, >= 1; each draws a fresh batch of exact teacher samples.
      train_batch_size: prompts (one teacher response each) per step, >= 1.
      learning_rate: peak Adam learning rate (linear warm-up over 5% of the steps, cosine decay
        to 10%), > 0.
      seed: training seed (initialisation and data), >= 0.
      eval_size: fresh prompts on which the final NLL is reported against the teacher's entropy, >= 1.
    """

    num_layers: int = 2
    d_model: int = 32
    num_heads: int = 2
    d_ff: int = 64
    train_steps: int = 1000
    train_batch_size: int = 128
    learning_rate: float = 3e-3
    seed: int = 0
    eval_size: int = 2048

    def __post_init__(self):
        for name in (
            "num_layers",
            "d_model",
            "num_heads",
            "d_ff",
            "train_steps",
            "train_batch_size",
            "eval_size",
        ):
            check_int(self, name, getattr(self, name), low=1)
        check_int(self, "seed", self.seed, low=0)
        check_float(self, "learning_rate", self.learning_rate, low=0.0, low_inclusive=False)
        if self.d_model % (2 * self.num_heads):
            raise ValueError(
                f"ReferenceConfig.d_model={self.d_model!r} is out of range; expected a multiple of "
                f"2 * num_heads = {2 * self.num_heads} (an even head size for rotary embeddings)"
            )

    def transformer_config(self, vocab_size: int, max_len: int) -> TransformerConfig:
        """The :class:`TransformerConfig` of a reference policy over ``vocab_size`` tokens."""
        return TransformerConfig(
            vocab_size=vocab_size,
            d_model=self.d_model,
            num_layers=self.num_layers,
            num_heads=self.num_heads,
            num_kv_heads=self.num_heads,
            d_ff=self.d_ff,
            max_len=max_len,
        )


# --------------------------------------------------------------------------------------------
# Pure functions of a policy and its parameters
# --------------------------------------------------------------------------------------------


# (``log π(y|x)`` and sampling come from :mod:`cdb.sequences`, shared with the agents.)


@dataclasses.dataclass(frozen=True, eq=False)
class ReferencePolicy:
    """A trained SFT reference policy: the model definition and its parameters.

    Attributes:
      policy: the :class:`cdb.models.transformer.Policy` (model definition, hashable; ``.config``).
      params: its trained parameters (``nnx.State``).
      prompt_length, response_length: Lp and L of the environment it was trained for.
      path: the cache entry it was saved to / loaded from (``None`` if not cached).
      loaded_from_cache: whether this object was read from disk rather than trained now.
      report: the training report: ``nll`` (mean sequence NLL on fresh teacher samples, nats),
        ``teacher_entropy`` (``E_x H(p_T(·|x))``, the smallest achievable NLL), ``uniform_nll``
        (``L · log V``), ``train_seconds``, ``train_steps``, ``loss_first`` / ``loss_last``.
    """

    policy: Policy
    params: Any
    prompt_length: int
    response_length: int
    # where it was cached, whether it was read back and how its training went do not change the
    # policy (``params`` does): left out of a run's configuration, so that a run resumed in a
    # process that loads the cached policy matches the one that trained it
    path: str | None = dataclasses.field(default=None, metadata={"describe": False})
    loaded_from_cache: bool = dataclasses.field(default=False, metadata={"describe": False})
    report: dict[str, Any] = dataclasses.field(default_factory=dict, metadata={"describe": False})

    @property
    def config(self) -> TransformerConfig:
        return self.policy.config

    @property
    def model(self) -> Policy:
        """Alias of :attr:`policy` (the model definition)."""
        return self.policy

    def log_prob(self, prompts: Array, responses: Array, params: Any = None) -> Array:
        """``log π_ref(y|x)`` ``[B]`` (``params`` default to the trained ones)."""
        return score_responses(self.policy, self.params if params is None else params, prompts, responses).logprob

    def sample(self, key: Array, prompts: Array, params: Any = None, temperature: float = 1.0) -> Array:
        """Samples ``y ~ π_ref(·|x)`` ``[B, L]`` int32 (``params`` default to the trained ones)."""
        params = self.params if params is None else params
        return sample_responses(key, self.policy, params, prompts, self.response_length, temperature)[0]


# --------------------------------------------------------------------------------------------
# Training and the cache
# --------------------------------------------------------------------------------------------


def resolve_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """``cache_dir``, else ``$CDB_CACHE_DIR``, else ``~/.cache/cdb/reference_policies``."""
    if cache_dir is None:
        cache_dir = os.environ.get("CDB_CACHE_DIR") or DEFAULT_CACHE_DIR
    return Path(cache_dir).expanduser().absolute()


def cache_key(fingerprint: dict[str, Any]) -> str:
    """A 16-hex-digit hash of the fingerprint and :data:`RECIPE_VERSION`."""
    text = json.dumps({"recipe_version": RECIPE_VERSION, **fingerprint}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def train_reference(
    policy: Policy,
    teacher: Callable[[Array, Array], Array],
    teacher_entropy: Callable[[Array], Array],
    vocab_size: int,
    prompt_length: int,
    response_length: int,
    config: ReferenceConfig,
) -> tuple[Any, dict[str, Any]]:
    """Maximum-likelihood fit of ``policy`` to ``teacher`` samples; returns ``(params, report)``.

    Args:
      policy: the model definition.
      teacher: ``(key, prompts [B, Lp]) -> responses [B, L]``, exact teacher samples.
      teacher_entropy: ``prompts [B, Lp] -> [B]``, the teacher's exact conditional entropy.
      vocab_size, prompt_length, response_length: V, Lp, L.
      config: the training settings.
    """
    start = time.perf_counter()
    key = jax.random.key(config.seed)
    k_init, k_data, k_eval = jax.random.split(key, 3)
    params = policy.init(k_init)
    warmup = max(1, config.train_steps // 20)
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, config.learning_rate, warmup, max(config.train_steps, warmup + 1), config.learning_rate * 0.1
    )
    optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(schedule))

    def batch(k, size):
        k_x, k_y = jax.random.split(k)
        prompts = jax.random.randint(k_x, (size, prompt_length), 0, vocab_size, jnp.int32)
        return prompts, teacher(k_y, prompts)

    def loss_fn(p, prompts, responses):
        return -jnp.mean(score_responses(policy, p, prompts, responses).logprob)

    @jax.jit
    def train(params):
        def step(carry, k):
            p, opt_state = carry
            loss, grads = jax.value_and_grad(loss_fn)(p, *batch(k, config.train_batch_size))
            updates, opt_state = optimizer.update(grads, opt_state, p)
            return (optax.apply_updates(p, updates), opt_state), loss

        keys = jax.random.split(k_data, config.train_steps)
        (params, _), losses = jax.lax.scan(step, (params, optimizer.init(params)), keys)
        prompts, responses = batch(k_eval, config.eval_size)
        return params, losses, loss_fn(params, prompts, responses), jnp.mean(teacher_entropy(prompts))

    params, losses, nll, entropy = train(params)
    params = jax.block_until_ready(params)
    losses = np.asarray(losses)
    report = {
        "nll": float(nll),
        "teacher_entropy": float(entropy),
        "uniform_nll": float(response_length * np.log(vocab_size)),
        "train_seconds": time.perf_counter() - start,
        "train_steps": config.train_steps,
        "loss_first": float(losses[0]),
        "loss_last": float(losses[-min(len(losses), 20) :].mean()),
    }
    return params, report


def build_reference_policy(
    *,
    teacher: Callable[[Array, Array], Array],
    teacher_entropy: Callable[[Array], Array],
    vocab_size: int,
    prompt_length: int,
    response_length: int,
    config: ReferenceConfig,
    fingerprint: dict[str, Any],
    cache_dir: str | os.PathLike | None = None,
    retrain: bool = False,
    verbose: bool = False,
) -> ReferencePolicy:
    """Loads the reference policy of ``fingerprint`` from the cache, or trains and caches it.

    The cache entry is ``<cache_dir>/reference-<cache_key(fingerprint)>/`` holding the orbax
    checkpoint ``params/`` and ``meta.json`` (fingerprint and training report). It is written
    to a temporary directory and renamed into place, so concurrent builders never see half an
    entry (the first to finish writes it; the others keep it). ``retrain=True`` ignores and
    replaces an existing entry; an unreadable entry is replaced too.
    """
    policy = Policy(config.transformer_config(vocab_size, prompt_length + response_length))
    root = resolve_cache_dir(cache_dir)
    path = root / f"reference-{cache_key(fingerprint)}"
    common = dict(policy=policy, prompt_length=prompt_length, response_length=response_length, path=str(path))
    replace = retrain
    if path.is_dir() and not retrain:
        try:
            return ReferencePolicy(
                params=_restore(policy, path), loaded_from_cache=True, report=_read_meta(path), **common
            )
        except Exception as err:  # a corrupt or incompatible entry: retrain and replace it
            _log(verbose, f"reference policy cache entry {path} could not be read ({err}); retraining")
            replace = True
    _log(verbose, f"training the reference policy ({config.train_steps} steps) -> {path}")
    params, report = train_reference(
        policy, teacher, teacher_entropy, vocab_size, prompt_length, response_length, config
    )
    _save(
        path,
        params,
        {"fingerprint": fingerprint, "recipe_version": RECIPE_VERSION, "report": report},
        replace,
    )
    _log(
        verbose,
        f"reference policy: NLL {report['nll']:.3f} nats vs teacher entropy {report['teacher_entropy']:.3f} "
        f"(uniform {report['uniform_nll']:.3f}) after {report['train_seconds']:.1f} s",
    )
    return ReferencePolicy(params=params, loaded_from_cache=False, report=report, **common)


def _log(verbose: bool, message: str) -> None:
    logger.info(message)
    if verbose:
        print(message, flush=True)


def _read_meta(path: Path) -> dict[str, Any]:
    return json.loads((path / "meta.json").read_text()).get("report", {})


def _restore(policy: Policy, path: Path) -> Any:
    with ocp.StandardCheckpointer() as ckptr:
        return ckptr.restore(path / "params", policy.abstract_params())


def _save(path: Path, params: Any, meta: dict[str, Any], replace: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
    try:
        with ocp.StandardCheckpointer() as ckptr:
            ckptr.save(tmp / "params", params)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True, default=str))
        if path.exists():
            if not replace:  # another process finished first: keep its (identical) entry
                return
            shutil.rmtree(path, ignore_errors=True)
        os.rename(tmp, path)
    except OSError:
        if not path.is_dir():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
