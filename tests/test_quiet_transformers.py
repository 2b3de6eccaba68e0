"""Loading a model prints nothing about PyTorch: the library never uses torch (cdb.models.quiet_transformers)."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

FIXTURE = pathlib.Path(__file__).parent / "fixtures" / "llama"

LOAD = f"""
import importlib.util, os
from cdb.models import load_pretrained
m = load_pretrained({str(FIXTURE)!r})
m.encode(["hello"], chat=True)
print("torch installed:", importlib.util.find_spec("torch") is not None)
print("advisory variable:", os.environ.get("TRANSFORMERS_NO_ADVISORY_WARNINGS"))
"""


def test_loading_a_model_prints_no_torch_advisory():
    env = {k: v for k, v in os.environ.items() if k != "TRANSFORMERS_NO_ADVISORY_WARNINGS"}
    out = subprocess.run([sys.executable, "-c", LOAD], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    if "torch installed: True" in out.stdout:
        pytest.skip("torch is installed here, so transformers has no advisory to print")
    assert "PyTorch was not found" not in out.stderr
    # the variable is set for the import only, never left behind for the user's own code
    assert "advisory variable: None" in out.stdout


def test_a_users_own_setting_of_the_advisory_variable_is_kept(monkeypatch):
    from cdb.models.quiet_transformers import import_transformers

    monkeypatch.setenv("TRANSFORMERS_NO_ADVISORY_WARNINGS", "0")
    assert import_transformers().__name__ == "transformers"
    assert os.environ["TRANSFORMERS_NO_ADVISORY_WARNINGS"] == "0"
