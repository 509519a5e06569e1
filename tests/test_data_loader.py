"""Grain loaders on a tiny synth_vqa: order, determinism, resumption, sharding, padding, prompts."""

import json

import numpy as np
import pytest
import transformers

from radi_jax.data import make_eval_loader, make_train_loader, open_dataset, tokenize_answers
from radi_jax.data import prompt as prompt_lib
from test_data_fixtures import tiny_synth_config

BATCH = 4


@pytest.fixture(scope="module")
def opened(tmp_path_factory):
  config = tiny_synth_config(str(tmp_path_factory.mktemp("data")))
  return open_dataset(config), config


def _take(loader, count):
  return [next(loader) for _ in range(count)]


def _assert_same(batches_a, batches_b):
  assert len(batches_a) == len(batches_b)
  for a, b in zip(batches_a, batches_b):
    assert a.keys() == b.keys()
    for key in a:
      np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_batch_shapes_and_types(opened):
  data, config = opened
  batch = next(make_train_loader(data, config, batch_size=BATCH, seed=0))
  n, length = data.num_answers, batch["input_ids"].shape[1]
  assert length in config.bucket_lengths
  expected = {
      "input_ids": ((BATCH, length), np.int32), "attention_mask": ((BATCH, length), np.int32),
      "mask_position": ((BATCH,), np.int32), "video": ((BATCH, 4, 16), np.float32),
      "video_mask": ((BATCH, 4), np.int32), "targets": ((BATCH, n), np.float32),
      "relevance": ((BATCH, n), np.float32), "type_id": ((BATCH,), np.int32),
      "index": ((BATCH,), np.int64), "valid": ((BATCH,), np.bool_)}
  assert {k: (v.shape, v.dtype) for k, v in batch.items()} == expected
  assert (batch["input_ids"][np.arange(BATCH), batch["mask_position"]] ==
          data.tokenizer.mask_token_id).all()
  assert data.type_names == ["animal", "color", "object", "place"]


