"""The headline experiment: oracle queries needed to align a toy LM, SEA against online DPO.

A sweep (``cdb.sweep``) of alignment agents on the default ``SequenceDuel`` (V=16, Lp=4, L=8, B=16
prompts per round; a tiny causal transformer as the SFT reference), ``--seeds`` seeds each (10 by
default), run into the results store ``--store`` (default ``results/sweeps/sample_efficiency``; a
second run skips done cells and resumes interrupted ones). The default agents are

* ``online_dpo`` — online DPO with passive exploration (the paper's baseline);
* ``sea`` — ``cdb.agents.sea(reference)``: SEA as its authors run it (BAI-TS, 30 % of each batch
  model-labelled after 5 rounds, Oat's reward ensemble on π_ref's last hidden state);
* ``sea_chain`` — the same recipe on the environment's frozen, reward-realizable chain-count
  features (``cdb.features.ChainCountFeatures``, 2304 wide), with linear-Gaussian heads: Oat's 20
  MLP heads on 2304 inputs would cost about 6 M parameters and a second per round on a CPU.

``--agents all`` runs every agent of ``make_agents`` (the other baselines and older SEA
configurations); ``make_ablations`` holds more. Seed s of every agent uses the same key (``--key``),
hence the same prompts, oracle coins and evaluation prompts: the comparison is paired by seed.
From the store's summary (``cdb.sweep.summarize``) it writes to ``--out``:

* ``sample_efficiency.csv`` — every agent's per-round and per-evaluation metrics;
* ``sample_efficiency.png`` — curves against oracle queries: E&E (cumulative regret, online win
  rate of the duels played, smoothed) and BAI (offline win rate of greedy decoding against
  reference samples, fraction of the reference-to-optimum gap closed);
* ``queries_to_target.md`` — queries to reach a target on each metric, mean ± s.e., and the ratio to
  online DPO; then, for every agent against online DPO on the same seeds, the paired differences
  with 95 % bootstrap intervals (``cdb.metrics.paired_bootstrap``, 10 000 resamples of the seeds)
  of the queries to each target, capped at the pair's common query budget Q
  (``cdb.metrics.capped_queries_to_target``), and of the area under the win rate against queries
  over [0, Q] (``cdb.metrics.auc_against_queries``), and one sentence per agent saying whether it
  wins, ties or loses (wins: the whole interval favours it).

    python benchmarks/sample_efficiency.py                       # online_dpo, sea, sea_chain; 10 seeds
    python benchmarks/sample_efficiency.py --agents all --seeds 5
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

import cdb  # noqa: E402
from cdb.agents import alignment_presets as A  # noqa: E402
from cdb.agents.ensembles import oat_ensemble, toy_policy_ensemble  # noqa: E402
from cdb.ensemble import LinearEnsemble  # noqa: E402
from cdb.environments import SequenceDuel  # noqa: E402
from cdb.features import ChainCountFeatures, reference_hidden_features  # noqa: E402
from cdb.losses import DAPLoss  # noqa: E402
from cdb.report import header, markdown_table, paired_comparisons  # noqa: E402
from cdb.store import Store  # noqa: E402
from cdb.sweep import Sweep, Target, run_sweep, summarize  # noqa: E402

SMOOTH = 16  # rounds in the moving average of the online win rate
# SEA's heads on the realizable chain-count features (the `*_chain` rows and the ablation's base)
CHAIN_HEADS = LinearEnsemble(8, prior_scale=0.3, noise_scale=0.5)


HEADLINE = ("online_dpo", "sea", "sea_chain")
BASELINE = "online_dpo"
AUC_METRIC = "win_rate"
RESAMPLES = 10_000


def make_agents(ref, env: SequenceDuel, rounds: int, *, tiny: bool = False) -> dict:
    """The agents by name. ``tiny`` shrinks the default SEA's ensemble (4 heads of 16, minibatches
    of 16) so that the ``--tiny`` run used by the tests compiles in seconds; the recipe is the same."""
    chain = ChainCountFeatures(env.vocab_size)
    heads = dataclasses.replace(oat_ensemble(4), hidden_sizes=(16,), batch_size=16, buffer_capacity=64)
    recipe = {"reward_model": heads} if tiny else {}
    # SEA's plain variants beside its authors' recipe: oracle pairs only, or a Bernoulli(γ) mix
    # from the first round, and 8 MLP heads of 64 with prior functions
    old = dict(reward_model=toy_policy_ensemble(), mixing="bernoulli", burn_in=0)
    old_chain = dict(old, reward_model=CHAIN_HEADS, features=chain)
    return {
        "online_dpo": lambda: A.online_dap(ref, loss=DAPLoss("dpo")),
        "sea": lambda: A.sea(ref, **recipe),
        "sea_chain": lambda: A.sea(ref, features=chain, reward_model=CHAIN_HEADS),
        "online_ipo": lambda: A.online_dap(ref, loss=DAPLoss("ipo")),
        "online_slic": lambda: A.online_dap(ref, loss=DAPLoss("slic")),
        "offline_dpo": lambda: A.offline_dpo(ref, budget=rounds * env.batch_size // 2),
        "frozen_sampler_dpo": lambda: A.frozen_sampler_dpo(ref),
        "sea_logit_variance": lambda: A.sea(ref, variance="logit", **recipe),
        "sea_ee_ts": lambda: A.sea(ref, rule="ee_ts", gamma=1.0, **old),
        "sea_bai_ts": lambda: A.sea(ref, rule="bai_ts", gamma=1.0, **old),
        "sea_ee_ts_mixed": lambda: A.sea(ref, rule="ee_ts", gamma=0.5, **old),
        "sea_ee_ts_chain": lambda: A.sea(ref, rule="ee_ts", gamma=1.0, **old_chain),
        "sea_ee_ts_chain_mixed": lambda: A.sea(ref, rule="ee_ts", gamma=0.5, **old_chain),
        "apl": lambda: A.apl(ref),
        "xpo": lambda: A.xpo(ref),
        "ee4llm": lambda: A.ee4llm(ref),
        "nash_md": lambda: A.nash_md(ref),
        "sail_pr": lambda: A.sail(ref, variant="pr"),
        "sail_pp": lambda: A.sail(ref, variant="pp"),
        "sail_dp": lambda: A.sail(ref, variant="dp", budget=rounds * env.batch_size // 2),
    }


def make_ablations(ref, env: SequenceDuel) -> dict:
    """Variations of SEA with realizable features and mixing (run with ``--agents NAME ...``)."""
    chain = ChainCountFeatures(env.vocab_size)

    def mlp(**kwargs):
        return dataclasses.replace(toy_policy_ensemble(), **kwargs)

    def sea(**kwargs):
        options = dict(rule="ee_ts", gamma=0.5, mixing="bernoulli", burn_in=0, features=chain, reward_model=CHAIN_HEADS)
        options.update(kwargs)
        return lambda: A.sea(ref, **options)

    def sea_mlp(reward_model=None, **kwargs):
        model = toy_policy_ensemble() if reward_model is None else reward_model
        return lambda: A.sea(ref, rule="ee_ts", gamma=1.0, reward_model=model, **kwargs)

    return {
        "ablation_m4": sea(num_candidates=4),
        "ablation_m16": sea(num_candidates=16),
        "ablation_gamma0.25": sea(gamma=0.25),
        "ablation_bai_ts": sea(rule="bai_ts"),
        "ablation_beta0.05": sea(loss=DAPLoss("dpo", beta=0.05)),
        "ablation_hidden_linear": sea(features=reference_hidden_features),
        # plain E&E-TS (MLP heads on π_ref's hidden state, γ = 1), one knob at a time
        "ablation_mlp_e16": sea_mlp(toy_policy_ensemble(16)),
        "ablation_mlp_prior3": sea_mlp(mlp(prior_scale=3.0)),
        "ablation_mlp_lr1e-2": sea_mlp(mlp(learning_rate=1e-2)),
        "ablation_mlp_rm_steps8": sea_mlp(mlp(steps_per_update=8)),
        "ablation_mlp_policy_steps4": sea_mlp(policy_steps=4),
        # its control: the baseline with the same policy steps per round
        "ablation_online_dpo_policy_steps4": lambda: A.online_dap(ref, loss=DAPLoss("dpo"), policy_steps=4),
    }


def smoothed(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average along rounds, ``[seeds, T]``."""
    csum = np.cumsum(values, axis=1)
    out = np.empty_like(csum)
    out[:, :window] = csum[:, :window] / np.arange(1, min(window, values.shape[1]) + 1)
    out[:, window:] = (csum[:, window:] - csum[:, :-window]) / window
    return out


