"""`make bench-scale`: llmjob and JobSet side by side on simulated GPU nodes (KWOK), on the
local cluster's real etcd, kube-apiserver, controller-manager and scheduler.

For each size (jobs of 8 workers, 1 GPU each, submitted at once) and each system, in a fresh
namespace with a fresh controller process:
- startup: apply -> all 8 workers Running, per job (p50, p99, max);
- steady state: API writes per job per minute in the round's namespace, by anyone, from the
  API server's audit log (its counters have no namespace label, and other namespaces being
  emptied write at the same time), and reads of the workload's resources (pods, events,
  services, the jobs themselves...) from its request counters;
- recovery: one worker of every job fails at once (KWOK's fail stage: exit code 1) -> the
  gang Running again (p50, p99);
- deletion: delete every job -> no pod left;
- the controller's CPU seconds and peak RSS over the round (for JobSet also the
  kube-controller-manager's CPU: its Job controller makes JobSet's pods), and the API
  server's request latency p99 (every verb but WATCH and CONNECT).
Then each of llmjob's figures as a ratio to JobSet's. KWOK pods run nothing, so llmjob's
progress reads from rank 0 find no /metrics (that costs a condition per job, once).

Usage: python -m bench.scale [--sizes 1,100,1000] [--steady-seconds 60] [--systems ...]
[--profile] (`make bench-scale`, sizes from BENCH_SIZES; --profile adds py-spy's account of
where llmjob's CPU went: bench/cpu_profile.py)
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import re
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from kubernetes import client, config, watch
from tests.apiserver_requests import Request, snapshot
from tests.integration.jobs import standin_job
from tests.integration.operator_process import OperatorProcess

from bench.cpu_profile import CpuProfile, report
from llmjob_devcluster import audit, hostmanager, kwok, processes
from llmjob_devcluster import jobset as jobset_component
from llmjob_devcluster.layout import Layout
from llmjob_operator.api import GROUP, PLURAL, VERSION
from llmjob_operator.render import ATTEMPT_LABEL, JOB_NAME_LABEL

REPO = Path(__file__).resolve().parents[1]
WORKERS = 8
GPUS_PER_NODE = 8
JOBSET_GROUP, JOBSET_VERSION = "jobset.x-k8s.io", "v1alpha2"
JOBSET_NAME_LABEL = "jobset.sigs.k8s.io/jobset-name"
JOBSET_RESTART_LABEL = "jobset.sigs.k8s.io/restart-attempt"
CREATE_THREADS = 16
CLAIM = "checkpoints"
TIMEOUT_SECONDS = 3600.0


# -- what each system is -----------------------------------------------------------------


class System(Protocol):
    name: str

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def pid(self) -> int: ...
    def prepare(self, namespace: str) -> None: ...
    def create(self, namespace: str, name: str) -> None: ...
    def delete(self, namespace: str, name: str) -> None: ...
    def group(self, pod: dict[str, Any]) -> tuple[str, int] | None:
        """(job name, attempt) of one of the system's worker pods."""
        ...

    def settled(self, namespace: str, names: list[str]) -> bool:
        """Every job has made the writes that follow its start (steady state begins)."""
        ...


def on_kwok_nodes(pod_spec: dict[str, Any]) -> dict[str, Any]:
    return {
        **pod_spec,
        "nodeSelector": kwok.NODE_SELECTOR,
        "tolerations": [kwok.TOLERATION],
    }


