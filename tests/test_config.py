"""``cdb.config``: descriptions of configurations (what runs record, checkpoints check and sweep
cells are named by): functions by name or by code and captured values, the marks on callables
that can be described neither way, and ``named``."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np
import pytest

import cdb.config as C
from cdb.config import describe, named, unidentified_callables


def module_scorer(x):
    return x


def shadowed(x):  # defined twice: the module's name leads to the second one only
    return x


first_shadowed = shadowed


def shadowed(x):  # noqa: F811
    return -x


jitted_scorer = jax.jit(module_scorer)


class CallableWithoutRepr:
    def __call__(self, x):
        return x


@dataclasses.dataclass(frozen=True)
class Oracle:
    """Like ``RewardOracle``: the function is left out of ``repr``, a derived label stands for it."""

    reward_fn: Callable = dataclasses.field(repr=False)
    scale: float = 1.0
    cache: str = dataclasses.field(default="", metadata={"describe": False})


def test_describe_identifies_content_not_memory_addresses():
    described = describe({"f": module_scorer, "a": np.arange(32.0)})
    assert "0x" not in json.dumps(described)
    assert described["f"] == f"{__name__}.module_scorer"
    changed = np.arange(32.0)
    changed[-1] = -1.0
    assert describe(changed)["sha256"] != described["a"]["sha256"]
    assert describe(np.arange(3)) == [0, 1, 2]


def adder(value):
    def add(x):
        return x + value

    return add


def countdown():
    def step(k):  # captures itself
        return k if k <= 0 else step(k - 1)

    return step


def test_functions_their_names_do_not_identify_are_described_by_code_and_captured_values():
    assert describe(adder(1)) == describe(adder(1))  # made twice: the same function
    assert describe(adder(1)) != describe(adder(2)) and describe(adder(1))["captured"] == {"value": 1}
    zero, one = (lambda r: [0.0] * len(r)), (lambda r: [1.0] * len(r))
    assert describe(zero)["function"] == describe(one)["function"] and describe(zero) != describe(one)
    assert describe(functools.partial(zero)) != describe(functools.partial(one))
    assert "code" in describe(first_shadowed) and describe(shadowed) == f"{__name__}.shadowed"
    step = describe(countdown())
    assert step["captured"]["step"] == {"function": step["function"], "recursive": True}
    assert describe(module_scorer) == describe(jitted_scorer) == f"{__name__}.module_scorer"
    assert describe(CallableWithoutRepr) == f"{__name__}.CallableWithoutRepr" and describe(len) == "builtins.len"
    assert not unidentified_callables(describe([zero, one, adder(1), countdown(), first_shadowed]))


def test_an_optimizers_learning_rate_is_part_of_its_description():
    from cdb.agents.alignment import policy_optimizer

    assert describe(policy_optimizer(1e-3)) == describe(policy_optimizer(1e-3))
    assert describe(policy_optimizer(1e-3)) != describe(policy_optimizer(2e-3))
    assert "'step_size': -0.001" in str(describe(policy_optimizer(1e-3)))


CODE_IN_ANOTHER_PROCESS = """
import json, sys
sys.path.insert(0, sys.argv[1])
from test_config import describe, adder
print(json.dumps(describe([lambda x: x in {"alpha", "beta", "gamma", "delta"}, adder(2.5)])))
"""


def test_a_functions_code_is_described_alike_in_processes_of_other_hash_seeds():
    outputs = set()
    for seed in ("1", "2"):
        proc = subprocess.run(
            [sys.executable, "-c", CODE_IN_ANOTHER_PROCESS, str(Path(__file__).parent)],
            capture_output=True,
            text=True,
            timeout=300,
            env=dict(os.environ, PYTHONHASHSEED=seed, JAX_PLATFORMS="cpu"),
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        outputs.add(proc.stdout.strip().splitlines()[-1])
    # the set literal is a frozenset constant, ordered by the strings' hashes; its description is not
    assert len(outputs) == 1


def test_only_callables_that_can_be_described_neither_by_name_nor_by_code_are_marked():
    config = {"instance": CallableWithoutRepr(), "closure": adder(CallableWithoutRepr()), "fine": adder(1)}
    assert unidentified_callables(describe(config)) == [
        f"config.instance (<{__name__}.CallableWithoutRepr object>)",
        f"config.closure.captured.value (<{__name__}.CallableWithoutRepr object>)",
    ]


def test_a_named_callable_is_described_by_its_name():
    score = named(lambda prompts, responses: [0.0] * len(responses), "zero_reward")
    assert score([], ["a", "b"]) == [0.0, 0.0]
    assert score.__name__ == score.__qualname__ == "zero_reward"
    assert describe({"f": score}) == {"f": "zero_reward"} and not unidentified_callables(describe(score))
    with pytest.raises(ValueError, match="named: name='' is not allowed"):
        named(len, "")
    with pytest.raises(ValueError, match="is not callable"):
        named(3, "three")


def test_a_function_field_left_out_of_repr_is_described_and_describe_false_fields_are_not():
    described = describe(Oracle(module_scorer, cache="/tmp/a"))
    assert described == {"type": "Oracle", "reward_fn": f"{__name__}.module_scorer", "scale": 1.0}
    assert describe(Oracle(module_scorer, cache="/elsewhere")) == described
    assert describe(Oracle(adder(1))) != describe(Oracle(adder(2)))
    assert unidentified_callables(describe({"oracle": Oracle(CallableWithoutRepr())})) == [
        f"config.oracle.reward_fn (<{__name__}.CallableWithoutRepr object>)"
    ]


def test_reward_oracles_with_different_lambdas_on_an_llm_duel_are_told_apart():
    from tier3_fixtures import POOL_TEXTS, micro_pretrained

    from cdb.environments import LLMDuel, PromptSet, RewardOracle

    def duel(oracle):
        prompts, held_out = PromptSet(list(POOL_TEXTS)), PromptSet(["ok?", "why?"])
        return LLMDuel(
            micro_pretrained(), prompts, oracle, batch_size=2, max_new_tokens=4, eval_prompts=held_out, chat=False
        )

    zero = duel(RewardOracle(lambda prompts, responses: [0.0] * len(responses)))
    one = duel(RewardOracle(lambda prompts, responses: [1.0] * len(responses)))
    assert zero.oracle.name == one.oracle.name  # both "...<lambda>": the label alone cannot tell them apart
    differences = C.config_differences(describe({"env": zero}), describe({"env": one}))
    assert [d.split(":")[0] for d in differences] == ["config.env.oracle.reward_fn.code"]
    named_one = duel(RewardOracle(named(lambda prompts, responses: [1.0] * len(responses), "one")))
    assert describe(named_one)["oracle"]["name"] == describe(named_one)["oracle"]["reward_fn"] == "one"


def test_config_differences_names_the_paths():
    saved = {"agent": {"type": "A", "lr": 0.1}, "seeds": [1, 2]}
    now = {"agent": {"type": "A", "lr": 0.2}, "seeds": [1, 3], "new": 1}
    assert C.config_differences(saved, now) == [
        "config.agent.lr: 0.1 -> 0.2",
        "config.new: '<absent>' -> 1",
        "config.seeds[1]: 2 -> 3",
    ]
