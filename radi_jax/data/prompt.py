"""The FrozenBiLM prompt (DESIGN §3) and tokenisation of prompts and answers."""

import numpy as np
import transformers

ANSWER_PART = " Answer:"


def prompt_text(question: str, mask_token: str) -> str:
  """``"Question: <question, capitalised, ending in ?> Answer: [MASK]."``."""
  question = question.strip()
  question = question[:1].upper() + question[1:]
  if not question.endswith("?"):
    question += "?"
  return f"Question: {question}{ANSWER_PART} {mask_token}."


def tokenize_prompts(tokenizer: transformers.PreTrainedTokenizerBase, questions: list[str],
                     max_tokens: int) -> tuple[list[np.ndarray], np.ndarray]:
  """Token ids (with special tokens) of each question's prompt, cut to ``max_tokens``.

  A prompt that is too long loses the end of its question; " Answer: [MASK]." and the closing
  special token are kept so the model always sees the [MASK].

  Returns:
    ids: one int32 array of length <= max_tokens per question.
    mask_position: ``[questions]`` int32 index of the [MASK] token within each ids array.
  """
  texts = [prompt_text(q, tokenizer.mask_token) for q in questions]
  encoded = tokenizer(texts, add_special_tokens=True)["input_ids"]
  answer_part_len = len(tokenizer(ANSWER_PART, add_special_tokens=False)["input_ids"])
  ids, mask_position = [], []
  for text, tokens in zip(texts, encoded):
    tokens = list(tokens)
    if tokenizer.mask_token_id not in tokens:
      raise ValueError(f"the tokenizer split the mask token of {text!r}; expected one "
                       f"{tokenizer.mask_token} token")
    if len(tokens) > max_tokens:
      tail = len(tokens) - tokens.index(tokenizer.mask_token_id) + answer_part_len
      if tail + 1 > max_tokens:
        raise ValueError(f"max_tokens={max_tokens} cannot hold the answer part of the prompt "
                         f"({tail + 1} tokens); expected a larger max_tokens")
      tokens = tokens[:max_tokens - tail] + tokens[-tail:]
    ids.append(np.asarray(tokens, np.int32))
    mask_position.append(tokens.index(tokenizer.mask_token_id))
  return ids, np.asarray(mask_position, np.int32)


def tokenize_answers(tokenizer: transformers.PreTrainedTokenizerBase, answers: list[str],
                     max_atokens: int = 5) -> tuple[np.ndarray, np.ndarray]:
  """Tokens of each answer without special tokens, for the answer-embedding initialisation.

  Args:
    tokenizer: the model's tokenizer.
    answers: N answer strings in id order.
    max_atokens: tokens kept per answer (the first ones).

  Returns:
    ids: ``[N, max_atokens]`` int32, padded with the tokenizer's pad id.
    mask: ``[N, max_atokens]`` bool, True on real tokens.
  """
  ids = np.full((len(answers), max_atokens), tokenizer.pad_token_id or 0, np.int32)
  mask = np.zeros((len(answers), max_atokens), bool)
  encoded = tokenizer(list(answers), add_special_tokens=False)["input_ids"] if answers else []
  for row, tokens in enumerate(encoded):
    tokens = tokens[:max_atokens]
    if not tokens:
      # An answer the tokenizer turns into nothing still needs one token to average.
      tokens = [tokenizer.unk_token_id]
    ids[row, :len(tokens)] = tokens
    mask[row, :len(tokens)] = True
  return ids, mask
