//! A Totebox that breaks the diode while its session is being set up (a `Bootstrap` upstream
//! instead of answering `identify`), or between requests while its connection is idle, is
//! quarantined like one that breaks it during a call: its outcome says so, and the next request
//! does not dial it again.

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use orchestrator::config::Config;
use orchestrator::fanout::SourceStatus;
use orchestrator::selection::Selector;
use psp_core::Operation;
use psp_core::query::{Aggregate, Query};
use support::hostile::{Misbehaviour, Rogue};
use support::world;
use tokio::task::LocalSet;

#[tokio::test(flavor = "multi_thread")]
async fn a_diode_cut_during_connect_quarantines_the_totebox() {
    let w = world(1).await;
    let rogue = Rogue::start(w.orchestrator.public(), vec![Misbehaviour::Bootstrap]).await;
    let honest = &w.sources[0];
    let text = format!(
        "identity = \"unused.pem\"\nlisten = \"127.0.0.1:0\"\n{}[[fleet]]\nid = \"{}\"\naddress = \"{}\"\nkey = \"{}\"\n[[tenants]]\nname = \"acme\"\noperators = [\"{}\"]\narchives = [\"rogue\", \"{}\"]\n",
        rogue.fleet_toml("rogue", "entity = \"property\""),
        honest.archive,
        honest.address,
        honest.key,
        w.operator.public(),
        honest.archive,
    );
    let (server, service) = support::serve(&w, &Config::parse(&text).unwrap()).await;
    let grant = support::grant(
        &w,
        &w.operator,
        &["rogue", "prop-01"],
        vec![Operation::Query],
    );
    let count = Query::aggregate("statements", [], [Aggregate::count()]);
    LocalSet::new()
        .run_until(async {
            let console = support::console(server.local_addr(), &w, &w.operator).await;
            for attempt in 0..3 {
                let report = console.query(&Selector::All, &grant, &count).await.unwrap();
                let rogue_outcome = &report.outcomes[0];
                assert!(
                    matches!(&rogue_outcome.status, SourceStatus::Quarantined(why) if why.contains("Bootstrap")),
                    "attempt {attempt}: {rogue_outcome:?}"
                );
                assert_eq!(report.outcomes[1].status, SourceStatus::Ok, "the rest carry on");
            }
        })
        .await;
    assert_eq!(
        rogue.accepted.load(Ordering::SeqCst),
        1,
        "dialed once, then quarantined rather than redialed"
    );
    assert_eq!(
        service.fleet().health("rogue").health,
        orchestrator::fanout::Health::Quarantined
    );
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_diode_cut_while_idle_quarantines_the_totebox() {
    let w = world(0).await;
    let rogue = Rogue::start(w.orchestrator.public(), vec![Misbehaviour::LateBootstrap]).await;
    let text = format!(
        "identity = \"unused.pem\"\nlisten = \"127.0.0.1:0\"\n[defaults]\nsource_timeout_ms = 200\ndeadline_ms = 400\n{}[[tenants]]\nname = \"acme\"\noperators = [\"{}\"]\narchives = [\"rogue\"]\n",
        rogue.fleet_toml("rogue", "entity = \"property\""),
        w.operator.public(),
    );
    let (server, _) = support::serve(&w, &Config::parse(&text).unwrap()).await;
    let grant = support::grant(&w, &w.operator, &["rogue"], vec![Operation::Query]);
    let count = Query::aggregate("statements", [], [Aggregate::count()]);
    LocalSet::new()
        .run_until(async {
            let console = support::console(server.local_addr(), &w, &w.operator).await;
            // The background dialer connects it (identify answered); idle in the pool, it
            // sends a Bootstrap upstream and the guard cuts it. The next request finds it so.
            tokio::time::sleep(std::time::Duration::from_millis(800)).await;
            let first = console.query(&Selector::All, &grant, &count).await.unwrap();
            assert!(
                matches!(&first.outcomes[0].status, SourceStatus::Quarantined(why) if why.contains("Bootstrap")),
                "{:?}",
                first.outcomes[0]
            );
        })
        .await;
    assert_eq!(rogue.accepted.load(Ordering::SeqCst), 1, "not redialed");
    server.shutdown(Duration::from_secs(1)).await;
}
