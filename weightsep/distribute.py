"""Data-parallel training on several processes or hosts: -distribute=multi_worker (ours).

The work is done by TensorFlow's own engine, tf.distribute.MultiWorkerMirroredStrategy: the
workers are described by the standard TF_CONFIG environment variable (the same cluster in
every process, each with its own task), the global batch (-batch_size) is split evenly across
the replicas, their gradients are all-reduced by the strategy, and the weight-pages and the
optimizer state are mirrored variables (training.DistributedTrainer). -mode=pretrain, -mode=t
and -mode=o distribute (pretrain through training.pretrain_distributed, since Keras 3's fit does
not run on this strategy); everything else stays in one process: -mode=a's Fisher, separation and matching
are cheap and sequential by design, and evaluation is a few forward passes.

Writes. Exactly one process writes the state: the chief (the "chief" task if the cluster has
one, else worker 0). It takes the writer lock and commits as a single process would. Every
other worker copies the state into a private scratch directory before the chief can write
(the workers meet at a barrier first), trains on that copy with the same commits, so that its
view of the state follows the chief's bit for bit (every worker must start from the same
state: a shared file system, or the same copy on every host), and deletes it at the end: it
never takes the state's lock.

Failures. Every collective has a timeout (COLLECTIVE_TIMEOUT_S); a worker that dies or stops
answering makes the others' next collective fail, and the run stops with one line naming the lost
peer (WorkerFailed; a killed process is noticed at once, a hung one after the timeout). The chief
commits only between training calls, each commit atomic, so the state keeps its last commit.
-mode=pretrain saves the network (atomically) on the chief only, after training.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Iterator, Mapping

from weightsep.errors import WeightSepError

MODES = ("none", "multi_worker")
DISTRIBUTED_MODES = ("pretrain", "t", "o")
COLLECTIVE_TIMEOUT_S = 300.0
ROLES = ("chief", "worker")
_HELP = ('TF_CONFIG=\'{"cluster": {"worker": ["host1:port", "host2:port"]}, '
         '"task": {"type": "worker", "index": 0}}\' (README: "Training on a cluster")')


class WorkerFailed(WeightSepError):
    """A worker of the cluster died or stopped answering; this one stopped too."""


@dataclasses.dataclass(frozen=True)
class ClusterConfig:
    """The cluster of TF_CONFIG and this process's place in it."""

    chief: tuple[str, ...]
    workers: tuple[str, ...]
    task_type: str
    task_index: int

    @property
    def num_workers(self) -> int:
        return len(self.chief) + len(self.workers)

    @property
    def is_chief(self) -> bool:
        return self.task_type == "chief" or (not self.chief and self.task_index == 0)

    @property
    def name(self) -> str:
        return f"{self.task_type} {self.task_index}"


def free_local_ports(count: int) -> list[int]:
    """`count` TCP ports of this machine that were free a moment ago, for localhost workers (a
    port can still be taken before a worker binds it: callers retry on "address in use")."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("localhost", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def read_tf_config(environ: Mapping[str, str] = os.environ) -> ClusterConfig:
    """TF_CONFIG, checked: a cluster of "chief" (at most one) and "worker" addresses, and this
    process's task. Any other shape is an error that shows the expected one."""
    text = environ.get("TF_CONFIG")
    if not text:
        raise WeightSepError(f"-distribute=multi_worker needs the TF_CONFIG environment variable in every "
                             f"process, e.g. {_HELP}")
    try:
        config = json.loads(text)
    except ValueError as e:
        raise WeightSepError(f"TF_CONFIG is not JSON ({e}); expected {_HELP}") from None
    cluster = config.get("cluster") if isinstance(config, dict) else None
    task = config.get("task") if isinstance(config, dict) else None
    if not isinstance(cluster, dict) or not isinstance(task, dict):
        raise WeightSepError(f"TF_CONFIG needs a \"cluster\" and a \"task\" object; expected {_HELP}")
    unknown = sorted(set(cluster) - set(ROLES))
    if unknown:
        raise WeightSepError(f"TF_CONFIG's cluster has {', '.join(unknown)} tasks; data-parallel training "
                             f"takes only \"chief\" and \"worker\" tasks")
    roles = {}
    for role in ROLES:
        addresses = cluster.get(role, [])
        if not isinstance(addresses, list) or not all(
                isinstance(a, str) and a.rpartition(":")[0] and a.rpartition(":")[2].isdigit() for a in addresses):
            raise WeightSepError(f"TF_CONFIG's cluster \"{role}\" must be a list of \"host:port\" strings")
        roles[role] = tuple(addresses)
    if len(roles["chief"]) > 1 or not roles["chief"] + roles["worker"]:
        raise WeightSepError("TF_CONFIG's cluster needs at least one worker and at most one chief")
    if len(set(roles["chief"] + roles["worker"])) != len(roles["chief"] + roles["worker"]):
        raise WeightSepError("TF_CONFIG's cluster lists an address twice")
    kind, index = task.get("type"), task.get("index", 0)
    if kind not in ROLES or not isinstance(index, int) or isinstance(index, bool) \
            or not 0 <= index < len(roles[kind]):
        raise WeightSepError(f"TF_CONFIG's task {json.dumps(task)} is not one of the cluster's tasks "
                             f"({len(roles['chief'])} chief, {len(roles['worker'])} workers)")
    return ClusterConfig(roles["chief"], roles["worker"], kind, index)


