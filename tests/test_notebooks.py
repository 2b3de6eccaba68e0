"""The notebooks run end to end with tiny settings (docs/design.md §3: notebooks are executed by the tests).

Each notebook's cell tagged ``parameters`` is replaced by tiny values, the notebook is executed
with ``nbclient`` in a fresh ``python3`` kernel (working directory: a temporary folder), and the
test checks that no cell failed, that figures were drawn and that the expected text was printed.

The kernel inherits this process's environment, plus JAX's persistent compilation cache of the
test session (``conftest.py``), so the regret notebook — run with the environment and agents of
``tests/test_statistical.py`` — shares compiled programs with that module. The alignment notebook
uses the shared tiny ``SequenceDuel`` of ``sequence_fixtures`` and its reference-policy cache
(``CDB_CACHE_DIR``), so the kernel loads π_ref from disk instead of training it again.
"""

import dataclasses
import re
from pathlib import Path

import jax
import nbformat
import pytest
from nbclient import NotebookClient
from sequence_fixtures import TINY_ENSEMBLE, tiny_env  # noqa: F401  (a pytest fixture)

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
CELL_TIMEOUT = 600


def parameters_cell(book) -> nbformat.NotebookNode:
    tagged = [c for c in book.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, "a notebook needs exactly one cell tagged 'parameters'"
    return tagged[0]


def execute(name: str, parameters: str, workdir: Path, monkeypatch, extra_env: dict[str, str] = ()) -> str:
    """Runs notebook ``name`` with its parameters cell replaced; returns the executed notebook."""
    book = nbformat.read(NOTEBOOKS / name, as_version=4)
    parameters_cell(book).source = parameters
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    cache = jax.config.jax_compilation_cache_dir
    if cache:
        monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(cache))
        monkeypatch.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
    for key, value in dict(extra_env).items():
        monkeypatch.setenv(key, value)
    client = NotebookClient(
        book, timeout=CELL_TIMEOUT, kernel_name="python3", resources={"metadata": {"path": str(workdir)}}
    )
    client.execute()  # raises CellExecutionError, with the cell's traceback, if any cell fails
    for cell in book.cells:
        for out in cell.get("outputs", []):
            assert out.output_type != "error", out
    return book


def text_of(book) -> str:
    parts = []
    for cell in book.cells:
        for out in cell.get("outputs", []):
            if out.output_type == "stream":
                parts.append(out.text)
            elif "text/plain" in out.get("data", {}):
                parts.append(out.data["text/plain"])
    return "\n".join(parts)


def count_images(book) -> int:
    return sum("image/png" in out.get("data", {}) for cell in book.cells for out in cell.get("outputs", []))


@pytest.mark.parametrize("name", ["regret_curves.ipynb", "toy_alignment.ipynb", "llm_alignment.ipynb"])
def test_committed_notebook_is_clean(name):
    """Stored without outputs, valid nbformat v4, python3 kernel, one parameters cell."""
    book = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(book)
    assert book.nbformat == 4 and book.metadata.kernelspec.name == "python3"
    parameters_cell(book)
    for cell in book.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, "clear the notebook's outputs"


# The environment, seeds and eval_every of tests/test_statistical.py, so compiled programs are shared.
REGRET_PARAMETERS = """\
ROUNDS = 50
SEEDS = 8
EVAL_EVERY = 25
NUM_ARMS = 8
FEATURE_DIM = 4
BATCH_SIZE = 2
SCALE = 8.0
NUM_MEMBERS = 8
KEY = 1
OUTPUT_DIR = {output_dir!r}
"""


@pytest.mark.slow
def test_regret_curves_notebook(tmp_path, monkeypatch):
    book = execute("regret_curves.ipynb", REGRET_PARAMETERS.format(output_dir=str(tmp_path)), tmp_path, monkeypatch)
    text = text_of(book)
    assert "after 50 rounds x 2 duels, mean ± s.e. over 8 seeds" in text
    for agent in ("E&E-TS", "BAI-TS", "passive", "MaxInP"):
        assert re.search(rf"{re.escape(agent)}\s+cumulative regret\s+\d+\.\d+ ±\s+\d+\.\d+", text), agent
        assert re.search(rf"{re.escape(agent)}\s+(inf|\d+\.\d) ± \S+ \(\d/8 seeds reached\)", text), agent
    assert "queries to reach BAI regret <=" in text
    assert "identical metrics = True; agent = ee_ts" in text
    assert (tmp_path / "ee_ts.npz").is_file()
    assert count_images(book) == 2  # the comparison figure and the reloaded curve


