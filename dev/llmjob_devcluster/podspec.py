"""Pure helpers that read a pod (as the API's JSON dict) the way the kubelet does:
resource quantities, the downward API, $(VAR) expansion, and /etc/hosts content."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

Pod = dict[str, Any]

_SUFFIXES = {
    "Ki": Decimal(2**10),
    "Mi": Decimal(2**20),
    "Gi": Decimal(2**30),
    "Ti": Decimal(2**40),
    "Pi": Decimal(2**50),
    "Ei": Decimal(2**60),
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "": Decimal(1),
    "k": Decimal("1e3"),
    "M": Decimal("1e6"),
    "G": Decimal("1e9"),
    "T": Decimal("1e12"),
    "P": Decimal("1e15"),
    "E": Decimal("1e18"),
}
_QUANTITY = re.compile(r"^([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)([a-zA-Z]*)$")


def parse_quantity(quantity: str | int | float) -> Decimal:
    """'500m' -> 0.5, '1Gi' -> 1073741824, '1e3' -> 1000."""
    match = _QUANTITY.match(str(quantity).strip())
    if not match or match.group(2) not in _SUFFIXES:
        raise ValueError(f"not a quantity: {quantity!r}")
    return Decimal(match.group(1)) * _SUFFIXES[match.group(2)]


def resource_field_value(
    container: Mapping[str, Any], resource: str, divisor: str | None, allocatable: Mapping[str, str]
) -> str:
    """The downward API's resourceFieldRef: limits fall back to the node's allocatable,
    and the value is divided by `divisor` and rounded up, as the kubelet does."""
    kind, _, name = resource.partition(".")
    resources = container.get("resources") or {}
    value = (resources.get(kind) or {}).get(name)
    if value is None:
        value = allocatable.get(name, "0") if kind == "limits" else "0"
    result = parse_quantity(value) / parse_quantity(divisor or "1")
    return str(math.ceil(result))


_FIELD_LABEL = re.compile(r"^metadata\.(labels|annotations)\['(.+)'\]$")


def field_value(pod: Pod, field_path: str) -> str:
    """The downward API's fieldRef."""
    metadata, spec, status = pod["metadata"], pod["spec"], pod.get("status") or {}
    match = _FIELD_LABEL.match(field_path)
    if match:
        return str((metadata.get(match.group(1)) or {}).get(match.group(2), ""))
    simple = {
        "metadata.name": metadata.get("name"),
        "metadata.namespace": metadata.get("namespace"),
        "metadata.uid": metadata.get("uid"),
        "spec.nodeName": spec.get("nodeName"),
        "spec.serviceAccountName": spec.get("serviceAccountName"),
        "status.hostIP": status.get("hostIP"),
        "status.hostIPs": ",".join(ip["ip"] for ip in status.get("hostIPs") or []),
        "status.podIP": status.get("podIP"),
        "status.podIPs": ",".join(ip["ip"] for ip in status.get("podIPs") or []),
    }
    if field_path in ("metadata.labels", "metadata.annotations"):
        values = metadata.get(field_path.split(".")[1]) or {}
        return "\n".join(f'{key}="{value}"' for key, value in sorted(values.items()))
    if field_path not in simple:
        raise ValueError(f"unsupported fieldRef {field_path!r}")
    return str(simple[field_path] or "")


_VAR_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(text: str, variables: Mapping[str, str]) -> str:
    """Kubernetes $(VAR) expansion: defined references are replaced, `$$` escapes a `$`,
    undefined references are left as they are."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return variables.get(match.group(1), match.group(0))

    return _VAR_REF.sub(replace, text)


def hosts_file(own_ip: str, own_names: list[str], peers: list[tuple[str, list[str]]]) -> str:
    """/etc/hosts as the kubelet writes it, plus the headless-Service names of `peers`
    (what cluster DNS would answer), since there is no DNS server here."""
    lines = [
        "# Kubernetes-managed hosts file (llmjob node agent).",
        "127.0.0.1\tlocalhost",
        "::1\tlocalhost ip6-localhost ip6-loopback",
        f"{own_ip}\t{' '.join(own_names)}",
    ]
    lines += [f"{ip}\t{' '.join(names)}" for ip, names in peers]
    return "\n".join(lines) + "\n"


def dns_names(hostname: str, subdomain: str, namespace: str) -> list[str]:
    """The names a pod with hostname+subdomain gets through its headless Service, in the
    forms a resolver with the pod's search path would accept."""
    base = f"{hostname}.{subdomain}"
    return [
        f"{base}.{namespace}.svc.cluster.local",
        f"{base}.{namespace}.svc",
        f"{base}.{namespace}",
        base,
    ]


def selector_matches(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def container_command(
    entrypoint: list[str], cmd: list[str], command: list[str], args: list[str]
) -> list[str]:
    """A container's command line as Kubernetes merges it with its image's: `command`
    replaces the ENTRYPOINT (and drops the CMD), `args` replaces the CMD."""
    if command:
        return command + args
    return entrypoint + (args or cmd)


def image_user_ids(user: str) -> tuple[int | None, int | None]:
    """The numeric uid and gid of an image's USER ("1000", "1000:1000", "name:group"),
    None where a name must first be looked up in the image's /etc/passwd."""
    name, _, group = user.partition(":")
    uid = int(name) if name.isdigit() else (0 if not name else None)
    gid = int(group) if group.isdigit() else None
    return uid, gid
