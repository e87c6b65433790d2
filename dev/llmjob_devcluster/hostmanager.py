"""What the opt-in controller managers run as host processes share (kueue.py, jobset.py): their
upstream manifests rendered as their releases are, webhook and CRD-conversion client configs
pointed at a loopback URL instead of an in-cluster Service, and kubectl against this cluster."""

from __future__ import annotations

import json
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from llmjob_devcluster.layout import Layout

Obj = dict[str, Any]


def kustomize(kubectl: Path, directory: Path) -> list[Obj]:
    """A kustomization rendered by the pinned kubectl, as upstream release manifests are."""
    rendered = subprocess.run(
        [str(kubectl), "kustomize", str(directory)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    # Megabytes of YAML: libyaml's loader takes a tenth of the pure-Python one's time.
    return [doc for doc in yaml.load_all(rendered, Loader=yaml.CSafeLoader) if doc]


def url_client_config(client_config: Obj, port: int, ca_bundle: str) -> Obj:
    """A Service client config as `https://127.0.0.1:<port><path>`, trusted through the dev CA."""
    path = client_config["service"].get("path", "/")
    return {"url": f"https://127.0.0.1:{port}{path}", "caBundle": ca_bundle}


def loopback_conversion(crd: Obj, port: int, ca_bundle: str) -> None:
    """Points a CRD's conversion webhook (if it has one) at the host process."""
    webhook = (crd["spec"].get("conversion") or {}).get("webhook")
    if webhook and "service" in webhook.get("clientConfig", {}):
        webhook["clientConfig"] = url_client_config(webhook["clientConfig"], port, ca_bundle)


def kubectl(layout: Layout, *args: str, stdin: str | None = None) -> str:
    return subprocess.run(
        [str(layout.bin_link / "kubectl"), f"--kubeconfig={layout.kubeconfig}", *args],
        input=stdin,
        check=True,
        capture_output=True,
        text=True,
    ).stdout


def apply_and_wait(layout: Layout, objects: list[Obj]) -> None:
    """Server-side applies the manifests (ours to own, whoever applied them before) and waits
    until every CRD among them is Established."""
    kubectl(
        layout,
        "apply",
        "--server-side",
        "--force-conflicts",
        "--field-manager=llmjob-devcluster",
        "-f",
        "-",
        stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}),
    )
    crds = [
        f"crd/{o['metadata']['name']}" for o in objects if o["kind"] == "CustomResourceDefinition"
    ]
    kubectl(layout, "wait", "--for=condition=Established", "--timeout=60s", *crds)


def answers_ok(url: str) -> bool:
    """A host process's health endpoint answers 200."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False