def add_smoothed_win_rate(results: cdb.Results) -> cdb.Results:
    """Adds ``online_win_rate_smoothed``: the online win rate's trailing mean over ``SMOOTH`` rounds."""
    results.metrics["online_win_rate_smoothed"] = smoothed(results.metrics["online_win_rate"], SMOOTH)
    return results


def main(argv: list[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=256)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--eval-every", type=int, default=8)
    parser.add_argument(
        "--agents", nargs="+", default=list(HEADLINE), help=f"names, or 'all' (default: {' '.join(HEADLINE)})"
    )
    parser.add_argument("--key", type=int, default=0, help="base key of the run (other keys: other seeds)")
    parser.add_argument("--online-target", type=float, default=0.8, help="target online win rate (smoothed)")
    parser.add_argument("--gap-target", type=float, default=0.5, help="target fraction of the gap closed")
    parser.add_argument("--out", default="benchmarks/results/sample_efficiency")
    parser.add_argument("--tiny", action="store_true", help="a tiny environment (for tests)")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--store", default="results/sweeps/sample_efficiency", help="the sweep's results store")
    parser.add_argument("--fresh", action="store_true", help="empty the store first instead of reusing done cells")
    parser.add_argument("--from-saved", action="store_true", help="re-make table and figure from the store only")
    args = parser.parse_args(argv)
    print(header(), flush=True)
    if args.tiny:
        from cdb.environments.reference_policy import ReferenceConfig

        env = SequenceDuel(
            vocab_size=6,
            prompt_length=2,
            response_length=3,
            batch_size=4,
            eval_batch_size=8,
            eval_reference_samples=2,
            reference_config=ReferenceConfig(
                num_layers=1, d_model=16, num_heads=2, d_ff=32, train_steps=60, train_batch_size=32, eval_size=64
            ),
        )
    else:
        env = SequenceDuel()
    start = time.perf_counter()
    ref = env.build_reference()
    print(
        f"reference policy: {'loaded' if ref.loaded_from_cache else 'trained'} in "
        f"{time.perf_counter() - start:.1f}s; NLL {ref.report.get('nll', float('nan')):.2f} vs teacher entropy "
        f"{ref.report.get('teacher_entropy', float('nan')):.2f}",
        flush=True,
    )
    factories = make_agents(ref, env, args.rounds, tiny=args.tiny)
    names = list(factories) if args.agents == ["all"] else args.agents
    factories.update(make_ablations(ref, env))
    unknown = sorted(set(names) - set(factories))
    if unknown:
        raise SystemExit(f"unknown agents {unknown}; choose from {sorted(factories)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    store = Store(args.store)
    if args.fresh:
        shutil.rmtree(store.root, ignore_errors=True)
    sweep = Sweep(
        agents={name: factories[name] for name in names},
        envs={"SequenceDuel": env},
        rounds=args.rounds,
        seeds=args.seeds,
        eval_every=args.eval_every,
        key=args.key,
        postprocess=add_smoothed_win_rate,
    )
    if not args.from_saved:
        print(run_sweep(sweep, store, progress=not args.no_progress), flush=True)
    targets = [
        (Target("online_win_rate_smoothed", args.online_target, "above"), "E&E: online win rate (16-round mean)"),
        (Target("gap_closed", args.gap_target, "above"), "BAI: gap closed (greedy policy)"),
    ]
    summary = summarize(
        store,
        sweep,
        metrics=["cumulative_regret", "win_rate", "gap_closed", "online_win_rate_smoothed", "cumulative_queries"],
        targets=[t for t, _ in targets],
    )
    if summary.missing:
        raise SystemExit(f"cells without results: {summary.missing} (see {store.root})")
    stats = {row["experiment"].split("/", 1)[1]: row for row in summary.frame.to_dict("records")}
    results, frames = {}, []
    for name in names:
        row = stats[name]
        res = results[name] = summary.results[row["experiment"]]
        frame = res.to_dataframe()
        frame.insert(0, "agent", name)
        frames.append(frame)
        print(
            f"{name:24s} {row['wall_seconds']:6.1f}s  final gap closed {row['gap_closed']:.3f}  "
            f"online win {row['online_win_rate_smoothed']:.3f}  queries {row['cumulative_queries']:.0f}",
            flush=True,
        )
    pd.concat(frames, ignore_index=True).to_csv(out / "sample_efficiency.csv", index=False)

    rows = []
    hits = {
        (name, t.metric): summary.target_queries[stats[name]["experiment"], t.label]
        for name in names
        for t, _ in targets
    }
    for name in names:
        row = {"agent": name}
        for target, label in targets:
            hit, ratio = hits[name, target.metric], ""
            baseline = hits.get(("online_dpo", target.metric))
            if baseline is not None and hit.reached and baseline.reached:
                ratio = f" ({hit.mean / baseline.mean:.2f}× online DPO)"
            row[f"{label} ≥ {target.value}"] = f"{hit}{ratio}"
        final = stats[name]
        row["final cumulative regret"] = f"{final['cumulative_regret']:.0f} ± {final['cumulative_regret se']:.0f}"
        row["final win rate"] = f"{final['win_rate']:.3f} ± {final['win_rate se']:.3f}"
        rows.append(row)
    table = markdown_table(rows, list(rows[0]))
    text = table + "\n"
    if BASELINE in names and len(names) > 1:
        paired, sentences = paired_comparisons(
            {name: results[name] for name in names},
            BASELINE,
            targets,
            auc_metric=AUC_METRIC,
            resamples=RESAMPLES,
            labels={BASELINE: "online DPO"},
        )
        text += "\n" + paired + "\n\n" + "\n\n".join(sentences) + "\n"
    (out / "queries_to_target.md").write_text(text)
    print()
    print(
        f"queries to target, {args.seeds} seeds, {args.rounds} rounds × B={env.batch_size}; mean ± s.e. over "
        "seeds that reached it; then the paired differences against online DPO"
    )
    print(text)

    fig, axes = plt.subplots(2, 2, figsize=(12, 9))
    colors = plt.get_cmap("tab20").colors
    for ax in axes.ravel():
        ax.set_prop_cycle(color=colors[: len(results)])
    for name, res in results.items():
        res.plot("cumulative_regret", x="queries", ax=axes[0, 0], label=name)
        res.plot("online_win_rate_smoothed", x="queries", ax=axes[0, 1], label=name)
        res.plot("win_rate", x="queries", ax=axes[1, 0], label=name)
        res.plot("gap_closed", x="queries", ax=axes[1, 1], label=name)
    titles = [
        "E&E: cumulative regret",
        "E&E: online win rate vs π_ref (16-round mean)",
        "BAI: win rate of greedy π_θ vs π_ref",
        "BAI: fraction of the gap closed",
    ]
    for ax, title in zip(axes.ravel(), titles, strict=True):
        ax.set_title(title, fontsize=10)
    axes[0, 0].legend(fontsize=7, frameon=False, ncol=2)
    for ax in axes.ravel()[1:]:
        if ax.get_legend():
            ax.get_legend().remove()
    fig.tight_layout()
    fig.savefig(out / "sample_efficiency.png", dpi=120)
    print(f"\nwrote {out / 'sample_efficiency.csv'}, {out / 'sample_efficiency.png'}, {out / 'queries_to_target.md'}")
    return pd.concat(frames, ignore_index=True)


if __name__ == "__main__":
    main()
