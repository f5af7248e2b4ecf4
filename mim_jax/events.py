"""Reading the TensorBoard event files that training writes under its workdir (CLU's
`metric_writers`: scalars as rank-0 tensors under the 'scalars' plugin) with tensorboard's
event_file_loader, which reads them with TensorFlow's record reader. `last_step` reads
gs:// workdirs too (etils.epath); the rest reads local directories."""
import glob
import os
from typing import Dict, Iterator, List, Set, Tuple

from etils import epath
from tensorboard.backend.event_processing import event_file_loader
from tensorboard.compat.proto import event_pb2
from tensorboard.util import tensor_util


def event_files(workdir: str) -> List[str]:
  """All `events.out.tfevents.*` files under `workdir`, in subdirectories too."""
  return sorted(glob.glob(os.path.join(str(workdir), "**", "events.out.tfevents.*"),
                          recursive=True))


def records(path: str) -> Iterator[bytes]:
  """The serialized events of one event file (tensorboard's `RawEventFileLoader`: CRCs
  are checked, and a corrupted record, or one cut short as in a file still being written,
  ends the iteration)."""
  return event_file_loader.RawEventFileLoader(str(path)).Load()


def last_step(workdir: str) -> int:
  """The highest step of any summary in the event files directly under `workdir` (where
  the trainer writes them); -1 if there are none."""
  root = epath.Path(workdir)
  if not root.is_dir():
    return -1
  steps = [event.step for path in sorted(root.glob("events.out.tfevents.*"))
           for event in map(event_pb2.Event.FromString, records(path))
           if event.HasField("summary")]
  return max(steps, default=-1)


def _summary_values(workdir: str):
  """(step, summary value) of every value in every event file of `workdir`."""
  for path in event_files(workdir):
    for record in records(path):
      event = event_pb2.Event.FromString(record)
      for value in event.summary.value:
        yield event.step, value


def _is_scalar(value) -> bool:
  return (value.metadata.plugin_data.plugin_name == "scalars" or
          value.HasField("simple_value"))


def _scalar(value) -> float:
  if value.HasField("simple_value"):
    return float(value.simple_value)
  return float(tensor_util.make_ndarray(value.tensor))


def scalars(workdir: str) -> Dict[str, List[Tuple[int, float]]]:
  """Every scalar tag of `workdir` -> its (step, value) pairs in step order."""
  series: Dict[str, List[Tuple[int, float]]] = {}
  for step, value in _summary_values(workdir):
    if _is_scalar(value):
      series.setdefault(value.tag, []).append((step, _scalar(value)))
  return {tag: sorted(points) for tag, points in sorted(series.items())}


def scalar_series(workdir: str, tag: str, with_steps: bool = False) -> list:
  """Values of the scalar `tag` in step order (as (step, value) with `with_steps`)."""
  series = sorted((step, _scalar(value)) for step, value in _summary_values(workdir)
                  if value.tag == tag and _is_scalar(value))
  return series if with_steps else [value for _, value in series]


def event_tags(workdir: str) -> Set[str]:
  """Every tag written under `workdir` (scalars and images)."""
  return {value.tag for _, value in _summary_values(workdir)}
