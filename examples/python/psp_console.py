"""A PSP console in Python, on pycapnp and the standard ``ssl`` module, sharing no code with the
Rust implementation: only ``schema/*.capnp``.

Transport (``docs/protocol.md``): TLS 1.3, both sides present a certificate carrying their Ed25519
identity key, and each side accepts only the keys it was paired with. No certificate authority is
involved: the console checks that the orchestrator's certificate carries the pinned key (OpenSSL
has already checked, during the handshake, that the peer holds that key's private half).

pycapnp runs its RPC over a stream it opens itself, which hides the TLS object whose peer
certificate must be checked. So this console opens the TLS connection with asyncio, checks the
pin before a single Cap'n Proto byte is sent, and relays the RPC stream through a local socket
pair.

Usage (a tour of every method)::

    python psp_console.py --connect 127.0.0.1:7400 --orchestrator-key ed25519:<hex> \\
        --key operator.pem --chain operator.cap
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import ssl
import tempfile
from pathlib import Path

import capnp

import psp_capability
import psp_identity
import psp_schema

SERVER_NAME = "psp.invalid"  # pinning replaces names: the Rust side uses this fixed name too
DEADLINE_SECONDS = 30
CLOCK_SKEW_SECONDS = 30  # the Toteboxes' default allowance: a request link outlives its deadline by this


class PspError(Exception):
    """A refusal from a PSP server: ``code`` is the stable code of ``docs/protocol.md``
    (``tenant.quota``, ``viewport.unknown``, ...), ``message`` is for people."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code, self.message = code, message


class PinMismatch(PspError):
    """The server's certificate does not carry the pinned key (``transport.tls``)."""

    def __init__(self, message: str):
        super().__init__("transport.tls", message)


def _code(text: str) -> str | None:
    """The PSP code at the start of ``text`` (``family.rule``, or ``internal``: a server that
    failed), if there is one."""
    head = text.split(": ", 1)[0]
    if ("." in head or head == "internal") and head and all(c.islower() or c in ".-" for c in head):
        return head
    return None


def psp_error(error: Exception) -> PspError:
    """Reads a Cap'n Proto exception as PSP does: ``<code>: <message>`` in its description, else
    a ``transport.*`` code from its kind (as the Rust client does)."""
    text = getattr(error, "description", None) or str(error)
    text = text.split("remote exception: ", 1)[-1]
    code = _code(text)
    if code is not None:
        return PspError(code, text.split(": ", 1)[1])
    kind = str(getattr(error, "type", "")).upper()
    if "DISCONNECTED" in kind:
        return PspError("transport.disconnected", text)
    if "OVERLOADED" in kind:
        return PspError("transport.overloaded", text)
    if "UNIMPLEMENTED" in kind:
        return PspError("transport.unimplemented", text)
    return PspError("transport.failed", text)


async def _answer(promise):
    """Awaits a call, raising ``PspError`` for a refusal."""
    try:
        return await promise
    except capnp.KjException as error:
        raise psp_error(error) from error


class InFlight:
    """A fleet query or view that is running: its view (waits for it), progress, or cancel."""

    def __init__(self, console: "Console", fleet_query):
        self._console, self._fleet_query = console, fleet_query

    async def view(self) -> dict:
        """The merged view, once every source answered or the deadline passed."""
        return _view(await self._console._call(self._fleet_query.view()))

    async def progress(self) -> tuple[int, int]:
        """Sources answered so far, and sources asked."""
        response = await self._console._call(self._fleet_query.progress())
        return response.answered, response.total

    async def cancel(self) -> None:
        """Stops waiting for sources; the view then reports them ``cancelled``."""
        await self._console._call(self._fleet_query.cancel())


