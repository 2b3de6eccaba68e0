"""Decoding throughput of ``cdb.models.generate`` against Hugging Face ``generate`` (PyTorch), one process.

SmolLM2-135M-Instruct on the CPU (cdb in float32, or in bfloat16 with ``--dtype bfloat16``: weights,
activations and KV cache; Hugging Face always in float32), batches of 8 and 32 prompts, 64 new tokens per row
with EOS stopping off (both sides produce exactly 64 tokens per row), greedy decoding. Both
sides hold THE SAME WEIGHTS (the cdb parameters converted to a ``LlamaForCausalLM`` state
dict), so in float32 they must emit the same tokens; the script reports the agreement (in
bfloat16 greedy paths part where two logits are closer than bfloat16's rounding).
Repeats are interleaved (cdb, HF, cdb, HF, ...) and the best of each is kept, because the
machine may be shared.

Also reported:

* the share of the memory-bandwidth roofline of one cdb decode step at batch 8: bytes read per
  step (every weight once, the LM head included, plus the KV cache) divided by the measured
  step time, against the machine's bandwidth measured in this script with a large array copy
  (the best of numpy's and torch's copy of a 256 MiB float32 array, counting read + write);
* the same step without its attention (:func:`step_without_attention`: norms, projections, MLP
  and LM head), timed as one XLA program and in NumPy: HF's time per token over NumPy's is the
  most any decoder whose matrix products are only as fast as NumPy's BLAS could gain;
* one DPO policy step: ``π_θ`` forward and backward plus a ``π_ref`` forward on 8 (chosen,
  rejected) pairs of 64 response tokens after 32 prompt tokens, through
  ``cdb.models.response_token_logprobs`` and ``cdb.losses.DAPLoss('dpo')``, and an Adam update.

Run (jax and torch in one environment)::

    PYTHONPATH=. /work/torchenv/bin/python benchmarks/llm_throughput.py [--random-weights] [--dtype bfloat16]

By default the real SmolLM2-135M-Instruct weights are loaded with
``cdb.models.load_pretrained("smollm2-135m-instruct")``; when that is unavailable the script
says why and uses random weights with SmolLM2-135M's shapes (``--random-weights`` asks for
them directly). Throughput does not depend on the weights' values.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from cdb.models import Policy, TransformerConfig, response_token_logprobs
from cdb.models.generate import decode, prefill_shared

OUT = Path(__file__).parent / "results" / "llm_throughput"
NAME = "smollm2-135m-instruct"
SMOLLM2_135M = TransformerConfig(
    vocab_size=49152,
    d_model=576,
    num_layers=30,
    num_heads=9,
    num_kv_heads=3,
    d_ff=1536,
    max_len=2048,
    rope_theta=100000.0,
    norm_eps=1e-5,
    tie_embeddings=True,
)
PROMPT_LEN = 32


def load_model(random_weights: bool):
    """``(policy, params, source)``: the real SmolLM2-135M-Instruct, or random weights with its shapes."""
    if not random_weights:
        try:
            from cdb.models import load_pretrained

            pretrained = load_pretrained(NAME)
            params = jax.tree.map(lambda x: x.astype(jnp.float32), pretrained.params)
            return pretrained.policy, params, f"{NAME} weights (load_pretrained)"
        except Exception as error:  # noqa: BLE001 - any failure falls back, and says why
            print(
                f"could not load {NAME!r} ({type(error).__name__}: {error}); using random weights with its "
                "shapes (pass --random-weights to ask for them directly)",
                file=sys.stderr,
            )
    policy = Policy(SMOLLM2_135M)
    return policy, policy.init(jax.random.key(0)), "random weights with SmolLM2-135M's shapes"


def torch_state_dict(params) -> dict:
    """Our parameters as a ``LlamaForCausalLM`` state dict (HF names; kernels transposed to weights)."""
    import torch

    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        keys = [str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path]
        if keys[-1] == "value":
            keys = keys[:-1]
        array = np.array(leaf, np.float32)
        *module, name = keys
        if name == "kernel":
            array = array.T
        prefix = "lm_head" if module == ["lm_head"] else "model." + ".".join(module)
        out[f"{prefix}.weight" if name != "bias" else f"{prefix}.bias"] = torch.from_numpy(np.ascontiguousarray(array))
    return out


def hf_model(config: TransformerConfig, params):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    hf_config = LlamaConfig(
        vocab_size=config.vocab_size,
        hidden_size=config.d_model,
        intermediate_size=config.d_ff,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_kv_heads,
        max_position_embeddings=config.max_len,
        rope_theta=config.rope_theta,
        rms_norm_eps=config.norm_eps,
        tie_word_embeddings=config.tie_embeddings,
        attention_bias=config.qkv_bias,
        torch_dtype="float32",
    )
    model = LlamaForCausalLM(hf_config).eval()
    state = torch_state_dict(params)
    if config.tie_embeddings:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if "rotary" not in k]
    if missing or unexpected:
        raise RuntimeError(f"state dict mismatch: missing {missing}, unexpected {unexpected}")
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    return model.to(torch.float32)


def prompts_for(batch: int, vocab: int, seed: int = 0):
    """``[batch, 32]`` left-padded random prompts of 16 to 32 real tokens."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(16, PROMPT_LEN + 1, size=batch)
    tokens = rng.integers(1, vocab, size=(batch, PROMPT_LEN)).astype(np.int32)
    mask = np.arange(PROMPT_LEN)[None, :] >= (PROMPT_LEN - lengths)[:, None]
    return np.where(mask, tokens, 0).astype(np.int32), mask


