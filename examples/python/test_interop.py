"""The Python console and Python capabilities against the real thing: `psp-totebox serve`
processes (one per archive, each its own key) and an `orchestrator serve` process, set up with the
Rust command-line tools exactly as an operator would.

Run: ``PSP_BIN_DIR=target/debug python -m pytest examples/python`` (CI does, in a venv).
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import threading
import tomllib
from pathlib import Path

import capnp
import pytest

import psp_capability
import psp_identity
import psp_schema
from psp_console import Console, PinMismatch, PspError

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(os.environ.get("PSP_BIN_DIR", ROOT / "target" / "debug"))
STARTUP_SECONDS = 30
GHOST = "ghost-01"

VIEWPORTS = """
[[viewports]]
name = "noi-by-region"
rollup = { labels = ["region"], query = { collection = "statements", aggregates = ["sum(noi) as noi"] } }

[[viewports]]
name = "intercompany"
reconciliation = { collection = "ledger", counterparty = "counterparty", period = "period", currency = "currency", amount = "amount", where = ["account in intercompany_receivable | intercompany_payable"] }
"""


def tool(name: str, *args) -> str:
    """Runs a Rust command-line tool; returns its stdout or fails the test with its stderr."""
    done = subprocess.run([BIN / name, *map(str, args)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"{name} {args}: {done.stderr}"
    return done.stdout.strip()


def serve(name: str, config: Path, log: Path) -> tuple[subprocess.Popen, list[str]]:
    """Starts a server process and returns it with the words of its first line (where it listens)."""
    process = subprocess.Popen(
        [BIN / name, "serve", "--config", config], stdout=subprocess.PIPE, stderr=log.open("w"), text=True
    )
    first: list[str] = []
    reader = threading.Thread(target=lambda: first.append(process.stdout.readline()), daemon=True)
    reader.start()
    reader.join(STARTUP_SECONDS)
    assert first and first[0], f"{name} did not start: {log.read_text()}"
    return process, first[0].split()


class Fleet:
    """Three properties and two subsidiaries, each served by its own process, and an orchestrator."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.processes: list[subprocess.Popen] = []
        tool("psp-totebox", "generate", "--out", folder / "fleet", "--properties", 3, "--subsidiaries", 2, "--records", 400)
        self.owner = tool("orchestrator", "keygen", "--out", folder / "owner.pem")
        self.operator = tool("orchestrator", "keygen", "--out", folder / "operator.pem")
        self.orchestrator = tool("orchestrator", "keygen", "--out", folder / "orchestrator.pem")
        manifest = tomllib.loads((folder / "fleet" / "manifest.toml").read_text())
        fleet = []
        self.ids = []
        for archive in manifest["archives"]:
            config = folder / "fleet" / archive["config"]
            tool("psp-totebox", "keygen", "--out", config.with_name("identity.pem"))
            with config.open("a") as f:
                f.write(
                    f'\n[server]\nlisten = "127.0.0.1:0"\nidentity = "identity.pem"\n'
                    f'paired = ["{self.orchestrator}"]\ntrusted_roots = ["{self.owner}"]\n'
                )
            process, words = serve("psp-totebox", config, folder / f"{archive['id']}.log")
            self.processes.append(process)
            labels = ", ".join(f'{k} = "{v}"' for k, v in archive["labels"].items())
            fleet.append(f'[[fleet]]\nid = "{archive["id"]}"\naddress = "{words[1]}"\nkey = "{words[3]}"\nlabels = {{ {labels} }}\n')
            self.ids.append(archive["id"])
        # A paired archive whose Totebox is down (nothing listens at its address): strict
        # requests that include it fail whole, best-effort ones report it.
        dead = socket.socket()
        dead.bind(("127.0.0.1", 0))
        fleet.append(f'[[fleet]]\nid = "{GHOST}"\naddress = "127.0.0.1:{dead.getsockname()[1]}"\n'
                     f'key = "{tool("orchestrator", "keygen", "--out", folder / "ghost.pem")}"\n'
                     f'labels = {{ entity = "ghost" }}\n')
        dead.close()
        # A second tenant, metered to two requests a minute.
        self.metered = tool("orchestrator", "keygen", "--out", folder / "metered.pem")
        config = folder / "orchestrator.toml"
        config.write_text(
            'identity = "orchestrator.pem"\nlisten = "127.0.0.1:0"\n'
            + "".join(fleet)
            + f'[[tenants]]\nname = "python"\noperators = ["{self.operator}"]\narchives = {self.ids + [GHOST]!r}\n'.replace("'", '"')
            + f'[[tenants]]\nname = "metered"\noperators = ["{self.metered}"]\narchives = ["prop-01"]\n'
            + 'quotas = { requests_per_minute = 2 }\n'
            + VIEWPORTS
        )
        process, words = serve("orchestrator", config, folder / "orchestrator.log")
        self.processes.append(process)
        self.address = words[3]
        assert words[5] == self.orchestrator
        # The owner grants the operator queries and snapshots on every archive.
        tool(
            "orchestrator", "grant", "--key", folder / "owner.pem", "--holder", self.operator,
            "--archives", ",".join(self.ids + [GHOST]), "--operations", "query,describe,command:snapshot",
            "--out", folder / "operator.cap",
        )
        tool("orchestrator", "grant", "--key", folder / "owner.pem", "--holder", self.metered,
             "--archives", "prop-01", "--operations", "query", "--out", folder / "metered.cap")

    def stop(self):
        for p in self.processes:
            p.kill()
            p.wait()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    f = Fleet(tmp_path_factory.mktemp("psp"))
    yield f
    f.stop()


