"""mim_jax/lock.py: one run per workdir. In-process: claim, refuse, release; stale claims
(dead pid on this host, expired heartbeat of another host, a reused pid); two starters
racing; the outcome of process 0 on the other processes. Then real `python -m
mim_jax.main` processes on one workdir: the second stops at once with one line and
writes nothing, the first finishes; evaluation and `load_encoder` read a held run; the
claim of a run killed with SIGKILL is taken over by the rerun."""
import gc
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from conftest import REPO, checkpoint_steps, config_file, scalar_series, tiny_mae_config
from mim_jax import lock

FAST = dict(settle_s=0.05)  # claims in-process: no need to wait for racing hosts


def write_claim(workdir, **fields):
  """A claim as another run would have left it: this process's identity, a fresh
  heartbeat, a new token, with `fields` on top."""
  os.makedirs(workdir, exist_ok=True)
  claim = dict(lock.identity(), since="2024-01-02T03:04:05+00:00", heartbeat=time.time(),
               token=os.urandom(16).hex(), command="python -m mim_jax.main", expiry_s=600.0)
  claim.update(fields)
  lock._write_claim(str(workdir), claim)  # pylint: disable=protected-access
  return claim


def in_use_pattern(workdir, host, pid, since, expiry):
  return (rf"{re.escape(str(workdir))} is in use by the run started {re.escape(since)} on "
          rf"host {re.escape(host)} \(pid {pid}\), last seen \d+ s ago: wait for it to end or "
          r"stop it, or use another --workdir\. A claim whose holder stopped without "
          rf"releasing it expires {expiry} s after its last heartbeat \(or delete "
          rf"{re.escape(str(workdir))}/lock\.json once you are sure that run has stopped\)\.")


def dead_pid():
  proc = subprocess.Popen([sys.executable, "-c", "pass"])
  proc.wait()
  return proc.pid


def eventually(condition, timeout=30.0):
  """Whether `condition()` holds within `timeout` s (a heartbeat thread can be late when
  the machine is loaded; a fixed sleep made these tests flaky)."""
  deadline = time.time() + timeout
  while not condition():
    if time.time() > deadline:
      return False
    time.sleep(0.05)
  return True


def took_over(caplog, workdir):
  return [r.getMessage() for r in caplog.records
          if r.levelname == "WARNING" and r.getMessage().startswith(f"Took over {workdir} ")]


def test_claim_refuse_renew_release_and_claim_again(tmp_path):
  claim = lock.acquire(str(tmp_path), heartbeat_s=0.1, **FAST)
  record = lock.read_claim(str(tmp_path))
  assert record["token"] == claim.token and record["pid"] == os.getpid()
  assert record["host"] == socket.gethostname() and record["expiry_s"] == 1.0
  assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", record["since"])
  with pytest.raises(lock.WorkdirInUse) as refused:  # held by a run of this same process
    lock.acquire(str(tmp_path), **FAST)
  assert re.fullmatch(in_use_pattern(tmp_path, socket.gethostname(), os.getpid(),
                                     record["since"], 1), str(refused.value))
  assert eventually(lambda: lock.read_claim(str(tmp_path))["heartbeat"] > record["heartbeat"])
  claim.release()
  claim.release()  # idempotent
  assert os.listdir(tmp_path) == []
  for _ in range(2):  # sequential runs in one process (mim_jax/tools/compare.py)
    with lock.hold(str(tmp_path), **FAST) as again:
      assert lock.read_claim(str(tmp_path))["token"] == again.token
    assert os.listdir(tmp_path) == []


def test_a_claim_dropped_without_release_is_released_when_collected(tmp_path):
  lock.acquire(str(tmp_path), heartbeat_s=0.05, **FAST)  # the Claim is dropped at once
  gc.collect()
  time.sleep(0.2)  # its heartbeat thread ends without rewriting the file
  assert os.listdir(tmp_path) == []


def test_a_taken_over_claim_is_not_renewed_nor_deleted(tmp_path, caplog):
  claim = lock.acquire(str(tmp_path), heartbeat_s=0.1, **FAST)
  other = write_claim(tmp_path, host="other-host", pid=4242)
  assert eventually(lambda: claim.lost is not None)
  assert claim.lost["token"] == other["token"]
  assert any("Lost the claim on" in r.getMessage() for r in caplog.records)
  claim.release()
  assert lock.read_claim(str(tmp_path)) == other


