"""`build_shards --runner=beam` (Apache Beam, DirectRunner in multi_processing mode) writes what the local
runner writes: the same examples in the same shards and the same conversion report (bad inputs listed)."""
import json
import subprocess
import sys

import pytest

from maskfeat_jax.data import build_shards
from maskfeat_jax.data import label_files
from maskfeat_jax.data import storage
from tests.data.test_build_shards import CLASSES, REPO, video_folder  # pylint: disable=unused-import

beam_pipeline = pytest.importorskip("maskfeat_jax.data.beam_pipeline", reason="apache-beam is not installed")

pytestmark = pytest.mark.slow
OPTIONS = build_shards.Options(short_side=32, jpeg_quality=95)


def _shards(ds_dir):
  """shard file name -> list of (video_id, label, fps, frame bytes), in the shard's order."""
  out = {}
  for path in sorted(ds_dir.glob("*.array_record-*")):
    source = storage.open_source([str(path)])
    recs = [storage.parse_video_record(source[i]) for i in range(len(source))]
    out[path.name] = [(r["video_id"], r["label"], r["fps"], tuple(r["frames"])) for r in recs]
  return out


def _report(ds_dir):
  r = json.loads((ds_dir / build_shards.REPORT_FILE).read_text())
  assert r.pop("dataset_dir") == str(ds_dir)
  return r


def test_beam_runner_writes_what_the_local_runner_writes(video_folder, tmp_path):
  items = label_files.read_label_file(str(video_folder / "list.csv"), str(video_folder), "train")
  names = label_files.class_names_for(items)
  build_shards.convert(items, str(tmp_path / "local"), "toy", names, OPTIONS, examples_per_shard=3,
                       num_workers=0, progress=False)
  beam_report = build_shards.convert(items, str(tmp_path / "beam"), "toy", names, OPTIONS, examples_per_shard=3,
                                     num_workers=2, progress=False, runner="beam",
                                     beam_pipeline_options="direct_num_workers=2")
  local_dir = storage.dataset_dir(tmp_path / "local", "toy")
  beam_dir = storage.dataset_dir(tmp_path / "beam", "toy")
  local, beam = _shards(local_dir), _shards(beam_dir)
  assert list(local) == [f"toy-train.array_record-0000{k}-of-00004" for k in range(4)]
  assert beam == local  # same shards, same examples in the same order, same JPEG bytes
  ids = sorted(v[0] for rows in beam.values() for v in rows)
  assert ids == sorted(f"{n}/vid{l}{i}" for l, n in enumerate(CLASSES) for i in range(2))
  assert _report(beam_dir) == _report(local_dir)
  assert beam_report["converted"] == 6 and beam_report["skipped"] == 4  # the bad inputs, listed
  assert {x["video_id"].split("/")[-1] for x in beam_report["skipped_items"]} == {
      "empty", "truncated", "text", "missing"}
  assert storage.read_meta(beam_dir).split_sizes == {"train": 6}
  assert not list(beam_dir.glob("*" + storage.TMP_SUFFIX))
  # A rerun finds every shard finished: nothing is converted again, the report is unchanged.
  before = {p.name: p.stat().st_mtime_ns for p in beam_dir.glob("*.array_record-*")}
  again = build_shards.convert(items, str(tmp_path / "beam"), "toy", names, OPTIONS, examples_per_shard=3,
                               progress=False, runner="beam")
  assert again == beam_report
  assert {p.name: p.stat().st_mtime_ns for p in beam_dir.glob("*.array_record-*")} == before


def test_cli_beam_runner(video_folder, tmp_path):
  cmd = [sys.executable, "-m", "maskfeat_jax.data.build_shards", f"--videos_dir={video_folder}",
         f"--labels={video_folder / 'list.csv'}", f"--output_dir={tmp_path}", "--name=toy", "--runner=beam",
         "--beam_pipeline_options=runner=DirectRunner,direct_running_mode=multi_processing,direct_num_workers=2",
         "--short_side=32", "--examples_per_shard=5", "--noprogress"]
  result = subprocess.run(["timeout", "-k", "10", "300"] + cmd, capture_output=True, text=True, cwd=REPO,
                          check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "Converted 6 videos" in result.stdout and "skipped 4" in result.stdout
  report = json.loads((storage.dataset_dir(tmp_path, "toy") / build_shards.REPORT_FILE).read_text())
  assert report["splits"]["train"] == {"converted": 6, "shards": 2, "skipped": 4}


def test_pipeline_options():
  assert beam_pipeline.pipeline_args("", 3) == [
      "--runner=DirectRunner", "--direct_running_mode=multi_processing", "--direct_num_workers=3"]
  assert beam_pipeline.pipeline_args("runner=DataflowRunner, --project=p,region=r", 3) == [
      "--runner=DataflowRunner", "--project=p", "--region=r"]
  with pytest.raises(ValueError, match="key=value"):
    beam_pipeline.pipeline_args("runner=DirectRunner,not an option", 1)
