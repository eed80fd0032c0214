"""What a call cost, estimated from LiteLLM's model cost map (the list prices it ships with)."""

from typing import Any

from controlplane.llm import model_cost
from controlplane.recording.records import Usage


def estimate_cost(model: str | None, usage: Usage | None) -> float | None:
    """US dollars at the model's list price per input and per output token, or ``None`` when the
    map has no price for the model or the call counted no tokens: never a guess.

    The record keeps no cache token counts, so cached input is priced as fresh input. This runs
    while a batch is stored, so it never raises: a failed batch would be retried forever.
    """
    if model is None or usage is None or (usage.prompt_tokens is None and usage.completion_tokens is None):
        return None
    prices = model_cost.get(model)
    if not isinstance(prices, dict):
        return None
    per_input, per_output = _price(prices, "input_cost_per_token"), _price(prices, "output_cost_per_token")
    if per_input is None or per_output is None:
        return None
    return (usage.prompt_tokens or 0) * per_input + (usage.completion_tokens or 0) * per_output


def _price(prices: dict[str, Any], key: str) -> float | None:
    price = prices.get(key)
    if not isinstance(price, int | float) or isinstance(price, bool) or not price >= 0:
        return None
    return float(price)
