"""Where one local cluster keeps its state and which loopback ports and addresses it uses.

Several checkouts on one machine may each run a cluster (engineers work in parallel
worktrees), so ports and 127.x address ranges are derived from the state directory's
path: two clusters never collide without anyone choosing numbers.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_STATE_DIR = REPO_ROOT / ".devcluster"
# Where every pod sees this checkout's sources, as an image would hold them: a fixed path, so
# a checkout anywhere (under /tmp, say, which pods cover with an emptyDir) is always visible.
IMAGE_SOURCE_DIR = "/opt/llmjob/src"
# Every port of one cluster lies in [port_base, port_base + PORTS_PER_CLUSTER).
PORTS_PER_CLUSTER = 20
# Five control-plane ports first, five opt-in component ports (Kueue, JobSet, KWOK) last, nodes
# in between.
MAX_NODES = PORTS_PER_CLUSTER - 10


@dataclass(frozen=True)
class Layout:
    state_dir: Path
    index: int  # 0..199, derived from the state directory path

    @classmethod
    def from_env(cls) -> Layout:
        state_dir = Path(os.environ.get("LLMJOB_DEVCLUSTER_DIR", DEFAULT_STATE_DIR)).resolve()
        digest = hashlib.sha256(str(state_dir).encode()).digest()
        return cls(state_dir=state_dir, index=int.from_bytes(digest[:4], "big") % 200)

    @property
    def port_base(self) -> int:
        return 20000 + self.index * PORTS_PER_CLUSTER

    @property
    def etcd_client_port(self) -> int:
        return self.port_base

    @property
    def etcd_peer_port(self) -> int:
        return self.port_base + 1

    @property
    def apiserver_port(self) -> int:
        return self.port_base + 2

    @property
    def controller_manager_port(self) -> int:
        return self.port_base + 3

    @property
    def scheduler_port(self) -> int:
        return self.port_base + 4

    @property
    def kueue_webhook_port(self) -> int:
        return self.port_base + PORTS_PER_CLUSTER - 1

    @property
    def kueue_health_port(self) -> int:
        return self.port_base + PORTS_PER_CLUSTER - 2

    @property
    def jobset_webhook_port(self) -> int:
        return self.port_base + PORTS_PER_CLUSTER - 3

    @property
    def jobset_health_port(self) -> int:
        return self.port_base + PORTS_PER_CLUSTER - 4

    @property
    def kwok_server_port(self) -> int:
        """KWOK's kubelet-like server (its /healthz; logs and exec of fake pods are unused)."""
        return self.port_base + PORTS_PER_CLUSTER - 5

    def kubelet_port(self, node_index: int) -> int:
        return self.port_base + 5 + node_index

    @property
    def address_octet(self) -> int:
        """Second octet of every 127.x address this cluster hands out (10..209)."""
        return 10 + self.index

    @property
    def node_names(self) -> list[str]:
        count = int(os.environ.get("LLMJOB_DEVCLUSTER_NODES", "2"))
        if not 1 <= count <= MAX_NODES:
            raise SystemExit(f"LLMJOB_DEVCLUSTER_NODES must be 1..{MAX_NODES}")
        return [f"llmjob-node-{index}" for index in range(count)]

    def node_kubeconfig(self, node: str) -> Path:
        """The node agent acts for each node with that node's own identity
        (system:node:<name>), so the API server's Node authorizer limits what it may do."""
        return self.state_dir / "kubeconfigs" / f"{node}.kubeconfig"

    def node_ip(self, node_index: int) -> str:
        return f"127.{self.address_octet}.0.{node_index + 1}"

    @property
    def apiserver_url(self) -> str:
        return f"https://127.0.0.1:{self.apiserver_port}"

    @property
    def pki_dir(self) -> Path:
        return self.state_dir / "pki"

    @property
    def pid_dir(self) -> Path:
        return self.state_dir / "pids"

    @property
    def log_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def pods_dir(self) -> Path:
        return self.state_dir / "pods"

    @property
    def volumes_dir(self) -> Path:
        return self.state_dir / "volumes"

    @property
    def control_dir(self) -> Path:
        """Files here steer the node agent (see agent.py: lost-node markers)."""
        return self.state_dir / "control"

    @property
    def kubeconfig(self) -> Path:
        return self.state_dir / "kubeconfig"

    @property
    def bin_link(self) -> Path:
        """Symlink to the cached bin directory holding kubectl, helm and the control plane."""
        return self.state_dir / "bin"
