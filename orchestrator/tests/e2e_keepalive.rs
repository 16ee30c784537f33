//! The background dialer pings every pooled Totebox connection every few rounds, so a quiet link
//! never reaches the Totebox's idle limit (where a request could meet the Totebox closing it):
//! with the Totebox's limit at 1 s and nothing asked for three, the first connection is still
//! the one in use.

mod support;

use std::time::Duration;

use orchestrator::selection::Selector;
use psp_core::query::{Aggregate, Query};
use psp_core::{IdentityKey, Operation};
use psp_rpc::limits::Limits;
use support::processes::Fleet;
use tokio::task::LocalSet;

#[tokio::test(flavor = "multi_thread")]
async fn a_quiet_pooled_link_outlives_the_toteboxs_idle_limit() {
    let mut fleet = Fleet::start_with(1, 0, |_| "idle_seconds = 1\n".into());
    // Faithful: it only counts the connections made through it.
    let proxy = fleet.behind_proxy(0);
    let operator = IdentityKey::generate().unwrap();
    let config = fleet.acme_config("redial_ms = 100\n", &operator.public(), &["prop-01"]);
    let orchestrator = fleet.serve(&config);
    let grant = fleet.grant(&operator, &["prop-01"], vec![Operation::Query]);
    let count = Query::aggregate("statements", [], [Aggregate::count()]);
    LocalSet::new()
        .run_until(async {
            let console = orchestrator.connect(&operator, Limits::default()).await;
            let one = Selector::Ids(vec!["prop-01".into()]);
            assert!(console.query(&one, &grant, &count).await.unwrap().complete);
            tokio::time::sleep(Duration::from_secs(3)).await;
            let later = console.query(&one, &grant, &count).await.unwrap();
            assert!(later.complete, "{:?}", later.outcomes);
        })
        .await;
    assert_eq!(
        proxy.accepted(),
        1,
        "the pooled link was closed and redialed"
    );
}