class Console:
    """One operator's connection to an orchestrator. Use ``await Console.connect(...)``."""

    def __init__(self, orchestrator, client, stream, pump, key, orchestrator_key):
        self.orchestrator = orchestrator
        self._client = client
        self._stream = stream
        self._pump = pump
        self.key = key
        self.orchestrator_key = orchestrator_key
        self._listing: list[dict] | None = None
        self._failure: list = []

    async def _call(self, promise):
        """Awaits a call, raising ``PspError`` for a refusal. A connection the server closed
        with a TLS alert is read as that alert says, as the Rust console does: ``access
        denied`` during the handshake means this key is in no tenant."""
        try:
            return await _answer(promise)
        except PspError as error:
            if error.code != "transport.disconnected" or not self._failure:
                raise
            reason = str(self._failure[0])
            if "ACCESS_DENIED" in reason.upper():
                raise PspError("tenant.not-an-operator",
                               f"this orchestrator does not know key {psp_identity.printable(psp_identity.raw_public(self.key))}") from error
            raise PspError("transport.tls", reason) from error

    @classmethod
    async def connect(cls, address: str, orchestrator_key: str, key_file: str, timeout: float = 10):
        """Connects as the operator whose key is in ``key_file`` and pins ``orchestrator_key``."""
        key = psp_identity.load_key(key_file)
        pinned = psp_identity.parse_printable(orchestrator_key)
        host, port = address.rsplit(":", 1)
        context = _tls_context(key)
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, int(port), ssl=context, server_hostname=SERVER_NAME),
                timeout,
            )
        except asyncio.TimeoutError as error:
            raise PspError("transport.timeout", f"{address} did not connect within {timeout} s") from error
        except ssl.SSLError as error:
            raise PspError("transport.tls", f"{address}: the TLS handshake failed: {error}") from error
        except OSError as error:
            raise PspError("transport.unreachable", f"{address}: {error}") from error
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        presented = psp_identity.certificate_key(der)
        if presented != pinned:
            writer.close()
            raise PinMismatch(
                f"{address} presented {psp_identity.printable(presented)}, not the pinned {orchestrator_key}"
            )
        near, far = socket.socketpair()
        failure: list = []
        pump = asyncio.ensure_future(_relay(reader, writer, far, failure))
        stream = await capnp.AsyncIoStream.create_connection(sock=near)
        client = capnp.TwoPartyClient(stream)
        orchestrator = client.bootstrap().cast_as(psp_schema.orchestrator.Orchestrator)
        console = cls(orchestrator, client, stream, pump, key, pinned)
        console._failure = failure
        return console

    def close(self):
        self._stream.close()
        self._pump.cancel()

    # Requests -----------------------------------------------------------------------------
    #
    # Every request method takes the operator's grant (a ``.cap`` path, chain bytes or links) and
    # delegates, for that request alone, a link to the orchestrator that names only what the
    # request needs: its archives, collections and referenced fields, one operation (a command
    # bound to its digest), until the deadline plus clock skew. A compromised orchestrator then
    # holds nothing but what each request needed. A chain already held by the orchestrator is
    # sent as it is.

    async def request_chain(self, grant, needs: dict) -> bytes:
        """The chain to send for one request. ``needs`` has ``archives`` (ids),
        ``collections`` (name -> referenced fields, or None for the grant's fields) and
        ``operation`` (``("query",)`` or ``("command", name, digest)``)."""
        links = _links(grant)
        if bytes(links[-1].body.holder) == self.orchestrator_key:
            return psp_capability.write_chain(links)
        # Only archives the grant reaches (others would widen the link, and every Totebox would
        # refuse it). A large selection is committed by a Merkle root (see delegate).
        # An archive reached through regional orchestrators is listed by its path
        # ("eu-west/prop-0042"); the capability names the archive itself, the path's end.
        granted = psp_capability.reached(links)
        archives = sorted({psp_capability.archive_of(a) for a in needs["archives"]
                           if granted is None
                           or psp_capability.archive_digest(psp_capability.archive_of(a)) in granted})
        delegated = psp_capability.delegate(
            links,
            self.key,
            self.orchestrator_key,
            lifetime=DEADLINE_SECONDS + CLOCK_SKEW_SECONDS,
            archives=archives,
            operations=[needs["operation"]],
            collections=needs["collections"],
        )
        return psp_capability.write_chain(delegated)

    async def _selected(self, archives=None, labels=None, **_) -> list[str]:
        """The archive ids a selection names (from the tenant's listing, for labels or all)."""
        if archives:
            return list(archives)
        if self._listing is None:
            self._listing = await self.fleet()
        chosen = [a["id"] for a in self._listing
                  if all(a["labels"].get(k) == v for k, v in (labels or {}).items())]
        if not chosen:
            # Said here, as the orchestrator would, rather than delegating a link to no archive.
            raise PspError("tenant.nothing-selected", f"no archive of this tenant has the labels {labels}")
        return chosen

    @staticmethod
    def _fill(request, chain: bytes, archives=None, labels=None, strict=False):
        """The ``FleetRequest`` every fan-out call carries."""
        if archives:
            ids = request.archives.init("ids", len(archives))
            for i, a in enumerate(archives):
                ids[i] = a
        elif labels:
            entries = request.archives.init("labels", len(labels))
            for i, (k, v) in enumerate(labels.items()):
                entries[i].key, entries[i].value = k, v
        else:
            request.archives.all = None
        with psp_schema.capability.Chain.from_bytes(chain) as parsed:
            request.chain = parsed
        request.options.deadlineMillis = DEADLINE_SECONDS * 1000
        request.options.partial = "strict" if strict else "bestEffort"

    # Methods --------------------------------------------------------------------------------

    async def fleet(self) -> list[dict]:
        """The tenant's archives with their health."""
        response = await self._call(self.orchestrator.fleet())
        return [
            {
                "id": a.id,
                "health": str(a.health),
                "labels": {l.key: l.value for l in a.labels},
                "key": a.key,
            }
            for a in response.archives
        ]

    async def query(self, grant, query: dict, **selection) -> dict:
        """A fleet query; ``query`` is a ``Query`` as a dict. Pipelined: ``query(...)`` and
        ``fleetQuery.view()`` go out together, one round trip."""
        return await (await self.start_query(grant, query, **selection)).view()

    async def start_query(self, grant, query: dict, **selection) -> InFlight:
        """Sends a fleet query without waiting for it; ``view()``, ``progress()`` and
        ``cancel()`` on the result are pipelined behind it."""
        collections: dict = {}
        _read(query, collections)
        needs = {"archives": await self._selected(**selection), "collections": collections,
                 "operation": ("query",)}
        chain = await self.request_chain(grant, needs)
        request = self.orchestrator.query_request()
        self._fill(request.request, chain, **selection)
        request.query = query
        return InFlight(self, request.send().fleetQuery)

    async def viewport(self, name: str):
        """A viewport the orchestrator's config defines."""
        return (await self._call(self.orchestrator.viewport(name))).viewport

    async def view(self, grant, viewport, **selection) -> dict:
        """Computes a viewport (pipelined like ``query``): one from ``viewport()``, or a
        ``Viewport`` as a dict."""
        needs = {"archives": await self._selected(**selection),
                 "collections": _viewport_collections(viewport if isinstance(viewport, dict) else viewport.to_dict()),
                 "operation": ("query",)}
        chain = await self.request_chain(grant, needs)
        request = self.orchestrator.view_request()
        self._fill(request.request, chain, **selection)
        request.viewport = viewport
        return _view(await self._call(request.send().fleetQuery.view()))

    async def command(self, grant, name: str, key: bytes, arguments: bytes = b"",
                      collection: str = "", **selection) -> list[dict]:
        """Sends a command; one outcome per archive. The request link is bound to this one
        command's digest, so the orchestrator can apply it and nothing else."""
        digest = psp_capability.command_digest(name, collection, key, arguments)
        needs = {"archives": await self._selected(**selection),
                 "collections": {collection: None} if collection else {},
                 "operation": ("command", name, digest)}
        chain = await self.request_chain(grant, needs)
        request = self.orchestrator.command_request()
        self._fill(request.request, chain, **selection)
        command = request.command
        command.name, command.collection = name, collection
        command.idempotencyKey, command.arguments = key, arguments
        response = await self._call(request.send())
        return [
            {
                "archive": r.source.archive,
                "status": r.source.status.which(),
                "code": r.source.status.denied.code if r.source.status.which() == "denied" else None,
                "outcome": str(r.outcome.status) if r.source.status.which() == "ok" else None,
                "message": r.outcome.message,
            }
            for r in response.outcomes
        ]


