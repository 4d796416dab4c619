"""Split names: 'train', or TFDS-style slices such as 'train[:10%]' / 'train[100:200]' / 'test[-50:]'."""
import re


_SLICE_RE = re.compile(r"^([A-Za-z0-9_\-]+)(?:\[\s*(-?\d+%?)?\s*:\s*(-?\d+%?)?\s*\])?$")


def resolve_split(split: str, sizes: dict, where: str = "the dataset") -> tuple[str, int, int]:
  """'name' or a TFDS-style slice 'name[a:b]' (ints or percents, negatives from the end) -> (name, start, stop).

  Percent boundaries round to the nearest record, as TFDS. A slice selects records of its base split in
  their stored order (e.g. 'train[:10%]' for a label-efficiency run).
  """
  m = _SLICE_RE.match(str(split).strip())
  if m is None:
    raise ValueError(f"Split {split!r}: expected 'name' or 'name[start:stop]' (ints or percents).")
  base, lo, hi = m.groups()
  if base not in sizes:
    raise ValueError(f"Split {base!r} not in {where}; available: {sorted(sizes)}")
  n = int(sizes[base])

  def bound(v, default):
    if v is None:
      return default
    k = int(round(float(v[:-1]) * n / 100)) if v.endswith("%") else int(v)
    return max(0, min(n, k + n if k < 0 else k))

  start, stop = bound(lo, 0), bound(hi, n)
  if stop <= start:
    raise ValueError(f"Split {split!r} selects no records ({base!r} has {n}: [{start}:{stop}]).")
  return base, start, stop


def split_tag(split: str) -> str:
  """A file-name-safe form of a split name: 'train[:10%]' -> 'train_0-10pct'."""
  base, _, rest = str(split).partition("[")
  if not rest:
    return base
  lo, _, hi = rest.rstrip("]").partition(":")
  return f"{base}_{lo.strip() or '0'}-{hi.strip() or 'end'}".replace("%", "pct")


def split_size(sizes: dict, split: str) -> int | None:
  """Examples in `split` (a slice counts its records), or None when the base split's size is unknown."""
  if not isinstance(sizes, dict) or str(split).split("[")[0] not in sizes:
    return None
  _, start, stop = resolve_split(split, sizes)
  return stop - start
