"""One run per workdir: a run claims its workdir in `workdir/lock.json` before it writes
anything there, and a second run on the same workdir stops with one `WorkdirInUse` line
naming the holder, instead of logging every step twice and colliding with its saves.

The claim is a JSON file {host, pid, since (UTC ISO), heartbeat (unix seconds), token
(uuid4 hex), command, expiry_s, boot_id, pid_namespace, pid_start}, written by process 0
of the run (`acquire`; the other processes learn the outcome from it by a broadcast, so
that all of them stop together). Local workdirs and gs:// buckets alike (etils.epath):
- A claim is live while its holder renews `heartbeat` every `heartbeat_s` (a daemon
  thread). It is stale once the heartbeat is older than its `expiry_s` (default 10 ×
  heartbeat_s; the holder's own value, written in the claim, counts), or at once when the
  holder ran in this process space (same host name, boot and pid namespace) and its pid
  is gone, a zombie, or now another process (pid_start differs): a run killed with
  SIGKILL is taken over by the next start on that host right away, one on a lost host
  after the expiry. A stale claim is taken over with a WARNING naming the old holder.
- Claiming writes ours (a temporary file renamed into place locally, one object write on
  gs://), waits `settle_s` and reads the file again: of two runs that claimed at the same
  time, the last writer keeps it and the other stops with WorkdirInUse.
- `release` (or leaving `hold`) stops the heartbeat and deletes the file if it is still
  ours. A claim that is never released (its owner dropped it) is released when it is
  garbage collected or the interpreter exits.
Readers (evaluation of a run, `evaluation.pretrained.load_encoder`, the notebook) never
look at the claim: only runs that write a workdir hold it.
"""
import contextlib
import datetime
import json
import os
import socket
import sys
import threading
import time
import uuid
import weakref
from typing import Optional

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from mim_jax import checkpoint

LOCK_FILE = "lock.json"
HEARTBEAT_S = 60.0  # how often the holder renews its claim
EXPIRY_HEARTBEATS = 10  # a claim not renewed for this many heartbeats is stale
# Wait between writing a claim and reading it back (racing starters), on a bucket (URL
# workdirs) and on a file system, where a racer's read-to-write gap is milliseconds.
SETTLE_S = {"url": 1.0, "file": 0.05}
_MESSAGE_BYTES = 4096  # process 0's outcome, broadcast to the other processes
_OK, _IN_USE, _FAILED = 0, 1, 2


class WorkdirInUse(RuntimeError):
  """Another run holds the workdir; the message (one line) names it and what to do."""


def _read_text(path) -> Optional[str]:
  try:
    return path.read_text()
  except Exception:  # pylint: disable=broad-except  (storage backends differ in the type)
    if not path.exists():
      return None
    raise


def _first_line(path: str) -> Optional[str]:
  try:
    with open(path) as f:
      return f.read().strip() or None
  except OSError:
    return None


def _proc_stat(pid: int) -> Optional[list]:
  """Fields 3.. of /proc/<pid>/stat (state first), None where there is no /proc."""
  text = _first_line(f"/proc/{pid}/stat")
  return text.rpartition(")")[2].split() if text else None


def _pid_namespace() -> Optional[str]:
  try:
    return os.readlink("/proc/self/ns/pid")
  except OSError:
    return None


def identity() -> dict:
  """This process as a claim names it: host, pid and, where Linux tells them, the boot id,
  pid namespace and start time of the process (which tell a reused pid apart)."""
  stat = _proc_stat(os.getpid())
  return {"host": socket.gethostname(), "pid": os.getpid(),
          "boot_id": _first_line("/proc/sys/kernel/random/boot_id"),
          "pid_namespace": _pid_namespace(), "pid_start": stat[19] if stat else None}


def _lock_path(workdir: str):
  return checkpoint.workdir_path(workdir) / LOCK_FILE


def read_claim(workdir: str) -> Optional[dict]:
  """workdir/lock.json as a dict, or None when there is none. A file that does not parse
  (cut short by a crash on a file system without atomic renames) reads as an empty claim
  ({}), which is stale."""
  path = _lock_path(workdir)
  for attempt in range(3):
    text = _read_text(path)
    if text is None:
      return None
    try:
      claim = json.loads(text)
      if isinstance(claim, dict):
        return claim
    except ValueError:
      pass
    if attempt < 2:
      time.sleep(0.2)  # a writer that is not atomic (a FUSE mount) may be mid-write
  return {}


def _write_claim(workdir: str, claim: dict) -> None:
  """Replace workdir/lock.json in one step: a temporary file renamed over it locally, a
  single object write on gs:// (object writes are atomic there)."""
  path = _lock_path(workdir)
  text = json.dumps(claim, indent=1)
  if "://" in str(path):
    path.write_text(text)
    return
  temporary = f"{path}.{claim['token']}.tmp"
  with open(temporary, "w") as f:
    f.write(text)
  os.replace(temporary, os.fspath(path))


