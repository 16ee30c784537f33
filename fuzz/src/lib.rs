//! The fuzz harnesses: each feeds arbitrary bytes to one reader an attacker can reach, the way
//! the product reads them, and checks what must hold whatever the bytes (no panic, no hang, and
//! the invariants each says). The targets in `fuzz_targets/` call these under libFuzzer
//! (`cargo fuzz run <target>`); `tests/replay.rs` replays the seed corpora and every saved
//! crash through them on a plain build, so a fixed crash stays fixed.
//!
//! Each returns whether the input was accepted all the way (a chain verified, a query answered,
//! an answer merged, every frame passed, an archive opened, a config loaded): the replay test
//! checks that some seed of each target is, so the fuzzer starts deep, not at the first check.
//!
//! Fixtures are fixed (keys from fixed seeds, a fixed clock, one generated archive), so the same
//! input always takes the same path.

use std::path::PathBuf;
use std::sync::OnceLock;

use capnp::message::ReaderOptions;
use psp_archive::RecordArchive;
use psp_archive::config::{ArchiveConfig, Loaded};
use psp_core::capability::{Presenter, links_from_reader};
use psp_core::query::Merger;
use psp_core::query::Query;
use psp_core::query::wire::{read_query, read_result};
use psp_core::{ArchiveDigest, Chain, IdentityKey, RowSelector, Verifier};
use psp_rpc::limits::Limits;
use psp_schema::capability_capnp::chain;
use psp_schema::query_capnp::{query, query_result};

pub mod seeds;

/// The clock every harness runs at: 2027-01-15T08:00:00Z, inside the seeds' windows.
pub const NOW: i64 = 1_799_999_999;

/// The machines of the fixture: fixed keys, so seeds signed by them verify.
pub struct Machines {
    /// The archives' owner, the verifier's one trusted root.
    pub owner: IdentityKey,
    /// An operator the owner grants to.
    pub operator: IdentityKey,
    /// The orchestrator, the presenter of every chain.
    pub orchestrator: IdentityKey,
}

/// The fixture's machines.
pub fn machines() -> &'static Machines {
    static MACHINES: OnceLock<Machines> = OnceLock::new();
    MACHINES.get_or_init(|| Machines {
        owner: IdentityKey::from_seed([1; 32]),
        operator: IdentityKey::from_seed([2; 32]),
        orchestrator: IdentityKey::from_seed([3; 32]),
    })
}

/// The archive id of the fixture's Totebox.
pub const ARCHIVE: &str = "prop-01";

/// The product's own limits on a message read from the network.
fn reader_options() -> ReaderOptions {
    Limits::default().reader_options()
}

/// `data` read as one Cap'n Proto message, with the limits the product reads under.
fn message(data: &[u8]) -> Option<capnp::message::Reader<capnp::serialize::OwnedSegments>> {
    capnp::serialize::read_message(&mut &data[..], reader_options()).ok()
}

/// A capability chain, read as a holder does (`Chain::from_reader`: the orchestrator and a
/// console) and verified as a Totebox does (`links_from_reader`, then `check_chain` against the
/// TLS peer and its archive).
pub fn chain_verify(data: &[u8]) -> bool {
    let Some(message) = message(data) else {
        return false;
    };
    let Ok(root) = message.get_root::<chain::Reader<'_>>() else {
        return false;
    };
    let held = Chain::from_reader(root);
    let m = machines();
    let Ok(links) = links_from_reader(root) else {
        return false;
    };
    let verifier = Verifier::new([m.owner.public()]);
    let orchestrator = m.orchestrator.public();
    let archive = ArchiveDigest::of(ARCHIVE);
    let presenter = Presenter {
        peer: &orchestrator,
        archive: &archive,
    };
    let verified = verifier.check_chain(&links, &presenter, NOW);
    // Twice: the second answer comes from the cache, and must be the same.
    let again = verifier.check_chain(&links, &presenter, NOW);
    assert_eq!(
        verified.is_ok(),
        again.is_ok(),
        "the cache changed the verdict"
    );
    let Ok(verified) = verified else {
        return false;
    };
    // An accepted chain starts at the trusted root and ends at the presenter; read whole by a
    // holder (with its member lists), it reaches this archive too.
    assert_eq!(verified.root_issuer(), &m.owner.public());
    if let Ok(held) = &held {
        assert!(
            held.reaches(&archive),
            "accepted for an archive it does not reach"
        );
    }
    true
}

