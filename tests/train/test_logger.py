"""metrics.jsonl and TensorBoard after a resume: one row / point per logged step; the final eval is logged.

Runs of the trainer's tiny model (tests/train/test_trainer.py helpers) with a stub evaluator.
"""
import glob
import json
import os
import shutil
import struct

import pytest

from maskfeat_jax import run as run_lib
from maskfeat_jax.train import logger
from tests.train.test_trainer import tiny_config, tiny_hooks

try:
  from tensorboard.backend.event_processing import event_accumulator
except ImportError:  # not a dependency: the event files are then read with tensorboardX's protos
  event_accumulator = None

EVAL = {"top1": 0.5, "top5": 0.75, "per_class": [0.1, 0.9]}  # the list is not a scalar: not logged


def _rows(workdir):
  return [json.loads(l) for l in open(workdir / "metrics.jsonl")]


def _tb_points(tb_dir, tag):
  """[(step, value)] of `tag` as TensorBoard shows it, a restart's purge (SessionLog.START) applied."""
  if event_accumulator is not None:
    acc = event_accumulator.EventAccumulator(str(tb_dir), size_guidance={event_accumulator.SCALARS: 0})
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)] if tag in acc.Tags()["scalars"] else []
  from tensorboardX.proto import event_pb2
  points = []
  for path in sorted(glob.glob(os.path.join(tb_dir, "events.out.tfevents.*"))):  # names sort by time
    data = open(path, "rb").read()
    pos = 0
    while pos < len(data):  # TFRecords: length, crc, payload, crc
      (n,) = struct.unpack("<Q", data[pos:pos + 8])
      event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + n])
      pos += 12 + n + 4
      if event.HasField("session_log") and event.session_log.status == event_pb2.SessionLog.START:
        points = [p for p in points if p[0] < event.step]  # TensorBoard's purge of orphaned data
      for v in event.summary.value:
        if v.tag == tag:
          points.append((event.step, v.simple_value))
  return points


@pytest.fixture
def stub_eval(monkeypatch):
  monkeypatch.setattr(run_lib, "evaluator_for", lambda *a, **k: lambda params, workdir: dict(EVAL))


def test_resume_after_kill_leaves_one_row_and_point_per_step(tmp_path, stub_eval):
  del stub_eval
  c = tiny_config(total_steps=8, log_every_steps=1, checkpoint_every_steps=4, eval_every_steps=2)
  run_lib.run(c, str(tmp_path), tiny_hooks(c, stop_at_step=6))
  # As a SIGKILL after logging step 6 but before its checkpoint leaves it: rows and events for 5 and 6 (and
  # a line torn mid-write), no checkpoint 6.
  shutil.rmtree(tmp_path / "checkpoints" / "6")
  assert [r["step"] for r in _rows(tmp_path) if "loss" in r] == [1, 2, 3, 4, 5, 6]
  killed = {r["step"]: r["loss"] for r in _rows(tmp_path) if "loss" in r}
  with open(tmp_path / "metrics.jsonl", "a") as f:
    f.write('{"step": 6, "lo')

  r = run_lib.run(c, str(tmp_path), tiny_hooks(c))
  assert r.status == "done" and r.start_step == 4 and r.eval == EVAL
  rows = _rows(tmp_path)
  assert [x["step"] for x in rows if "loss" in x] == list(range(1, 9))
  assert [x["step"] for x in rows if "eval/top1" in x] == [2, 4, 6, 8]
  assert [x["step"] for x in rows] == sorted(x["step"] for x in rows)
  final = [x for x in rows if x.get("final")]
  assert len(final) == 1 and final[0]["step"] == 8
  assert final[0]["eval/top1"] == 0.5 and final[0]["eval/top5"] == 0.75 and "eval/per_class" not in final[0]
  loss = {x["step"]: x["loss"] for x in rows if "loss" in x}
  assert all(loss[s] == killed[s] for s in range(1, 5))  # rows up to the checkpoint are kept as they were

  def check_tb():
    tb_loss = _tb_points(tmp_path / "tb", "loss")
    assert [s for s, _ in tb_loss] == list(range(1, 9))
    assert all(v == pytest.approx(loss[s], rel=1e-6) for s, v in tb_loss)
    assert [s for s, _ in _tb_points(tmp_path / "tb", "eval/top1")] == [2, 4, 6, 8]
  check_tb()

  # Rerunning the finished run evaluates again: its final row and points replace the previous ones.
  r = run_lib.run(c, str(tmp_path), tiny_hooks(c))
  assert r.start_step == 8 and r.eval == EVAL
  again = _rows(tmp_path)
  assert [{k: v for k, v in x.items() if k != "time"} for x in again[:-1]] == \
      [{k: v for k, v in x.items() if k != "time"} for x in rows[:-1]]
  assert again[-1]["final"] and again[-1]["step"] == 8 and again[-1]["eval/top1"] == 0.5
  check_tb()


def test_final_eval_scalars_are_logged(tmp_path, stub_eval):
  del stub_eval
  c = tiny_config("finetune", total_steps=2)
  r = run_lib.run(c, str(tmp_path), tiny_hooks(c))
  assert r.eval == EVAL
  last = _rows(tmp_path)[-1]
  assert last["step"] == 2 and last["final"] and last["eval/top1"] == 0.5 and last["eval/top5"] == 0.75
  assert _tb_points(tmp_path / "tb", "eval/top5") == [(2, 0.75)]


def test_fresh_start_supersedes_rows_of_a_run_killed_before_its_first_checkpoint(tmp_path):
  with open(tmp_path / "metrics.jsonl", "w") as f:
    f.write('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n')
  w = logger.MetricsWriter(str(tmp_path), total_steps=4, batch_size=1, start_step=0, tensorboard=False)
  w.scalars(1, {"loss": 1.0})
  w.close()
  rows = _rows(tmp_path)
  assert [(x["step"], x["loss"]) for x in rows] == [(1, 1.0)]
  assert not os.path.exists(tmp_path / "metrics.jsonl.tmp")


def test_two_writers_opened_in_the_same_second_keep_both_event_files(tmp_path, monkeypatch):
  # tensorboardX names event files by the second; a second writer then truncated the first's file (seen in
  # CI: a rerun of a finished run within a second of the resumed run lost the resumed run's points).
  import tensorboardX.event_file_writer as efw  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(efw.time, "time", lambda: 1_700_000_000.25)
  first = logger.MetricsWriter(str(tmp_path), total_steps=4, batch_size=1, stream=open(os.devnull, "w"))
  first.scalars(1, {"loss": 1.0})
  first.scalars(2, {"loss": 2.0})
  first.close()
  second = logger.MetricsWriter(str(tmp_path), total_steps=4, batch_size=1, start_step=2,
                                stream=open(os.devnull, "w"))
  second.scalars(3, {"loss": 3.0})
  second.close()
  assert len(glob.glob(str(tmp_path / "tb" / "events.out.tfevents.*"))) == 2
  assert [s for s, _ in _tb_points(tmp_path / "tb", "loss")] == [1, 2, 3]
