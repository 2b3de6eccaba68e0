"""The benchmark scripts: ``throughput.py``'s NumPy loop is the algorithm ``cdb.run`` runs, the
scripts run, ``sample_efficiency.py``'s table is its store's numbers, and the example sweeps load.

The scripts import only the installed ``cdb``; the tests import the scripts themselves as the
``benchmarks`` folder of this checkout (a folder of scripts, not part of the package).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import throughput  # noqa: E402

KW = dict(
    arms=8, dim=4, batch=2, members=4, max_tries=8, scale=8.0, prior_scale=1.0, noise_scale=0.5, regularization=1.0
)


@pytest.mark.slow
def test_numpy_reference_reaches_the_regret_of_cdb_run():
    """Both sides run E&E-TS with linear-Gaussian heads on the same pooled LinearDuel, with
    different random streams: their mean cumulative regrets must agree within sampling error."""
    import cdb
    from cdb.agents import ee_ts
    from cdb.ensemble import LinearEnsemble
    from cdb.environments import LinearDuel
    from cdb.environments.feature_duel import make_context_pool

    rounds, pool_size = 40, 64
    env = LinearDuel(
        num_arms=KW["arms"],
        feature_dim=KW["dim"],
        batch_size=KW["batch"],
        eval_batch_size=2,
        scale=KW["scale"],
        context_pool=pool_size,
    )
    model = LinearEnsemble(
        num_members=KW["members"],
        prior_scale=KW["prior_scale"],
        noise_scale=KW["noise_scale"],
        regularization=KW["regularization"],
    )
    res = cdb.run(ee_ts(reward_model=model, max_tries=KW["max_tries"]), env, rounds=rounds, seeds=64, progress=False)
    jax_regret = res.metrics["regret"].sum(axis=1)

    pool = make_context_pool(pool_size, KW["arms"], KW["dim"], env.pool_seed).astype(np.float64)
    numpy_regret = np.array([throughput.numpy_ee_ts(s, rounds=rounds, pool=pool, **KW) for s in range(64)])

    se = np.sqrt(jax_regret.var(ddof=1) / len(jax_regret) + numpy_regret.var(ddof=1) / len(numpy_regret))
    assert abs(jax_regret.mean() - numpy_regret.mean()) < 4 * se, (jax_regret.mean(), numpy_regret.mean(), se)
    # and not trivially: both learn, far below the regret of a uniformly random pair
    passive = cdb.run(cdb.agents.passive(), env, rounds=rounds, seeds=64, progress=False)
    assert numpy_regret.mean() < 0.6 * passive.metrics["regret"].sum(axis=1).mean()


@pytest.mark.slow
def test_throughput_script_writes_consistent_figures(tmp_path):
    argv = "--seeds 4 --rounds 6 --arms 8 --dim 4 --members 4 --numpy-seeds 2 --repeats 2 --devices 1".split()
    argv += ["--out", str(tmp_path)]
    figures = throughput.main(argv)
    written = json.loads((tmp_path / "throughput.json").read_text())
    assert written == json.loads(json.dumps(figures))
    assert figures["ratio"] == pytest.approx(figures["jax_decisions_per_s"] / figures["numpy_decisions_per_s"])
    decisions = 2 * 6 * 4  # numpy seeds × rounds × batch
    assert figures["numpy_decisions_per_s"] == pytest.approx(decisions / figures["numpy_best_s"])
    assert set(figures["jax_decisions_per_s_by_variant"]) == {"default", "unchunked", "xla_defaults"}
    assert figures["jax_decisions_per_s_by_variant"]["default"] == figures["jax_decisions_per_s"]
    assert figures["jax_decisions_per_s"] == pytest.approx(4 * 6 * 4 / figures["jax_best_s"])  # JAX seeds × rounds × B


@pytest.mark.slow
def test_throughput_compare_writes_both_checkouts_and_their_ratio(tmp_path):
    """``--compare`` against this checkout itself: both sides' figures and their ratio land in the file."""
    argv = "--seeds 4 --rounds 6 --arms 8 --dim 4 --members 4 --devices 1 --compare-repeats 3".split()
    argv += ["--compare", str(ROOT), "--compare-only", "--out", str(tmp_path)]
    figures = throughput.main(argv)
    written = json.loads((tmp_path / "throughput.json").read_text())
    assert written == json.loads(json.dumps(figures))
    result = written["compare"]
    decisions = 4 * 6 * 4  # seeds × rounds × batch
    for side in (result["a"], result["b"]):
        assert Path(side["cdb_file"]) == ROOT / "cdb" / "__init__.py"
        assert Path(side["agents_file"]) == ROOT / "agents" / "__init__.py"
        assert len(side["seconds"]) == 3
        rates = sorted(decisions / s for s in side["seconds"])
        assert side["decisions_per_s"] == pytest.approx({"min": rates[0], "median": rates[1], "max": rates[2]})
        assert side["first_call_s"] > 0
    assert result["ratio_a_over_b"] == pytest.approx(
        result["a"]["decisions_per_s"]["median"] / result["b"]["decisions_per_s"]["median"]
    )
    pair_ratios = sorted(b / a for a, b in zip(result["a"]["seconds"], result["b"]["seconds"], strict=True))
    assert result["median_pair_ratio_a_over_b"] == pytest.approx(pair_ratios[1])
    assert result["order"] == "abbaab" and result["devices"] == 1
    assert result["same_regret"] is True  # one checkout: the same program, the same draws
    assert len(result["load_average_start"]) == len(result["load_average_end"]) == 3


