"""What watching for failed checkpoint saves costs the train loop (checkpoint.Saver).

python -m mim_jax.benchmarks.save_check [--megabytes=128] [--calls=100000]

The trainer calls `Saver.check` once per step so that a save that fails on Orbax's
background threads stops the run a step or so later. Prints the time of one call with no
save pending, and while a save of `--megabytes` of float32 arrays is being written (the
loop keeps calling until the save has ended), next to the time the save itself blocks the
caller. Compare with a train step's time (train_step.py).
"""
import tempfile
import time

import ml_collections
import numpy as np
from absl import app, flags

from mim_jax import checkpoint

flags.DEFINE_integer("megabytes", 128, "Size of the saved state.")
flags.DEFINE_integer("calls", 100_000, "Calls timed with no save pending.")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  saver = checkpoint.Saver(checkpoint.create_manager(
      tempfile.mkdtemp(), ml_collections.ConfigDict(dict(keep_checkpoints=2))))
  start = time.perf_counter()
  for _ in range(FLAGS.calls):
    saver.check(1)
  idle = (time.perf_counter() - start) / FLAGS.calls
  state = {"w": np.random.default_rng(0).normal(
      size=(FLAGS.megabytes, 256, 1024)).astype(np.float32)}
  start = time.perf_counter()
  saver.save(1, state, {"next_element": [0]})
  blocking = time.perf_counter() - start
  start, calls = time.perf_counter(), 0
  while saver.pending is not None:
    saver.check(2)
    calls += 1
  busy = (time.perf_counter() - start) / calls
  saver.close()
  print(f"Saver.check: {idle * 1e6:.2f} us per call with no save pending; {busy * 1e6:.1f} us "
        f"per call while a {FLAGS.megabytes} MB save is written ({calls} calls until it "
        f"ended); the save blocked the caller {blocking:.2f} s")


if __name__ == "__main__":
  app.run(main)
