"""``python -m hermes certs DIR NAME...``: a test CA and one certificate + key per node.

What it owns: writing ``ca.pem``/``ca.key`` (kept and reused if DIR already has
them, so nodes can be added later) and ``NAME.pem``/``NAME.key`` for each name,
signed by that CA, valid for both ends of a link (serverAuth + clientAuth).

It uses the ``openssl`` command line when it is on PATH, else the optional
``cryptography`` package; with neither it says so in one line. Keys are
ECDSA P-256 (fast handshakes), files holding keys are mode 0600.

Meant for tests and first setups: a production cluster's CA key belongs
somewhere safer than next to the node keys.
"""
from __future__ import annotations

import datetime
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

__all__ = ["write_certs"]

CA_NAME = "Hermes cluster CA"
DAYS = 825


def write_certs(directory: str | os.PathLike[str], names: list[str]) -> list[Path]:
    """Write the CA (unless present) and ``NAME.pem`` + ``NAME.key`` per name; return the files written."""
    for name in names:
        if not name or "/" in name or name.startswith("."):
            raise ValueError(f"a node name for a certificate file must be a plain file name, not {name!r}")
    if "ca" in names:
        raise ValueError("'ca' is the CA's own file name; choose another node name")
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    backend = _openssl if shutil.which("openssl") else _cryptography
    return backend(out, names)


def _private(path: Path) -> None:
    os.chmod(path, 0o600)


# -- the openssl command line --------------------------------------------------------

def _run(*args: str) -> None:
    result = subprocess.run(["openssl", *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {result.stderr.strip().splitlines()[-1:]}")


def _openssl(out: Path, names: list[str]) -> list[Path]:
    written: list[Path] = []
    ca_pem, ca_key = out / "ca.pem", out / "ca.key"
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    if not (ca_pem.exists() and ca_key.exists()):
        _run("req", "-x509", *ec, "-keyout", str(ca_key), "-out", str(ca_pem), "-days", str(DAYS),
             "-subj", f"/CN={CA_NAME}")
        _private(ca_key)
        written += [ca_pem, ca_key]
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            csr, ext = Path(tmp) / f"{name}.csr", Path(tmp) / f"{name}.ext"
            ext.write_text(f"subjectAltName=DNS:{_dns(name)},DNS:localhost,IP:127.0.0.1\n"
                           "extendedKeyUsage=serverAuth,clientAuth\nbasicConstraints=CA:FALSE\n")
            pem, key = out / f"{name}.pem", out / f"{name}.key"
            _run("req", *ec, "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={name}")
            _private(key)
            _run("x509", "-req", "-in", str(csr), "-CA", str(ca_pem), "-CAkey", str(ca_key),
                 "-set_serial", str(int.from_bytes(os.urandom(8), "big")), "-out", str(pem),
                 "-days", str(DAYS), "-extfile", str(ext))
            written += [pem, key]
    return written


def _dns(name: str) -> str:
    """A DNS-safe form of a node name (``a@host`` -> ``a.host``) for the subjectAltName."""
    return "".join(c if c.isalnum() or c in "-." else "." for c in name).strip(".") or "node"


# -- the cryptography package (optional extra) ----------------------------------------

def _cryptography(out: Path, names: list[str]) -> list[Path]:
    try:
        # an optional extra: mypy may not see it installed
        from cryptography import x509  # type: ignore[import-not-found, unused-ignore]
        from cryptography.hazmat.primitives import (  # type: ignore[import-not-found, unused-ignore]
            hashes, serialization)
        from cryptography.hazmat.primitives.asymmetric import ec  # type: ignore[import-not-found, unused-ignore]
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        raise RuntimeError("need the `openssl` command or the `cryptography` package "
                           "(pip install 'hermes[tls]') to write certificates") from None
    import ipaddress

    now = datetime.datetime.now(datetime.timezone.utc)

    def subject(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def save_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
        _private(path)

    written: list[Path] = []
    ca_pem, ca_key_path = out / "ca.pem", out / "ca.key"
    if ca_pem.exists() and ca_key_path.exists():
        ca_cert = x509.load_pem_x509_certificate(ca_pem.read_bytes())
        ca_key = serialization.load_pem_private_key(ca_key_path.read_bytes(), None)
    else:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_cert = (x509.CertificateBuilder().subject_name(subject(CA_NAME)).issuer_name(subject(CA_NAME))
                   .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=DAYS))
                   .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                   .sign(ca_key, hashes.SHA256()))
        ca_pem.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
        save_key(ca_key, ca_key_path)
        written += [ca_pem, ca_key_path]
    for name in names:
        key = ec.generate_private_key(ec.SECP256R1())
        alt = [x509.DNSName(_dns(name)), x509.DNSName("localhost"),
               x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        cert = (x509.CertificateBuilder().subject_name(subject(name)).issuer_name(ca_cert.subject)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=DAYS))
                .add_extension(x509.SubjectAlternativeName(alt), critical=False)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                      ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .sign(ca_key, hashes.SHA256()))
        pem, key_path = out / f"{name}.pem", out / f"{name}.key"
        pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        save_key(key, key_path)
        written += [pem, key_path]
    return written