def run(coroutine):
    """Runs a coroutine inside pycapnp's event loop."""
    return asyncio.run(capnp.run(coroutine))


async def connected(fleet: Fleet, key: str = "operator.pem", pinned: str | None = None) -> Console:
    return await Console.connect(fleet.address, pinned or fleet.orchestrator, str(fleet.folder / key))


NOI = {
    "collection": "statements",
    "shape": {"aggregate": {"aggregates": [{"function": "sum", "field": "noi", "name": "noi"},
                                           {"function": "count", "name": "n"}]}},
}


def test_the_python_console_lists_queries_views_and_commands(fleet):
    async def session():
        console = await connected(fleet)
        try:
            archives = await console.fleet()
            assert [a["id"] for a in archives if a["id"] != GHOST] == fleet.ids
            assert GHOST in [a["id"] for a in archives]
            assert all(a["key"].startswith("ed25519:") for a in archives)

            chain = str(fleet.folder / "operator.cap")
            view = await console.query(chain, NOI, labels={"entity": "property"})
            assert view["complete"], view
            assert [o["status"] for o in view["outcomes"]] == ["ok"] * 3
            assert view["columns"] == ["noi", "n"]
            assert view["rows"][0][1] == 3 * 24  # 24 monthly statements per property
            assert "." in view["rows"][0][0]  # an exact decimal, not a float

            rollup = await console.view(chain, await console.viewport("noi-by-region"), labels={"entity": "property"})
            assert rollup["kind"] == "table" and rollup["columns"][0] == "region"
            reconciliation = await console.view(chain, await console.viewport("intercompany"), labels={"entity": "subsidiary"})
            assert reconciliation["kind"] == "reconciliation"
            assert len(reconciliation["entries"]) == 24  # one pair of subsidiaries, 24 months

            key = b"python-console-snapshot-0001"
            first = await console.command(chain, "snapshot", key, _snapshot_arguments("from-python"), archives=["sub-01"])
            again = await console.command(chain, "snapshot", key, _snapshot_arguments("from-python"), archives=["sub-01"])
            assert [(r["archive"], r["outcome"]) for r in first] == [("sub-01", "applied")], first
            assert [(r["archive"], r["outcome"]) for r in again] == [("sub-01", "replayed")], again
        finally:
            console.close()

    run(session())


