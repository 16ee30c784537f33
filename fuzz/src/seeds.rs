//! Seed inputs for every harness, built from the fixture the way the tests build theirs: real
//! chains (minted, delegated, listed and committed archive sets, one archive's proof), the
//! queries a console sends, the Totebox's honest answers, the frames a Totebox answers with, the
//! fixture's archive file, and the configs the demo writes. Built in code, not stored, so they
//! follow the schema.

use std::path::Path;

use capnp::message::Builder;
use capnp::traits::HasTypeId;
use capnp_rpc::rpc_capnp::message;
use psp_core::query::wire::{write_query, write_result};
use psp_core::query::{Aggregate, AggregateFunction, CompareOp, Filter, Query, Value};
use psp_core::{ArchiveDigest, ArchiveSet, Chain, Grant, Operation, RowSelector, Scope, Window};
use psp_schema::totebox_capnp::totebox;

use crate::{ARCHIVE, NOW, archive, machines};

/// A message's bytes.
fn words<F: FnOnce(&mut Builder<capnp::message::HeapAllocator>)>(build: F) -> Vec<u8> {
    let mut message = Builder::new_default();
    build(&mut message);
    capnp::serialize::write_message_to_words(&message)
}

/// Queries over the fixture archive's collections: aggregates with groups, filters and order,
/// rows, and one the exposure policy refuses.
pub fn queries() -> Vec<Query> {
    vec![
        Query::aggregate(
            "statements",
            ["period"],
            [
                Aggregate::of(AggregateFunction::Sum, "noi").named("noi"),
                Aggregate::count(),
            ],
        )
        .filter(Filter::Compare {
            field: "period".into(),
            op: CompareOp::Ge,
            value: Value::from("2025-11"),
        })
        .order_by("noi", true),
        Query::aggregate(
            "leases",
            ["tenant_class"],
            [
                Aggregate::of(AggregateFunction::Avg, "monthly_rent"),
                Aggregate::of(AggregateFunction::Min, "sqft"),
                Aggregate::of(AggregateFunction::Max, "sqft"),
            ],
        ),
        Query::rows("opex", ["period", "category", "amount"])
            .filter(Filter::In {
                field: "category".into(),
                values: vec![Value::from("utilities"), Value::from("taxes")],
            })
            .order_by("amount", true)
            .limit(10),
        Query::aggregate("occupancy", [], [Aggregate::count()]),
    ]
}

/// Our own first frames on a Totebox connection: `Bootstrap` (question 0) and `open` on it
/// (question 1), as the guard's writer half sees them.
pub fn our_questions() -> Vec<u8> {
    let mut bytes = words(|m| {
        m.init_root::<message::Builder<'_>>()
            .init_bootstrap()
            .set_question_id(0)
    });
    bytes.extend(words(|m| {
        let mut call = m.init_root::<message::Builder<'_>>().init_call();
        call.set_question_id(1);
        call.set_interface_id(totebox::Client::TYPE_ID);
        call.set_method_id(1);
        call.reborrow()
            .init_target()
            .init_promised_answer()
            .set_question_id(0);
        call.init_params();
    }));
    bytes
}