def test_dead_pid_on_this_host_is_taken_over_with_a_warning(tmp_path, caplog):
  pid = dead_pid()
  old = write_claim(tmp_path, pid=pid)
  with lock.hold(str(tmp_path), **FAST) as claim:
    assert lock.read_claim(str(tmp_path))["token"] == claim.token
  assert took_over(caplog, tmp_path) == [
      f"Took over {tmp_path} from the run on host {old['host']} (pid {pid}, since "
      f"{old['since']}): no process {pid} runs on this host any more."]


def test_live_pid_is_refused_until_killed_and_a_reused_pid_is_stale(tmp_path, caplog):
  sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
  try:
    start = lock._proc_stat(sleeper.pid)[19]  # pylint: disable=protected-access
    old = write_claim(tmp_path, pid=sleeper.pid, pid_start=start)
    with pytest.raises(lock.WorkdirInUse, match=f"pid {sleeper.pid}"):
      lock.acquire(str(tmp_path), **FAST)
    write_claim(tmp_path, pid=sleeper.pid, pid_start="1")  # the pid, not that process
    assert lock.stale_reason(lock.read_claim(str(tmp_path))) == (
        f"pid {sleeper.pid} is now another process")
    old = write_claim(tmp_path, pid=sleeper.pid, pid_start=old["pid_start"])
  finally:
    sleeper.kill()
    sleeper.wait()
  with lock.hold(str(tmp_path), **FAST):
    pass
  assert took_over(caplog, tmp_path)[-1].endswith(
      f"(pid {sleeper.pid}, since {old['since']}): no process {sleeper.pid} runs on this host "
      "any more.")


def test_another_hosts_claim_holds_until_its_heartbeat_expires(tmp_path, caplog):
  fresh = write_claim(tmp_path, host="other-host", pid=dead_pid(), boot_id="other-boot",
                      heartbeat=time.time() - 30, expiry_s=600.0)
  with pytest.raises(lock.WorkdirInUse) as refused:  # its pid means nothing here
    lock.acquire(str(tmp_path), **FAST)
  assert re.fullmatch(in_use_pattern(tmp_path, "other-host", fresh["pid"], fresh["since"],
                                     600), str(refused.value))
  assert "last seen 30 s ago" in str(refused.value)
  assert lock.read_claim(str(tmp_path)) == fresh  # untouched
  expired = write_claim(tmp_path, host="other-host", pid=7, heartbeat=time.time() - 1000,
                        expiry_s=600.0)
  with lock.hold(str(tmp_path), **FAST):
    pass
  assert took_over(caplog, tmp_path) == [
      f"Took over {tmp_path} from the run on host other-host (pid 7, since "
      f"{expired['since']}): its last heartbeat was 1000 s ago (a claim expires after 600 s)."]


def test_two_starters_racing_for_a_free_workdir_one_wins(tmp_path, monkeypatch):
  """Both read "no claim" before either writes (a barrier after the first read); both
  write; the last writer keeps it, the other stops naming it."""
  barrier, local = threading.Barrier(2, timeout=10), threading.local()
  read = lock.read_claim

  def read_then_meet(workdir):
    found = read(workdir)
    if not getattr(local, "met", False):
      local.met = True
      barrier.wait()
    return found

  monkeypatch.setattr(lock, "read_claim", read_then_meet)
  outcomes = [None, None]

  def start(index):
    try:
      outcomes[index] = lock.acquire(str(tmp_path), settle_s=0.5)
    except lock.WorkdirInUse as e:
      outcomes[index] = e

  threads = [threading.Thread(target=start, args=(i,)) for i in range(2)]
  for thread in threads:
    thread.start()
  for thread in threads:
    thread.join()
  monkeypatch.setattr(lock, "read_claim", read)
  winners = [o for o in outcomes if isinstance(o, lock.Claim)]
  losers = [o for o in outcomes if isinstance(o, lock.WorkdirInUse)]
  assert len(winners) == 1 and len(losers) == 1, outcomes
  assert read(str(tmp_path))["token"] == winners[0].token
  assert "is in use by the run started" in str(losers[0])
  winners[0].release()
  assert os.listdir(tmp_path) == []


