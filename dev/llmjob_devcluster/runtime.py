"""Running one pod as local processes: what the kubelet and a container runtime do.

A PodWorker thread owns one pod bound to one of the agent's nodes. It gives the pod a
127.x address, materialises its volumes under .devcluster/pods/<uid>/, starts the pod
sandbox (sandbox.py) in private mount+UTS namespaces, "pulls" each container's image (looks
it up among the images `make images` built: images.py; an unknown one waits in
ErrImagePull/ImagePullBackOff with events, as on a kubelet), runs the init containers one
after the other and then the containers (each entered into the sandbox with nsenter and
started by container_exec.py in the root filesystem of its image), restarts them according
to restartPolicy, runs readiness probes, and reports everything in the pod's status. On
deletion it sends SIGTERM, then SIGKILL after the grace period, and deletes the pod object,
as the kubelet does.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import json
import logging
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import urllib3
from kubernetes import client

from llmjob_devcluster import images, kube, podprocs, podspec, processes
from llmjob_devcluster.layout import IMAGE_SOURCE_DIR, REPO_ROOT, Layout

log = logging.getLogger("llmjob_devcluster.runtime")

HERE = Path(__file__).resolve().parent
SANDBOX_SCRIPT = HERE / "sandbox.py"
CONTAINER_EXEC_SCRIPT = HERE / "container_exec.py"
# The host-environment image (images.HOST_ENVIRONMENT_IMAGE, the fast integration tests'
# opt-in): the venv's programs first on PATH, and the checkout's packages importable, as if
# they were installed in an image.
VENV_BIN = Path(sys.executable).parent
IMAGE_PATH = f"{VENV_BIN}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
IMAGE_PYTHONPATH = ":".join(
    f"{IMAGE_SOURCE_DIR}/{part}" for part in ("operator", "trainer_image", "dev")
)
# The trainer image's entrypoint, less tini (the host has none): operator-rendered pods set
# only `args`, as they do for the real image.
HOST_ENVIRONMENT_ENTRYPOINT = ["llmjob-launch"]
# container_exec.py as the pod sees it (it runs inside the pod's root).
POD_CONTAINER_EXEC_SCRIPT = f"{IMAGE_SOURCE_DIR}/{CONTAINER_EXEC_SCRIPT.relative_to(REPO_ROOT)}"
TICK_SECONDS = 0.1
MAX_RESTART_BACKOFF_SECONDS = 20.0
# Image pull retries: the kubelet's back-off starts at 10s; shorter here, so that a pod
# waiting for `make images` starts soon after it.
MAX_PULL_BACKOFF_SECONDS = 30.0
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Pod tokens are requested for this long; the kubelet's default for projected tokens.
TOKEN_SECONDS = 3607
# Termination messages as the kubelet keeps them: the file's first 4 KiB; under
# FallbackToLogsOnError, for a failed container that left the file empty, its log's last 80
# lines, at most 2 KiB.
DEFAULT_TERMINATION_MESSAGE_PATH = "/dev/termination-log"
TERMINATION_MESSAGE_BYTES = 4096
FALLBACK_LOG_LINES, FALLBACK_LOG_BYTES = 80, 2048


class PodHost(Protocol):
    """What a PodWorker needs from the node agent that runs it."""

    layout: Layout

    def allocatable(self, node: str) -> dict[str, str]: ...

    def node_ip(self, node: str) -> str: ...

    def release_ip(self, ip: str) -> None: ...

    def allocate_ip(self, wanted: str | None) -> str: ...

    def hosts_content(self, worker: PodWorker) -> str: ...


class PodStoppedError(Exception):
    """The pod is being deleted, or the agent stops: leave the start sequence."""


class ContainerConfigError(Exception):
    """A container cannot be configured yet (missing configMap key, say): retried."""


class ImagePullError(Exception):
    """A container's image is not among the images built here: retried with back-off."""