def test_python_request_links_name_only_what_each_request_needs(fleet):
    """The link the Python console delegates per request: the selected archives, the collection
    and its referenced fields, one operation (a command bound to its digest), a short window.
    The owner's grant makes the operator bind commands, so an unbound link would be refused."""
    grant = str(fleet.folder / "operator.cap")
    granted = psp_capability.read_chain((fleet.folder / "operator.cap").read_bytes())
    assert [psp_capability._operation(op) for op in granted[-1].body.scope.operations][-1] == (
        "command", "snapshot", b"", True)

    async def session():
        console = await connected(fleet)
        try:
            query_needs = {"archives": ["prop-01", "prop-02"], "collections": {}, "operation": ("query",)}
            console_module = __import__("psp_console")
            console_module._read(NOI, query_needs["collections"])
            request = psp_capability.read_chain(await console.request_chain(grant, query_needs))[-1]
            link = request.body
            assert bytes(link.holder) == psp_identity.parse_printable(fleet.orchestrator)
            assert psp_capability._archives(request) == {psp_capability.archive_digest(a) for a in ["prop-01", "prop-02"]}
            # An archive listed by its path through a regional orchestrator is named by its id.
            by_path = dict(query_needs, archives=["eu-west/prop-01", "prop-02"])
            through = psp_capability.read_chain(await console.request_chain(grant, by_path))[-1]
            assert psp_capability._archives(through) == {psp_capability.archive_digest(a) for a in ["prop-01", "prop-02"]}
            [only] = link.scope.collections.only
            assert only.name == "statements" and sorted(only.fields.only) == ["noi"]
            assert [psp_capability._operation(op) for op in link.scope.operations] == [("query",)]
            assert link.notAfter - link.notBefore <= 65

            key, arguments = b"python-bound-snapshot-0001", _snapshot_arguments("bound")
            digest = psp_capability.command_digest("snapshot", "", key, arguments)
            command_needs = {"archives": ["sub-01"], "collections": {}, "operation": ("command", "snapshot", digest)}
            link = psp_capability.read_chain(await console.request_chain(grant, command_needs))[-1].body
            assert [psp_capability._operation(op) for op in link.scope.operations] == [
                ("command", "snapshot", digest, False)]
            # Python computes the same digest the Totebox does: the bound command is applied.
            [result] = await console.command(grant, "snapshot", key, arguments, archives=["sub-01"])
            assert (result["archive"], result["outcome"]) == ("sub-01", "applied"), result

            # An unbound link under this grant is refused by the Totebox, whoever signs it.
            operator = psp_identity.load_key(fleet.folder / "operator.pem")
            unbound = psp_capability.delegate(granted, operator, psp_identity.parse_printable(fleet.orchestrator), 60,
                                              archives=["sub-01"], operations=[("command", "snapshot")])
            with pytest.raises(psp_capability.Refused):
                psp_capability.verify(unbound, [psp_identity.parse_printable(fleet.owner)])
            [refused] = await console.command(psp_capability.write_chain(unbound), "snapshot",
                                              b"python-unbound-snapshot-01", _snapshot_arguments("unbound"),
                                              archives=["sub-01"])
            assert (refused["status"], refused["code"]) == ("denied", "capability.widened-scope"), refused
        finally:
            console.close()

    run(session())


def _snapshot_arguments(name: str) -> bytes:
    arguments = psp_schema.totebox.SnapshotArguments.new_message()
    arguments.name = name
    return arguments.to_bytes()


def test_a_wrong_pin_or_an_unknown_operator_is_refused(fleet):
    async def wrong_pin():
        with pytest.raises(PinMismatch):
            await connected(fleet, pinned=fleet.owner)

    run(wrong_pin())
    tool("orchestrator", "keygen", "--out", fleet.folder / "stranger.pem")

    async def stranger():
        console = await connected(fleet, key="stranger.pem")
        try:
            with pytest.raises(PspError) as refused:
                await asyncio.wait_for(console.fleet(), 10)
            assert refused.value.code == "tenant.not-an-operator", refused.value
        finally:
            console.close()

    run(stranger())