def test_import_from_checkout_loads_that_checkouts_packages(tmp_path):
    """``--compare``'s workers import ``cdb``, ``cdb.agents`` and ``cdb.environments`` from the other
    checkout's folders (its setup.cfg's package_dir), not from the installed one."""
    import subprocess

    for package, folder in (("cdb", "cdb"), ("cdb.agents", "agents"), ("cdb.environments", "environments")):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "__init__.py").write_text(f"WHERE = {package!r}\n")
    (tmp_path / "cdb" / "rng.py").write_text("WHERE = 'cdb.rng'\n")
    (tmp_path / "setup.cfg").write_text(
        "[options]\npackage_dir =\n    cdb = cdb\n    cdb.agents = agents\n    cdb.environments = environments\n"
    )
    script = (
        "import sys, json; sys.path.insert(0, sys.argv[1]); from benchmarks import throughput; "
        "throughput.import_from_checkout(sys.argv[2]); "
        "import cdb, cdb.agents, cdb.environments, cdb.rng; "
        "print(json.dumps({m.__name__: [m.WHERE, m.__file__] for m in (cdb, cdb.agents, cdb.environments, cdb.rng)}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(ROOT), str(tmp_path)], capture_output=True, text=True, check=True
    ).stdout
    loaded = json.loads(out)
    expected = {"cdb": "cdb", "cdb.agents": "agents", "cdb.environments": "environments", "cdb.rng": "cdb"}
    for name, folder in expected.items():
        assert loaded[name][0] == name
        assert Path(loaded[name][1]).parent == tmp_path.resolve() / folder
    with pytest.raises(ValueError, match="no setup.cfg"):
        throughput.import_from_checkout(tmp_path / "cdb")


def test_benchmarks_import_only_the_installed_package():
    for script in (ROOT / "benchmarks").rglob("*.py"):
        text = script.read_text()
        assert "sys.path" not in text, script
        assert "from benchmarks" not in text and "import benchmarks" not in text, script


@pytest.mark.parametrize(
    "config",
    [
        "benchmarks/regret_curves.py",
        *sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "benchmarks" / "sweeps").glob("*.py")),
    ],
)
def test_sweep_configs_load_and_name_their_cells(config):
    from cdb.sweep import load_sweep

    cells = load_sweep(ROOT / config).cells()
    names = [c.name for c in cells]
    assert names == sorted(names) and len(set(names)) == len(names) and len({c.id for c in cells}) == len(cells)


