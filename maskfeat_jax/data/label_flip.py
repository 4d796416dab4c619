"""Label-flip maps: the class a horizontally flipped training clip becomes (`config.data.label_flip_map`).

Something-Something v2 labels name directions ("Pushing something from left to right"), so a mirrored clip shows
another class; the official SSv2 configs (`configs/SSv2/MVITv2_S_16x4.yaml`: DATA.RANDOM_FLIP False) therefore do
not flip at all. With a label-flip map a flipped clip gets the mirrored label instead, which keeps flipping as an
augmentation without teaching the model wrong labels. The map is a string (a ConfigDict field keeps one type):

  ''            no map (flipped clips keep their label; config.validate refuses flipping SSv2 without a map)
  'left_right'  derived from the class names: a class whose name with the words left/right swapped is another
                class swaps with it; a class that mentions left or right without such a mirror is never flipped
  PATH.json     a JSON list of [class, class] pairs or a {class: class} object: each pair swaps both ways; the
                other classes keep their label when flipped

`flip_table(value, class_names)` resolves it into the label after a flip of every class (-1 = never flip).
"""
from __future__ import annotations

import json
import os
import re
from typing import Sequence

LEFT_RIGHT = "left_right"
KEY = "config.data.label_flip_map"
_WORD = re.compile(r"\b(left|right)\b", re.IGNORECASE)


def _mirror(name: str) -> str:
  def swap(m):
    word = m.group(0)
    other = "right" if word.lower() == "left" else "left"
    return other.capitalize() if word[0].isupper() else other
  return _WORD.sub(swap, name)


def left_right_table(class_names: Sequence[str]) -> tuple[int, ...]:
  """'left_right': mirrored name -> its index; itself when no left/right word; -1 when the mirror is missing."""
  index = {n: i for i, n in enumerate(class_names)}
  table = []
  for i, name in enumerate(class_names):
    if not _WORD.search(name):
      table.append(i)
    else:
      table.append(index.get(_mirror(name), -1))
  return tuple(table)


def _read_pairs(path: str) -> list[tuple[str, str]]:
  try:
    with open(os.path.expanduser(path)) as f:
      data = json.load(f)
  except (OSError, ValueError) as e:
    raise ValueError(f"{KEY}={path!r}: cannot read a JSON label-flip map ({type(e).__name__}: {e}).") from e
  if isinstance(data, dict):
    pairs = list(data.items())
  elif isinstance(data, list) and all(isinstance(p, (list, tuple)) and len(p) == 2 for p in data):
    pairs = [tuple(p) for p in data]
  else:
    raise ValueError(f"{KEY}={path!r}: expected a JSON list of [class, class] pairs or a {{class: class}} object.")
  for a, b in pairs:
    if not isinstance(a, str) or not isinstance(b, str):
      raise ValueError(f"{KEY}={path!r}: pair {[a, b]!r} is not two class names.")
  return pairs


def check_flip_map(value: str) -> None:
  """The checks that need no dataset (config.validate): 'left_right', or a readable, well-formed JSON file."""
  if value and value != LEFT_RIGHT:
    _pairs_table(_read_pairs(value), None, value)


def _pairs_table(pairs, class_names, path) -> tuple[int, ...]:
  seen = {}
  for a, b in pairs:
    for name, other in ((a, b), (b, a)):
      if seen.get(name, other) != other:
        raise ValueError(f"{KEY}={path!r}: class {name!r} is mapped to both {seen[name]!r} and {other!r}.")
      seen[name] = other
  if class_names is None:
    return ()
  index = {n: i for i, n in enumerate(class_names)}
  for name in seen:
    if name not in index:
      raise ValueError(f"{KEY}={path!r}: {name!r} is not one of the dataset's {len(class_names)} classes.")
  return tuple(index[seen[n]] if n in seen else i for i, n in enumerate(class_names))


def flip_table(value: str, class_names: Sequence[str]) -> tuple[int, ...]:
  """Label after a horizontal flip for every class (-1: clips of that class are never flipped); () = no map."""
  if not value:
    return ()
  if value == LEFT_RIGHT:
    return left_right_table(class_names)
  return _pairs_table(_read_pairs(value), list(class_names), value)