def test_python_verifies_chains_the_rust_tools_minted(fleet):
    owner = psp_identity.parse_printable(fleet.owner)
    granted = psp_capability.read_chain((fleet.folder / "operator.cap").read_bytes())
    psp_capability.verify(granted, [owner])
    tool(
        "orchestrator", "delegate", "--chain", fleet.folder / "operator.cap", "--key", fleet.folder / "operator.pem",
        "--holder", fleet.orchestrator, "--archives", "prop-01", "--lifetime", 60, "--out", fleet.folder / "rust.cap",
    )
    delegated = psp_capability.read_chain((fleet.folder / "rust.cap").read_bytes())
    psp_capability.verify(delegated, [owner], presented=True)
    # Like a Totebox: 30 s of skew either side, and a presented link lasts at most 15 minutes.
    last = delegated[-1].body
    psp_capability.verify(delegated, [owner], now=last.notAfter + 29, presented=True)
    with pytest.raises(psp_capability.Refused) as refused:
        psp_capability.verify(delegated, [owner], now=last.notAfter + 30, presented=True)
    assert refused.value.rule == "expired"
    with pytest.raises(psp_capability.Refused) as refused:
        psp_capability.verify(granted, [owner], presented=True)
    assert refused.value.rule == "lifetime-too-long"
    assert bytes(delegated[-1].body.holder) == psp_identity.parse_printable(fleet.orchestrator)

    # Tampering with a Rust-signed body, or trusting another root, is caught.
    tampered = list(delegated)
    body = bytearray(tampered[1].body_bytes)
    body[-1] ^= 1
    tampered[1] = psp_capability.Link(bytes(body), tampered[1].signature, tampered[1].body)
    with pytest.raises(psp_capability.Refused) as refused:
        psp_capability.verify(tampered, [owner])
    assert refused.value.rule == "bad-signature"
    with pytest.raises(psp_capability.Refused) as refused:
        psp_capability.verify(delegated, [psp_identity.parse_printable(fleet.operator)])
    assert refused.value.rule == "untrusted-root"


RFC_LEAVES = ["", "00", "10", "2021", "3031", "40414243", "5051525354555657",
              "606162636465666768696a6b6c6d6e6f"]
RFC_ROOT_8 = "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"


