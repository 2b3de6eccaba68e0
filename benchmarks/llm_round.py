"""What one tier-3 alignment round costs on a real model: seconds, compilation and peak memory.

Setting (issue 18's): SmolLM2-135M-Instruct (``load_pretrained("smollm2-135m-instruct")``),
``LLMDuel(model, batch_size=4, max_new_tokens=32)`` with its defaults (the built-in review
prompts, the VADER oracle, the online win rate against one π_ref sample per prompt, the 32
held-out prompts evaluated), one seed, full fine-tuning (or ``--lora RANK``), for each agent:

* **seconds per round** after the first: ``seconds_select + seconds_env + seconds_update`` of
  ``cdb.run``'s per-round metrics, mean over rounds 2..R;
* **the parts' reference**: one ``model.generate`` of the same 4 prompts with 2 samples each and 32
  new tokens, in the same process after the run (best of 3 after a warm-up call), and the ratio;
* **compilation**: JAX's own duration events (``jax.monitoring``: tracing, lowering to MLIR and
  XLA's backend compile) summed over the whole run, i.e. every program the agent's first round,
  the environment's samplers and the evaluations compiled;
* **peak memory**: the process's peak resident set (``ru_maxrss``), loading included.

Each agent runs in a fresh subprocess (peak memory is per process). Writes
``benchmarks/results/llm_round/llm_round.{json,md}`` and prints the table::

    python benchmarks/llm_round.py                          # sea and online_dpo, float32, full fine-tuning
    python benchmarks/llm_round.py --agents online_dpo --dtype bfloat16 --lora 8 --out /tmp/round
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

AGENTS = ("sea", "online_dpo")


def measure(agent_name: str, rounds: int, dtype: str, lora: int, remat: bool) -> dict:
    """One agent's run in this process (see the module docstring); returns the figures."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    import cdb
    from cdb import agents
    from cdb.environments import LLMDuel
    from cdb.features import FrozenEncoderFeatures
    from cdb.models import load_pretrained, lora_trainable, with_lora
    from cdb.models.encoder import load_sentence_encoder

    compile_seconds = {"trace": 0.0, "lower": 0.0, "compile": 0.0}
    events = {
        "/jax/core/compile/jaxpr_trace_duration": "trace",
        "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower",
        "/jax/core/compile/backend_compile_duration": "compile",
    }

    def on_event(event: str, seconds: float, **_) -> None:
        if event in events:
            compile_seconds[events[event]] += seconds

    jax.monitoring.register_event_duration_secs_listener(on_event)
    start = time.perf_counter()
    model = load_pretrained("smollm2-135m-instruct", dtype=getattr(jnp, dtype), remat=remat)
    env = LLMDuel(model, batch_size=4, max_new_tokens=32)
    kwargs = {"optimizer": agents.policy_optimizer(1e-5)}
    if lora:
        policy, params = with_lora(model, rank=lora, key=jax.random.key(0))
        model = type(model)(policy, params, model.tokenizer, model.name)
        kwargs["trainable"] = lora_trainable
    if agent_name == "sea":
        features = FrozenEncoderFeatures(load_sentence_encoder(), model.tokenizer, include_prompt=True)
        agent = agents.sea(model, num_candidates=4, features=features, **kwargs)
    else:
        agent = getattr(agents, agent_name)(model, **kwargs)
    loaded = time.perf_counter() - start
    start = time.perf_counter()
    results = cdb.run(agent, env, rounds=rounds, seeds=1, eval_every=rounds, progress=False)
    run_seconds = time.perf_counter() - start
    parts = {k: np.asarray(results.metrics[f"seconds_{k}"])[0] for k in ("select", "env", "update")}
    per_round = sum(parts.values())
    prompts = list(env.prompts.texts[:4])
    times = []
    for i in range(4):
        t = time.perf_counter()
        model.generate(prompts, max_new_tokens=32, key=jax.random.key(i), num_samples=2)
        times.append(time.perf_counter() - t)
    generate = min(times[1:])
    later = per_round[1:]
    return {
        "agent": agent.name,
        "dtype": dtype,
        "lora": lora,
        "remat": remat,
        "rounds": rounds,
        "load_seconds": loaded,
        "run_seconds": run_seconds,
        "seconds_per_round": float(np.mean(later)),
        "seconds_per_round_parts": {k: float(np.mean(v[1:])) for k, v in parts.items()},
        "first_round_seconds": float(per_round[0]),
        "generate_seconds": generate,
        "round_over_generate": float(np.mean(later) / generate),
        "compile_seconds": sum(compile_seconds.values()),
        "compile_seconds_parts": compile_seconds,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
        "final_win_rate": float(results.final("win_rate")[0]),
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", nargs="+", default=list(AGENTS), choices=AGENTS)
    parser.add_argument("--rounds", type=int, default=4, help="rounds per run (the first includes compilation)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--lora", type=int, default=0, help="LoRA rank (0: full fine-tuning)")
    parser.add_argument("--no-remat", action="store_true", help="keep every layer's activations for the gradient")
    parser.add_argument("--out", default="benchmarks/results/llm_round")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(measure(args.child, args.rounds, args.dtype, args.lora, not args.no_remat)))
        return

    from cdb.report import header, markdown_table, output_dir

    print(header())
    print(f"load average at start: {os.getloadavg()}")
    rows = []
    for name in args.agents:
        cmd = [sys.executable, __file__, "--child", name, "--rounds", str(args.rounds), "--dtype", args.dtype]
        cmd += ["--lora", str(args.lora)] + (["--no-remat"] if args.no_remat else [])
        out = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if out.returncode:
            raise RuntimeError(f"{name} failed:\n{out.stderr[-4000:]}")
        row = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(json.dumps(row), flush=True)
    table = markdown_table(
        [
            {
                "agent": r["agent"],
                "s / round": f"{r['seconds_per_round']:.2f}",
                "select / env / update": " / ".join(f"{v:.2f}" for v in r["seconds_per_round_parts"].values()),
                "generate (4 × 2 × 32)": f"{r['generate_seconds']:.2f}",
                "round ÷ generate": f"{r['round_over_generate']:.2f}",
                "compilation s": f"{r['compile_seconds']:.1f}",
                "peak RSS GB": f"{r['peak_rss_gb']:.2f}",
            }
            for r in rows
        ],
        [
            "agent",
            "s / round",
            "select / env / update",
            "generate (4 × 2 × 32)",
            "round ÷ generate",
            "compilation s",
            "peak RSS GB",
        ],
    )
    out = output_dir(args.out)
    tag = f"{args.dtype}" + (f"_lora{args.lora}" if args.lora else "") + ("_noremat" if args.no_remat else "")
    (out / f"llm_round_{tag}.json").write_text(json.dumps(rows, indent=1))
    text = f"```\n{header()}\nload average at end: {os.getloadavg()}\n```\n\n{table}\n"
    (out / f"llm_round_{tag}.md").write_text(text)
    print(table)


if __name__ == "__main__":
    main()