def memory_bandwidth() -> dict:
    """Best copy bandwidth (read + write bytes per second) of a 256 MiB float32 array: numpy and torch."""
    n = 64 * 2**20
    src, dst = np.ones(n, np.float32), np.empty(n, np.float32)
    copies = {"numpy": lambda: np.copyto(dst, src)}
    try:
        import torch

        tsrc, tdst = torch.ones(n), torch.empty(n)
        copies["torch"] = lambda: tdst.copy_(tsrc)
    except ImportError:
        pass
    best = dict.fromkeys(copies, 0.0)
    for _ in range(5):
        for name, copy in copies.items():
            t = time.perf_counter()
            copy()
            best[name] = max(best[name], 2 * src.nbytes / (time.perf_counter() - t))
    return {k: v / 1e9 for k, v in best.items()}


def _llama_layers(params) -> list[dict]:
    """Per layer, the kernels ``[n_in, n_out]`` of a Llama block by name (``q_proj`` ... ``down_proj``)."""
    return [  # [...] gives the array of an nnx.Param and of a plain array alike
        {name: part[name]["kernel"][...] for part in (layer["self_attn"], layer["mlp"]) for name in part}
        for layer in (params["layers"][i] for i in sorted(params["layers"]))
    ]


def step_without_attention(x, layers: list[dict], embedding, xp):
    """A SmolLM2 (Llama) decode step's matrix work on hidden states ``x`` ``[B, D]``, with ``xp`` = jnp or np.

    Per layer: the RMS norm (no scale), the Q/K/V/O projections and the SwiGLU MLP with both
    residual adds; then the tied LM head (``x @ embeddingᵀ``). Attention over the cache, rotary
    embeddings and sampling are left out. Returns the logits ``[B, V]`` and a scalar that keeps
    the K and V projections (the cache's new rows) alive.
    """

    def norm(x):
        return x / xp.sqrt(xp.mean(x * x, axis=-1, keepdims=True) + 1e-5)

    keep = 0.0
    for w in layers:
        h = norm(x)
        keep = keep + (h @ w["k_proj"]).sum() + (h @ w["v_proj"]).sum()
        x = x + (h @ w["q_proj"]) @ w["o_proj"]  # the output projection of the step's queries
        h = norm(x)
        gate = h @ w["gate_proj"]
        x = x + (gate / (1.0 + xp.exp(-gate)) * (h @ w["up_proj"])) @ w["down_proj"]
    return norm(x) @ embedding.T, keep