class Llmjob:
    name = "llmjob"

    def __init__(self, api: client.ApiClient, kubeconfig: Path, log_dir: Path) -> None:
        self.api = api
        self.custom = client.CustomObjectsApi(api)
        self.core = client.CoreV1Api(api)
        self.kubeconfig = kubeconfig
        self.log_dir = log_dir
        self.operator: OperatorProcess | None = None

    def start(self) -> None:
        # As shipped: the default progress interval and API budget.
        self.operator = OperatorProcess(
            self.kubeconfig, self.log_dir / f"operator-{uuid.uuid4().hex[:6]}.log", 10.0
        )
        self.operator.start()

    def stop(self) -> None:
        if self.operator is not None:
            self.operator.stop()

    def pid(self) -> int:
        assert self.operator is not None and self.operator.process is not None
        return self.operator.process.pid

    def prepare(self, namespace: str) -> None:
        # One ReadWriteMany claim (a cluster filesystem) for every job's checkpoints, bound to a
        # volume of its own: KWOK pods mount nothing, the scheduler only checks the binding.
        volume = f"bench-{namespace}"
        self.core.create_persistent_volume(
            {
                "metadata": {"name": volume},
                "spec": {
                    "capacity": {"storage": "1Ti"},
                    "accessModes": ["ReadWriteMany"],
                    "hostPath": {"path": f"/tmp/{volume}"},
                    "persistentVolumeReclaimPolicy": "Delete",
                    "storageClassName": "",
                },
            }
        )
        self.core.create_namespaced_persistent_volume_claim(
            namespace,
            {
                "metadata": {"name": CLAIM},
                "spec": {
                    "accessModes": ["ReadWriteMany"],
                    "resources": {"requests": {"storage": "1Ti"}},
                    "storageClassName": "",
                    "volumeName": volume,
                },
            },
        )

    def create(self, namespace: str, name: str) -> None:
        body = standin_job(
            name,
            str(Path(sys.executable).parent),
            workers=WORKERS,
            gpusPerWorker=1,
            checkpoint={"claimName": CLAIM},
            failurePolicy={"maxRestarts": 3, "backoffSeconds": 1, "maxBackoffSeconds": 2},
            scheduling={"nodeSelector": kwok.NODE_SELECTOR, "tolerations": [kwok.TOLERATION]},
        )
        self.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)

    def delete(self, namespace: str, name: str) -> None:
        self.custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)

    def group(self, pod: dict[str, Any]) -> tuple[str, int] | None:
        labels = pod["metadata"].get("labels") or {}
        if JOB_NAME_LABEL not in labels or ATTEMPT_LABEL not in labels:
            return None
        return labels[JOB_NAME_LABEL], int(labels[ATTEMPT_LABEL])

    def settled(self, namespace: str, names: list[str]) -> bool:
        # KWOK pods serve no /metrics: the first failed read of rank 0 sets ProgressUnknown
        # (one status write and an event per job, a progress interval after Running).
        listed = self.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)
        unknown = {
            job["metadata"]["name"]
            for job in listed["items"]
            if any(
                c["type"] == "ProgressUnknown" and c["status"] == "True"
                for c in (job.get("status") or {}).get("conditions") or []
            )
        }
        return unknown >= set(names)


class JobSet:
    name = "jobset"

    def __init__(self, api: client.ApiClient, layout: Layout) -> None:
        self.custom = client.CustomObjectsApi(api)
        self.layout = layout

    def start(self) -> None:
        jobset_component.up(self.layout)

    def stop(self) -> None:
        jobset_component.down(self.layout)

    def pid(self) -> int:
        pid = processes.running_pid(self.layout.pid_dir, "jobset")
        assert pid is not None, "JobSet's manager is not running"
        return pid

    def prepare(self, namespace: str) -> None:
        pass

    def create(self, namespace: str, name: str) -> None:
        container = {
            "name": "trainer",
            "image": "registry.local/trainer:bench",
            "resources": {"limits": {kwok.GPU_RESOURCE: "1"}},
        }
        pod_spec = on_kwok_nodes({"restartPolicy": "Never", "containers": [container]})
        body = {
            "apiVersion": f"{JOBSET_GROUP}/{JOBSET_VERSION}",
            "kind": "JobSet",
            "metadata": {"name": name},
            "spec": {
                "failurePolicy": {"maxRestarts": 3},
                "replicatedJobs": [
                    {
                        "name": "workers",
                        "replicas": 1,
                        "template": {
                            "spec": {
                                "parallelism": WORKERS,
                                "completions": WORKERS,
                                "completionMode": "Indexed",
                                "backoffLimit": 0,
                                "template": {"spec": pod_spec},
                            }
                        },
                    }
                ],
            },
        }
        self.custom.create_namespaced_custom_object(
            JOBSET_GROUP, JOBSET_VERSION, namespace, "jobsets", body
        )

    def delete(self, namespace: str, name: str) -> None:
        self.custom.delete_namespaced_custom_object(
            JOBSET_GROUP,
            JOBSET_VERSION,
            namespace,
            "jobsets",
            name,
            body=client.V1DeleteOptions(propagation_policy="Background"),
        )

    def group(self, pod: dict[str, Any]) -> tuple[str, int] | None:
        labels = pod["metadata"].get("labels") or {}
        if JOBSET_NAME_LABEL not in labels:
            return None
        return labels[JOBSET_NAME_LABEL], int(labels.get(JOBSET_RESTART_LABEL, "0"))

    def settled(self, namespace: str, names: list[str]) -> bool:
        return True