def test_every_process_follows_process_0(tmp_path, monkeypatch):
  """Two processes simulated in turn: process 0 claims and broadcasts the outcome, process
  1 (which never reads the claim) raises the same error or holds nothing."""
  import jax
  from jax.experimental import multihost_utils
  sent = []
  monkeypatch.setattr(jax, "process_count", lambda: 2)

  def as_process(index, workdir):
    with pytest.MonkeyPatch.context() as patch:
      patch.setattr(jax, "process_index", lambda: index)
      if index == 0:
        broadcast = lambda x: sent.append(np.array(x)) or x  # noqa: E731
      else:  # contributes nothing, receives what process 0 sent
        broadcast = lambda x: (np.testing.assert_array_equal(x, 0), sent[-1])[1]  # noqa: E731
        patch.setattr(lock, "read_claim", None)  # process 1 never looks at the claim
      patch.setattr(multihost_utils, "broadcast_one_to_all", broadcast)
      return lock.acquire(str(workdir), **FAST)

  held = write_claim(tmp_path / "held", host="other-host", pid=1)
  errors = []
  for index in (0, 1):
    with pytest.raises(lock.WorkdirInUse) as refused:
      as_process(index, tmp_path / "held")
    errors.append(str(refused.value))
  assert errors[0] == errors[1] and "on host other-host (pid 1)" in errors[0]
  assert lock.read_claim(str(tmp_path / "held")) == held

  claim0 = as_process(0, tmp_path / "free")
  claim1 = as_process(1, tmp_path / "free")
  assert claim1.path is None
  claim1.release()  # nothing: process 0's claim stays
  assert lock.read_claim(str(tmp_path / "free"))["token"] == claim0.token
  claim0.release()
  assert os.listdir(tmp_path / "free") == []

  monkeypatch.setattr(lock, "_claim_here", lambda *a: 1 / 0)  # process 0 cannot claim
  with pytest.raises(ZeroDivisionError):
    as_process(0, tmp_path / "broken")
  with pytest.raises(RuntimeError, match=r"Process 0 could not claim .*ZeroDivisionError"):
    as_process(1, tmp_path / "broken")


# --- real processes ----------------------------------------------------------------------

# configs/mae.py:vit_base,shrink, logging every step, for as long as the test lets it run: SIGTERM
# ends it with its only checkpoint, so that the workdir's files stay the same while it runs.
LONG_RUN = {"num_train_steps": 100000, "checkpoint_every_steps": 100000,
            "image_summary_every_steps": 0}


class Main:
  """`python -m mim_jax.main` in a subprocess (8 fake devices like this process), its
  stderr read by a thread into `lines`; killed at the end of the test (`STARTED`)."""

  STARTED = []

  def __init__(self, workdir, overrides=LONG_RUN):
    cmd = [sys.executable, "-m", "mim_jax.main", "--config=configs/mae.py:vit_base,shrink",
           f"--workdir={workdir}"] + [f"--config.{k}={v}" for k, v in overrides.items()]
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
    self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
    self.pid = self.proc.pid
    Main.STARTED.append(self.proc)
    self.lines = []
    self.reader = threading.Thread(target=lambda: self.lines.extend(self.proc.stderr),
                                   daemon=True)
    self.reader.start()

  def wait_for(self, pattern, timeout=180):
    """The first log line that matches `pattern` (re.search)."""
    return self._first(lambda line: re.search(pattern, line), timeout, repr(pattern))

  def wait_for_step(self, step, timeout=180):
    """Wait until the metrics of `step` (or a later one) are logged; that step."""
    def reached(line):
      found = re.search(r"\] \[(\d+)\] .*loss=", line)
      return found and int(found.group(1)) >= step
    return int(re.search(r"\] \[(\d+)\]", self._first(reached, timeout,
                                                      f"step {step}")).group(1))

  def _first(self, matches, timeout, what):
    deadline, seen = time.time() + timeout, 0
    while time.time() < deadline:
      done = self.proc.poll() is not None and not self.reader.is_alive()
      lines = self.lines[seen:]
      seen += len(lines)
      for line in lines:
        if matches(line):
          return line
      if done:
        break
      time.sleep(0.05)
    self.proc.kill()
    raise AssertionError(f"no line with {what}:\n{self.log()[-3000:]}")

  def finish(self, sig=None, timeout=120):
    if sig is not None:
      self.proc.send_signal(sig)
    self.proc.wait(timeout=timeout)
    self.reader.join(timeout=10)
    return self.proc.returncode

  def log(self):
    return "".join(self.lines)

  def last_step(self):
    return max(int(m.group(1)) for m in map(re.compile(r"\] \[(\d+)\] .*loss=").search,
                                            list(self.lines)) if m)