def _delete_if_ours(workdir: str, token: str) -> bool:
  if (read_claim(workdir) or {}).get("token") != token:
    return False
  try:
    _lock_path(workdir).unlink()
  except FileNotFoundError:
    pass
  return True


def _expiry(claim: dict, expiry_s: Optional[float]) -> float:
  """The holder's own expiry when its claim states one, else `expiry_s` (default: the
  module's EXPIRY_HEARTBEATS × HEARTBEAT_S)."""
  stated = claim.get("expiry_s")
  if isinstance(stated, (int, float)) and stated > 0:
    return float(stated)
  return float(expiry_s if expiry_s is not None else EXPIRY_HEARTBEATS * HEARTBEAT_S)


def stale_reason(claim: dict, expiry_s: Optional[float] = None) -> Optional[str]:
  """Why `claim` no longer holds its workdir, or None while it is live."""
  if not claim.get("token") or not isinstance(claim.get("heartbeat"), (int, float)):
    return "the claim file is unreadable"
  age = time.time() - claim["heartbeat"]
  expiry = _expiry(claim, expiry_s)
  if age > expiry:
    return f"its last heartbeat was {age:.0f} s ago (a claim expires after {expiry:.0f} s)"
  me = identity()
  if any(claim.get(key) != me[key] for key in ("host", "boot_id", "pid_namespace")):
    return None  # another machine (or container): only the heartbeat tells
  pid = claim.get("pid")
  if not isinstance(pid, int) or pid <= 0:
    return "the claim names no valid pid"
  if pid == me["pid"]:
    if claim["token"] in _HELD:
      return None  # held by this process (a run in another thread, or an outer `hold`)
    return "this process made it and no longer holds it"
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return f"no process {pid} runs on this host any more"
  except PermissionError:
    pass  # a process of another user: it exists
  except OverflowError:
    return "the claim names no valid pid"
  stat = _proc_stat(pid)
  if stat and stat[0] == "Z":
    return f"process {pid} has exited (a zombie not yet reaped)"
  if stat and claim.get("pid_start") and stat[19] != claim["pid_start"]:
    return f"pid {pid} is now another process"
  return None


def in_use_message(workdir: str, claim: dict, expiry_s: Optional[float] = None) -> str:
  seen = max(time.time() - claim.get("heartbeat", time.time()), 0)  # (hosts' clocks differ)
  return (f"{workdir} is in use by the run started {claim.get('since', '?')} on host "
          f"{claim.get('host', '?')} (pid {claim.get('pid', '?')}), last seen {seen:.0f} s "
          "ago: wait for it to end or stop it, or use another --workdir. A claim whose "
          "holder stopped without releasing it expires "
          f"{_expiry(claim, expiry_s):.0f} s after its last heartbeat (or delete "
          f"{_lock_path(workdir)} once you are sure that run has stopped).")


# token -> Claim, for the claims this process holds (not released, not yet collected)
_HELD = weakref.WeakValueDictionary()


class Claim:
  """This run's hold on `workdir` (see the module docstring). On processes other than 0
  of a multi-process run (`path` None) it holds nothing and `release` does nothing."""

  def __init__(self, workdir: Optional[str], record: Optional[dict] = None,
               heartbeat_s: float = HEARTBEAT_S):
    self.workdir = workdir
    self.record = record
    self.token = record["token"] if record else None
    self.lost = None  # the claim that replaced ours, if one did
    self._stop = threading.Event()
    self._mutex = threading.Lock()  # a heartbeat is never written after the release
    self._thread = None
    self._finalizer = None
    if record is None:
      return
    _HELD[self.token] = self
    # Released if never released explicitly: when collected, or at exit.
    self._finalizer = weakref.finalize(self, _release, workdir, self.token, self._stop,
                                       self._mutex)
    self._thread = threading.Thread(
        target=_heartbeats, args=(weakref.ref(self), self._stop, heartbeat_s),
        name=f"lock heartbeat {workdir}", daemon=True)
    self._thread.start()

  @property
  def path(self):
    return None if self.record is None else _lock_path(self.workdir)

  def renew(self) -> bool:
    """Write a new heartbeat if the claim is still ours; False (and log once) if another
    run has taken it over (this run was silent for longer than the expiry)."""
    if self.record is None or self.lost is not None:
      return self.lost is None
    with self._mutex:
      if self._stop.is_set():
        return False
      current = read_claim(self.workdir)
      if current is not None and current.get("token") != self.token:
        self.lost = current
        logging.error("Lost the claim on %s to the run on host %s (pid %s, since %s): this "
                      "run was not seen for longer than its claim's expiry; stop it, the "
                      "other run now writes there.", self.workdir, current.get("host"),
                      current.get("pid"), current.get("since"))
        return False
      self.record["heartbeat"] = time.time()
      _write_claim(self.workdir, self.record)
      return True

  def release(self) -> None:
    """Stop the heartbeat and delete the claim if it is still ours (idempotent)."""
    if self._finalizer is not None:
      self._finalizer()  # runs _release once
    if self._thread is not None and self._thread is not threading.current_thread():
      self._thread.join(timeout=10)

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.release()


