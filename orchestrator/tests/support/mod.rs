//! A real fleet for the orchestrator's tests: generated property archives, each served by its
//! own Totebox over real TLS on 127.0.0.1, and capability chains for them.

#![allow(dead_code, unreachable_pub)]

pub mod faults;
pub mod flights;
pub mod hostile;
pub mod hostile_region;
pub mod processes;
pub mod slow;
pub mod tree;
pub mod web;

use std::path::Path;

use orchestrator::fanout::Source;
use psp_archive::generate::{GenerateOptions, generate};
use psp_archive::serve::RunningTotebox;
use psp_core::{ArchiveSet, Chain, Grant, IdentityKey, Operation, Scope, Window};

/// An orchestrator config's one tenant, `acme`, whose only operator is `operator` and which
/// names `archives`.
pub fn acme_tenant(operator: impl std::fmt::Display, archives: &[impl AsRef<str>]) -> String {
    let archives: Vec<&str> = archives.iter().map(AsRef::as_ref).collect();
    format!("[[tenants]]\nname = \"acme\"\noperators = [\"{operator}\"]\narchives = {archives:?}\n")
}

pub struct World {
    pub dir: tempfile::TempDir,
    pub toteboxes: Vec<RunningTotebox>,
    pub sources: Vec<Source>,
    pub owner: IdentityKey,
    pub operator: IdentityKey,
    pub orchestrator: IdentityKey,
}

pub async fn world(archives: usize) -> World {
    world_of(archives, 0).await
}

/// A fleet of `properties` property archives and `subsidiaries` subsidiary ledgers.
pub async fn world_of(properties: usize, subsidiaries: usize) -> World {
    let dir = tempfile::tempdir().unwrap();
    let (owner, operator, orchestrator) = (
        IdentityKey::from_seed([1; 32]),
        IdentityKey::from_seed([2; 32]),
        IdentityKey::from_seed([3; 32]),
    );
    let manifest = generate(&GenerateOptions {
        out: dir.path().to_owned(),
        seed: 9,
        properties,
        subsidiaries,
        records: 400,
    })
    .unwrap();
    let mut toteboxes = Vec::new();
    let mut sources = Vec::new();
    for entry in &manifest.archives {
        let config = dir.path().join(&entry.config);
        serve_section(&config, &orchestrator, &owner);
        let running = RunningTotebox::start(&config).await.unwrap();
        sources.push(Source {
            archive: entry.id.clone(),
            address: running.local_addr(),
            key: *running.key(),
            member: Default::default(),
        });
        toteboxes.push(running);
    }
    World {
        dir,
        toteboxes,
        sources,
        owner,
        operator,
        orchestrator,
    }
}

fn serve_section(config: &Path, orchestrator: &IdentityKey, owner: &IdentityKey) {
    let key = IdentityKey::generate().unwrap();
    key.save(&config.with_file_name("identity.pem")).unwrap();
    let mut text = std::fs::read_to_string(config).unwrap();
    text.push_str(&format!(
        "\n[server]\nlisten = \"127.0.0.1:0\"\nidentity = \"identity.pem\"\npaired = [\"{}\"]\ntrusted_roots = [\"{}\"]\n",
        orchestrator.public(),
        owner.public()
    ));
    std::fs::write(config, text).unwrap();
}

pub fn chain(w: &World, archives: &[&str]) -> Chain {
    let now = psp_core::window::now();
    let scope = Scope::everything(vec![Operation::Query]);
    Chain::mint(
        &w.owner,
        Grant {
            holder: w.operator.public(),
            archives: ArchiveSet::of_ids(archives.iter().copied()),
            scope: scope.clone(),
            window: Window::lasting(now - 5, 3_600),
        },
    )
    .unwrap()
    .delegate(
        &w.operator,
        Grant {
            holder: w.orchestrator.public(),
            archives: ArchiveSet::of_ids(archives.iter().copied()),
            scope,
            window: Window::lasting(now - 5, 300),
        },
    )
    .unwrap()
}