def _links(grant) -> list:
    """The links of a grant given as links, chain bytes or a ``.cap`` path."""
    if isinstance(grant, list):
        return grant
    if isinstance(grant, (bytes, bytearray)):
        return psp_capability.read_chain(bytes(grant))
    return psp_capability.read_chain(Path(grant).read_bytes())


def _filter_fields(f: dict, out: set) -> None:
    for kind, body in f.items():
        if kind in ("compare", "in"):
            out.add(body["field"])
        elif kind == "isNull":
            out.add(body)
        elif kind in ("and", "or"):
            for part in body:
                _filter_fields(part, out)
        elif kind == "not":
            _filter_fields(body, out)


def _read(query: dict, collections: dict) -> None:
    """Adds the fields ``query`` references (projected, filtered, grouped, aggregated, ordered)
    to its collection's entry in ``collections``."""
    fields = collections.setdefault(query["collection"], set())
    _filter_fields(query.get("filter") or {}, fields)
    shape = query.get("shape") or {}
    outputs = set()
    fields.update(shape.get("rows") or [])
    aggregate = shape.get("aggregate") or {}
    fields.update(aggregate.get("groupBy") or [])
    for a in aggregate.get("aggregates") or []:
        if a.get("field"):
            fields.add(a["field"])
        outputs.add(a.get("name") or f"{a['function']}({a.get('field') or '*'})")
    fields.update(k["column"] for k in query.get("orderBy") or [] if k["column"] not in outputs)


