//! A real fleet for the orchestrator's tests: generated property archives, each served by its
//! own Totebox over real TLS on 127.0.0.1, and capability chains for them.

#![allow(dead_code, unreachable_pub)]

use std::path::Path;

use orchestrator::fanout::Source;
use psp_archive::generate::{GenerateOptions, generate};
use psp_archive::serve::RunningTotebox;
use psp_core::{ArchiveSet, Chain, Grant, IdentityKey, Operation, Scope, Window};

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
