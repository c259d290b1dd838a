"""Certificates and keys for one local control plane, made with the ``openssl`` CLI.

One CA signs the API server's serving certificate and an admin client certificate in
``system:masters`` (the controllers, the scheduler, kwok and KubeRay share it: this is a
throw-away test cluster, not a production one). A separate RSA key signs service-account
tokens, so TokenRequest works and tests can act as an unprivileged ServiceAccount. A real
node's kubelet and kube-proxy get certificates of their own (:func:`client_cert`), in the
groups the API server's Node authorizer and default roles expect of them.
"""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path

SERVER_NAMES = (
    "DNS:localhost",
    "DNS:kubernetes",
    "DNS:kubernetes.default",
    "DNS:kubernetes.default.svc",
    "DNS:kubernetes.default.svc.cluster.local",
    "IP:127.0.0.1",
    # Pods reach the API server through the `kubernetes` Service (the first address of the
    # dev clusters' service range) or at the real node's address.
    "IP:198.19.0.1",
    "IP:198.18.255.1",
)


@dataclasses.dataclass(frozen=True)
class Pki:
    """Paths of the files in a PKI directory (``ca_cert`` is ``<dir>/ca.cert``, ...)."""

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    admin_cert: Path
    admin_key: Path
    sa_key: Path
    sa_pub: Path

    @classmethod
    def at(cls, directory: Path) -> Pki:
        return cls(
            **{
                field.name: directory / field.name.replace("_", ".")
                for field in dataclasses.fields(cls)
            }
        )


def _openssl(*args: str, stdin: bytes | None = None) -> bytes:
    return subprocess.run(["openssl", *args], input=stdin, check=True, capture_output=True).stdout


def _signed_cert(pki: Pki, key: Path, cert: Path, subject: str, extensions: list[str]) -> None:
    _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(key))
    ext_args = [arg for ext in extensions for arg in ("-addext", ext)]
    csr = _openssl("req", "-new", "-key", str(key), "-subj", subject, *ext_args)
    _openssl(
        "x509",
        "-req",
        "-days",
        "365",
        "-copy_extensions",
        "copyall",
        "-CA",
        str(pki.ca_cert),
        "-CAkey",
        str(pki.ca_key),
        "-CAcreateserial",
        "-out",
        str(cert),
        stdin=csr,
    )


def create(directory: Path) -> Pki:
    """Write a fresh CA, serving cert, admin client cert and SA key pair into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    pki = Pki.at(directory)
    _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(pki.ca_key))
    _openssl(
        "req",
        "-x509",
        "-new",
        "-key",
        str(pki.ca_key),
        "-days",
        "365",
        "-subj",
        "/CN=bioengine-dev-ca",
        "-out",
        str(pki.ca_cert),
    )
    _signed_cert(
        pki,
        pki.server_key,
        pki.server_cert,
        "/CN=kube-apiserver",
        ["subjectAltName=" + ",".join(SERVER_NAMES), "extendedKeyUsage=serverAuth"],
    )
    _signed_cert(
        pki,
        pki.admin_key,
        pki.admin_cert,
        "/O=system:masters/CN=bioengine-dev-admin",
        ["extendedKeyUsage=clientAuth"],
    )
    _openssl(
        "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", str(pki.sa_key)
    )
    _openssl("pkey", "-in", str(pki.sa_key), "-pubout", "-out", str(pki.sa_pub))
    for private in (pki.ca_key, pki.server_key, pki.admin_key, pki.sa_key):
        private.chmod(0o600)
    return pki


def client_cert(pki: Pki, name: str, subject: str) -> tuple[Path, Path]:
    """A client certificate ``<name>.cert`` and key ``<name>.key`` beside the CA."""
    directory = pki.ca_cert.parent
    cert, key = directory / f"{name}.cert", directory / f"{name}.key"
    _signed_cert(pki, key, cert, subject, ["extendedKeyUsage=clientAuth"])
    key.chmod(0o600)
    return cert, key
