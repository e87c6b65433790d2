"""Certificates and keys of the local cluster, generated with the openssl CLI (the venv has
no `cryptography`, and openssl is on every Debian machine). One CA signs everything."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

VALID_DAYS = 3650


@dataclass(frozen=True)
class ClientCert:
    """A client certificate: the API server takes the CN as user and each O as group."""

    name: str
    common_name: str
    organizations: tuple[str, ...] = ()


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def _subject(common_name: str, organizations: tuple[str, ...]) -> str:
    return "".join(f"/O={org}" for org in organizations) + f"/CN={common_name}"


def _sign(pki: Path, name: str, subject: str, extensions: str) -> None:
    key, csr, crt, ext = (pki / f"{name}.{suffix}" for suffix in ("key", "csr", "crt", "ext"))
    _openssl("genrsa", "-out", str(key), "2048")
    _openssl("req", "-new", "-key", str(key), "-subj", subject, "-out", str(csr))
    ext.write_text(extensions)
    _openssl(
        "x509",
        "-req",
        "-in",
        str(csr),
        "-CA",
        str(pki / "ca.crt"),
        "-CAkey",
        str(pki / "ca.key"),
        "-CAcreateserial",
        "-days",
        str(VALID_DAYS),
        "-sha256",
        "-extfile",
        str(ext),
        "-out",
        str(crt),
    )
    csr.unlink()
    ext.unlink()


def ensure_pki(
    pki: Path, server_ips: list[str], server_names: list[str], clients: list[ClientCert]
) -> None:
    """Creates whatever is missing under `pki`; existing files are kept so that restarting
    the cluster keeps its identity (and tokens issued to pods stay valid)."""
    pki.mkdir(parents=True, exist_ok=True)
    # Pods see the host's files through their overlay: keep the keys from them.
    pki.chmod(0o700)
    if not (pki / "ca.crt").exists():
        _openssl("genrsa", "-out", str(pki / "ca.key"), "2048")
        _openssl(
            "req",
            "-x509",
            "-new",
            "-key",
            str(pki / "ca.key"),
            "-subj",
            "/CN=llmjob-devcluster-ca",
            "-days",
            str(VALID_DAYS),
            "-sha256",
            "-out",
            str(pki / "ca.crt"),
        )
    if not (pki / "sa.key").exists():
        _openssl("genrsa", "-out", str(pki / "sa.key"), "2048")
        _openssl("rsa", "-in", str(pki / "sa.key"), "-pubout", "-out", str(pki / "sa.pub"))
    ensure_server_cert(pki, "serving", "llmjob-devcluster", server_ips, server_names)
    for client in clients:
        ensure_client_cert(pki, client)


def ensure_server_cert(
    pki: Path, name: str, common_name: str, ips: list[str], dns_names: list[str]
) -> None:
    """`name`.crt/.key for TLS serving, signed by the cluster's CA (created if missing)."""
    if not (pki / f"{name}.crt").exists():
        alt_names = [f"IP:{ip}" for ip in ips] + [f"DNS:{dns}" for dns in dns_names]
        _sign(
            pki,
            name,
            f"/CN={common_name}",
            "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n"
            f"extendedKeyUsage=serverAuth\nsubjectAltName={','.join(alt_names)}\n",
        )


def ensure_client_cert(pki: Path, client: ClientCert) -> None:
    """A client certificate signed by the cluster's CA (created if missing)."""
    if not (pki / f"{client.name}.crt").exists():
        _sign(
            pki,
            client.name,
            _subject(client.common_name, client.organizations),
            "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n"
            "extendedKeyUsage=clientAuth\n",
        )