# -- watching the pods -----------------------------------------------------------------------


@dataclass
class PodClock:
    """Every worker pod of one namespace as a watch sees it, stamped with this process's clock:
    both systems are timed by the same watcher, so its own lag cancels in the ratios."""

    system: System
    running: dict[tuple[str, int], dict[str, float]] = field(
        default_factory=lambda: defaultdict(dict)
    )
    """(job, attempt) -> pod name -> when first seen Running."""
    live: dict[str, tuple[str, int]] = field(default_factory=dict)
    """Pods not yet deleted -> their (job, attempt)."""
    attempts: set[tuple[str, int]] = field(default_factory=set)
    """Every (job, attempt) a pod was seen of."""
    lock: threading.Lock = field(default_factory=threading.Lock)
    stopped: threading.Event = field(default_factory=threading.Event)

    def follow(self, core: client.CoreV1Api, namespace: str) -> None:
        version = core.list_namespaced_pod(namespace, limit=1).metadata.resource_version
        while not self.stopped.is_set():
            stream = watch.Watch().stream(
                core.list_namespaced_pod,
                namespace,
                resource_version=version,
                timeout_seconds=30,
                allow_watch_bookmarks=True,
                _preload_content=False,
            )
            for event in stream:
                pod = event["raw_object"]
                version = pod["metadata"]["resourceVersion"]
                if event["type"] == "BOOKMARK":
                    continue
                self.see(event["type"], pod)

    def see(self, kind: str, pod: dict[str, Any]) -> None:
        group = self.system.group(pod)
        if group is None:
            return
        name = pod["metadata"]["name"]
        now = time.monotonic()
        with self.lock:
            if kind == "DELETED":
                self.live.pop(name, None)
                return
            self.live[name] = group
            self.attempts.add(group)
            if (pod.get("status") or {}).get("phase") == "Running" and not pod["metadata"].get(
                "deletionTimestamp"
            ):
                self.running[group].setdefault(name, now)

    def gang_running_at(self, job: str, after_attempt: int = -1) -> tuple[int, float] | None:
        """(attempt, when its 8th worker was Running) of the job's newest attempt past
        `after_attempt` with every worker Running."""
        with self.lock:
            full = [
                (attempt, max(pods.values()))
                for (name, attempt), pods in self.running.items()
                if name == job and attempt > after_attempt and len(pods) >= WORKERS
            ]
        return max(full) if full else None

    def running_pod(self, job: str, attempt: int) -> str:
        with self.lock:
            return sorted(self.running[(job, attempt)])[0]

    def live_pods(self) -> int:
        with self.lock:
            return len(self.live)

    def attempts_beyond(self, per_job: int) -> int:
        """How many attempts, summed over the jobs, there were beyond `per_job` each: restarts
        nothing asked for (a pod deleted by the simulation, a gang that failed to start)."""
        with self.lock:
            per = Counter(job for job, _ in self.attempts)
        return sum(max(0, n - per_job) for n in per.values())


# -- figures ---------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def process_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100.0  # utime + stime, in clock ticks