/// The `[[fleet]]` entries of a config for `w`, each archive labelled with its generated labels
/// (entity, region, portfolio).
pub fn fleet_toml(w: &World) -> String {
    let manifest: toml::Table =
        toml::from_str(&std::fs::read_to_string(w.dir.path().join("manifest.toml")).unwrap())
            .unwrap();
    let labels: std::collections::HashMap<String, String> = manifest["archives"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            let l = a["labels"].as_table().unwrap();
            let inline: Vec<String> = l
                .iter()
                .map(|(k, v)| format!("{k} = \"{}\"", v.as_str().unwrap()))
                .collect();
            (a["id"].as_str().unwrap().to_owned(), inline.join(", "))
        })
        .collect();
    w.sources
        .iter()
        .map(|s| {
            format!(
                "[[fleet]]\nid = \"{}\"\naddress = \"{}\"\nkey = \"{}\"\nlabels = {{ {} }}\n",
                s.archive, s.address, s.key, labels[&s.archive]
            )
        })
        .collect()
}

/// Serves `config` to consoles on 127.0.0.1 as the world's orchestrator.
pub async fn serve(
    w: &World,
    config: &orchestrator::config::Config,
) -> (
    psp_rpc::runtime::ServerHandle,
    std::sync::Arc<orchestrator::service::OrchestratorService>,
) {
    use psp_rpc::limits::Limits;
    use psp_rpc::tls::{self, PairedKeys};
    let service = orchestrator::service::OrchestratorService::new(
        config.clone(),
        &w.orchestrator,
        Limits::default(),
    );
    let tls = tls::server_config(&w.orchestrator, PairedKeys::new(config.operator_keys())).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let handle = psp_rpc::runtime::serve(
        listener,
        tls,
        service.bootstrap_factory(),
        Limits::default(),
    )
    .unwrap();
    (handle, service)
}

/// A console for `operator` (must run on a `LocalSet`).
pub async fn console(
    address: std::net::SocketAddr,
    w: &World,
    operator: &IdentityKey,
) -> orchestrator::console::Console {
    orchestrator::console::Console::connect(
        address,
        operator,
        w.orchestrator.public(),
        psp_rpc::limits::Limits::default(),
    )
    .await
    .unwrap()
}

/// A chain the owner granted `operator` for `archives` and `operations`, delegated for five
/// minutes to the orchestrator.
pub fn delegated_for(
    w: &World,
    operator: &IdentityKey,
    archives: &[&str],
    operations: Vec<Operation>,
) -> Chain {
    let now = psp_core::window::now();
    let scope = Scope::everything(operations);
    let archives = ArchiveSet::of_ids(archives.iter().copied());
    Chain::mint(
        &w.owner,
        Grant {
            holder: operator.public(),
            archives: archives.clone(),
            scope: scope.clone(),
            window: Window::lasting(now - 5, 3_600),
        },
    )
    .unwrap()
    .delegate(
        operator,
        Grant {
            holder: w.orchestrator.public(),
            archives,
            scope,
            window: Window::lasting(now - 5, 300),
        },
    )
    .unwrap()
}

/// The fields of a generated ledger record, in the order [`ledger_record`] takes them.
pub const LEDGER_FIELDS: [&str; 6] = [
    "entry",
    "period",
    "account",
    "counterparty",
    "currency",
    "amount",
];

/// The serialized arguments of an `append` of one ledger record (`schema/totebox.capnp`).
pub fn ledger_record(entry: i64, counterparty: &str, amount_cents: i64) -> Vec<u8> {
    use psp_core::query::{Decimal, Value};
    let row = vec![
        Value::Int(entry),
        "2026-11".into(),
        "cash".into(),
        counterparty.into(),
        "USD".into(),
        Value::Decimal(Decimal::new(amount_cents, 2).unwrap()),
    ];
    psp_archive::append_arguments(&LEDGER_FIELDS, &[row])
}

/// The owner's grant of `operations` on `archives` to `operator`, for an hour: what an operator
/// holds and a console delegates from, per request.
pub fn grant(
    w: &World,
    operator: &IdentityKey,
    archives: &[&str],
    operations: Vec<Operation>,
) -> Chain {
    Chain::mint(
        &w.owner,
        Grant {
            holder: operator.public(),
            archives: ArchiveSet::of_ids(archives.iter().copied()),
            scope: Scope::everything(operations),
            window: Window::lasting(psp_core::window::now() - 5, 3_600),
        },
    )
    .unwrap()
}
