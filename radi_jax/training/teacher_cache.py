"""The teacher cache: what the student stage needs from the frozen teacher, computed once.

Per train example (row = stable example index) the cache holds the teacher's answer-head input vector
(`teacher_features`, [E]); for RADI-P also the teacher's top answers and the Sinkhorn scalings of its
pair weights (`top_indices`, `log_u`, `log_v` [P], `lam`, `weight_mean`); for FitNet/RKD the teacher's
[MASK] representation (`teacher_hidden`, [H]). Teacher logits and MC-dropout scorings are rebuilt in
the student step as small products with the cached teacher answer head (DESIGN §5).

Files: one `.npy` per field (memory-mapped on load), `teacher_head.npz` and `manifest.json`, written
into a temporary directory that is renamed into place only when complete.
"""

from __future__ import annotations

import json
import os
import shutil

import ml_dtypes
import numpy as np

from radi_jax.training import errors

MANIFEST = 'manifest.json'
HEAD = 'teacher_head.npz'


def write(directory: str, arrays: dict[str, np.ndarray], teacher_head: dict[str, np.ndarray],
          manifest: dict) -> None:
  """Writes a complete cache atomically (a killed write leaves no cache behind)."""
  tmp = directory.rstrip('/') + '.tmp'
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  bfloat16_fields = []
  for name, value in arrays.items():
    if value.dtype == ml_dtypes.bfloat16:
      # .npy has no bfloat16: store the bits, and say so in the manifest.
      value = value.view(np.uint16)
      bfloat16_fields.append(name)
    np.save(os.path.join(tmp, f'{name}.npy'), value)
  np.savez(os.path.join(tmp, HEAD), **teacher_head)
  with open(os.path.join(tmp, MANIFEST), 'w') as f:
    json.dump(dict(manifest, fields=sorted(arrays), bfloat16_fields=bfloat16_fields), f, indent=2,
              sort_keys=True)
  if os.path.exists(directory):
    shutil.rmtree(directory)
  os.replace(tmp, directory)


def read_manifest(directory: str) -> dict | None:
  path = os.path.join(directory, MANIFEST)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def check_manifest(directory: str, expected: dict, fields: list[str]) -> None:
  """Refuses a missing or stale cache with one line naming what differs."""
  found = read_manifest(directory)
  if found is None:
    raise errors.StaleCacheError(
        f'{directory}: no teacher cache; run the cache stage first (--config.stage=cache)')
  for key, value in expected.items():
    if found.get(key) != value:
      raise errors.StaleCacheError(
          f'{directory}: stale teacher cache: {key} is {found.get(key)!r}, this run expects '
          f'{value!r}; re-run the cache stage (--config.stage=cache)')
  missing = sorted(set(fields) - set(found.get('fields', [])))
  if missing:
    raise errors.StaleCacheError(
        f'{directory}: the teacher cache lacks {missing} needed by this student; re-run the cache '
        'stage with this config')


class TeacherCache:
  """Read access to a written cache: rows looked up by example index."""

  def __init__(self, directory: str, fields: list[str]):
    bfloat16_fields = set(read_manifest(directory).get('bfloat16_fields', []))
    self.arrays = {}
    for name in fields:
      array = np.load(os.path.join(directory, f'{name}.npy'), mmap_mode='r')
      self.arrays[name] = array.view(ml_dtypes.bfloat16) if name in bfloat16_fields else array
    with np.load(os.path.join(directory, HEAD)) as head:
      self.teacher_head = {k: np.asarray(head[k]) for k in head.files}

  def lookup(self, index: np.ndarray, valid: np.ndarray) -> dict[str, np.ndarray]:
    """Cache rows of a batch `[B]`; padded rows (valid False) read row 0."""
    rows = np.where(valid, index, 0)
    return {name: np.asarray(array[rows]) for name, array in self.arrays.items()}
