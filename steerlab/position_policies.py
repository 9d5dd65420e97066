"""Which positions a steering term steers, and where its strength schedule counts from: the one definition.

The hooks (`steerlab.steering`, torch tensors of positions, one row each) and the vLLM plugin's planner
(`steerlab.vllm_plugin.plan`, numpy positions of one row's chunk) both ask these two questions; they share
the answers here so the engines cannot drift apart. The functions work on anything that compares and
subtracts like numbers: ints, numpy arrays, torch tensors (broadcasting as those do).

    "all"          every real token of the prompt and every generated token.
    "after_user"   from `after_user_start` on (`steerlab.encoding.after_user_start`: the first token after the
                   user's message, never later than the last prompt token).
    "last_prompt"  only the last prompt token.

No torch import: the vLLM plugin's request checks use `POLICIES` without it.
"""

from __future__ import annotations

from typing import Any

from .errors import SteerlabError

#: The position policies, in the order error messages list them.
POLICIES: tuple[str, ...] = ("all", "after_user", "last_prompt")


def check_policy(policy: str) -> None:
    """A SteerlabError naming the policies when `policy` is not one of them."""
    if policy not in POLICIES:
        raise SteerlabError(f"unknown position policy '{policy}': choose one of {', '.join(POLICIES)}")


def steered(policy: str, pos: Any, *, after_user_start: Any = None, prompt_len: Any = None) -> Any:
    """Whether each position in `pos` is steered (a boolean array/tensor like `pos`; pads, at negative
    positions, never are). `after_user_start` is needed for "after_user", `prompt_len` for "last_prompt"."""
    check_policy(policy)
    if policy == "all":
        return pos >= 0
    if policy == "after_user":
        return pos >= after_user_start
    return pos == prompt_len - 1


def run_start(policy: str, *, after_user_start: Any = None, prompt_len: Any = None) -> Any:
    """The position of the first token `policy` steers, which a schedule's k counts from (0 for "all")."""
    check_policy(policy)
    if policy == "all":
        return 0
    if policy == "after_user":
        return after_user_start
    return prompt_len - 1


__all__ = ["POLICIES", "check_policy", "run_start", "steered"]
