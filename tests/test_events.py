"""mim_jax/events.py reads back what the trainer's CLU writer wrote."""
import numpy as np
from clu import metric_writers

from mim_jax import events


def write_run(workdir):
  writer = metric_writers.create_default_writer(str(workdir))
  writer.write_scalars(2, {"loss": 0.5, "lr": 0.125})
  writer.write_scalars(1, {"loss": 0.75})
  writer.write_images(2, {"reconstruction": np.zeros((1, 4, 4, 3), np.float32)})
  writer.flush()
  writer.close()


def test_scalars_come_back_in_step_order_and_images_only_as_tags(tmp_path):
  write_run(tmp_path / "run")
  workdir = str(tmp_path / "run")
  assert len(events.event_files(workdir)) == 1
  assert events.scalars(workdir) == {"loss": [(1, 0.75), (2, 0.5)], "lr": [(2, 0.125)]}
  assert events.scalar_series(workdir, "loss") == [0.75, 0.5]
  assert events.scalar_series(workdir, "lr", with_steps=True) == [(2, 0.125)]
  assert events.scalar_series(workdir, "reconstruction") == []
  assert events.event_tags(workdir) == {"loss", "lr", "reconstruction"}


def test_a_record_cut_short_ends_the_file(tmp_path):
  write_run(tmp_path)
  (path,) = events.event_files(str(tmp_path))
  complete = list(events.records(path))
  with open(path, "rb") as f:
    data = f.read()
  with open(path, "wb") as f:
    f.write(data[:-5])  # the image event loses its tail, as in a file being written
  assert list(events.records(path)) == complete[:-1]
  assert events.scalars(str(tmp_path))["loss"] == [(1, 0.75), (2, 0.5)]


def test_a_corrupted_record_ends_the_file(tmp_path):
  """tensorboard's loader checks each record's CRC: a flipped byte stops the reading at
  that record, so what came before it is kept and nothing after it is read."""
  write_run(tmp_path)
  (path,) = events.event_files(str(tmp_path))
  complete = list(events.records(path))  # file version, loss@2, lr@2, loss@1, image@2
  with open(path, "rb") as f:
    data = bytearray(f.read())
  data[data.index(complete[3]) + 3] ^= 1  # a byte inside loss@1
  with open(path, "wb") as f:
    f.write(data)
  assert list(events.records(path)) == complete[:3]
  assert events.scalars(str(tmp_path)) == {"loss": [(2, 0.5)], "lr": [(2, 0.125)]}
  assert events.last_step(str(tmp_path)) == 2