@pytest.mark.slow
def test_toy_alignment_notebook(tmp_path, monkeypatch, tiny_env):  # noqa: F811
    rounds = 4
    env_config = {
        f.name: getattr(tiny_env, f.name)
        for f in dataclasses.fields(tiny_env)
        if f.name not in ("reference_config", "cache_dir")
    }
    parameters = "\n".join(
        [
            f"ROUNDS = {rounds}",
            "SEEDS = 2",
            "EVAL_EVERY = 2",
            f"ENV_CONFIG = {env_config!r}",
            f"REFERENCE_CONFIG = {dataclasses.asdict(tiny_env.reference_config)!r}",
            f"ENSEMBLE_CONFIG = {dataclasses.asdict(TINY_ENSEMBLE)!r}",
            "NUM_CANDIDATES = 3",
            "CACHE_DIR = None",
            "KEY = 0",
        ]
    )
    book = execute("toy_alignment.ipynb", parameters, tmp_path, monkeypatch, {"CDB_CACHE_DIR": str(tiny_env.cache_dir)})
    text = text_of(book)
    # π_ref was trained by the tiny_env fixture in this process; the kernel found it in the cache.
    assert "reference policy (loaded from cache): NLL" in text
    assert len(re.findall(r"prompt \[.*\]\s+π_ref sample \[.*\] r\*=", text)) == 3
    queries = rounds * tiny_env.batch_size  # both agents send every duel to the oracle
    for agent in ("online DPO", "SEA (E&E-TS)"):
        assert re.search(rf"{re.escape(agent)}\s+after {queries} queries: gap closed [+-]\d\.\d+", text), agent
        assert re.search(rf"{re.escape(agent)}\s+(inf|\d+\.\d) ± \S+ \(\d/2 seeds reached\)", text), agent
    assert "oracle queries to close" in text
    assert count_images(book) == 1


# The tiny random model of llm_fixtures (never SmolLM2, even when installed): seconds of work.
LLM_PARAMETERS = """\
USE_REAL_MODEL = False
ROUNDS = 4
SEEDS = 2
BATCH_SIZE = 2
MAX_NEW_TOKENS = 4
NUM_CANDIDATES = 3
GAMMA = 0.5
EVAL_EVERY = 2
EVAL_PROMPTS = 2
LEARNING_RATE = 1e-3
TARGET = 0.55
KEY = 0
"""


@pytest.mark.slow
def test_llm_alignment_notebook(tmp_path, monkeypatch):
    book = execute("llm_alignment.ipynb", LLM_PARAMETERS, tmp_path, monkeypatch)
    text = text_of(book)
    assert "π_ref = tiny-random: 2 layers" in text
    duels = 4 * 2  # ROUNDS x BATCH_SIZE
    queries = {}
    for agent in ("SEA (E&E-TS, mixed)", "online DPO (passive)"):
        found = re.search(
            rf"{re.escape(agent)}\s+{duels} duels, (\d+\.\d) oracle queries \(mean over seeds\); "
            r"win rate before training (\d\.\d+)",
            text,
        )
        assert found, agent
        queries[agent] = float(found.group(1))
        assert found.group(2) == "0.500", agent  # round 0: π_θ = π_ref, greedy against greedy
        assert re.search(rf"{re.escape(agent)}\s+(inf|\d+\.\d) ± \S+ \(\d/2 seeds reached\); final win rate", text)
        assert re.search(rf"{re.escape(agent)}\s+seconds per round: generation \d", text)
    assert queries["online DPO (passive)"] == duels  # every passive duel goes to the oracle
    assert queries["SEA (E&E-TS, mixed)"] <= duels  # γ = 0.5: model-labelled pairs are not queries
    assert len(re.findall(r"prompt: .*\n  π_ref: .*\n  reward: [+-]\d\.\d{3}", text)) == 2
    assert count_images(book) == 1


def test_results_plot_keeps_the_notebook_backend():
    import matplotlib
    import numpy as np

    from cdb.results import Results

    results = Results({"regret": np.ones((2, 3))}, np.array([0, 3]), {}, {})
    before = matplotlib.get_backend()
    try:
        matplotlib.use("module://matplotlib_inline.backend_inline")
        results.plot("cumulative_regret")
        assert matplotlib.get_backend() == "module://matplotlib_inline.backend_inline"
    finally:
        import matplotlib.pyplot as plt

        plt.close("all")
        matplotlib.use(before)
