"""Certificates made by the test with openssl: a CA, a server certificate for 127.0.0.1 (also used
as the servers' client certificate towards each other), a client certificate for HemoStat, and a
second CA that signed nothing here (the "wrong CA")."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from shared.redis_server import ServerTLS
from tests.support.services import unavailable

__all__ = ["Certs", "make_certs"]


@dataclass(frozen=True)
class Certs:
    folder: Path
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path

    def server(self, auth_clients: bool = False) -> ServerTLS:
        return ServerTLS(self.server_cert, self.server_key, self.ca, auth_clients=auth_clients)


def _openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True, timeout=60)


def _ca(folder: Path, name: str) -> tuple[Path, Path]:
    cert, key = folder / f"{name}.crt", folder / f"{name}.key"
    _openssl(
        "req", "-x509", "-new", "-nodes", "-days", "2",
        "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-keyout", key, "-out", cert, "-subj", f"/CN=HemoStat test {name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    return cert, key


def _leaf(folder: Path, name: str, ca: tuple[Path, Path], extensions: str) -> tuple[Path, Path]:
    cert, key, csr, ext = (folder / f"{name}.{s}" for s in ("crt", "key", "csr", "ext"))
    _openssl(
        "req", "-new", "-nodes", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-keyout", key, "-out", csr, "-subj", f"/CN={name}",
    )  # fmt: skip
    ext.write_text(extensions)
    _openssl(
        "x509", "-req", "-in", csr, "-CA", ca[0], "-CAkey", ca[1], "-CAcreateserial",
        "-days", "2", "-out", cert, "-extfile", ext,
    )  # fmt: skip
    key.chmod(0o600)
    return cert, key


def make_certs(folder: Path) -> Certs:
    if shutil.which("openssl") is None:
        unavailable("openssl not installed")
    folder.mkdir(parents=True, exist_ok=True)
    ca = _ca(folder, "ca")
    other_ca, _ = _ca(folder, "other-ca")
    server = _leaf(
        folder,
        "server",
        ca,
        "basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n"
        "extendedKeyUsage=serverAuth,clientAuth\n",
    )
    client = _leaf(folder, "client", ca, "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n")
    return Certs(folder, ca[0], server[0], server[1], client[0], client[1], other_ca)