def test_regret_curves_sweep_is_every_agent_on_every_environment():
    from benchmarks import regret_curves

    cells = regret_curves.SWEEP.cells()
    assert {(c.env_name, c.agent_name) for c in cells} == {
        (e, a) for e in regret_curves.ENVS for a in regret_curves.DEFAULT_AGENTS
    }
    assert all((c.rounds, c.seeds, c.eval_every, c.key) == (200, 8, 20, 0) for c in cells)


def _trailing_mean(values: np.ndarray, window: int) -> np.ndarray:
    out = np.empty(values.shape)
    for t in range(values.shape[1]):
        out[:, t] = values[:, max(0, t - window + 1) : t + 1].mean(axis=1)
    return out


@pytest.mark.slow
def test_sample_efficiency_tiny_table_is_its_stores_numbers(tmp_path):
    import cdb
    from benchmarks import sample_efficiency
    from cdb import metrics
    from cdb.store import Store

    out, store_dir = tmp_path / "out", tmp_path / "store"
    argv = "--tiny --rounds 8 --seeds 2 --eval-every 4 --agents online_dpo sea --no-progress".split()
    argv += ["--out", str(out), "--store", str(store_dir), "--online-target", "0.5", "--gap-target", "0.1"]
    sample_efficiency.main(argv)
    text = (out / "queries_to_target.md").read_text()
    assert (out / "sample_efficiency.png").stat().st_size > 0
    store = Store(store_dir)
    by_agent = {r["agent"]: store.load_results(cid) for cid, r in store.index().items()}
    assert sorted(by_agent) == ["online_dpo", "sea"]
    assert all(r["status"] == "done" for r in store.index().values())
    table, paired = text.split("\n\n")[:2]
    rows = {line.split(" | ")[0].strip("| "): line for line in table.splitlines()[2:]}
    for name, res in by_agent.items():
        assert res.num_seeds == 2 and res.num_rounds == 8
        np.testing.assert_allclose(
            res.metrics["online_win_rate_smoothed"], _trailing_mean(res.metrics["online_win_rate"], 16), rtol=1e-6
        )
        final = res.metrics["regret"].sum(axis=1)
        assert f"| {final.mean():.0f} ± {final.std(ddof=1) / np.sqrt(2):.0f} |" in rows[name]
        win = res.eval_metrics["win_rate"][:, -1]
        assert f"| {win.mean():.3f} ± {win.std(ddof=1) / np.sqrt(2):.3f} |" in rows[name]
        assert str(cdb.queries_to_target(res, "gap_closed", 0.1, "above")) in rows[name]
    # the paired rows, recomputed from the store: SEA − online DPO on the common query budget
    sea, dpo = by_agent["sea"], by_agent["online_dpo"]
    budget = metrics.common_query_budget(sea, dpo)
    assert budget == min(sea.metrics["queries"].sum(axis=1).min(), dpo.metrics["queries"].sum(axis=1).min())
    assert budget < 2 * 8 * 4  # SEA's model-labelled pairs after the burn-in are not queries
    paired_rows = paired.splitlines()[2:]
    assert len(paired_rows) == 3 and all(line.startswith("| sea | ") for line in paired_rows)
    expected = [
        (metrics.capped_queries_to_target(r, "online_win_rate_smoothed", 0.5, "above", budget)[0] for r in (sea, dpo)),
        (metrics.capped_queries_to_target(r, "gap_closed", 0.1, "above", budget)[0] for r in (sea, dpo)),
        (metrics.auc_against_queries(r, "win_rate", budget) for r in (sea, dpo)),
    ]
    for line, (a, b), better in zip(paired_rows, expected, ("lower", "lower", "higher"), strict=True):
        diff = metrics.paired_bootstrap(a, b, resamples=sample_efficiency.RESAMPLES, seed=0)
        assert f"Q = {budget:.0f} | {a.mean():.4g} | {b.mean():.4g} | {diff} | {diff.verdict(better)} |" in line
    sentence = text.split("\n\n")[2].split(" (wins:")[0]
    verdicts = [line.split(" | ")[5] for line in paired_rows]
    assert sentence.startswith("**sea** against online DPO, 2 paired seeds")
    assert [part.split(" on the ")[0].split(": ")[-1] for part in sentence.split("; ")] == verdicts
    frame = __import__("pandas").read_csv(out / "sample_efficiency.csv")
    assert sorted(set(frame["agent"])) == ["online_dpo", "sea"]
    # from the store alone, without running: the same table
    (out / "queries_to_target.md").unlink()
    sample_efficiency.main(argv + ["--from-saved"])
    assert (out / "queries_to_target.md").read_text() == text


