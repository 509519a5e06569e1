"""synth_vqa: a small video-QA dataset in the iVQA layout, generated from a seed (DESIGN §6).

Concepts are grouped into categories ("animal", "color", ...); each concept has 1-4 surface answers
(synonyms, some of two words) and a fixed random embedding. A video's frames mix the embeddings of
2-4 concepts from different categories, plus noise. A question names the category of one of them
("What animal is in the video?"); every surface answer of that concept is correct, and five simulated
annotators pick among them with a popularity skew, so the most frequent answer is the labeled one
while its synonyms are right too.

Usage: ``python -m radi_jax.data.synth_vqa --out DIR [--seed 0 --num_videos 1200 ...]`` writes
``DIR/{train,val,test}.csv``, ``DIR/vocab.json``, ``DIR/clipvitl14.npz`` and ``DIR/tokenizer/``.
"""

import csv
import json
import os
import shutil
import tempfile

import ml_collections
import numpy as np
import tokenizers
import transformers
from tokenizers import models, normalizers, pre_tokenizers, processors

CATEGORIES = ("animal", "color", "object", "place", "vehicle", "food", "instrument", "sport", "tool",
              "plant", "weather", "garment", "drink", "toy", "furniture", "shape")
QUESTION_TEMPLATES = (
    "what {} is in the video",
    "which {} can be seen",
    "what kind of {} appears here",
    "what {} is shown",
    "name the {} in this clip",
)
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
PROMPT_WORDS = ("question", "answer", ":", "?", ".")
_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "ch", "sh")
_VOWELS = ("a", "e", "i", "o", "u")
TOKENIZER_DIR = "tokenizer"


def _pseudo_words(rng: np.random.Generator, count: int) -> list[str]:
  """Distinct made-up words, so answers carry no meaning a tokenizer could know beforehand."""
  words: list[str] = []
  seen = set()
  while len(words) < count:
    syllables = rng.integers(2, 4)
    word = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(syllables))
    if word not in seen:
      seen.add(word)
      words.append(word)
  return words


