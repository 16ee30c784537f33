"""The PSP schemas, loaded straight from the repository's ``schema/`` folder: this client shares
no code with the Rust implementation, only the ``.capnp`` files."""

from __future__ import annotations

import os
from pathlib import Path

import capnp

SCHEMA_DIR = Path(os.environ.get("PSP_SCHEMA_DIR", Path(__file__).resolve().parents[2] / "schema"))

capnp.remove_import_hook()
capability = capnp.load(str(SCHEMA_DIR / "capability.capnp"))
query = capnp.load(str(SCHEMA_DIR / "query.capnp"))
totebox = capnp.load(str(SCHEMA_DIR / "totebox.capnp"))
orchestrator = capnp.load(str(SCHEMA_DIR / "orchestrator.capnp"))

# The signing rule's domain prefix, read from the schema rather than restated here.
SIGNING_DOMAIN: bytes = bytes(capability.signingDomain)
FORMAT_VERSION: int = capability.formatVersion