def test_committed_archive_sets_agree_across_languages(fleet):
    """The Merkle commitment of docs/protocol.md, from the Python side: the RFC 6962 reference
    tree head, the documented example, a Rust-minted grant's committed set, and a Python-committed
    request link that the orchestrator proves to each Rust Totebox."""
    leaves = [bytes.fromhex(x) for x in RFC_LEAVES]
    assert psp_capability.merkle_root(leaves).hex() == RFC_ROOT_8
    for n in range(1, 9):
        root = psp_capability.merkle_root(leaves[:n])
        for i in range(n):
            path = psp_capability.inclusion_path(leaves[:n], i)
            assert psp_capability.verify_inclusion(root, n, i, leaves[i], path)
            assert not psp_capability.verify_inclusion(root, n, i, b"other", path)
    # The worked example in docs/protocol.md.
    digests = sorted(psp_capability.archive_digest(f"prop-0{i}") for i in range(1, 6))
    root = psp_capability.merkle_root(digests)
    assert root.hex() == "10ef39b9728b5d6bef82e57a8db3aa87e1ef82d1702710021acfc4c4d17d38f7"
    path = [bytes.fromhex(h) for h in (
        "b62a3bcc0b25a2eb4a7d694cd968fdea5bbdca72544e4332d34d64eb5a753222",
        "036d4265f3e38dfe4ce87879307f023c0891afec025911feead41c80a9b27f4a",
        "95ef78098dde52f6b80b2ec45f1c96c21ba27b9e54feb2ede17b8a0accc50bfa")]
    assert psp_capability.verify_inclusion(root, 5, 2, psp_capability.archive_digest("prop-03"), path)
    assert not psp_capability.verify_inclusion(root, 5, 2, psp_capability.archive_digest("prop-02"), path)

    # `orchestrator grant` committed the operator's six archives; Python checked the members
    # against the signed root when it read the file.
    granted = psp_capability.read_chain((fleet.folder / "operator.cap").read_bytes())
    assert granted[0].body.archives.which() == "committed"
    assert set(granted[0].members) == {psp_capability.archive_digest(a) for a in fleet.ids + [GHOST]}
    with psp_schema.capability.Chain.from_bytes((fleet.folder / "operator.cap").read_bytes()) as read:
        forged = read.as_builder()
    forged.archiveProofs[0].members = b"".join(sorted(granted[0].members[:-1] + [psp_capability.archive_digest("x")]))
    with pytest.raises(psp_capability.Refused) as refused:
        psp_capability.read_chain(forged.to_bytes())
    assert refused.value.rule == "malformed"

    # A Python-committed request link over all five live archives: the orchestrator reads the
    # members, checks them against Python's root, and sends each Totebox only its proof.
    operator = psp_identity.load_key(fleet.folder / "operator.pem")
    orchestrator = psp_identity.parse_printable(fleet.orchestrator)
    committed = psp_capability.delegate(granted, operator, orchestrator, 60, archives=fleet.ids,
                                        operations=[("query",)])
    assert committed[-1].body.archives.which() == "committed"

    async def session():
        console = await connected(fleet)
        try:
            answer = await console.query(psp_capability.write_chain(committed), NOI, archives=fleet.ids)
            # Every Totebox accepted the chain: the properties answer, and the subsidiaries, which
            # have no statements, get as far as the query.
            outcomes = {o["archive"]: (o["status"], o["code"]) for o in answer["outcomes"]}
            for archive, outcome in outcomes.items():
                expected = ("ok", None) if archive.startswith("prop-") else ("denied", "query.unknown-collection")
                assert outcome == expected, outcomes
            # The same link whose members were swapped after signing: the orchestrator refuses it
            # before any Totebox hears of it.
            with psp_schema.capability.Chain.from_bytes(psp_capability.write_chain(committed)) as read:
                tampered = read.as_builder()
            members = committed[-1].members
            tampered.archiveProofs[1].members = b"".join(members[:-1] + [b"\xff" * 32])
            with pytest.raises(psp_capability.Refused):
                psp_capability.read_chain(tampered.to_bytes())

            async def as_sent(grant, needs):  # skip the console's own reading of the chain
                return tampered.to_bytes()

            console.request_chain = as_sent
            with pytest.raises(PspError) as error:
                await console.query(committed, NOI, archives=fleet.ids)
            assert error.value.code == "capability.malformed", error.value
        finally:
            console.close()

    run(session())


def test_rust_accepts_a_python_delegation_and_refuses_a_widened_one(fleet):
    operator = psp_identity.load_key(fleet.folder / "operator.pem")
    orchestrator = psp_identity.parse_printable(fleet.orchestrator)
    granted = psp_capability.read_chain((fleet.folder / "operator.cap").read_bytes())
    narrowed = psp_capability.delegate(granted, operator, orchestrator, 60, archives=["prop-01", "prop-02"], operations=[("query",)])
    widened = psp_capability.delegate(granted, operator, orchestrator, 60, operations=[("query",), ("command", "append")])
    with pytest.raises(psp_capability.Refused):
        psp_capability.verify(widened, [psp_identity.parse_printable(fleet.owner)])

    async def session():
        console = await connected(fleet)
        try:
            accepted = await console.query(psp_capability.write_chain(narrowed), NOI, archives=["prop-01", "prop-02", "prop-03"])
            by_archive = {o["archive"]: (o["status"], o["code"]) for o in accepted["outcomes"]}
            # The Toteboxes verified the Python-signed link and answered; prop-03 is outside it.
            assert by_archive["prop-01"] == ("ok", None) and by_archive["prop-02"] == ("ok", None), by_archive
            assert by_archive["prop-03"] == ("denied", "capability.archive-not-in-scope"), by_archive
            assert accepted["rows"][0][1] == 2 * 24

            refused = await console.query(psp_capability.write_chain(widened), NOI, archives=["prop-01"])
            assert refused["outcomes"] == [{"archive": "prop-01", "status": "denied", "code": "capability.widened-scope"}], refused
            assert not refused["complete"]
        finally:
            console.close()

    run(session())