/// Frames a Totebox may send (answers) and may not (calls, capabilities where none belong).
fn frames() -> Vec<Vec<u8>> {
    let message = |build: &dyn Fn(message::Builder<'_>)| {
        words(|m| build(m.init_root::<message::Builder<'_>>()))
    };
    let identify = message(&|m| {
        let mut ret = m.init_return();
        ret.set_answer_id(0);
        let mut content = ret
            .init_results()
            .init_content()
            .init_as::<totebox::identify_results::Builder<'_>>();
        content.set_archive(ARCHIVE);
        content.set_format_version(1);
        content.set_now(NOW);
    });
    let session = message(&|m| {
        let mut ret = m.init_return();
        ret.set_answer_id(1);
        // The session: one capability the Totebox hosts, in the answer to our `open`.
        ret.init_results()
            .init_cap_table(1)
            .get(0)
            .set_sender_hosted(3);
    });
    vec![
        identify.clone(),
        session.clone(),
        [identify, session].concat(),
        message(&|m| m.init_bootstrap().set_question_id(0)),
        message(&|m| {
            let mut c = m.init_call();
            c.set_question_id(0);
            c.set_interface_id(totebox::Client::TYPE_ID);
            c.reborrow().init_target().set_imported_cap(0);
            c.init_params();
        }),
        message(&|m| {
            let mut f = m.init_finish();
            f.set_question_id(0);
        }),
        message(&|m| {
            let mut r = m.init_resolve();
            r.set_promise_id(3);
            r.init_cap().set_sender_hosted(4);
        }),
        message(&|m| {
            let mut r = m.init_release();
            r.set_id(0);
            r.set_reference_count(1);
        }),
        message(&|m| {
            m.init_abort().set_reason("bye");
        }),
    ]
}

/// A chain from the owner through the operator to the orchestrator for `archives`.
fn chain(archives: ArchiveSet, operations: Vec<Operation>) -> Chain {
    let m = machines();
    let grant = Chain::mint(
        &m.owner,
        Grant {
            holder: m.operator.public(),
            archives: archives.clone(),
            scope: Scope::everything(operations.clone()),
            window: Window::lasting(NOW - 60, 3_600),
        },
    )
    .expect("a grant");
    grant
        .delegate(
            &m.operator,
            Grant {
                holder: m.orchestrator.public(),
                archives,
                scope: Scope::everything(operations),
                window: Window::lasting(NOW - 30, 600),
            },
        )
        .expect("a delegation")
}

/// Chains for the Totebox: as a holder writes them, and with this archive's proofs only.
fn chains() -> Vec<Vec<u8>> {
    let many: Vec<String> = (0..40).map(|i| format!("prop-{i:02}")).collect();
    let sets = [
        ArchiveSet::Any,
        ArchiveSet::of_ids([ARCHIVE]),
        ArchiveSet::of_ids(many.iter().map(String::as_str)),
    ];
    let archive = ArchiveDigest::of(ARCHIVE);
    let mut seeds = Vec::new();
    for set in sets {
        let chain = chain(set, vec![Operation::Query, Operation::command("snapshot")]);
        seeds.push(chain.to_bytes());
        seeds.push(words(|m| chain.write_for(m.init_root(), &archive)));
    }
    // A root alone, granted straight to the orchestrator.
    let m = machines();
    let root = Chain::mint(
        &m.owner,
        Grant {
            holder: m.orchestrator.public(),
            archives: ArchiveSet::of_ids([ARCHIVE]),
            scope: Scope::everything(vec![Operation::Describe]),
            window: Window::lasting(NOW - 60, 60),
        },
    )
    .expect("a root");
    seeds.push(root.to_bytes());
    seeds
}

/// Every harness's seeds, by target name.
pub fn all() -> Vec<(&'static str, Vec<Vec<u8>>)> {
    use psp_core::archive::Archive;
    let (fixture, loaded) = archive();
    let queries = queries();
    let query_seeds = queries
        .iter()
        .map(|q| words(|m| write_query(q, m.init_root())))
        .collect();
    let result_seeds = queries
        .iter()
        .enumerate()
        .map(|(i, q)| {
            let answer = fixture
                .query(q, &RowSelector::All)
                .expect("the fixture answers its own queries");
            let mut seed = vec![i as u8];
            seed.extend(words(|m| write_result(&answer, m.init_root())));
            seed
        })
        .collect();
    let file = std::fs::read(&loaded.file).expect("the fixture's archive file");
    let archive_seeds = vec![
        file.clone(),
        file[..file.len() / 2].to_vec(),
        file[..file.len().min(64)].to_vec(),
    ];
    let orchestrator_config = format!(
        "identity = \"orchestrator.pem\"\nlisten = \"127.0.0.1:7400\"\n[defaults]\nsource_timeout_ms = 5000\n[[fleet]]\nid = \"{ARCHIVE}\"\naddress = \"127.0.0.1:7401\"\nkey = \"{}\"\nlabels = {{ region = \"north\" }}\n[[tenants]]\nname = \"acme\"\noperators = [\"{}\"]\narchives = [\"{ARCHIVE}\"]\n{}",
        machines().owner.public(),
        machines().operator.public(),
        orchestrator::demo::VIEWPORTS
    );
    let archive_config = toml::to_string(&loaded.config).expect("the fixture's config as TOML");
    let config_seeds = vec![
        [&[0u8][..], orchestrator_config.as_bytes()].concat(),
        [&[1u8][..], archive_config.as_bytes()].concat(),
    ];
    vec![
        ("chain_verify", chains()),
        ("query_eval", query_seeds),
        ("result_merge", result_seeds),
        ("diode_frames", frames()),
        ("archive_open", archive_seeds),
        ("config_load", config_seeds),
    ]
}

/// Writes every harness's seeds under `dir/<target>/`.
pub fn write_all(dir: &Path) -> std::io::Result<()> {
    for (target, seeds) in all() {
        let folder = dir.join(target);
        std::fs::create_dir_all(&folder)?;
        for (i, seed) in seeds.iter().enumerate() {
            std::fs::write(folder.join(format!("seed-{i:02}")), seed)?;
        }
    }
    Ok(())
}
