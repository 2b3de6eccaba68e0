"""``cdb.config``: descriptions of configurations (what runs record, checkpoints check and sweep
cells are named by), the marks on callables that their names do not identify, and ``named``."""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Callable

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


def test_callables_their_names_do_not_identify_are_marked():
    def local(x):
        return x

    config = {
        "lambda": lambda x: x,
        "local": local,
        "partial": functools.partial(lambda x, y: x, y=1),
        "shadowed": first_shadowed,
        "instance": CallableWithoutRepr(),
        "module": module_scorer,
        "jitted": jitted_scorer,
        "class": CallableWithoutRepr,
        "builtin": len,
    }
    described = describe(config)
    found = unidentified_callables(described)
    assert found == [
        f"config.lambda ({__name__}.test_callables_their_names_do_not_identify_are_marked.<locals>.<lambda>)",
        f"config.local ({__name__}.test_callables_their_names_do_not_identify_are_marked.<locals>.local)",
        f"config.partial.func ({__name__}.test_callables_their_names_do_not_identify_are_marked.<locals>.<lambda>)",
        f"config.shadowed ({__name__}.shadowed)",
        f"config.instance (<{__name__}.CallableWithoutRepr object>)",
    ]
    assert described["module"] == described["jitted"] == f"{__name__}.module_scorer"
    assert described["class"] == f"{__name__}.CallableWithoutRepr" and described["builtin"] == "builtins.len"


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
    found = unidentified_callables(describe({"oracle": Oracle(lambda p, r: r)}))
    assert len(found) == 1 and found[0].startswith("config.oracle.reward_fn (") and found[0].endswith("<lambda>)")


def test_a_reward_oracles_lambda_on_an_llm_duel_is_found_where_it_sits():
    from tier3_fixtures import POOL_TEXTS, micro_pretrained

    from cdb.environments import LLMDuel, PromptSet, RewardOracle

    def duel(oracle):
        prompts, held_out = PromptSet(list(POOL_TEXTS)), PromptSet(["ok?", "why?"])
        return LLMDuel(
            micro_pretrained(), prompts, oracle, batch_size=2, max_new_tokens=4, eval_prompts=held_out, chat=False
        )

    zero = duel(RewardOracle(lambda prompts, responses: [0.0] * len(responses)))
    one = duel(RewardOracle(lambda prompts, responses: [1.0] * len(responses)))
    assert describe(zero) == describe(one)  # the two rewards cannot be told apart by their names ...
    assert [p.split(" (")[0] for p in unidentified_callables(describe({"env": zero}))] == [
        "config.env.oracle.reward_fn"
    ]
    named_one = duel(RewardOracle(named(lambda prompts, responses: [1.0] * len(responses), "one")))
    assert describe(named_one)["oracle"]["name"] == "one"  # ... a name given to them can
    assert not unidentified_callables(describe(named_one))


def test_config_differences_names_the_paths():
    saved = {"agent": {"type": "A", "lr": 0.1}, "seeds": [1, 2]}
    now = {"agent": {"type": "A", "lr": 0.2}, "seeds": [1, 3], "new": 1}
    assert C.config_differences(saved, now) == [
        "config.agent.lr: 0.1 -> 0.2",
        "config.new: '<absent>' -> 1",
        "config.seeds[1]: 2 -> 3",
    ]