/// The fixture Totebox's archive: one generated property (about 100 records), created once, and
/// its loaded config.
pub fn archive() -> (&'static RecordArchive, &'static Loaded) {
    static FIXTURE: OnceLock<(RecordArchive, Loaded, tempfile::TempDir)> = OnceLock::new();
    let (archive, loaded, _) = FIXTURE.get_or_init(|| {
        let dir = scratch_dir();
        psp_archive::generate::generate(&psp_archive::generate::GenerateOptions {
            out: dir.path().to_owned(),
            seed: 7,
            properties: 1,
            subsidiaries: 0,
            records: 100,
        })
        .expect("the fixture archive");
        let config = dir.path().join(ARCHIVE).join("archive.toml");
        let loaded = ArchiveConfig::load(&config).expect("the fixture's config");
        let archive = RecordArchive::open(loaded.clone()).expect("the fixture archive opens");
        (archive, loaded, dir)
    });
    (archive, loaded)
}

/// A scratch folder under `TMPDIR` (`scripts/fuzz` points it at memory and removes it after).
fn scratch_dir() -> tempfile::TempDir {
    tempfile::tempdir().expect("a scratch folder")
}

/// A query, read as a Totebox reads it, then planned and run inside the fixture archive under
/// its exposure policy, over every row and over a key-restricted selection.
pub fn query_eval(data: &[u8]) -> bool {
    let Some(message) = message(data) else {
        return false;
    };
    let Ok(root) = message.get_root::<query::Reader<'_>>() else {
        return false;
    };
    let Ok(query) = read_query(root) else {
        return false;
    };
    let (archive, _) = archive();
    use psp_core::archive::Archive;
    let Ok(result) = archive.query(&query, &RowSelector::All) else {
        return false;
    };
    // What a Totebox answers always conforms to the query it ran.
    let mut merger = Merger::new(&query, usize::MAX);
    merger
        .add(0, result)
        .expect("the archive's own answer conforms to its query");
    true
}

/// The queries a [`result_merge`] input answers, picked by its first byte.
pub fn merge_queries() -> Vec<Query> {
    seeds::queries()
}

/// A Totebox's answer, read and merged as the orchestrator does: `read_result`, then the merge
/// (which refuses an answer that does not conform to the query), beside an honest answer. A
/// refused answer changes nothing: the merge equals the honest answer's alone.
pub fn result_merge(data: &[u8]) -> bool {
    let Some((&pick, rest)) = data.split_first() else {
        return false;
    };
    // The queries and the fixture's honest answers to them, computed once.
    static HONEST: OnceLock<Vec<(Query, psp_core::query::QueryResult)>> = OnceLock::new();
    let honest = HONEST.get_or_init(|| {
        use psp_core::archive::Archive;
        merge_queries()
            .into_iter()
            .map(|q| {
                let answer = archive()
                    .0
                    .query(&q, &RowSelector::All)
                    .expect("the fixture answers its own queries");
                (q, answer)
            })
            .collect()
    });
    let (query, honest) = &honest[pick as usize % honest.len()];
    let Some(message) = message(rest) else {
        return false;
    };
    let Ok(root) = message.get_root::<query_result::Reader<'_>>() else {
        return false;
    };
    let Ok(answer) = read_result(root) else {
        return false;
    };
    let mut alone = Merger::new(query, 100_000);
    alone.add(1, honest.clone()).expect("an honest answer");
    let mut merged = Merger::new(query, 100_000);
    let refused = merged.add(0, answer).is_err();
    merged
        .add(1, honest.clone())
        .expect("an honest answer after another");
    let (merged, alone) = (merged.finish(), alone.finish());
    if refused {
        assert_eq!(
            merged.table, alone.table,
            "a refused answer changed the merge"
        );
        assert!(merged.parts == 1 && alone.parts == 1);
    }
    !refused
}