@pytest.fixture
def kill_mains_at_the_end():
  yield
  for proc in Main.STARTED:
    if proc.poll() is None:
      proc.kill()  # a stopped (SIGSTOP) process is killed too
      proc.wait()
  Main.STARTED.clear()


def listing(workdir):
  """{path under workdir: (size, mtime)} of every file and directory."""
  paths = [os.path.join(root, name) for root, dirs, files in os.walk(workdir)
           for name in dirs + files]
  return {os.path.relpath(path, workdir): (os.stat(path).st_size, os.stat(path).st_mtime_ns)
          for path in paths}


def test_two_mains_on_one_workdir(tmp_path, kill_mains_at_the_end):
  from mim_jax import pretrain
  from mim_jax.evaluation import pretrained, run
  workdir, host = tmp_path / "run", socket.gethostname()
  config = tiny_mae_config(**LONG_RUN)
  # Checkpoint 0 first (as mim_jax/tools/compare.py starts a run), in this process: acquired and
  # released; the readers below read it while the run holds the workdir.
  pretrain.run(config, str(workdir), stop_after_step=0)
  assert checkpoint_steps(workdir) == [0] and not (workdir / "lock.json").exists()
  first = Main(workdir)
  first.wait_for_step(1)
  held = lock.read_claim(str(workdir))
  assert (held["host"], held["pid"]) == (host, first.pid)
  # Paused, it holds its claim as before (a live pid); the second run's start-up then has
  # both CPUs, and every file of the workdir stays as it is while the second runs.
  first.proc.send_signal(signal.SIGSTOP)
  time.sleep(0.2)
  files = listing(workdir)

  # A second run on the workdir in use stops before it writes anything, with one line.
  second = Main(workdir)
  assert second.finish() == 1, second.log()[-3000:]
  err = second.log()
  errors = [line for line in err.splitlines() if " is in use by " in line]
  assert len(errors) == 1, err[-3000:]
  assert re.search(r"\] " + in_use_pattern(workdir, host, first.pid, held["since"], 600) + "$",
                   errors[0]), errors[0]
  assert "Traceback" not in err and "loss=" not in err, err[-3000:]
  assert listing(workdir) == files  # no file written, created or deleted
  assert lock.read_claim(str(workdir))["token"] == held["token"]

  # Readers of the held run need no claim: load_encoder, and an evaluation (which holds
  # its own workdir, and stops when another run holds that one).
  _, params, read_config = pretrained.load_encoder(str(workdir))
  assert read_config.method.name == "mae" and params
  knn = config_file("eval/knn.py", None, {"pretrained": str(workdir), "eval_batch_size": 32})
  busy = write_claim(tmp_path / "eval", host="other-host", pid=1)
  with pytest.raises(lock.WorkdirInUse, match=r"eval is in use by .* on host other-host "):
    run.evaluate(knn, str(tmp_path / "eval"))
  assert os.listdir(tmp_path / "eval") == ["lock.json"]
  assert lock.read_claim(str(tmp_path / "eval")) == busy

  # The first run was not disturbed: it goes on and finishes normally, each step logged once.
  first.proc.send_signal(signal.SIGCONT)
  first.wait_for_step(first.last_step() + 2)
  assert first.finish(signal.SIGTERM) == 0, first.log()[-3000:]
  stopped = checkpoint_steps(workdir)[-1]
  assert f"Stopped at step {stopped}" in first.log()
  assert [s for s, _ in scalar_series(str(workdir), "loss", with_steps=True)] == list(
      range(1, stopped + 1))
  assert not (workdir / "lock.json").exists()
