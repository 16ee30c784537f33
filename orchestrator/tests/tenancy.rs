//! Config validation, tenant-scoped selection and the confused-deputy check, decided before any
//! Totebox is called.

use std::collections::BTreeMap;

use orchestrator::config::Config;
use orchestrator::selection::{Refusal, Selector, reach, select};
use psp_core::{ArchiveSet, Chain, Grant, IdentityKey, Operation, PublicKey, Scope, Window};

fn key(seed: u8) -> IdentityKey {
    IdentityKey::from_seed([seed; 32])
}

/// Four archives (keys 11-14); tenant "acme" (operator 21) has prop-01 by id and every north
/// archive by label; tenant "globex" (operator 22) has the subsidiary.
fn text() -> String {
    format!(
        r#"
identity = "orchestrator.pem"
listen = "127.0.0.1:0"

[defaults]
source_timeout_ms = 1000
deadline_ms = 3000

[[fleet]]
id = "prop-01"
address = "127.0.0.1:7401"
key = "{k11}"
labels = {{ region = "south", entity = "property" }}

[[fleet]]
id = "prop-02"
address = "127.0.0.1:7402"
key = "{k12}"
labels = {{ region = "north", entity = "property" }}

[[fleet]]
id = "prop-03"
address = "127.0.0.1:7403"
key = "{k13}"
labels = {{ region = "north", entity = "property" }}

[[fleet]]
id = "sub-01"
address = "127.0.0.1:7404"
key = "{k14}"
labels = {{ region = "north", entity = "subsidiary" }}

[[tenants]]
name = "acme"
operators = ["{k21}"]
archives = ["prop-01"]
selectors = [{{ region = "north", entity = "property" }}]
quotas = {{ concurrent_queries = 2, archives_per_query = 3, requests_per_minute = 60 }}

[[tenants]]
name = "globex"
operators = ["{k22}"]
archives = ["sub-01"]
"#,
        k11 = key(11).public(),
        k12 = key(12).public(),
        k13 = key(13).public(),
        k14 = key(14).public(),
        k21 = key(21).public(),
        k22 = key(22).public(),
    )
}

fn ids(archives: &[&orchestrator::config::FleetArchive]) -> Vec<String> {
    archives.iter().map(|a| a.id.clone()).collect()
}

#[test]
fn a_valid_config_loads_with_its_defaults() {
    let config = Config::parse(&text()).unwrap();
    assert_eq!(config.fleet.len(), 4);
    assert_eq!(config.source_timeout.as_millis(), 1000);
    assert_eq!(config.operator_keys().count(), 2);
    assert_eq!(config.tenant_of(&key(22).public()).unwrap().name, "globex");
}

#[test]
fn every_config_error_names_the_key_to_fix() {
    let good = text();
    let k11 = key(11).public().to_string();
    let k21 = key(21).public().to_string();
    let cases = [
        (
            good.replace("deadline_ms = 3000", "deadline_ms = 500"),
            "defaults.source_timeout_ms",
        ),
        (
            good.replace("id = \"prop-02\"", "id = \"prop-01\""),
            "fleet[1] (\"prop-01\").id: archive id used twice",
        ),
        (
            good.replace("127.0.0.1:7403", "nowhere"),
            "fleet[2] (\"prop-03\").address",
        ),
        (
            good.replace(&key(12).public().to_string(), "ed25519:zz"),
            "fleet[1] (\"prop-02\").key",
        ),
        (
            good.replacen(&key(12).public().to_string(), &k11, 1),
            "the same key as archive \"prop-01\"",
        ),
        (
            good.replace(&k21, &k11),
            "a Totebox can never act as a console",
        ),
        (
            good.replace("archives = [\"sub-01\"]", "archives = [\"sub-99\"]"),
            "tenants[1] (\"globex\").archives[0]: no archive \"sub-99\"",
        ),
        (
            good.replace(
                "selectors = [{ region = \"north\", entity = \"property\" }]",
                "selectors = [{}]",
            ),
            "tenants[0] (\"acme\").selectors[0]",
        ),
        (
            good.replace("partial = \"x\"", "").replace(
                "deadline_ms = 3000",
                "deadline_ms = 3000\npartial = \"sometimes\"",
            ),
            "defaults.partial",
        ),
        (
            good.replace("requests_per_minute = 60", "requests_per_minute = 0"),
            "tenants[0] (\"acme\").quotas",
        ),
        (
            good.replace("listen = ", "colour = \"red\"\nlisten = "),
            "colour",
        ),
        (
            good.replace(&key(22).public().to_string(), &k21),
            "already an operator of tenant \"acme\"",
        ),
    ];
    for (text, says) in cases {
        let error = Config::parse(&text).unwrap_err();
        assert!(error.contains(says), "expected {says:?} in: {error}");
    }
}