def _release(workdir: str, token: str, stop: threading.Event,
             mutex: threading.Lock) -> None:
  with mutex:
    stop.set()
    _HELD.pop(token, None)
    try:
      _delete_if_ours(workdir, token)
    except Exception as e:  # pylint: disable=broad-except  (logged: the run's error wins)
      logging.warning("Could not delete the claim %s: %s", _lock_path(workdir), e)


def _heartbeats(claim_ref, stop: threading.Event, heartbeat_s: float) -> None:
  """The heartbeat thread; it keeps no reference to the Claim between beats, so that a
  claim nobody holds any more is collected (and released)."""
  while not stop.wait(heartbeat_s):
    claim = claim_ref()
    if claim is None:
      return
    try:
      if not claim.renew():
        return
    except Exception as e:  # pylint: disable=broad-except  (a transient storage error)
      logging.warning("Could not renew the claim %s: %s", claim.path, e)
    del claim


def _claim_here(workdir: str, heartbeat_s: float, expiry_s: float,
                settle_s: float) -> Claim:
  """Process 0's part of `acquire`."""
  checkpoint.workdir_path(workdir).mkdir(parents=True, exist_ok=True)
  old = read_claim(workdir)
  reason = None
  if old is not None:
    reason = stale_reason(old, expiry_s)
    if reason is None:
      raise WorkdirInUse(in_use_message(workdir, old, expiry_s))
  now = time.time()
  record = dict(identity(), since=datetime.datetime.fromtimestamp(
      now, datetime.timezone.utc).isoformat(timespec="seconds"), heartbeat=now,
                token=uuid.uuid4().hex, command=" ".join(sys.argv), expiry_s=expiry_s)
  begin = time.monotonic()
  _write_claim(workdir, record)
  # A starter that read the old claim (or none) just before our write writes its own
  # right after it: wait longer than our own write took, then see who wrote last.
  time.sleep(settle_s + 2 * (time.monotonic() - begin))
  now_there = read_claim(workdir)
  if (now_there or {}).get("token") != record["token"]:
    winner = now_there or {}
    raise WorkdirInUse(in_use_message(workdir, winner, expiry_s) if now_there else
                       f"{workdir}: another run claimed it at the same time and gave it up "
                       "again; run the command again.")
  if old is not None:
    logging.warning("Took over %s from the run on host %s (pid %s, since %s): %s.", workdir,
                    old.get("host", "?"), old.get("pid", "?"), old.get("since", "?"), reason)
  logging.info("Holding %s (%s, renewed every %.0f s).", workdir, _lock_path(workdir),
               heartbeat_s)
  return Claim(workdir, record, heartbeat_s)


def acquire(workdir: str, *, heartbeat_s: Optional[float] = None,
            expiry_s: Optional[float] = None, settle_s: Optional[float] = None) -> Claim:
  """Claim `workdir` for this run, or raise WorkdirInUse naming the run that holds it.
  Every process of a multi-process run calls it at the same point: process 0 claims and
  broadcasts the outcome (a collective), so that every process raises the same error or
  none does. Defaults: the module's HEARTBEAT_S, EXPIRY_HEARTBEATS × heartbeat_s and
  SETTLE_S for the workdir's kind."""
  heartbeat_s = HEARTBEAT_S if heartbeat_s is None else heartbeat_s
  expiry_s = EXPIRY_HEARTBEATS * heartbeat_s if expiry_s is None else expiry_s
  if settle_s is None:
    settle_s = SETTLE_S["url" if "://" in os.fspath(workdir) else "file"]
  if jax.process_count() == 1:
    return _claim_here(workdir, heartbeat_s, expiry_s, settle_s)
  claim, error, status, message = None, None, _OK, ""
  if jax.process_index() == 0:
    try:
      claim = _claim_here(workdir, heartbeat_s, expiry_s, settle_s)
    except Exception as e:  # pylint: disable=broad-except  (told to the others, re-raised)
      error, message = e, str(e)
      status = _IN_USE if isinstance(e, WorkdirInUse) else _FAILED
      if status == _FAILED:
        message = f"Process 0 could not claim {workdir}: {type(e).__name__}: {e}"
  outcome = np.zeros(_MESSAGE_BYTES + 1, np.int32)
  encoded = message.encode()[:_MESSAGE_BYTES]
  outcome[0], outcome[1:1 + len(encoded)] = status, np.frombuffer(encoded, np.uint8)
  outcome = np.asarray(multihost_utils.broadcast_one_to_all(outcome))
  if error is not None:
    raise error
  status = int(outcome[0])
  if status == _OK:
    return claim if claim is not None else Claim(None)
  text = bytes(outcome[1:].astype(np.uint8)).rstrip(b"\0").decode(errors="replace")
  raise (WorkdirInUse if status == _IN_USE else RuntimeError)(text)


@contextlib.contextmanager
def hold(workdir: str, **options):
  """`acquire(workdir, **options)` for the block; released when it ends."""
  claim = acquire(workdir, **options)
  try:
    yield claim
  finally:
    claim.release()