def test_every_epoch_is_a_new_permutation_of_the_train_split(opened):
  data, config = opened
  loader = make_train_loader(data, config, batch_size=BATCH, seed=3, num_epochs=3)
  assert loader.num_steps == 3 * loader.steps_per_epoch == 3 * -(-45 // BATCH)
  batches = list(loader)
  assert len(batches) == loader.num_steps
  epochs = []
  for e in range(3):
    chunk = batches[e * loader.steps_per_epoch:(e + 1) * loader.steps_per_epoch]
    index = np.concatenate([b["index"][b["valid"]] for b in chunk])
    assert sorted(index) == sorted(data.questions("train").index)
    # Padding only at the end of the epoch: 45 = 11 * 4 + 1.
    assert [int(b["valid"].sum()) for b in chunk] == [4] * 11 + [1]
    epochs.append(index)
  assert not np.array_equal(epochs[0], epochs[1]) and not np.array_equal(epochs[1], epochs[2])


def test_same_seed_same_batches_other_seed_other_order(opened):
  data, config = opened
  first = _take(make_train_loader(data, config, batch_size=BATCH, seed=7), 5)
  _assert_same(first, _take(make_train_loader(data, config, batch_size=BATCH, seed=7), 5))
  other = _take(make_train_loader(data, config, batch_size=BATCH, seed=8), 5)
  assert not all(np.array_equal(a["index"], b["index"]) for a, b in zip(first, other))


@pytest.mark.parametrize("stop", [3, 12])  # inside the first epoch, and exactly at its end
def test_restored_state_continues_exactly(opened, stop):
  data, config = opened
  reference = _take(make_train_loader(data, config, batch_size=BATCH, seed=1), stop + 15)
  loader = make_train_loader(data, config, batch_size=BATCH, seed=1)
  _take(loader, stop)
  state = json.loads(json.dumps(loader.get_state()))
  resumed = make_train_loader(data, config, batch_size=BATCH, seed=1)
  resumed.set_state(state)
  # 15 more batches cross the boundary from epoch 0 (12 steps) into epoch 1.
  _assert_same(reference[stop:], _take(resumed, 15))


@pytest.mark.parametrize("process_count", [2, 4])
def test_process_shards_cover_every_example_once_per_epoch(opened, process_count):
  data, config = opened
  per_process = BATCH // process_count if process_count == 4 else 2
  global_batch = per_process * process_count
  shards = [list(make_train_loader(data, config, batch_size=per_process, seed=5, num_epochs=2,
                                   process_index=p, process_count=process_count))
            for p in range(process_count)]
  assert len({len(s) for s in shards}) == 1
  steps = len(shards[0]) // 2
  for epoch in range(2):
    index = np.concatenate([b["index"][b["valid"]] for s in shards
                            for b in s[epoch * steps:(epoch + 1) * steps]])
    assert sorted(index) == sorted(data.questions("train").index)
  # A global batch is the same whatever the number of processes.
  single = list(make_train_loader(data, config, batch_size=global_batch, seed=5, num_epochs=2))
  for step, whole in enumerate(single):
    for key in whole:
      if key not in ("input_ids", "attention_mask"):
        np.testing.assert_array_equal(
            np.concatenate([s[step][key] for s in shards]), whole[key], err_msg=key)
    joined_ids = np.concatenate([s[step]["input_ids"] for s in shards])
    np.testing.assert_array_equal(joined_ids, whole["input_ids"])


@pytest.mark.parametrize("process_count", [1, 2, 4])
def test_padded_evaluation_counts_each_example_once(opened, process_count):
  data, config = opened
  loaders = [make_eval_loader(data, config, "test", batch_size=3, process_index=p,
                              process_count=process_count) for p in range(process_count)]
  shards = [list(loader) for loader in loaders]
  assert len({len(s) for s in shards}) == 1 and len(shards[0]) == loaders[0].steps_per_epoch
  batches = [b for s in shards for b in s]
  index = np.concatenate([b["index"][b["valid"]] for b in batches])
  assert sorted(index) == list(data.questions("test").index) and len(index) == 13
  padding = [(b["relevance"][~b["valid"]], b["targets"][~b["valid"]], b["index"][~b["valid"]])
             for b in batches]
  assert all(not r.any() and not t.any() and (i == -1).all() for r, t, i in padding)
  # The fixed order is the split's order.
  if process_count == 1:
    assert index.tolist() == list(data.questions("test").index)


def test_worker_processes_give_the_same_batches_and_state(opened):
  data, config = opened
  reference = _take(make_train_loader(data, config, batch_size=BATCH, seed=2), 8)
  config = config.copy_and_resolve_references()
  config.worker_count = 2
  loader = make_train_loader(data, config, batch_size=BATCH, seed=2)
  _assert_same(reference[:5], _take(loader, 5))
  state = json.loads(json.dumps(loader.get_state()))
  resumed = make_train_loader(data, config, batch_size=BATCH, seed=2)
  resumed.set_state(state)
  _assert_same(reference[5:], _take(resumed, 3))


def test_long_questions_are_cut_but_keep_the_mask(tmp_path):
  tokenizer = transformers.AutoTokenizer.from_pretrained(_tokenizer_dir(tmp_path))
  long_question = " ".join(["what"] * 40)
  ids, mask_position = prompt_lib.tokenize_prompts(tokenizer, [long_question, "what color"], 12)
  full = tokenizer(f"Question: {long_question.capitalize()}? Answer: [MASK].")["input_ids"]
  # The question loses its end; "answer : [MASK] . [SEP]" (5 tokens) is kept whole.
  assert ids[0].tolist() == full[:7] + full[-5:]
  assert mask_position.tolist() == [9, ids[1].tolist().index(tokenizer.mask_token_id)]
  assert ids[1].tolist() == tokenizer("Question: What color? Answer: [MASK].")["input_ids"]


def test_tokenize_answers(tmp_path):
  tokenizer = transformers.AutoTokenizer.from_pretrained(_tokenizer_dir(tmp_path))
  answers = ["red", "big dog", "what what what what what what what", "zzz"]
  ids, mask = tokenize_answers(tokenizer, answers, max_atokens=5)
  assert ids.shape == mask.shape == (4, 5) and ids.dtype == np.int32 and mask.dtype == bool
  vocab = tokenizer.get_vocab()
  assert ids[0, :1].tolist() == [vocab["red"]] and mask[0].tolist() == [True] + [False] * 4
  assert ids[1, :2].tolist() == [vocab["big"], vocab["dog"]] and mask[1].sum() == 2
  assert ids[2].tolist() == [vocab["what"]] * 5 and mask[2].all()
  assert ids[3, 0] == tokenizer.unk_token_id and (ids[~mask] == tokenizer.pad_token_id).all()


def _tokenizer_dir(tmp_path):
  from test_data_fixtures import write_tokenizer
  return write_tokenizer(str(tmp_path / "tok"), ["what", "color", "red", "big", "dog"])