def matmul_floor(params, batch: int, repeats: int) -> dict:
    """Milliseconds of :func:`step_without_attention` at ``batch`` rows: one XLA program, and NumPy.

    NumPy's time bounds any decoder whose matrix products are only as fast as NumPy's BLAS: it
    cannot take less time per token, whatever it does about attention and sampling. The XLA
    program is the same work compiled on its own, for comparison with cdb's whole step (which
    may be faster: XLA compiles the step inside the decode loop differently).
    """
    layers, embedding = _llama_layers(params), params["embed_tokens"]["embedding"][...]
    x0 = np.random.default_rng(3).standard_normal((batch, embedding.shape[1])).astype(np.float32)
    xla = jax.jit(lambda x, layers, embedding: step_without_attention(x, layers, embedding, jnp))
    np_layers = [{k: np.asarray(v) for k, v in w.items()} for w in layers]
    np_embedding = np.asarray(embedding)
    runs = {
        "xla": lambda: jax.block_until_ready(xla(x0, layers, embedding)),
        "numpy": lambda: step_without_attention(x0, np_layers, np_embedding, np),
    }
    best = dict.fromkeys(runs, float("inf"))
    for run in runs.values():
        run()  # compiles / warms up
    for _ in range(max(repeats, 3)):
        for name, run in runs.items():
            t = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - t)
    return {f"{k}_ms": 1e3 * v for k, v in best.items()}