#[test]
fn a_tenant_selects_only_its_own_archives() {
    let config = Config::parse(&text()).unwrap();
    let acme = config.tenant_of(&key(21).public()).unwrap();
    assert_eq!(
        ids(&select(&config, acme, &Selector::All).unwrap()),
        ["prop-01", "prop-02", "prop-03"]
    );
    let north = Selector::Labels(BTreeMap::from([("region".to_owned(), "north".to_owned())]));
    assert_eq!(
        ids(&select(&config, acme, &north).unwrap()),
        ["prop-02", "prop-03"],
        "never globex's sub-01"
    );
    let by_id = Selector::Ids(vec!["prop-03".into(), "prop-01".into(), "prop-03".into()]);
    assert_eq!(
        ids(&select(&config, acme, &by_id).unwrap()),
        ["prop-03", "prop-01"]
    );

    // Another tenant's archive and one that does not exist are refused the same way.
    let theirs = select(&config, acme, &Selector::Ids(vec!["sub-01".into()])).unwrap_err();
    let nowhere = select(&config, acme, &Selector::Ids(vec!["sub-77".into()])).unwrap_err();
    assert_eq!(theirs.code(), "tenant.archive-not-in-tenant");
    assert_eq!(
        theirs.to_string().replace("sub-01", "X"),
        nowhere.to_string().replace("sub-77", "X")
    );

    let empty = Selector::Labels(BTreeMap::from([("region".to_owned(), "mars".to_owned())]));
    assert_eq!(
        select(&config, acme, &empty).unwrap_err(),
        Refusal::NothingSelected
    );
}

#[test]
fn the_quota_caps_archives_per_request() {
    let config =
        Config::parse(&text().replace("archives_per_query = 3", "archives_per_query = 2")).unwrap();
    let acme = config.tenant_of(&key(21).public()).unwrap();
    let error = select(&config, acme, &Selector::All).unwrap_err();
    assert_eq!(error, Refusal::TooManyArchives { count: 3, max: 2 });
}

fn delegated(
    root: &IdentityKey,
    operator: &IdentityKey,
    orchestrator: &PublicKey,
    archives: &[&str],
) -> Chain {
    let now = psp_core::window::now();
    let scope = Scope::everything(vec![Operation::Query]);
    Chain::mint(
        root,
        Grant {
            holder: operator.public(),
            archives: ArchiveSet::of_ids(archives.iter().copied()),
            scope: scope.clone(),
            window: Window::lasting(now, 3_600),
        },
    )
    .unwrap()
    .delegate(
        operator,
        Grant {
            holder: *orchestrator,
            archives: ArchiveSet::of_ids(archives.iter().copied()),
            scope,
            window: Window::lasting(now, 300),
        },
    )
    .unwrap()
}

#[test]
fn a_tenant_cannot_spend_another_tenants_capability() {
    let config = Config::parse(&text()).unwrap();
    let orchestrator = key(30).public();
    let (owner, acme_operator, globex_operator) = (key(1), key(21), key(22));
    // Globex's valid chain, intercepted and sent by acme's console.
    let globex_chain = delegated(
        &owner,
        &globex_operator,
        &orchestrator,
        &["sub-01", "prop-02"],
    );
    let acme = config.tenant_of(&acme_operator.public()).unwrap();
    let selected = select(&config, acme, &Selector::All).unwrap();
    let refused = reach(
        &globex_chain,
        &acme_operator.public(),
        &orchestrator,
        selected,
    )
    .unwrap_err();
    assert_eq!(refused.code(), "tenant.not-your-capability");

    // A chain delegated to another orchestrator is refused too.
    let elsewhere = delegated(&owner, &acme_operator, &key(31).public(), &["prop-02"]);
    let selected = select(&config, acme, &Selector::All).unwrap();
    assert_eq!(
        reach(&elsewhere, &acme_operator.public(), &orchestrator, selected)
            .unwrap_err()
            .code(),
        "tenant.wrong-holder"
    );
}

#[test]
fn only_archives_in_both_the_selection_and_the_capability_are_asked() {
    let config = Config::parse(&text()).unwrap();
    let orchestrator = key(30).public();
    let (owner, operator) = (key(1), key(21));
    let chain = delegated(&owner, &operator, &orchestrator, &["prop-02", "sub-01"]);
    let acme = config.tenant_of(&operator.public()).unwrap();
    let reached = reach(
        &chain,
        &operator.public(),
        &orchestrator,
        select(&config, acme, &Selector::All).unwrap(),
    )
    .unwrap();
    assert_eq!(
        ids(&reached.asked),
        ["prop-02"],
        "sub-01 is in the chain but not the tenant's"
    );
    assert_eq!(ids(&reached.outside_capability), ["prop-01", "prop-03"]);
}