def test_progress_cancel_and_the_codes_a_console_meets(fleet):
    """The methods not toured above (``FleetQuery.progress`` and ``cancel``), and every code a
    console can be sent with this fleet, read as ``PspError.code`` or as a source's outcome."""
    grant = str(fleet.folder / "operator.cap")
    tool("orchestrator", "grant", "--key", fleet.folder / "owner.pem", "--holder", fleet.orchestrator,
         "--archives", ",".join(fleet.ids), "--operations", "query", "--out", fleet.folder / "direct.cap")

    def rows(collection: str, *fields: str) -> dict:
        return {"collection": collection, "shape": {"rows": list(fields)}}

    async def codes_of(console, query: dict, **selection) -> set:
        view = await console.query(grant, query, **selection)
        return {(o["status"], o["code"]) for o in view["outcomes"]}

    async def code(call) -> str:
        with pytest.raises(PspError) as refused:
            await call
        return refused.value.code

    async def either(console, query: dict) -> str:
        """The code a query is refused with: by the orchestrator for the whole request, or by
        each Totebox (the same code from every one)."""
        try:
            [only] = {c for _, c in await codes_of(console, query, archives=["prop-01", "prop-02"])}
            return only
        except PspError as error:
            return error.code

    async def session():
        closed = socket.socket()
        closed.bind(("127.0.0.1", 0))
        nowhere = f"127.0.0.1:{closed.getsockname()[1]}"
        closed.close()
        with pytest.raises(PspError) as refused:
            await Console.connect(nowhere, fleet.orchestrator, str(fleet.folder / "operator.pem"))
        assert refused.value.code == "transport.unreachable", refused.value

        # Something listens but never speaks TLS: the connect times out, it does not hang.
        silent = socket.socket()
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        try:
            with pytest.raises(PspError) as refused:
                await Console.connect(f"127.0.0.1:{silent.getsockname()[1]}", fleet.orchestrator,
                                      str(fleet.folder / "operator.pem"), timeout=0.5)
            assert refused.value.code == "transport.timeout", refused.value
        finally:
            silent.close()

        console = await connected(fleet)
        try:
            started = await console.start_query(grant, NOI, labels={"entity": "property"})
            answered, total = await started.progress()
            assert total == 3 and 0 <= answered <= 3
            assert (await started.view())["complete"]

            cancelled = await console.start_query(grant, NOI, labels={"entity": "property"})
            await cancelled.cancel()
            view = await cancelled.view()
            assert len(view["outcomes"]) == 3
            assert {o["status"] for o in view["outcomes"]} <= {"ok", "cancelled"}, view
            assert view["complete"] == all(o["status"] == "ok" for o in view["outcomes"])

            assert await code(console.viewport("no-such-viewport")) == "viewport.unknown"
            # A rollup adds up aggregates; over a rows query it cannot be computed.
            rollup = (await console.viewport("noi-by-region")).to_dict()
            rollup["rollup"]["query"]["shape"] = {"rows": ["noi"]}
            assert await code(console.view(grant, rollup, labels={"entity": "property"})) == "viewport.invalid"
            assert await code(console.query(grant, NOI, labels={"entity": "ship"})) == "tenant.nothing-selected"
            assert await code(console.query(grant, NOI, archives=["no-such-archive"])) == "tenant.archive-not-in-tenant"
            # A chain the owner gave the orchestrator directly: not this console's to spend.
            direct = str(fleet.folder / "direct.cap")
            assert await code(console.query(direct, NOI, archives=["prop-01"])) == "tenant.not-your-capability"
            assert await code(console.command(grant, "snapshot", b"short", _snapshot_arguments("x"),
                                              archives=["sub-01"])) == "command.bad-idempotency-key"

            # Refusals by the Toteboxes arrive as each source's outcome, with the same codes.
            props = {"labels": {"entity": "property"}}
            nope = {"collection": "no-such-collection",
                    "shape": {"aggregate": {"aggregates": [{"function": "count", "name": "n"}]}}}
            assert await codes_of(console, nope, **props) == {("denied", "query.unknown-collection")}
            assert await codes_of(console, rows("leases", "tenant"), **props) == {("denied", "policy.field-not-exposed")}
            assert await codes_of(console, rows("leases", "monthly_rent"), **props) == {
                ("denied", "policy.aggregate-only")}
            mismatched = dict(NOI, filter={"compare": {"field": "noi", "op": "eq", "value": {"text": "three"}}})
            assert await codes_of(console, mismatched, **props) == {("denied", "query.type-mismatch")}
            assert await either(console, rows("statements")) == "query.invalid"
            too_many = dict(NOI, filter={"in": {"field": "period", "values": [{"text": str(i)} for i in range(5000)]}})
            assert await either(console, too_many) == "limit.query"

            # A source that is down: reported in best effort, and the whole request fails in strict.
            both = {"archives": ["prop-01", GHOST]}
            view = await console.query(grant, NOI, **both)
            assert not view["complete"]
            assert {o["archive"]: o["status"] for o in view["outcomes"]}["prop-01"] == "ok"
            assert {o["archive"]: o["status"] for o in view["outcomes"]}[GHOST] in ("unreachable", "timedOut")
            assert await code(console.query(grant, NOI, strict=True, **both)) == "fanout.incomplete"

            # Commands refused by the Totebox, each with its code in that archive's outcome.
            async def command_code(key: bytes, name: str) -> str:
                [result] = await console.command(grant, "snapshot", key, _snapshot_arguments(name), archives=["sub-01"])
                assert result["status"] == "denied", result
                return result["code"]

            assert await command_code(b"python-bad-snapshot-name-1", "../escape") == "command.invalid-arguments"
            [taken] = await console.command(grant, "snapshot", b"python-codes-snapshot-01",
                                            _snapshot_arguments("codes"), archives=["sub-01"])
            assert taken["outcome"] == "applied", taken
            assert await command_code(b"python-codes-snapshot-01", "other") == "command.key-reused"
            assert await command_code(b"python-codes-snapshot-02", "codes") == "command.refused"
        finally:
            console.close()

        # The metered tenant: two requests a minute, then `tenant.rate`.
        metered = await connected(fleet, key="metered.pem")
        try:
            chain = str(fleet.folder / "metered.cap")
            refusals = []
            for _ in range(4):
                try:
                    await metered.query(chain, NOI, archives=["prop-01"])
                except PspError as error:
                    refusals.append(error.code)
            assert refusals == ["tenant.rate", "tenant.rate"], refusals
        finally:
            metered.close()

        # A message larger than the orchestrator reads: told `limit.message`, not reset.
        flooding = await connected(fleet)
        try:
            huge = dict(NOI, filter={"in": {"field": "period", "values": [{"text": "x" * 64}] * 300_000}})
            assert await code(flooding.query(grant, huge, archives=["prop-01"])) == "limit.message"
        finally:
            console.close()

    run(session())


def test_codes_are_read_as_the_rust_console_reads_them():
    """``family.rule`` and ``internal`` are the peer's codes; anything else is a transport failure."""
    from psp_console import _code

    assert _code("capability.expired: the window ended") == "capability.expired"
    assert _code("internal: the disk write failed") == "internal"
    assert _code("nodot: message") is None
    assert _code("Error: nope") is None
    assert _code("Internal: capitals are no code") is None