def process_peak_rss(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:")))


def latency_buckets(api: client.ApiClient) -> Counter[float]:
    """Cumulative counts of apiserver_request_duration_seconds by bucket bound, every verb but
    the long-running WATCH and CONNECT."""
    request = api.param_serialize("GET", "/metrics", auth_settings=["BearerToken"])
    text = api.call_api(*request, _request_timeout=(3, 60)).read().decode()
    buckets: Counter[float] = Counter()
    pattern = re.compile(r"^apiserver_request_duration_seconds_bucket\{(.*)\} (\S+)$", re.M)
    for labels, value in pattern.findall(text):
        if 'verb="WATCH"' in labels or 'verb="CONNECT"' in labels:
            continue
        bound = re.search(r'le="([^"]+)"', labels)
        assert bound is not None
        buckets[float("inf") if bound.group(1) == "+Inf" else float(bound.group(1))] += float(value)
    return buckets


def latency_p99(before: Counter[float], after: Counter[float]) -> float:
    bounds = sorted(after)
    total = after[float("inf")] - before[float("inf")]
    for bound in bounds:
        if after[bound] - before[bound] >= 0.99 * total:
            return bound
    return float("inf")


# What either system reads for its jobs. Left out: KWOK's node heartbeats (nodes, leases: the
# simulated kubelets', with or without jobs), the operator's own Lease (per replica, not per
# job), the control plane's EndpointSlices and ConfigMaps (in every namespace).
WORKLOAD_RESOURCES = frozenset(
    {
        "pods",
        "events",
        "services",
        "persistentvolumeclaims",
        "llmtrainingjobs",
        "jobsets",
        "jobs",
    }
)


def workload_reads(delta: Counter[Request]) -> int:
    """GETs and LISTs of workload resources in a request count delta; WATCH requests are
    long-running and not counted."""
    return sum(
        n
        for r, n in delta.items()
        if r.resource in WORKLOAD_RESOURCES and r.verb in ("GET", "LIST")
    )


def describe(write: audit.Write) -> str:
    resource = write.resource + (f"/{write.subresource}" if write.subresource else "")
    return f"{write.verb} {resource} by {write.user}"


@dataclass
class Round:
    system: str
    jobs: int
    startup: list[float] = field(default_factory=list)
    recovery: list[float] = field(default_factory=list)
    delete_seconds: float = 0.0
    cpu_seconds: float = 0.0
    controller_manager_cpu_seconds: float = 0.0
    peak_rss_mb: float = 0.0
    writes_per_job_minute: float = 0.0
    reads_per_job_minute: float = 0.0
    apiserver_p99_seconds: float = 0.0
    unasked_restarts: int = 0
    steady_writes: Counter[str] = field(default_factory=Counter)
    """The steady-state writes by verb and resource (what to look at when there are any)."""

    def row(self) -> dict[str, float]:
        return {
            "startup p50 s": percentile(self.startup, 0.5),
            "startup p99 s": percentile(self.startup, 0.99),
            "startup max s": max(self.startup),
            "delete all s": self.delete_seconds,
            "recovery p50 s": percentile(self.recovery, 0.5),
            "recovery p99 s": percentile(self.recovery, 0.99),
            "controller CPU s": self.cpu_seconds,
            "+ controller-manager CPU s": self.controller_manager_cpu_seconds,
            "controller peak RSS MB": self.peak_rss_mb,
            "steady writes /job/min": self.writes_per_job_minute,
            "steady reads /job/min": self.reads_per_job_minute,
            "apiserver p99 s": self.apiserver_p99_seconds,
            "unasked restarts": self.unasked_restarts,
        }


def wait_until(what: str, done: Callable[[], bool], timeout: float = TIMEOUT_SECONDS) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise TimeoutError(f"bench: {what} not reached in {timeout:.0f}s")
        time.sleep(0.2)


def in_parallel(call: Callable[[str], None], names: Iterable[str]) -> None:
    with ThreadPoolExecutor(CREATE_THREADS) as pool:
        list(pool.map(call, names))


def run_round(
    api: client.ApiClient,
    layout: Layout,
    system: System,
    jobs: int,
    steady_seconds: float,
    profile: Path | None = None,
) -> Round:
    """One round; with `profile`, py-spy samples the controller (a Python one) from its
    start to its stop."""
    core = client.CoreV1Api(api)
    namespace = f"scale-{system.name}-{jobs}-{uuid.uuid4().hex[:4]}"
    # A namespace still being emptied (an earlier, stopped round's) would be this round's load:
    # a cluster-wide controller caches and reconciles what it holds.
    wait_until("no namespace terminating", lambda: not terminating(core), timeout=900)
    wait_until("no workload reads", lambda: quiet(api), timeout=900)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    system.prepare(namespace)
    system.start()
    sampling = contextlib.ExitStack()
    if profile is not None:
        sampling.enter_context(CpuProfile(system.pid(), profile))
    figures = Round(system.name, jobs)
    clock = PodClock(system)
    threading.Thread(target=clock.follow, args=(core, namespace), daemon=True).start()
    manager = processes.running_pid(layout.pid_dir, "kube-controller-manager")
    assert manager is not None, "the local cluster is not running"
    cpu0, manager_cpu0 = process_cpu_seconds(system.pid()), process_cpu_seconds(manager)
    latency0 = latency_buckets(api)
    names = [f"{system.name}-{i:04d}" for i in range(jobs)]
    try:
        created: dict[str, float] = {}

        def create(name: str) -> None:
            created[name] = time.monotonic()
            system.create(namespace, name)

        in_parallel(create, names)
        wait_until("every gang Running", lambda: all(clock.gang_running_at(n) for n in names))
        for name in names:
            attempt_running = clock.gang_running_at(name)
            assert attempt_running is not None
            figures.startup.append(attempt_running[1] - created[name])
        print(f"  {system.name} x{jobs}: all Running", file=sys.stderr, flush=True)
        wait_until("every job settled", lambda: system.settled(namespace, names), timeout=300)
        # The read counters are cluster-wide: another namespace being emptied is not this
        # system's steady state.
        wait_until("no namespace terminating", lambda: not terminating(core), timeout=300)

        steady0, audit0 = snapshot(api), audit.mark(layout)
        time.sleep(steady_seconds)
        reads = workload_reads(snapshot(api) - steady0)
        writes = [w for w in audit.writes_since(audit0) if w.namespace == namespace]
        figures.steady_writes = Counter(describe(w) for w in writes)
        minutes_jobs = jobs * steady_seconds / 60
        figures.writes_per_job_minute = len(writes) / minutes_jobs
        figures.reads_per_job_minute = reads / minutes_jobs

        first = {n: clock.gang_running_at(n) for n in names}
        failed: dict[str, float] = {}

        def fail(name: str) -> None:
            attempt = first[name]
            assert attempt is not None
            failed[name] = time.monotonic()
            kwok.fail_pod(core, namespace, clock.running_pod(name, attempt[0]), exit_code=1)

        in_parallel(fail, names)

        def recovered(name: str) -> bool:
            attempt = first[name]
            return attempt is not None and clock.gang_running_at(name, attempt[0]) is not None

        wait_until("every gang Running again", lambda: all(recovered(n) for n in names))
        for name in names:
            again = clock.gang_running_at(name, first[name][0])  # type: ignore[index]
            assert again is not None
            figures.recovery.append(again[1] - failed[name])
        print(f"  {system.name} x{jobs}: all recovered", file=sys.stderr, flush=True)
        # One attempt at the start and one after the injected failure.
        figures.unasked_restarts = clock.attempts_beyond(per_job=2)

        deleting = time.monotonic()
        in_parallel(lambda name: system.delete(namespace, name), names)
        wait_until("every pod deleted", lambda: clock.live_pods() == 0)
        figures.delete_seconds = time.monotonic() - deleting

        figures.cpu_seconds = process_cpu_seconds(system.pid()) - cpu0
        figures.controller_manager_cpu_seconds = process_cpu_seconds(manager) - manager_cpu0
        figures.peak_rss_mb = process_peak_rss(system.pid()) / 1024
        figures.apiserver_p99_seconds = latency_p99(latency0, latency_buckets(api))
    finally:
        clock.stopped.set()
        sampling.close()
        system.stop()
        core.delete_namespace(namespace)
        # The namespace's deletion writes too: not in the next round's steady state.
        wait_until("the namespace deleted", lambda: gone(core, namespace), timeout=300)
    return figures


def quiet(api: client.ApiClient, window_seconds: float = 5.0) -> bool:
    """No reads of workload resources for a window: the controllers are done with what came
    before the round. Just after the node set was resized (1,000 nodes to 4), a round counted
    4,056 such reads per minute that were not its own, and took 56 s to delete one job."""
    before = snapshot(api)
    time.sleep(window_seconds)
    return workload_reads(snapshot(api) - before) == 0


def terminating(core: client.CoreV1Api) -> bool:
    return any(n.status.phase == "Terminating" for n in core.list_namespace().items)


def gone(core: client.CoreV1Api, namespace: str) -> bool:
    try:
        core.read_namespace(namespace)
    except client.ApiException as error:
        if error.status == 404:
            return True
        raise
    return False


def print_table(rounds: list[Round]) -> None:
    by = {(r.system, r.jobs): r for r in rounds}
    for jobs in sorted({r.jobs for r in rounds}):
        print(f"\n{jobs} job(s) of {WORKERS} workers, submitted at once")
        ours, peer = by.get(("llmjob", jobs)), by.get(("jobset", jobs))
        print(f"  {'figure':28} {'llmjob':>10} {'jobset':>10} {'ratio':>7}")
        for key in (ours or peer).row():  # type: ignore[union-attr]
            a = ours.row()[key] if ours else float("nan")
            b = peer.row()[key] if peer else float("nan")
            ratio = a / b if b else float("nan")
            print(f"  {key:28} {a:10.2f} {b:10.2f} {ratio:7.2f}")
    sys.stdout.flush()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default=os.environ.get("BENCH_SIZES", "1,100,1000"))
    parser.add_argument("--systems", default="llmjob,jobset")
    parser.add_argument("--steady-seconds", type=float, default=60.0)
    parser.add_argument(
        "--profile",
        action="store_true",
        help="sample llmjob's operator with py-spy in each round and print where its CPU went",
    )
    args = parser.parse_args()
    layout = Layout.from_env()
    api = config.new_client_from_config(str(layout.kubeconfig))
    sizes = [int(s) for s in args.sizes.split(",")]
    log_dir = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    known: dict[str, Callable[[], System]] = {
        "llmjob": lambda: Llmjob(api, layout.kubeconfig, log_dir),
        "jobset": lambda: JobSet(api, layout),
    }
    systems = [known[name]() for name in args.systems.split(",")]
    # The CRD as the README installs it.
    crd = str(REPO / "crds" / "llmtrainingjobs.training.llmjob.dev.yaml")
    hostmanager.kubectl(layout, "apply", "--server-side", "--force-conflicts", "-f", crd)
    hostmanager.kubectl(layout, "wait", "--for=condition=Established", "-f", crd)
    nodes = max(4, math.ceil(max(sizes) * WORKERS / GPUS_PER_NODE))
    kwok.up(layout, nodes=nodes, gpus_per_node=GPUS_PER_NODE)
    rounds = []
    started = time.monotonic()
    for jobs in sizes:
        for system in systems:
            print(f"bench: {system.name}, {jobs} job(s)", file=sys.stderr, flush=True)
            profile = None
            if args.profile and system.name == "llmjob":
                profile = log_dir / f"{system.name}-{jobs}.py-spy.txt"
            rounds.append(run_round(api, layout, system, jobs, args.steady_seconds, profile))
            if profile is not None:
                print(f"where {system.name}'s CPU went, {jobs} job(s):\n{report(profile)}")
        # Each size's table as soon as it is measured: a long run stopped later keeps it.
        print_table([r for r in rounds if r.jobs == jobs])
    print(f"\n(wall time {time.monotonic() - started:.0f} s; operator logs in {log_dir})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