@dataclasses.dataclass
class Cluster:
    """A connected cluster: its config and the strategy (created before any other TensorFlow op)."""

    config: ClusterConfig
    strategy: object

    @property
    def is_chief(self) -> bool:
        return self.config.is_chief


def connect(config: ClusterConfig, timeout_s: float = COLLECTIVE_TIMEOUT_S) -> Cluster:
    """Create the MultiWorkerMirroredStrategy of TF_CONFIG. Must run before TensorFlow runs any op
    in this process (the strategy configures the runtime)."""
    from weightsep.tf import tf
    options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=timeout_s)
    return Cluster(config, tf.distribute.MultiWorkerMirroredStrategy(communication_options=options))


def barrier(strategy) -> None:
    """Return once every replica of the cluster got here (a one-number all-reduce)."""
    from weightsep.tf import tf
    from weightsep.training import replica_device

    def one():
        ctx = tf.distribute.get_replica_context()
        with replica_device(strategy):
            return ctx.all_reduce(tf.distribute.ReduceOp.SUM, tf.ones([]))

    total = strategy.experimental_local_results(tf.function(lambda: strategy.run(one))())[0]
    if int(total.numpy()) != strategy.num_replicas_in_sync:
        raise WorkerFailed(f"barrier counted {int(total.numpy())} of {strategy.num_replicas_in_sync} replicas")


@contextlib.contextmanager
def failures(config: ClusterConfig, state_dir) -> Iterator[None]:
    """Turn a failed collective (a worker died, or did not answer in time) into WorkerFailed."""
    from weightsep.tf import tf
    lost = (tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.AbortedError,
            tf.errors.CancelledError, tf.errors.InternalError)
    try:
        yield
    except lost as e:
        raise WorkerFailed(lost_worker_message(config, e, state_dir)) from None


def lost_worker_message(config: ClusterConfig, error, state_dir) -> str:
    """WorkerFailed's one line for a failed collective: the peer TensorFlow names (gRPC's
    "remote target /job:worker/replica:0/task:1"), with its address, and the cause."""
    text = str(error)
    # TensorFlow's message starts with generic lines and the Python stack of the op ("File ...");
    # the cause is the first other line.
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith(("Graph execution error", "Detected at node", "File "))]
    cause = (useful or lines or [""])[0][:200]
    who = "a worker of the cluster"
    peer = re.search(r"/job:(chief|worker)/replica:\d+/task:(\d+)", text)
    if peer and (peer[1], int(peer[2])) != (config.task_type, config.task_index):
        addresses = config.chief if peer[1] == "chief" else config.workers
        if int(peer[2]) < len(addresses):
            who = f"{peer[1]} {peer[2]} ({addresses[int(peer[2])]}) of the cluster"
    return (f"{who} failed or stopped answering ({type(error).__name__}: {cause}); {config.name} stopped too; "
            f"the state in {state_dir} keeps its last commit")


@contextlib.contextmanager
def training_state(session, cluster: Cluster | None) -> Iterator[object]:
    """The session to train in, holding the state's writer lock where this process may write.

    One process, or the chief: the state itself, under its writer lock. Any other worker: a
    private scratch copy, made before the chief can write (a barrier), deleted at the end; the
    session's store is the copy meanwhile.
    """
    from weightsep.store import Store
    store = session.store
    if cluster is None:
        with store.writer():
            yield session
        return
    with failures(cluster.config, store.dir):
        if cluster.is_chief:
            with store.writer():
                barrier(cluster.strategy)
                yield session
            return
        with tempfile.TemporaryDirectory(prefix="weightsep-worker-") as tmp:
            copy = Path(tmp) / "state"
            for rel in store.committed_files():
                (copy / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(store.dir / rel, copy / rel)
            scratch = Store(copy).load()
            session.store = scratch
            try:
                with scratch.writer():
                    barrier(cluster.strategy)
                    yield session
            finally:
                session.store = store