@pytest.mark.slow
def test_seed_s_of_every_agent_sees_the_same_prompts(tmp_path):
    """The comparison is paired: with the same key, seed s of any two agents is handed the same
    prompts every round (and other seeds other prompts). The environment records a code of each
    round's prompts as a metric; two different agents must record the same codes."""
    import dataclasses

    import jax.numpy as jnp

    import cdb
    from benchmarks import sample_efficiency
    from cdb.environments import SequenceDuel
    from cdb.environments.reference_policy import ReferenceConfig

    @dataclasses.dataclass(frozen=True)
    class PromptRecorder(SequenceDuel):
        def step(self, key, state, duel, params):
            code = jnp.sum(state.prompts * self.vocab_size ** jnp.arange(self.prompt_length), axis=-1)
            state, obs, feedback, info = super().step(key, state, duel, params)
            return state, obs, feedback, {**info, "prompt_code": code.astype(jnp.float32)}

    env = PromptRecorder(
        vocab_size=6,
        prompt_length=2,
        response_length=3,
        batch_size=4,
        eval_batch_size=4,
        eval_reference_samples=2,
        reference_config=ReferenceConfig(
            num_layers=1, d_model=16, num_heads=2, d_ff=32, train_steps=60, train_batch_size=32, eval_size=64
        ),
        cache_dir=str(tmp_path),
    )
    ref = env.build_reference()
    factories = sample_efficiency.make_agents(ref, env, rounds=6, tiny=True)
    codes = {
        name: cdb.run(factories[name](), env, rounds=6, seeds=3, key=7, eval_every=6, progress=False).metrics[
            "prompt_code"
        ]
        for name in ("online_dpo", "sea")
    }
    np.testing.assert_array_equal(codes["online_dpo"], codes["sea"])
    assert len({tuple(row) for row in codes["sea"]}) == 3  # the seeds' prompts differ