def dpo_step_time(policy, params, repeats: int) -> float:
    """Seconds of one jitted DPO step: π_θ forward + backward and π_ref forward on 8 pairs, Adam update."""
    import optax

    from cdb.losses import DAPLoss

    rng = np.random.default_rng(1)
    v = policy.config.vocab_size
    prompts, prompt_mask = prompts_for(8, v, seed=2)
    prompts2, mask2 = np.concatenate([prompts, prompts]), np.concatenate([prompt_mask, prompt_mask])
    responses = rng.integers(1, v, size=(16, 64)).astype(np.int32)  # rows 0-7 chosen, 8-15 rejected
    response_mask = np.ones((16, 64), bool)
    loss_fn, opt = DAPLoss("dpo", beta=0.1), optax.adam(1e-6)
    ref_params = params

    @jax.jit
    def step(params, opt_state):
        ref = jnp.sum(response_token_logprobs(policy, ref_params, prompts2, mask2, responses, response_mask), -1)

        def loss(p):
            lp = jnp.sum(response_token_logprobs(policy, p, prompts2, mask2, responses, response_mask), -1)
            return loss_fn(lp[:8], lp[8:], ref[:8], ref[8:])[0]

        value, grads = jax.value_and_grad(loss)(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    opt_state = opt.init(params)
    jax.block_until_ready(step(params, opt_state))
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(step(params, opt_state))
        best = min(best, time.perf_counter() - t)
    return best


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--random-weights", action="store_true", help="random weights with SmolLM2-135M's shapes")
    parser.add_argument("--batches", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-hf", action="store_true", help="time cdb only")
    parser.add_argument("--no-dpo", action="store_true", help="skip the DPO step")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="cdb's dtype")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)

    threads = len(os.sched_getaffinity(0))
    have_torch = False
    if not args.no_hf:
        try:
            import torch

            torch.set_num_threads(threads)
            have_torch = True
        except ImportError:
            print("torch is not installed: timing cdb only", file=sys.stderr)
    policy, params, source = load_model(args.random_weights)
    config = policy.config  # float32: Hugging Face's model is built from these weights
    hf = hf_model(config, params) if have_torch else None
    if args.dtype == "bfloat16":
        low = jnp.bfloat16
        policy = Policy(dataclasses.replace(config, dtype=low, param_dtype=low))
        params = jax.tree.map(lambda x: x.astype(low), params)
    n_params = sum(x.size for x in jax.tree.leaves(params))
    weight_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(params))
    length = args.new_tokens
    print(f"command: {' '.join(sys.argv)}")
    print(f"machine: {platform.node()} | {platform.machine()} | {threads} cores | jax {jax.__version__}")
    print(
        f"model: {source}, {n_params / 1e6:.1f}M parameters, cdb in {args.dtype}; {length} new tokens, greedy, no EOS"
    )
    if have_torch:
        print(f"torch {torch.__version__} with {torch.get_num_threads()} threads")

    def run_cdb(prompts, mask):
        t0 = time.perf_counter()
        state, logits = prefill_shared(policy, params, prompts, mask, length, 1)
        jax.block_until_ready(logits)
        t1 = time.perf_counter()
        out, _ = decode(jax.random.key(0), policy, params, state, logits, length, temperature=0.0)
        tokens = np.asarray(out.tokens)
        t2 = time.perf_counter()
        return tokens, t2 - t0, t2 - t1

    def run_hf(prompts, mask, new_tokens=length):
        with torch.inference_mode():
            t0 = time.perf_counter()
            out = hf.generate(
                input_ids=torch.from_numpy(prompts.astype(np.int64)),
                attention_mask=torch.from_numpy(mask.astype(np.int64)),
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=False,
            )
            return out[:, prompts.shape[1] :].numpy(), time.perf_counter() - t0

    rows = []
    figures = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "command": " ".join(sys.argv),
        "machine": f"{platform.node()} {platform.machine()}, {threads} cores",
        "weights": source,
        "cdb_dtype": args.dtype,
        "jax": jax.__version__,
        "torch": torch.__version__ if have_torch else None,
        "threads": threads,
        "repeats": args.repeats,
        "parameters": n_params,
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "llm_throughput" if args.dtype == "float32" else f"llm_throughput_{args.dtype}"

    def save():  # after every stage, so an interrupted run keeps what it measured
        (args.out / f"{stem}.json").write_text(json.dumps(figures, indent=2) + "\n")
        cols = list(rows[0]) if rows else []
        lines = [",".join(cols)] + [",".join(str(r.get(c, "")) for c in cols) for r in rows]
        (args.out / f"{stem}.csv").write_text("\n".join(lines) + "\n")

    for batch in args.batches:
        prompts, mask = prompts_for(batch, config.vocab_size)
        t = time.perf_counter()
        ours, _, _ = run_cdb(prompts, mask)  # compiles
        compile_s = time.perf_counter() - t
        if hf is not None:
            run_hf(prompts, mask, 2)  # warm-up
        best = {"cdb": float("inf"), "decode": float("inf"), "hf": float("inf")}
        theirs = None
        for _ in range(args.repeats):
            ours, total, decode_s = run_cdb(prompts, mask)
            best["cdb"], best["decode"] = min(best["cdb"], total), min(best["decode"], decode_s)
            if hf is not None:
                theirs, total = run_hf(prompts, mask)
                best["hf"] = min(best["hf"], total)
        row = {
            "batch": batch,
            "new_tokens": length,
            "cdb_tokens_per_s": batch * length / best["cdb"],
            "cdb_seconds": best["cdb"],
            "cdb_decode_step_ms": 1e3 * best["decode"] / (length - 1),
            "cdb_first_call_seconds": compile_s,
        }
        floor = matmul_floor(params, batch, args.repeats)
        row.update(no_attention_step_xla_ms=floor["xla_ms"], no_attention_step_numpy_ms=floor["numpy_ms"])
        if theirs is not None:
            row.update(
                hf_tokens_per_s=batch * length / best["hf"],
                hf_seconds=best["hf"],
                speedup=best["hf"] / best["cdb"],
                identical_rows=int(np.all(ours == theirs, axis=1).sum()),
                identical_tokens=float(np.mean(ours == theirs)),
                # HF's time per token (prefill included) over NumPy's step without attention: no
                # decoder whose matrix products are only as fast as NumPy's BLAS can beat HF by more
                hf_ms_per_token=1e3 * best["hf"] / length,
                speedup_bound_at_numpy_products=best["hf"] / length / (floor["numpy_ms"] / 1e3),
            )
        rows.append(row)
        print(json.dumps(row), flush=True)
        save()

    row8 = next((r for r in rows if r["batch"] == 8), None)
    if row8 is not None:
        bandwidth = memory_bandwidth()
        slots = PROMPT_LEN + length
        itemsize = jnp.dtype(policy.config.dtype).itemsize
        kv_bytes = 2 * config.num_layers * 8 * slots * config.num_kv_heads * config.head_dim * itemsize
        step_bytes = weight_bytes + kv_bytes
        achieved = step_bytes / (row8["cdb_decode_step_ms"] / 1e3) / 1e9
        figures["roofline_batch8"] = {
            "bytes_per_step": step_bytes,
            "weight_bytes": weight_bytes,
            "kv_cache_bytes": kv_bytes,
            "achieved_GBps": achieved,
            "copy_bandwidth_GBps": bandwidth,
            "share": achieved / max(bandwidth.values()),
        }
        print(json.dumps(figures["roofline_batch8"]), flush=True)
    if not args.no_dpo:
        figures["dpo_step_seconds"] = dpo_step_time(policy, params, args.repeats)
        print(f"DPO step (8 pairs, 32 + 64 tokens): {figures['dpo_step_seconds']:.2f} s", flush=True)
    save()
    return figures


if __name__ == "__main__":
    main()