@dataclass
class Container:
    spec: dict[str, Any]
    process: subprocess.Popen[bytes] | None = None
    restart_count: int = 0
    state: dict[str, Any] = field(
        default_factory=lambda: {"waiting": {"reason": "PodInitializing"}}
    )
    last_state: dict[str, Any] = field(default_factory=dict)
    ready: bool = False
    next_start: float = 0.0  # monotonic time before which a restart waits (backoff)
    last_probe: float = 0.0
    probe_successes: int = 0
    probe_failures: int = 0
    image: images.Image | None = None  # once pulled; None for the host environment
    pull_failures: int = 0

    @property
    def name(self) -> str:
        return str(self.spec["name"])

    @property
    def running(self) -> bool:
        """Whether the main process runs. An exited one is left unreaped (a zombie) until
        _record_exit: while it is, its pid and process group id cannot be reused, so
        signalling them can never hit an unrelated process (pid_max may be only 32768)."""
        if self.process is None or self.process.returncode is not None:
            return False
        try:
            exited = os.waitid(os.P_PID, self.process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return False
        return exited is None

    @property
    def exit_code(self) -> int | None:
        terminated = self.state.get("terminated")
        return None if terminated is None else int(terminated["exitCode"])


class PodWorker(threading.Thread):
    def __init__(
        self, host: PodHost, pod: podspec.Pod, api: client.ApiClient, core: client.CoreV1Api
    ) -> None:
        """`api` and `core` act with the identity of the pod's node."""
        metadata = pod["metadata"]
        super().__init__(name=f"pod-{metadata['namespace']}/{metadata['name']}", daemon=True)
        self.host = host
        self.api = api
        self.core = core
        self.uid: str = metadata["uid"]
        self.namespace: str = metadata["namespace"]
        self.pod_name: str = metadata["name"]
        self.node: str = pod["spec"]["nodeName"]
        self._pod = pod
        self._lock = threading.Lock()
        self.ip: str | None = None
        self.sandbox: subprocess.Popen[bytes] | None = None
        self.sandbox_ready = False
        self.initialized = False
        self.phase = "Pending"
        self.start_time = kube.now()
        self.init_containers = [Container(c) for c in pod["spec"].get("initContainers") or []]
        self.containers = [Container(c) for c in pod["spec"]["containers"]]
        # A pod runs from images unless every container names the host-environment image.
        self.host_environment = all(
            images.normalize(c.spec.get("image") or "") == images.HOST_ENVIRONMENT_IMAGE
            for c in self.init_containers + self.containers
        )
        self.condition_times: dict[str, tuple[str, str]] = {}
        self.published: dict[str, Any] | None = None
        self.finished = False  # the pod reached Succeeded/Failed and its processes are gone
        self.failure: str | None = None  # why the agent itself failed the pod
        self.shutdown = threading.Event()  # the agent stops: kill, but leave the API alone
        self.lost = threading.Event()  # the node is "lost": kill at once, touch nothing
        self.dir: Path = host.layout.pods_dir / self.uid
        self.volume_sources: dict[str, Path] = {}  # volume name -> its directory
        self.log_dir = host.layout.log_dir / "pods" / f"{self.namespace}_{self.pod_name}_{self.uid}"

    # --- the pod object, as last seen by the agent's watch -------------------------------

    def update(self, pod: podspec.Pod) -> None:
        with self._lock:
            self._pod = pod

    @property
    def pod(self) -> podspec.Pod:
        with self._lock:
            return self._pod

    @property
    def deleting(self) -> bool:
        return self.pod["metadata"].get("deletionTimestamp") is not None

    @property
    def hostname(self) -> str:
        spec = self.pod["spec"]
        return str(spec.get("hostname") or self.pod_name)[:63]

    @property
    def subdomain(self) -> str | None:
        subdomain = self.pod["spec"].get("subdomain")
        return str(subdomain) if subdomain else None

    @property
    def ready(self) -> bool:
        return self.initialized and all(c.ready for c in self.containers)

    @property
    def alive(self) -> bool:
        return self.ip is not None and not self.finished and not self.lost.is_set()

    def hosts_path(self) -> Path:
        return self.dir / "hosts"

    # --- the lifecycle --------------------------------------------------------------------

    def run(self) -> None:
        try:
            self._run()
        except PodStoppedError:
            pass
        except Exception as error:
            # A bug or an unusable spec: the pod fails visibly; it is not deleted behind the
            # back of whoever owns it.
            log.exception("pod %s/%s: node agent error", self.namespace, self.pod_name)
            self.phase = "Failed"
            self.failure = f"node agent error: {error}"
            with contextlib.suppress(PodStoppedError):
                self._finish()
        finally:
            self._teardown()

    def _check_stop(self) -> None:
        if self.deleting or self.shutdown.is_set() or self.lost.is_set():
            raise PodStoppedError

    def _run(self) -> None:
        if self.pod.get("status", {}).get("phase") in ("Succeeded", "Failed"):
            self.phase = self.pod["status"]["phase"]
            self.finished = True
            # Its status is final, written before this agent started: leave it as it is.
            self._wait_for_deletion(publish=False)
            return
        self._check_stop()
        # A pod keeps its address for life, also across restarts of the node agent.
        self.ip = self.host.allocate_ip(self.pod.get("status", {}).get("podIP"))
        if self._ran_before():
            return
        for container in self.init_containers[:1] or self.containers:
            container.state = {"waiting": {"reason": "ContainerCreating"}}
        self.publish()
        volume_mounts, memory_dirs = self._prepare_volumes()
        self._start_sandbox(volume_mounts, memory_dirs)
        self.sandbox_ready = True
        self.publish()
        for index, container in enumerate(self.init_containers):
            if not self._run_init_container(container):
                for waiting in self.init_containers[index + 1 :] + self.containers:
                    waiting.state = {"waiting": {"reason": "PodInitializing"}}
                self.phase = "Failed"
                self._finish()
                return
        self.initialized = True
        for container in self.containers:
            container.state = {"waiting": {"reason": "ContainerCreating"}}
        self.publish()
        self._run_containers()

    def _ran_before(self) -> bool:
        """Handles a pod whose containers ran before this agent started (the agent or its
        node was restarted): their processes are gone. Like the kubelet, it reports them
        as ContainerStatusUnknown (exit code 137); a restartPolicy Never pod then fails,
        others start again with their restart counts carried on. Returns whether the
        pod is finished."""
        previous = {
            status["name"]: status
            for status in self.pod.get("status", {}).get("containerStatuses") or []
            if {"running", "terminated"} & (status.get("state") or {}).keys()
        }
        if not previous:
            return False
        for container in self.containers:
            status = previous.get(container.name)
            if status is None:
                continue
            state = status["state"]
            if "running" in state:
                state = {
                    "terminated": {
                        "exitCode": 137,
                        "reason": "ContainerStatusUnknown",
                        "message": "The container could not be located",
                    }
                }
            container.state = state
            container.restart_count = int(status.get("restartCount", 0))
        if self.pod["spec"].get("restartPolicy", "Always") != "Never":
            for container in self.containers:
                if container.name in previous:
                    self._schedule_restart(container)
            return False
        self.initialized = True
        failed = any(c.exit_code != 0 for c in self.containers)
        self.phase = "Failed" if failed else "Succeeded"
        self._finish()
        return True

    def _wait_for_deletion(self, publish: bool) -> None:
        while not (self.deleting or self.shutdown.is_set() or self.lost.is_set()):
            if publish:
                self.publish()  # in case the last update failed
            time.sleep(TICK_SECONDS * 5)
        self._check_stop()

    def _finish(self) -> None:
        """The pod is Succeeded or Failed: its processes go, the object stays."""
        self._kill_all()
        self.finished = True
        self.publish()
        self._wait_for_deletion(publish=True)

    def _run_init_container(self, container: Container) -> bool:
        """Runs an init container to success, retrying unless restartPolicy is Never."""
        policy = self.pod["spec"].get("restartPolicy", "Always")
        while True:
            self._check_stop()
            if not self._start_when_due(container):
                time.sleep(TICK_SECONDS)
                continue
            while container.running:
                self._check_stop()
                time.sleep(TICK_SECONDS)
            self._record_exit(container)
            self.publish()
            if container.exit_code == 0:
                return True
            if policy == "Never":
                return False
            self._schedule_restart(container)

    def _run_containers(self) -> None:
        policy = self.pod["spec"].get("restartPolicy", "Always")
        while True:
            self._check_stop()
            for container in self.containers:
                if container.running:
                    self._probe(container)
                elif container.process is not None:
                    self._record_exit(container)
                    code = container.exit_code
                    if policy == "Always" or (policy == "OnFailure" and code != 0):
                        self._schedule_restart(container)
                elif "terminated" not in container.state:
                    self._start_when_due(container)
            if all("terminated" in c.state and c.process is None for c in self.containers) and (
                policy == "Never"
                or (policy == "OnFailure" and all(c.exit_code == 0 for c in self.containers))
            ):
                failed = any(c.exit_code != 0 for c in self.containers)
                self.phase = "Failed" if failed else "Succeeded"
                self._finish()
                return
            if any(c.running or "terminated" in c.state for c in self.containers):
                self.phase = "Running"
            self.publish()
            time.sleep(TICK_SECONDS)

    # --- containers -----------------------------------------------------------------------

    def _schedule_restart(self, container: Container) -> None:
        backoff = min(MAX_RESTART_BACKOFF_SECONDS, 1.0 * 2**container.restart_count)
        container.last_state = container.state
        container.state = {
            "waiting": {
                "reason": "CrashLoopBackOff",
                "message": f"back-off {backoff:.0f}s restarting failed container",
            }
        }
        container.restart_count += 1
        container.next_start = time.monotonic() + backoff

    def _start_when_due(self, container: Container) -> bool:
        if time.monotonic() < container.next_start:
            return False
        try:
            self._pull(container)
        except ImagePullError as error:
            self._pull_failed(container, str(error))
            return False
        try:
            self._start_container(container)
        except (ContainerConfigError, client.ApiException, urllib3.exceptions.HTTPError) as error:
            container.state = {
                "waiting": {"reason": "CreateContainerConfigError", "message": str(error)}
            }
            container.next_start = time.monotonic() + 1.0
            self.publish()
            return False
        self.publish()
        return True

    def _pull(self, container: Container) -> None:
        """Finds the container's image among those built here (the index is re-read on each
        try, so an image built meanwhile is found)."""
        if self.host_environment or container.image is not None:
            return
        reference = str(container.spec.get("image") or "")
        image = images.resolve(reference, images.load_index(images.index_path()))
        if image is None:
            raise ImagePullError(
                f'Failed to pull image "{reference}": {images.normalize(reference)} is not '
                "among the images built on this machine (make images)"
            )
        container.image = image
        container.pull_failures = 0

    def _pull_failed(self, container: Container, message: str) -> None:
        """ErrImagePull on the first failure, ImagePullBackOff while waiting for the next
        try, each with the kubelet's events."""
        reference = str(container.spec.get("image") or "")
        backoff = min(MAX_PULL_BACKOFF_SECONDS, 2.0 * 2**container.pull_failures)
        container.pull_failures += 1
        container.next_start = time.monotonic() + backoff
        self._event(container, "Warning", "Failed", message)
        if container.pull_failures == 1:
            container.state = {"waiting": {"reason": "ErrImagePull", "message": message}}
        else:
            container.state = {
                "waiting": {
                    "reason": "ImagePullBackOff",
                    "message": f'Back-off pulling image "{reference}": {message}',
                }
            }
            self._event(container, "Normal", "BackOff", f'Back-off pulling image "{reference}"')
        self.publish()

    def _event(self, container: Container, kind: str, reason: str, message: str) -> None:
        now = datetime.datetime.now(datetime.UTC)
        event = client.CoreV1Event(
            metadata=client.V1ObjectMeta(
                generate_name=f"{self.pod_name}.", namespace=self.namespace
            ),
            involved_object=client.V1ObjectReference(
                api_version="v1",
                kind="Pod",
                namespace=self.namespace,
                name=self.pod_name,
                uid=self.uid,
                field_path=f"spec.containers{{{container.name}}}",
            ),
            type=kind,
            reason=reason,
            message=message,
            source=client.V1EventSource(component="kubelet", host=self.node),
            reporting_component="kubelet",
            reporting_instance=self.node,
            first_timestamp=now,
            last_timestamp=now,
            count=1,
        )
        try:
            self.core.create_namespaced_event(self.namespace, event)
        except (client.ApiException, urllib3.exceptions.HTTPError) as error:
            log.warning("pod %s/%s: event not recorded: %s", self.namespace, self.pod_name, error)

    def _identity(self, container: Container) -> tuple[int | None, int | None, list[int]]:
        """uid, gid and groups; a None uid or gid is the image's USER, which container_exec
        looks up in the image's /etc/passwd."""
        pod_context = self.pod["spec"].get("securityContext") or {}
        context = {**pod_context, **(container.spec.get("securityContext") or {})}
        image_uid, image_gid = (
            podspec.image_user_ids(container.image.user) if container.image else (0, 0)
        )
        uid = int(context["runAsUser"]) if "runAsUser" in context else image_uid
        gid = int(context["runAsGroup"]) if "runAsGroup" in context else image_gid
        if context.get("runAsNonRoot") and uid is None:
            assert container.image is not None
            raise ContainerConfigError(
                f"container has runAsNonRoot and image has non-numeric user "
                f"({container.image.user}), cannot verify user is non-root"
            )
        if context.get("runAsNonRoot") and uid == 0:
            raise ContainerConfigError(
                "container has runAsNonRoot and image will run as root (no runAsUser set)"
            )
        groups = [int(g) for g in pod_context.get("supplementalGroups") or []]
        if pod_context.get("fsGroup") is not None:
            groups.append(int(pod_context["fsGroup"]))
        if self.host_environment:
            gid = gid or 0
        return uid, gid, sorted({*groups, *([gid] if gid is not None else [])})

    def _environment(self, container: Container, uid: int | None) -> dict[str, str]:
        """The image's environment, then the pod's, as a runtime merges them; HOME comes from
        the user's entry in the image's /etc/passwd unless set (container_exec)."""
        layout = self.host.layout
        if container.image is not None:
            env = {"PATH": DEFAULT_PATH, **container.image.env}
        else:
            try:
                home = pwd.getpwuid(uid or 0).pw_dir
            except KeyError:
                home = "/"
            env = {"PATH": IMAGE_PATH, "PYTHONPATH": IMAGE_PYTHONPATH, "HOME": home}
        env |= {
            "HOSTNAME": self.hostname,
            "KUBERNETES_SERVICE_HOST": "127.0.0.1",
            "KUBERNETES_SERVICE_PORT": str(layout.apiserver_port),
            "KUBERNETES_SERVICE_PORT_HTTPS": str(layout.apiserver_port),
            "KUBERNETES_PORT": f"tcp://127.0.0.1:{layout.apiserver_port}",
        }
        for source in container.spec.get("envFrom") or []:
            prefix = source.get("prefix", "")
            kind = "configMap" if "configMapRef" in source else "secret"
            data = self._source_data(kind, source[f"{kind}Ref"]) or {}
            env.update({prefix + key: value.decode() for key, value in data.items()})
        for var in container.spec.get("env") or []:
            resolved = self._env_value(container, var, env)
            if resolved is not None:
                env[var["name"]] = resolved
        return env

    def _env_value(
        self, container: Container, var: dict[str, Any], env: dict[str, str]
    ) -> str | None:
        if "valueFrom" not in var:
            return podspec.expand(var.get("value", ""), env)
        source = var["valueFrom"]
        if "fieldRef" in source:
            return podspec.field_value(self._pod_with_ips(), source["fieldRef"]["fieldPath"])
        if "resourceFieldRef" in source:
            ref = source["resourceFieldRef"]
            named = ref.get("containerName")
            target = next(
                (c.spec for c in self.init_containers + self.containers if c.name == named),
                container.spec,
            )
            return podspec.resource_field_value(
                target, ref["resource"], ref.get("divisor"), self.host.allocatable(self.node)
            )
        ref = source.get("configMapKeyRef") or source["secretKeyRef"]
        data = self._config_map(ref) if "configMapKeyRef" in source else self._secret(ref)
        if data is None or ref["key"] not in data:
            if ref.get("optional"):
                return None
            raise ContainerConfigError(f"couldn't find key {ref['key']} in {ref.get('name')}")
        return data[ref["key"]]

    def _pod_with_ips(self) -> podspec.Pod:
        pod = dict(self.pod)
        pod["status"] = {
            **(pod.get("status") or {}),
            "podIP": self.ip,
            "podIPs": [{"ip": self.ip}],
            "hostIP": self.host.node_ip(self.node),
            "hostIPs": [{"ip": self.host.node_ip(self.node)}],
        }
        return pod

    def _command(self, container: Container, env: dict[str, str]) -> list[str]:
        command = [podspec.expand(part, env) for part in container.spec.get("command") or []]
        args = [podspec.expand(part, env) for part in container.spec.get("args") or []]
        image = container.image
        if image is not None:
            entrypoint, cmd = image.entrypoint, image.cmd
        else:
            entrypoint = HOST_ENVIRONMENT_ENTRYPOINT if self.host_environment else []
            cmd = []
        argv = podspec.container_command(entrypoint, cmd, command, args)
        if not argv:
            raise ContainerConfigError("no command specified")
        return argv

    def _container_argv(
        self, container: Container, probed: Container | None = None
    ) -> tuple[list[str], dict[str, str]]:
        """The command line that starts `container` in the pod; with `probed`, one that runs
        in the root filesystem of that running container instead (exec probes)."""
        uid, gid, groups = self._identity(container)
        env = self._environment(container, uid)
        image = container.image
        spec: dict[str, Any] = {
            "uid": uid,
            "gid": gid,
            "groups": groups,
            "workingDir": container.spec.get("workingDir")
            or (image.working_dir if image else "")
            or "/",
            "command": self._command(container, env),
        }
        assert self.sandbox is not None
        enter = ["nsenter", f"--target={self.sandbox.pid}", "--mount", "--uts"]
        if image is None:
            argv = [*enter, "--root", sys.executable, "-I", POD_CONTAINER_EXEC_SCRIPT]
            return [*argv, json.dumps(spec)], env
        context = container.spec.get("securityContext") or {}
        container_dir = self.dir / "containers" / (probed or container).name
        spec |= {
            "imageUser": image.user,
            "join": probed is not None,
            "rootfs": {
                "layers": list(image.layers),
                "root": str(container_dir / "root"),
                "upper": str(container_dir / "upper"),
                "work": str(container_dir / "work"),
                "readOnly": bool(context.get("readOnlyRootFilesystem")),
            },
            "mounts": [*self._mounts([container]), *self._termination_mount(container, probed)],
            "shm": str(self.dir / "shm"),
            "hostsFile": str(self.hosts_path()),
            "hostnameFile": str(self.dir / "hostname"),
        }
        argv = [*enter, sys.executable, "-I", str(CONTAINER_EXEC_SCRIPT), json.dumps(spec)]
        return argv, env

    def _termination_log(self, container: Container) -> Path:
        return self.dir / "containers" / container.name / "termination-log"

    def _termination_mount(
        self, container: Container, probed: Container | None
    ) -> list[dict[str, Any]]:
        """The container's own termination-message file at its terminationMessagePath. Only
        for containers of an image: those of the host environment share one root."""
        if probed is not None or container.image is None:
            return []
        target = container.spec.get("terminationMessagePath") or DEFAULT_TERMINATION_MESSAGE_PATH
        source = self._termination_log(container)
        return [{"source": str(source), "target": target, "readOnly": False}]

    def _log_path(self, container: Container) -> Path:
        return self.log_dir / container.name / f"{container.restart_count}.log"

    def _start_container(self, container: Container) -> None:
        if container.image is not None:
            # Empty for each start, and writable by any user, as the kubelet makes it.
            message_file = self._termination_log(container)
            message_file.parent.mkdir(parents=True, exist_ok=True)
            message_file.write_bytes(b"")
            message_file.chmod(0o666)
        argv, env = self._container_argv(container)
        log_path = self._log_path(container)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log_file:
            container.process = subprocess.Popen(
                argv,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        container.state = {"running": {"startedAt": kube.now()}}
        container.ready = False
        container.probe_successes = container.probe_failures = 0
        container.last_probe = time.monotonic()

    def _record_exit(self, container: Container) -> None:
        assert container.process is not None
        # Whatever the container's main process left behind dies with it, as in a pid
        # namespace; signalled before the main process is reaped (see Container.running).
        processes.signal_group(container.process.pid, signal.SIGKILL)
        code = container.process.wait()
        exit_code = code if code >= 0 else 128 - code
        started = (container.state.get("running") or {}).get("startedAt", kube.now())
        terminated: dict[str, Any] = {
            "exitCode": exit_code,
            "reason": "Completed" if exit_code == 0 else "Error",
            "startedAt": started,
            "finishedAt": kube.now(),
            "containerID": self._container_id(container),
        }
        if code < 0:
            terminated["signal"] = -code
        message = self._termination_message(container, exit_code)
        if message:
            terminated["message"] = message
        container.state = {"terminated": terminated}
        container.process = None
        container.ready = False

    def _termination_message(self, container: Container, exit_code: int) -> str:
        message = b""
        if container.image is not None:
            with contextlib.suppress(OSError), open(self._termination_log(container), "rb") as f:
                message = f.read(TERMINATION_MESSAGE_BYTES)
        fallback = container.spec.get("terminationMessagePolicy") == "FallbackToLogsOnError"
        if not message.strip() and fallback and exit_code != 0:
            with contextlib.suppress(OSError):
                lines = self._log_path(container).read_bytes().splitlines(keepends=True)
                message = b"".join(lines[-FALLBACK_LOG_LINES:])[-FALLBACK_LOG_BYTES:]
        return message.decode(errors="replace")

    def _container_id(self, container: Container) -> str:
        return f"llmjob://{self.uid}/{container.name}/{container.restart_count}"

    # --- readiness probes -----------------------------------------------------------------

    def _probe(self, container: Container) -> None:
        probe = container.spec.get("readinessProbe")
        if probe is None:
            container.ready = True
            return
        period = float(probe.get("periodSeconds", 10))
        started = (
            container.last_probe if container.probe_successes + container.probe_failures else None
        )
        delay = period if started is not None else float(probe.get("initialDelaySeconds", 0))
        if time.monotonic() - container.last_probe < delay:
            return
        container.last_probe = time.monotonic()
        if self._probe_once(container, probe):
            container.probe_successes += 1
            container.probe_failures = 0
            if container.probe_successes >= int(probe.get("successThreshold", 1)):
                container.ready = True
        else:
            container.probe_failures += 1
            container.probe_successes = 0
            if container.probe_failures >= int(probe.get("failureThreshold", 3)):
                container.ready = False

    def _port(self, container: Container, port: int | str) -> int:
        if isinstance(port, int) or str(port).isdigit():
            return int(port)
        for declared in container.spec.get("ports") or []:
            if declared.get("name") == port:
                return int(declared["containerPort"])
        raise ValueError(f"no container port named {port!r}")

    def _probe_once(self, container: Container, probe: dict[str, Any]) -> bool:
        timeout = float(probe.get("timeoutSeconds", 1))
        try:
            if "exec" in probe:
                probe_container = Container(
                    {**container.spec, "command": probe["exec"]["command"], "args": []},
                    image=container.image,
                )
                argv, env = self._container_argv(probe_container, probed=container)
                result = subprocess.run(
                    argv, check=False, env=env, capture_output=True, timeout=timeout
                )
                return result.returncode == 0
            if "tcpSocket" in probe:
                host = probe["tcpSocket"].get("host") or self.ip
                port = self._port(container, probe["tcpSocket"]["port"])
                with socket.create_connection((host, port), timeout=timeout):
                    return True
            if "httpGet" in probe:
                get = probe["httpGet"]
                scheme = get.get("scheme", "HTTP").lower()
                url = (
                    f"{scheme}://{get.get('host') or self.ip}:"
                    f"{self._port(container, get['port'])}{get.get('path', '/')}"
                )
                with urllib.request.urlopen(url, timeout=timeout) as response:
                    return 200 <= int(response.status) < 400
        except (OSError, subprocess.TimeoutExpired, urllib.error.URLError, ValueError):
            return False
        return False

    # --- volumes and sandbox --------------------------------------------------------------

    def _config_map(self, ref: dict[str, Any]) -> dict[str, str] | None:
        data = self._source_data("configMap", ref)
        return None if data is None else {key: value.decode() for key, value in data.items()}

    def _secret(self, ref: dict[str, Any]) -> dict[str, str] | None:
        data = self._source_data("secret", ref)
        return None if data is None else {key: value.decode() for key, value in data.items()}

    def _write_items(
        self, target: Path, data: dict[str, bytes], items: list[dict[str, Any]] | None, mode: int
    ) -> None:
        selected = (
            [(item["key"], item["path"], item.get("mode", mode)) for item in items]
            if items
            else [(key, key, mode) for key in data]
        )
        for key, path, file_mode in selected:
            if key not in data:
                raise ContainerConfigError(f"key {key} not found")
            destination = target / path
            destination.parent.mkdir(parents=True, exist_ok=True)
            destination.write_bytes(data[key])
            destination.chmod(file_mode)

    def _source_data(self, kind: str, source: dict[str, Any]) -> dict[str, bytes] | None:
        """The keys of a configMap or secret as bytes; None if it does not exist."""
        name = source.get("name") or source.get("secretName")
        read = (
            self.core.read_namespaced_config_map
            if kind == "configMap"
            else self.core.read_namespaced_secret
        )
        try:
            obj = kube.as_dict(self.api, read(str(name), self.namespace))
        except client.ApiException as error:
            if kube.is_status(error, 404):
                return None
            raise
        if kind == "configMap":
            data = {key: value.encode() for key, value in (obj.get("data") or {}).items()}
            binary = obj.get("binaryData") or {}
        else:
            data, binary = {}, obj.get("data") or {}
        data.update({key: base64.b64decode(value) for key, value in binary.items()})
        return data

    def _write_downward(self, target: Path, items: list[dict[str, Any]], mode: int) -> None:
        for item in items:
            if "fieldRef" in item:
                value = podspec.field_value(self._pod_with_ips(), item["fieldRef"]["fieldPath"])
            else:
                ref = item["resourceFieldRef"]
                spec = next(
                    c.spec
                    for c in self.init_containers + self.containers
                    if c.name == ref["containerName"]
                )
                value = podspec.resource_field_value(
                    spec, ref["resource"], ref.get("divisor"), self.host.allocatable(self.node)
                )
            destination = target / item["path"]
            destination.parent.mkdir(parents=True, exist_ok=True)
            destination.write_text(value)
            destination.chmod(item.get("mode", mode))

    def _write_token(self, target: Path, source: dict[str, Any], mode: int) -> None:
        spec = self.pod["spec"]
        request: dict[str, Any] = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "expirationSeconds": int(source.get("expirationSeconds", TOKEN_SECONDS)),
                "boundObjectRef": {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "name": self.pod_name,
                    "uid": self.uid,
                },
            },
        }
        if source.get("audience"):
            request["spec"]["audiences"] = [source["audience"]]
        token = kube.as_dict(
            self.api,
            self.core.create_namespaced_service_account_token(
                spec.get("serviceAccountName") or "default",
                self.namespace,
                kube.model(client.AuthenticationV1TokenRequest, request),
            ),
        )
        destination = target / source["path"]
        destination.parent.mkdir(parents=True, exist_ok=True)
        destination.write_text(token["status"]["token"])
        destination.chmod(mode)

    def _fill_volume(self, volume: dict[str, Any], target: Path) -> None:
        for kind in ("configMap", "secret"):
            if kind in volume:
                source = volume[kind]
                data = self._source_data(kind, source)
                if data is None:
                    if source.get("optional"):
                        return
                    raise ContainerConfigError(
                        f"{kind} {source.get('name') or source.get('secretName')} not found"
                    )
                self._write_items(
                    target, data, source.get("items"), source.get("defaultMode", 0o644)
                )
                return
        if "downwardAPI" in volume:
            source = volume["downwardAPI"]
            self._write_downward(
                target, source.get("items") or [], source.get("defaultMode", 0o644)
            )
            return
        if "projected" not in volume:
            kinds = sorted(volume.keys() - {"name"})
            raise ValueError(
                f"volume {volume['name']}: {kinds} is not supported by this node agent"
            )
        projected = volume["projected"]
        mode = projected.get("defaultMode", 0o644)
        for source in projected.get("sources") or []:
            if "serviceAccountToken" in source:
                self._write_token(target, source["serviceAccountToken"], mode)
            elif "downwardAPI" in source:
                self._write_downward(target, source["downwardAPI"].get("items") or [], mode)
            else:
                kind = "configMap" if "configMap" in source else "secret"
                data = self._source_data(kind, source[kind])
                if data is None:
                    if source[kind].get("optional"):
                        continue
                    raise ContainerConfigError(f"{kind} {source[kind].get('name')} not found")
                self._write_items(target, data, source[kind].get("items"), mode)

    def _claim_path(self, claim_name: str) -> Path:
        core, api = self.core, self.api
        try:
            claim = kube.as_dict(
                api, core.read_namespaced_persistent_volume_claim(claim_name, self.namespace)
            )
        except client.ApiException as error:
            if kube.is_status(error, 404):
                raise ContainerConfigError(
                    f"persistentvolumeclaim {claim_name} not found"
                ) from None
            raise
        volume_name = claim["spec"].get("volumeName")
        if (claim.get("status") or {}).get("phase") != "Bound" or not volume_name:
            raise ContainerConfigError(f"persistentvolumeclaim {claim_name} is not bound")
        volume = kube.as_dict(api, core.read_persistent_volume(volume_name))
        if "hostPath" not in volume["spec"]:
            raise ContainerConfigError(f"persistentvolume {volume_name} is not a hostPath volume")
        return Path(volume["spec"]["hostPath"]["path"])

    def _apply_fs_group(self, path: Path, recursive: bool) -> None:
        """Gives the pod's fsGroup the volume, as the kubelet does for volumes that support
        ownership management: group-owned, group-writable, setgid directories."""
        fs_group = (self.pod["spec"].get("securityContext") or {}).get("fsGroup")
        if fs_group is None:
            return
        paths = [path, *path.rglob("*")] if recursive else [path]
        for entry in paths:
            if entry.is_symlink():
                continue
            os.chown(entry, -1, int(fs_group))
            mode = entry.stat().st_mode
            entry.chmod(mode | 0o060 | (0o2010 if entry.is_dir() else 0))

    def _prepare_volumes(self) -> tuple[list[dict[str, Any]], dict[str, int]]:
        """Returns the bind mounts for a host-environment sandbox and the memory-backed
        volume dirs."""
        volumes_dir = self.dir / "volumes"
        sources = self.volume_sources
        memory_dirs: dict[str, int] = {}
        while True:
            self._check_stop()
            try:
                for volume in self.pod["spec"].get("volumes") or []:
                    name = volume["name"]
                    if "persistentVolumeClaim" in volume:
                        path = self._claim_path(volume["persistentVolumeClaim"]["claimName"])
                        self._apply_fs_group(path, recursive=True)
                    elif "hostPath" in volume:
                        path = Path(volume["hostPath"]["path"])
                        if volume["hostPath"].get("type") == "DirectoryOrCreate":
                            path.mkdir(parents=True, exist_ok=True)
                    else:
                        path = volumes_dir / name
                        if path.exists():
                            shutil.rmtree(path)
                        path.mkdir(parents=True)
                        path.chmod(0o777 if "emptyDir" in volume else 0o755)
                        if "emptyDir" not in volume:
                            self._fill_volume(volume, path)
                        elif volume["emptyDir"].get("medium") == "Memory":
                            memory_dirs[str(path)] = 0o777
                        self._apply_fs_group(path, recursive=True)
                    sources[name] = path
                break
            except (
                ContainerConfigError,
                client.ApiException,
                urllib3.exceptions.HTTPError,
            ) as error:
                for container in self.init_containers[:1] or self.containers:
                    container.state = {
                        "waiting": {"reason": "ContainerCreating", "message": str(error)}
                    }
                self.publish()
                time.sleep(1.0)
        return self._mounts(self.init_containers + self.containers), memory_dirs

    def _mounts(self, containers: list[Container]) -> list[dict[str, Any]]:
        """The bind mounts of `containers`' volumeMounts, parents before children."""
        sources = self.volume_sources
        # The kubelet always mounts API-data volumes read-only.
        read_only_volumes = {
            volume["name"]
            for volume in self.pod["spec"].get("volumes") or []
            if {"configMap", "secret", "downwardAPI", "projected"} & volume.keys()
        }
        mounts = []
        for container in containers:
            for mount in container.spec.get("volumeMounts") or []:
                source = sources[mount["name"]]
                if mount.get("subPath"):
                    source = source / mount["subPath"]
                    if not source.exists():
                        source.mkdir(parents=True)
                mounts.append(
                    {
                        "source": str(source),
                        "target": mount["mountPath"],
                        "readOnly": bool(mount.get("readOnly"))
                        or mount["name"] in read_only_volumes,
                    }
                )
        # In a host-environment pod all containers share one root, so a path mounted by two
        # containers gets the first one's volume (pods in this project agree on paths).
        unique = {m["target"]: m for m in reversed(mounts)}
        return sorted(unique.values(), key=lambda m: len(m["target"]))

    def _start_sandbox(self, mounts: list[dict[str, Any]], memory_dirs: dict[str, int]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        assert self.ip is not None
        # Complete from the start: gang members look each other up as soon as they run.
        self.write_hosts(self.host.hosts_content(self))
        (self.dir / "hostname").write_text(self.hostname + "\n")
        ready_file = self.dir / "sandbox-ready"
        ready_file.unlink(missing_ok=True)
        root_device = os.stat("/").st_dev
        host_binds = [
            str(path)
            for path in (REPO_ROOT, VENV_BIN.parent)
            if os.stat(path).st_dev != root_device
        ]
        (self.dir / "shm").mkdir(exist_ok=True)
        setup = {
            "images": not self.host_environment,
            "shm": str(self.dir / "shm"),
            "root": str(self.dir / "root"),
            "upper": str(self.dir / "upper"),
            "work": str(self.dir / "work"),
            "hostname": self.hostname,
            "hostsFile": str(self.hosts_path()),
            "hostnameFile": str(self.dir / "hostname"),
            "readyFile": str(ready_file),
            "hostBinds": host_binds,
            "imageSource": str(REPO_ROOT),
            "imageTarget": IMAGE_SOURCE_DIR,
            "memoryVolumes": memory_dirs,
            "mounts": mounts,
        }
        (self.dir / "sandbox.json").write_text(json.dumps(setup, indent=1))
        sandbox_log = self.log_dir / "sandbox.log"
        sandbox_log.parent.mkdir(parents=True, exist_ok=True)
        with open(sandbox_log, "ab") as log_file:
            self.sandbox = subprocess.Popen(
                [
                    "unshare",
                    "--mount",
                    "--uts",
                    "--propagation",
                    "private",
                    sys.executable,
                    "-I",
                    str(SANDBOX_SCRIPT),
                    str(self.dir / "sandbox.json"),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        podprocs.record_sandbox(self.dir / podprocs.SANDBOX_PID_FILE, self.sandbox.pid)
        while not ready_file.exists():
            if self.sandbox.poll() is not None:
                raise RuntimeError(
                    f"pod sandbox exited with {self.sandbox.returncode}; see {sandbox_log}"
                )
            self._check_stop()
            time.sleep(0.02)
        podprocs.record_sandbox(self.dir / podprocs.SANDBOX_PID_FILE, self.sandbox.pid)

    def write_hosts(self, content: str) -> None:
        """Rewrites /etc/hosts in place: the sandbox bind-mounted this very inode."""
        path = self.hosts_path()
        if path.exists():
            with open(path, "r+") as hosts:
                if hosts.read() == content:
                    return
                hosts.seek(0)
                hosts.write(content)
                hosts.truncate()
        else:
            path.write_text(content)

    # --- stopping -------------------------------------------------------------------------

    def _kill_all(self) -> None:
        """Ends every process of the pod: containers, what they forked, the sandbox."""
        for container in self.init_containers + self.containers:
            if container.process is not None:
                processes.signal_group(container.process.pid, signal.SIGKILL)
                self._record_exit(container)
        # Only an unreaped sandbox's pid is surely still the sandbox.
        if self.sandbox is not None and self.sandbox.returncode is None:
            namespace = podprocs.mount_namespace(self.sandbox.pid)
            if namespace is not None and namespace != podprocs.mount_namespace(os.getpid()):
                podprocs.kill_mount_namespace(namespace)
            self.sandbox.wait()
        (self.dir / podprocs.SANDBOX_PID_FILE).unlink(missing_ok=True)

    def _terminate(self, grace: float) -> None:
        """SIGTERM to every running container, SIGKILL to whatever is left after `grace`."""
        running = [c for c in self.init_containers + self.containers if c.running]
        for container in running:
            assert container.process is not None
            with contextlib.suppress(ProcessLookupError):
                # Not Popen.send_signal: its poll() would reap the process (see running).
                os.kill(container.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while any(c.running for c in running) and time.monotonic() < deadline:
            if self.lost.is_set():
                break
            time.sleep(TICK_SECONDS / 2)
        self._kill_all()

    def _teardown(self) -> None:
        if self.lost.is_set():
            self._kill_all()
        elif self.shutdown.is_set() and not self.deleting:
            self._terminate(min(self._grace(), 10.0))
        else:
            self._terminate(self._grace())
            if self.sandbox is not None and not self.finished:
                # A deleted pod never runs again: like the kubelet (1.27+), give it its terminal
                # phase before the object goes, so that whoever keeps it by a finalizer (Kueue,
                # counting a pod group's ended pods) sees how it ended.
                failed = any(c.exit_code != 0 for c in self.containers)
                self.phase = "Failed" if failed else "Succeeded"
                with contextlib.suppress(client.ApiException):
                    self.publish()
            self._delete_pod_object()
        if self.ip is not None:
            self.host.release_ip(self.ip)
        self.finished = True
        if not self.lost.is_set():
            # Its overlay, emptyDirs and copies of secrets go with it (logs stay).
            shutil.rmtree(self.dir, ignore_errors=True)

    def _grace(self) -> float:
        metadata, spec = self.pod["metadata"], self.pod["spec"]
        grace = metadata.get("deletionGracePeriodSeconds")
        if grace is None:
            grace = spec.get("terminationGracePeriodSeconds", 30)
        return float(grace)

    def _delete_pod_object(self) -> None:
        """The kubelet's last word on a pod: delete it for good once its processes are gone.
        Retried while the API server is unreachable (a restart), as a kubelet does: a pod
        left Terminating would hold its name, and the next gang, for ever."""

        def delete() -> None:
            # An answer of any kind is final: gone already, or the name is another pod's.
            with contextlib.suppress(client.ApiException):
                self.core.delete_namespaced_pod(
                    self.pod_name,
                    self.namespace,
                    grace_period_seconds=0,
                    body=client.V1DeleteOptions(
                        grace_period_seconds=0, preconditions=client.V1Preconditions(uid=self.uid)
                    ),
                    _request_timeout=kube.REQUEST_TIMEOUT,
                )

        kube.call_until_done(f"delete pod {self.namespace}/{self.pod_name}", delete, self.lost)

    # --- status ---------------------------------------------------------------------------

    def _condition(self, kind: str, value: bool) -> dict[str, Any]:
        status = "True" if value else "False"
        previous = self.condition_times.get(kind)
        if previous is None or previous[0] != status:
            self.condition_times[kind] = (status, kube.now())
        return {"type": kind, "status": status, "lastTransitionTime": self.condition_times[kind][1]}

    def _container_status(self, container: Container) -> dict[str, Any]:
        status: dict[str, Any] = {
            "name": container.name,
            "image": container.spec.get("image", ""),
            "imageID": container.image.digest if container.image else "",
            "ready": container.ready,
            "restartCount": container.restart_count,
            "started": "running" in container.state,
            "state": container.state,
        }
        if container.last_state:
            status["lastState"] = container.last_state
        if "running" in container.state:
            status["containerID"] = self._container_id(container)
        return status

    def status(self) -> dict[str, Any]:
        node_ip = self.host.node_ip(self.node)
        status: dict[str, Any] = {
            "phase": self.phase,
            "hostIP": node_ip,
            "hostIPs": [{"ip": node_ip}],
            "startTime": self.start_time,
            "conditions": [
                self._condition(
                    "PodReadyToStartContainers", self.sandbox_ready and not self.finished
                ),
                self._condition("Initialized", self.initialized),
                self._condition("ContainersReady", self.ready),
                self._condition("Ready", self.ready),
            ],
            "containerStatuses": [self._container_status(c) for c in self.containers],
        }
        if self.failure is not None:
            status["reason"] = "NodeAgentError"
            status["message"] = self.failure
        if self.ip is not None:
            status["podIP"] = self.ip
            status["podIPs"] = [{"ip": self.ip}]
        if self.init_containers:
            status["initContainerStatuses"] = [
                self._container_status(c) for c in self.init_containers
            ]
        return status

    def publish(self) -> None:
        """Patches the pod's status if it changed since the last patch. Strategic merge
        keeps the conditions other components own (PodScheduled, DisruptionTarget)."""
        if self.lost.is_set():
            return
        status = self.status()
        if status == self.published:
            return
        try:
            self.core.patch_namespaced_pod_status(
                self.pod_name,
                self.namespace,
                {"status": status},
                _content_type="application/strategic-merge-patch+json",
            )
            self.published = status
        except (client.ApiException, urllib3.exceptions.HTTPError) as error:
            # Retried on the next change or tick; a pod that is gone shows up as DELETED.
            log.warning("pod %s/%s: status update failed: %s", self.namespace, self.pod_name, error)