def test_llm_throughput_floor_is_the_same_step_in_xla_and_numpy():
    """``llm_throughput.py``'s floor times one step's matrix work on both sides: the same work."""
    import functools

    import jax
    import jax.numpy as jnp

    from benchmarks import llm_throughput
    from cdb.models.tiny import TINY_CONFIG, tiny_pretrained

    params = tiny_pretrained().params
    layers = llm_throughput._llama_layers(params)
    assert len(layers) == TINY_CONFIG.num_layers
    assert set(layers[0]) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    embedding = params["embed_tokens"]["embedding"][...]
    x = np.random.default_rng(0).standard_normal((3, TINY_CONFIG.d_model)).astype(np.float32)
    step = jax.jit(functools.partial(llm_throughput.step_without_attention, xp=jnp))
    xla_logits, xla_keep = step(x, layers, embedding)
    np_layers = [{k: np.asarray(v) for k, v in w.items()} for w in layers]
    np_logits, np_keep = llm_throughput.step_without_attention(x, np_layers, np.asarray(embedding), np)
    assert np_logits.shape == (3, TINY_CONFIG.vocab_size)
    np.testing.assert_allclose(np.asarray(xla_logits), np_logits, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(float(xla_keep), float(np_keep), rtol=1e-4, atol=1e-4)
    floor = llm_throughput.matmul_floor(params, batch=3, repeats=1)
    assert set(floor) == {"xla_ms", "numpy_ms"} and all(v > 0 for v in floor.values())


@pytest.mark.slow
def test_llm_alignment_tiny_run_is_paired_and_its_report_is_its_results(tmp_path):
    """``llm_alignment.py --tiny``: each agent in its own process; the report's paired rows are the
    saved results' own statistics, and ``--from-saved`` rebuilds the same report."""
    import cdb
    from benchmarks import llm_alignment
    from cdb import metrics

    out = tmp_path / "llm"
    argv = ["--tiny", "--agents", "sea", "online_dpo", "--rounds", "2", "--eval-every", "1", "--out", str(out)]
    llm_alignment.main(argv)
    sea, dpo = (cdb.Results.load(out / f"{name}.npz") for name in ("sea", "online_dpo"))
    assert sea.num_seeds == dpo.num_seeds == 2
    assert sea.num_rounds == dpo.num_rounds == 2
    for name in ("sea", "online_dpo"):
        figures = json.loads((out / f"{name}.json").read_text())
        assert figures["agent"] == name and figures["peak_rss_gb"] > 0.1 and figures["run_seconds"] > 0
    text = (out / "queries_to_target.md").read_text()
    budget = metrics.common_query_budget(sea, dpo)
    a, b = (metrics.auc_against_queries(r, "win_rate", budget) for r in (sea, dpo))
    diff = metrics.paired_bootstrap(a, b, resamples=10_000, seed=0)
    assert f"| {a.mean():.4g} | {b.mean():.4g} | {diff} | {diff.verdict('higher')} |" in text
    assert "**SEA (BAI-TS, mixed)** against online DPO (passive), 2 paired seeds" in text
    assert (out / "win_rate_vs_queries.png").stat().st_size > 1000
    (out / "queries_to_target.md").unlink()
    llm_alignment.main(argv + ["--from-saved"])
    rebuilt = (out / "queries_to_target.md").read_text()
    assert rebuilt.split("```")[-1] == text.split("```")[-1]


@pytest.mark.slow
def test_llm_alignment_takes_a_reward_model_as_its_oracle(tmp_path):
    """``--oracle reward-model PATH``: the run's oracle is Bradley–Terry on that reward model, and a
    malformed ``--oracle`` is refused before anything runs."""
    import cdb
    from benchmarks import llm_alignment
    from cdb.models import load_reward_model

    path = ROOT / "tests" / "fixtures" / "reward_models" / "llama"
    out = tmp_path / "rm"
    argv = ["--tiny", "--agents", "online_dpo", "--seeds", "1", "--rounds", "1", "--eval-every", "1"]
    llm_alignment.main(argv + ["--oracle", "reward-model", str(path), "--out", str(out)])
    text = (out / "queries_to_target.md").read_text()
    assert f"oracle: reward model {path} (temperature 1.0)" in text
    results = cdb.Results.load(out / "online_dpo.npz")
    assert results.metrics["queries"].sum() == 2  # B = 2 pairs, every one sent to the oracle
    assert np.isfinite(results.metrics["oracle_reward"]).all()
    oracle, name = llm_alignment.make_oracle(str(path), 2.0)
    assert name == f"reward model {path}"
    assert oracle.name == f"reward_model({load_reward_model(path).name})" and oracle.scale == 0.5
    for bad in (["reward-model"], ["vader"], ["sentiment", "x"]):
        with pytest.raises(SystemExit):
            llm_alignment.main(["--tiny", "--oracle", *bad, "--out", str(tmp_path / "bad")])
