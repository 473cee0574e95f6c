"""The instruction template (LTU/Alpaca style) and response-only loss masks.

The LM sequence of one example is ``[audio tokens][prompt tokens][response tokens][eos]``; audio
tokens come first (they are embeddings, not ids, and are inserted by `sam.model.SAM`). Only the
response tokens and the final eos carry loss. Training collate and `SAM.generate` both build
prompts here, so the two can never disagree.
"""

from __future__ import annotations

from typing import Any

PROMPT_TEMPLATE = (
    "Below is an instruction that describes a task, paired with an audio input. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)
IGNORE_INDEX = -100


def format_prompt(instruction: str) -> str:
    """Text that precedes the response for `instruction`."""
    return PROMPT_TEMPLATE.format(instruction=instruction.strip())


def encode_example(tokenizer: Any, instruction: str, response: str | None = None) -> tuple[list[int], list[int]]:
    """Token ids of prompt (+ response + eos) and labels (IGNORE_INDEX on the prompt).

    `tokenizer` is a Hugging Face tokenizer (`encode(text, add_special_tokens=False)`, `eos_token_id`).
    With `response=None` only the prompt is returned (for generation).
    """
    prompt_ids = tokenizer.encode(format_prompt(instruction), add_special_tokens=False)
    if response is None:
        return prompt_ids, [IGNORE_INDEX] * len(prompt_ids)
    resp_ids = tokenizer.encode(response.strip(), add_special_tokens=False) + [tokenizer.eos_token_id]
    return prompt_ids + resp_ids, [IGNORE_INDEX] * len(prompt_ids) + resp_ids