def _viewport_collections(viewport: dict) -> dict:
    """Every collection a viewport (as a dict) reads, with the fields it references."""
    collections: dict = {}
    if "rollup" in viewport:
        _read(viewport["rollup"]["query"], collections)
    elif "reconciliation" in viewport:
        r = viewport["reconciliation"]
        fields = collections.setdefault(r["collection"], set())
        fields.update(r[k] for k in ("counterpartyField", "periodField", "currencyField", "amountField"))
        _filter_fields(r.get("filter") or {}, fields)
    else:
        for kpi in viewport["summary"]["kpis"]:
            _read(kpi["query"], collections)
    return collections


def _tls_context(key) -> ssl.SSLContext:
    """TLS 1.3 with this machine's self-signed certificate; the server's certificate is checked
    against the pin after the handshake, not against a CA."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    cert_pem, key_pem = psp_identity.self_signed_pem(key)
    with tempfile.TemporaryDirectory() as folder:
        cert, private = Path(folder, "cert.pem"), Path(folder, "key.pem")
        cert.write_bytes(cert_pem)
        private.touch(0o600)
        private.write_bytes(key_pem)
        context.load_cert_chain(cert, private)
    return context


async def _relay(reader, writer, far: socket.socket, failure: list):
    """Copies bytes between the TLS stream and the socket pair until either side closes. A TLS
    error (the server's alert, say) goes into ``failure``: the RPC side sees only a closed
    stream, so the console reads the reason from there."""
    local_reader, local_writer = await asyncio.open_connection(sock=far)

    async def copy(src, dst):
        try:
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
        except ssl.SSLError as error:
            failure.append(error)
        finally:
            dst.close()

    try:
        await asyncio.gather(copy(reader, local_writer), copy(local_reader, writer))
    except (ConnectionError, asyncio.CancelledError):
        writer.close()
        local_writer.close()


def _value(v):
    which = v.which()
    if which == "null":
        return None
    if which == "decimal":
        units, scale = v.decimal.units, v.decimal.scale
        sign, magnitude = ("-" if units < 0 else ""), abs(units)
        if scale == 0:
            return f"{sign}{magnitude}"
        return f"{sign}{magnitude // 10**scale}.{magnitude % 10**scale:0{scale}d}"
    return getattr(v, which)


def _view(response) -> dict:
    """A ``View`` as plain Python data."""
    view = response.view
    body = view.body.which()
    out = {
        "complete": view.complete,
        "outcomes": [
            {
                "archive": o.archive,
                "status": o.status.which(),
                "code": (o.status.denied.code if o.status.which() == "denied"
                         else o.status.rejected.code if o.status.which() == "rejected" else None),
            }
            for o in view.outcomes
        ],
        "kind": body,
    }
    if body == "table":
        out["columns"] = [c.name for c in view.body.table.columns]
        out["rows"] = [[_value(v) for v in row.values] for row in view.body.table.rows]
    elif body == "reconciliation":
        out["entries"] = [
            {"left": e.left, "right": e.right, "period": _value(e.period),
             "difference": _value(e.difference), "status": str(e.status)}
            for e in view.body.reconciliation.entries
        ]
    else:
        out["kpis"] = [
            {"name": k.name, "value": _value(k.value), "unit": k.unit,
             "sources": list(k.sources), "missing": list(k.missing)}
            for k in view.body.summary.kpis
        ]
    return out


async def tour(args):
    console = await Console.connect(args.connect, args.orchestrator_key, args.key)
    try:
        for archive in await console.fleet():
            print(f"{archive['id']:10} {archive['health']:8} {archive['labels']}")
        noi = {"collection": "statements",
               "shape": {"aggregate": {"aggregates": [{"function": "sum", "field": "noi", "name": "noi"}]}}}
        print(await console.query(args.chain, noi))
        print(await console.view(args.chain, await console.viewport(args.viewport)))
    finally:
        console.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connect", required=True, help="the orchestrator's host:port")
    parser.add_argument("--orchestrator-key", required=True, help="its key, ed25519:<hex>")
    parser.add_argument("--key", required=True, help="your operator key file (PKCS#8 PEM)")
    parser.add_argument("--chain", required=True, help="the capability file you hold")
    parser.add_argument("--viewport", default="noi-by-region", help="a viewport of the config")
    asyncio.run(capnp.run(tour(parser.parse_args())))


if __name__ == "__main__":
    main()
