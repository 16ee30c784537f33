//! Codes a console meets that no other test names, each against a real orchestrator (the table
//! in `docs/protocol.md` points here).

mod support;

use std::time::Duration;

use orchestrator::config::Config;
use orchestrator::console::Console;
use orchestrator::selection::Selector;
use psp_core::query::{Aggregate, Query};
use psp_core::{ArchiveSet, Chain, Grant, IdentityKey, Operation, Scope, Window};
use psp_rpc::limits::Limits;
use support::world;
use tokio::task::LocalSet;

#[tokio::test(flavor = "multi_thread")]
async fn connection_and_selection_codes_are_the_documented_ones() {
    let w = world(2).await;
    let mut text = String::from("identity = \"unused.pem\"\nlisten = \"127.0.0.1:0\"\n");
    for s in &w.sources {
        text.push_str(&format!(
            "[[fleet]]\nid = \"{}\"\naddress = \"{}\"\nkey = \"{}\"\nlabels = {{ entity = \"property\" }}\n",
            s.archive, s.address, s.key
        ));
    }
    text.push_str(&format!(
        "[[tenants]]\nname = \"acme\"\noperators = [\"{}\"]\nselectors = [{{ entity = \"property\" }}]\nquotas = {{ archives_per_query = 1 }}\n",
        w.operator.public()
    ));
    let (server, _) = support::serve(&w, &Config::parse(&text).unwrap()).await;
    let grant = support::grant(
        &w,
        &w.operator,
        &["prop-01", "prop-02"],
        vec![Operation::Query],
    );
    let count = Query::aggregate("statements", [], [Aggregate::count()]);
    LocalSet::new()
        .run_until(async {
            // Nothing listens there.
            let closed = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap();
            let e = Console::connect(
                closed,
                &w.operator,
                w.orchestrator.public(),
                Limits::default(),
            )
            .await
            .err()
            .unwrap();
            assert_eq!(e.code, "transport.unreachable", "{e}");

            // The orchestrator is there, but it is not the key this console pinned.
            let impostor = IdentityKey::generate().unwrap().public();
            let e = Console::connect(
                server.local_addr(),
                &w.operator,
                impostor,
                Limits::default(),
            )
            .await
            .err()
            .unwrap();
            assert_eq!(e.code, "transport.tls", "{e}");

            let console = support::console(server.local_addr(), &w, &w.operator).await;
            let nothing = Selector::Labels([("entity".to_owned(), "ship".to_owned())].into());
            let e = console.query(&nothing, &grant, &count).await.unwrap_err();
            assert_eq!(e.code, "tenant.nothing-selected", "{e}");

            // Two archives, where this tenant may reach one at a time.
            let e = console
                .query(&Selector::All, &grant, &count)
                .await
                .unwrap_err();
            assert_eq!(e.code, "tenant.too-many-archives", "{e}");

            // A grant held by another key: this console cannot pass it on.
            let stranger = IdentityKey::generate().unwrap();
            let theirs = support::grant(&w, &stranger, &["prop-01"], vec![Operation::Query]);
            let one = Selector::Ids(vec!["prop-01".to_owned()]);
            let e = console.query(&one, &theirs, &count).await.unwrap_err();
            assert_eq!(e.code, "capability.wrong-holder", "{e}");

            // A grant that has ended cannot be delegated for this request.
            let ended = Chain::mint(
                &w.owner,
                Grant {
                    holder: w.operator.public(),
                    archives: ArchiveSet::of_ids(["prop-01"]),
                    scope: Scope::everything(vec![Operation::Query]),
                    window: Window::lasting(psp_core::window::now() - 600, 60),
                },
            )
            .unwrap();
            let e = console.query(&one, &ended, &count).await.unwrap_err();
            assert_eq!(e.code, "capability.delegation", "{e}");
        })
        .await;
    server.shutdown(Duration::from_secs(1)).await;
}