def generate(synth: ml_collections.ConfigDict, features_dim: int = 768) -> dict:
  """Generates the dataset in memory.

  Args:
    synth: generator sizes and seed (``config.data.synth``).
    features_dim: dimension of a frame feature.

  Returns:
    A dict with ``answers`` (vocabulary in id order), ``splits`` (split -> list of CSV rows as dicts),
    ``features`` (video_id -> ``[frames, features_dim]`` float32), and the hidden truth:
    ``categories``, ``surface_answers`` (concept -> synonyms, most popular first), ``scenes``
    (video_id -> concepts in it) and ``embeddings`` (``[concepts, features_dim]``).
  """
  if not 4 <= synth.num_categories <= len(CATEGORIES):
    # A scene shows 2-4 concepts of different categories.
    raise ValueError(f"synth.num_categories={synth.num_categories}; expected 4 to {len(CATEGORIES)}")
  rng = np.random.default_rng(synth.seed)
  categories = CATEGORIES[:synth.num_categories]
  num_concepts = synth.num_categories * synth.concepts_per_category
  words = iter(_pseudo_words(rng, 6 * num_concepts))
  # concept -> its surface answers, most popular first.
  surface_answers = []
  for _ in range(num_concepts):
    synonyms = []
    for _ in range(rng.integers(1, 5)):
      synonyms.append(f"{next(words)} {next(words)}" if rng.random() < 0.2 else next(words))
    surface_answers.append(synonyms)
  answers = [a for synonyms in surface_answers for a in synonyms]
  embeddings = rng.normal(size=(num_concepts, features_dim))
  embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)

  num_questions = {"train": synth.train_questions, "val": synth.val_questions,
                   "test": synth.test_questions}
  total = sum(num_questions.values())
  # Splits have their own videos, in proportion to their questions, as in the real datasets.
  video_split = []
  for split, n in num_questions.items():
    video_split += [split] * max(1, round(synth.num_videos * n / total))
  features, scenes, split_videos = {}, {}, {s: [] for s in num_questions}
  popularity = np.arange(1, 5, dtype=np.float64) ** -synth.popularity_skew
  for v, split in enumerate(video_split):
    video_id = f"video{v:05d}"
    scene_categories = rng.choice(synth.num_categories, size=rng.integers(2, 5), replace=False)
    scene = [c * synth.concepts_per_category + rng.integers(synth.concepts_per_category)
             for c in scene_categories]
    num_frames = rng.integers(synth.min_frames, synth.max_frames + 1)
    weights = rng.uniform(0.5, 1.5, size=(num_frames, len(scene)))
    noise = rng.normal(scale=synth.noise / np.sqrt(features_dim), size=(num_frames, features_dim))
    features[video_id] = (weights @ embeddings[scene] + noise).astype(np.float32)
    scenes[video_id] = scene
    split_videos[split].append(video_id)

  splits = {}
  for split, n in num_questions.items():
    rows = []
    for _ in range(n):
      video_id = split_videos[split][rng.integers(len(split_videos[split]))]
      concept = scenes[video_id][rng.integers(len(scenes[video_id]))]
      category = categories[concept // synth.concepts_per_category]
      template = QUESTION_TEMPLATES[rng.integers(len(QUESTION_TEMPLATES))]
      synonyms = surface_answers[concept]
      p = popularity[:len(synonyms)] / popularity[:len(synonyms)].sum()
      picks = rng.choice(len(synonyms), size=5, p=p)
      row = {"video_id": video_id, "question": template.format(category)}
      row.update({f"answer{k + 1}": synonyms[i] for k, i in enumerate(picks)})
      row["type"] = category
      rows.append(row)
    splits[split] = rows
  return {"answers": answers, "splits": splits, "features": features, "categories": categories,
          "surface_answers": surface_answers, "scenes": scenes, "embeddings": embeddings}


def build_tokenizer(dataset: dict) -> transformers.PreTrainedTokenizerFast:
  """A word-level tokenizer covering every word the prompts and answers use."""
  words = set(PROMPT_WORDS)
  for answer in dataset["answers"]:
    words.update(answer.split())
  for rows in dataset["splits"].values():
    for row in rows:
      words.update(row["question"].split())
  vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
  for word in sorted(words):
    vocab[word] = len(vocab)
  tokenizer = tokenizers.Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
  tokenizer.normalizer = normalizers.Lowercase()
  tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
  tokenizer.post_processor = processors.TemplateProcessing(
      single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
      special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
  return transformers.PreTrainedTokenizerFast(
      tokenizer_object=tokenizer, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
      sep_token="[SEP]", mask_token="[MASK]")


def write(out_dir: str, synth: ml_collections.ConfigDict, features_dim: int = 768) -> None:
  """Writes the dataset and its tokenizer to ``out_dir``; all or nothing.

  The files are written into a temporary sibling folder that is renamed at the end, so an
  interrupted run never leaves a folder that looks finished.
  """
  out_dir = os.path.abspath(out_dir)
  if os.path.exists(out_dir):
    raise FileExistsError(f"{out_dir} exists; expected a new folder for the generated dataset")
  parent = os.path.dirname(out_dir)
  os.makedirs(parent, exist_ok=True)
  dataset = generate(synth, features_dim)
  tmp_dir = tempfile.mkdtemp(prefix=".synth_vqa.", dir=parent)
  try:
    for split, rows in dataset["splits"].items():
      with open(os.path.join(tmp_dir, f"{split}.csv"), "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    with open(os.path.join(tmp_dir, "vocab.json"), "w", encoding="utf-8") as f:
      json.dump({a: i for i, a in enumerate(dataset["answers"])}, f, indent=0)
    np.savez(os.path.join(tmp_dir, "clipvitl14.npz"), **dataset["features"])
    build_tokenizer(dataset).save_pretrained(os.path.join(tmp_dir, TOKENIZER_DIR))
    os.chmod(tmp_dir, 0o755)  # mkdtemp makes it private; the result is an ordinary folder.
    os.rename(tmp_dir, out_dir)
  except BaseException:
    shutil.rmtree(tmp_dir, ignore_errors=True)
    raise
