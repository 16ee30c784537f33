"""Machine identities in Python: the Ed25519 key files the Rust tools write, printable keys, and
the self-signed certificate a machine presents in pinned-key TLS.

A PSP machine is named by its Ed25519 public key, printed as ``ed25519:`` and 64 hex digits. Key
files are PKCS#8 PEM (what ``psp-totebox keygen`` and ``orchestrator keygen`` write). TLS pins the
key, not a certificate authority: the certificate only carries the key, so this module makes its
own (any self-signed certificate over the same key is as good as the Rust side's).
"""

from __future__ import annotations

import datetime
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.x509.oid import NameOID

PREFIX = "ed25519:"


def load_key(path: str | os.PathLike) -> Ed25519PrivateKey:
    """Reads a PKCS#8 PEM identity key file; refuses anything but Ed25519."""
    key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path}: not an Ed25519 key")
    return key


def raw_public(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    """The 32 raw bytes of a public key (or of a private key's public half)."""
    if isinstance(key, Ed25519PrivateKey):
        key = key.public_key()
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def printable(raw: bytes) -> str:
    """``ed25519:<hex>``, the form configs and logs use."""
    return PREFIX + raw.hex()


def parse_printable(text: str) -> bytes:
    """The raw key of ``ed25519:<hex>``, or ValueError saying what is wrong."""
    if not text.startswith(PREFIX):
        raise ValueError(f"{text!r}: a key is written ed25519:<64 hex digits>")
    raw = bytes.fromhex(text[len(PREFIX) :])
    if len(raw) != 32:
        raise ValueError(f"{text!r}: an Ed25519 key is 32 bytes")
    return raw


def self_signed_pem(key: Ed25519PrivateKey) -> tuple[bytes, bytes]:
    """A self-signed certificate carrying ``key``, and the key, both PEM (for ssl.load_cert_chain)."""
    # The key in hex (a common name holds at most 64 characters, so without the prefix).
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, raw_public(key).hex())])
    serial = int.from_bytes(raw_public(key)[:16], "big") >> 1  # positive, from the key
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(serial or 1)
        .not_valid_before(datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc))
        .not_valid_after(datetime.datetime(9999, 12, 31, tzinfo=datetime.timezone.utc))
        .sign(key, algorithm=None)
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def certificate_key(der: bytes) -> bytes:
    """The raw Ed25519 key a peer's DER certificate carries; ValueError for any other key type."""
    public = x509.load_der_x509_certificate(der).public_key()
    if not isinstance(public, Ed25519PublicKey):
        raise ValueError("the peer's certificate does not carry an Ed25519 key")
    return raw_public(public)