/// Bytes a Totebox sends, through the diode guard after our own `Bootstrap` and `open`: the
/// guard either passes a prefix of them unchanged or cuts the connection with a reason.
pub fn diode_frames(data: &[u8]) -> bool {
    use futures::{AsyncReadExt, AsyncWriteExt};
    let m = machines();
    let guard = psp_rpc::diode::DiodeGuard::new(m.orchestrator.public(), 1 << 16);
    let (mut reader, mut writer) = guard.wrap(futures::io::Cursor::new(data), futures::io::sink());
    futures::executor::block_on(async {
        writer
            .write_all(&seeds::our_questions())
            .await
            .expect("a sink takes everything");
        let mut passed = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            match reader.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => passed.extend_from_slice(&chunk[..n]),
            }
        }
        assert!(
            data.starts_with(&passed),
            "the guard changed what it passed"
        );
        if passed.len() < data.len() && guard.violation().is_none() {
            // Held back without a violation: only an incomplete last frame may be.
            assert!(
                !is_whole_frame(&data[passed.len()..]),
                "the guard held back a whole frame without saying why"
            );
        }
        passed.len() == data.len() && guard.violation().is_none()
    })
}

/// Whether `bytes` start with a whole Cap'n Proto frame (segment table and segments): an oracle
/// written apart from the guard's own reading.
fn is_whole_frame(bytes: &[u8]) -> bool {
    let word = |i: usize| {
        bytes
            .get(4 * i..4 * i + 4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as u64)
    };
    let Some(count) = word(0).map(|c| c + 1) else {
        return false;
    };
    let table = (4 + 4 * count).div_ceil(8) * 8;
    let mut body = 0u64;
    for i in 1..=count {
        match word(i as usize) {
            Some(words) => body += words * 8,
            None => return false,
        }
    }
    bytes.len() as u64 >= table + body
}

/// An archive file's bytes, opened as a Totebox opens its archive at start (recovering a torn
/// tail), then queried: a file that opens answers every collection's count.
pub fn archive_open(data: &[u8]) -> bool {
    static SCRATCH: OnceLock<(tempfile::TempDir, Loaded)> = OnceLock::new();
    let (dir, loaded) = SCRATCH.get_or_init(|| {
        let dir = scratch_dir();
        let mut loaded = archive().1.clone();
        loaded.file = dir.path().join("fuzzed.psa");
        loaded.snapshots = dir.path().join("snapshots");
        (dir, loaded)
    });
    let _ = dir;
    if std::fs::write(&loaded.file, data).is_err() {
        return false;
    }
    let Ok(opened) = RecordArchive::open(loaded.clone()) else {
        return false;
    };
    use psp_core::archive::Archive;
    for collection in opened.collections() {
        let count = Query::aggregate(
            collection.name.as_str(),
            [],
            [psp_core::query::Aggregate::count()],
        );
        opened
            .query(&count, &RowSelector::All)
            .expect("an archive that opens counts its records");
    }
    true
}

/// A config file's text: the orchestrator's (first byte even) or a Totebox's archive config (odd),
/// loaded and validated as each binary does at start and on reload.
pub fn config_load(data: &[u8]) -> bool {
    let Some((&pick, rest)) = data.split_first() else {
        return false;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return false;
    };
    if pick % 2 == 0 {
        return orchestrator::config::Config::parse(text).is_ok();
    }
    let Ok(config) = toml::from_str::<ArchiveConfig>(text) else {
        return false;
    };
    let trusted = config.server.as_ref().is_none_or(|s| s.trust().is_ok());
    config.resolve(&PathBuf::from("/nonexistent")).is_ok() && trusted
}
