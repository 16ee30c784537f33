//! A compromised orchestrator: it holds the orchestrator's machine key and every request link a
//! console sends it, and turns them against real Toteboxes directly.
//!
//! The real Rust console connects to an impostor serving the `Orchestrator` interface under the
//! orchestrator's key; the impostor records the chain of each request. With those chains and
//! that key, the attacker tries everything a link might be good for beyond the request it came
//! with: other collections, fields, archives, operations; the bound command again (as is,
//! through links to itself, through keys it makes up, with fresh link ids), with other arguments
//! or a fresh idempotency key. Only what the console asked for works, and the command applies
//! once.

mod support;

use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use orchestrator::console::Options;
use orchestrator::selection::Selector;
use psp_core::query::{Aggregate, AggregateFunction, CompareOp, Filter, Query, Value};
use psp_core::{Chain, Grant, IdentityKey, Operation, PublicKey, Window};
use psp_rpc::client::{CommandSpec, ToteboxClient};
use psp_rpc::limits::{CallError, Limits};
use psp_rpc::runtime::Connection;
use psp_rpc::tls::{self, PairedKeys};
use psp_schema::orchestrator_capnp::orchestrator as interface;
use support::{World, world_of};
use tokio::task::LocalSet;

/// The chains the impostor was sent, in order.
type Captured = Arc<Mutex<Vec<Vec<u8>>>>;

/// Serves the `Orchestrator` interface as the orchestrator's key, lists the world's archives
/// (entity labels as generated), and records the chain of every request before refusing it.
struct Impostor {
    captured: Captured,
    archives: Vec<(String, String)>,
}

impl interface::Server for Impostor {
    async fn fleet(
        self: Rc<Self>,
        _: interface::FleetParams,
        mut results: interface::FleetResults,
    ) -> Result<(), capnp::Error> {
        let mut list = results.get().init_archives(self.archives.len() as u32);
        for (i, (id, entity)) in self.archives.iter().enumerate() {
            let mut a = list.reborrow().get(i as u32);
            a.set_id(id);
            let mut label = a.init_labels(1).get(0);
            label.set_key("entity");
            label.set_value(entity);
        }
        Ok(())
    }

    async fn query(
        self: Rc<Self>,
        params: interface::QueryParams,
        _: interface::QueryResults,
    ) -> Result<(), capnp::Error> {
        self.record(Chain::from_reader(
            params.get()?.get_request()?.get_chain()?,
        ));
        Err(capnp::Error::failed("internal: captured".into()))
    }

    async fn command(
        self: Rc<Self>,
        params: interface::CommandParams,
        _: interface::CommandResults,
    ) -> Result<(), capnp::Error> {
        self.record(Chain::from_reader(
            params.get()?.get_request()?.get_chain()?,
        ));
        Err(capnp::Error::failed("internal: captured".into()))
    }
}

impl Impostor {
    fn record(&self, chain: Result<Chain, psp_core::CapabilityError>) {
        if let Ok(chain) = chain {
            self.captured.lock().unwrap().push(chain.to_bytes());
        }
    }
}

async fn impostor(w: &World, operator: PublicKey) -> (psp_rpc::runtime::ServerHandle, Captured) {
    let captured: Captured = Arc::default();
    let archives: Vec<(String, String)> = w
        .sources
        .iter()
        .map(|s| {
            let entity = if s.archive.starts_with("sub") {
                "subsidiary"
            } else {
                "property"
            };
            (s.archive.clone(), entity.to_owned())
        })
        .collect();
    let (c, a) = (captured.clone(), archives);
    let bootstrap: psp_rpc::runtime::Bootstrap = Arc::new(move |_: Rc<Connection>| {
        let client: interface::Client = capnp_rpc::new_client(Impostor {
            captured: c.clone(),
            archives: a.clone(),
        });
        client.client
    });
    let tls = tls::server_config(&w.orchestrator, PairedKeys::new([operator])).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let handle = psp_rpc::runtime::serve(listener, tls, bootstrap, Limits::default()).unwrap();
    (handle, captured)
}

fn noi_by_period() -> Query {
    Query::aggregate(
        "statements",
        ["period"],
        [Aggregate::of(AggregateFunction::Sum, "noi")],
    )
}

fn append() -> CommandSpec {
    CommandSpec {
        name: "append".into(),
        collection: "ledger".into(),
        idempotency_key: b"clerk-2026-12-append-0001".to_vec(),
        arguments: support::ledger_record(8_888_888, "external", 4_200),
    }
}

/// The attacker: the orchestrator's key, talking to a Totebox directly.
struct Attacker<'w> {
    w: &'w World,
}

impl Attacker<'_> {
    async fn client(&self, archive: &str) -> ToteboxClient {
        let source = self
            .w
            .sources
            .iter()
            .find(|s| s.archive == archive)
            .unwrap();
        ToteboxClient::connect(
            source.address,
            &self.w.orchestrator,
            source.key,
            Limits::default(),
        )
        .await
        .unwrap()
    }

    async fn query(&self, archive: &str, chain: &Chain, query: &Query) -> Result<(), CallError> {
        self.client(archive)
            .await
            .query(chain, query)
            .await
            .map(drop)
    }

    async fn command(
        &self,
        archive: &str,
        chain: &Chain,
        command: &CommandSpec,
    ) -> Result<bool, CallError> {
        self.client(archive)
            .await
            .command(chain, command)
            .await
            .map(|a| a.applied)
    }

    /// `chain` extended by the orchestrator to itself: a link it may sign with nothing but what
    /// it holds, with a fresh id each time.
    fn to_itself(&self, chain: &Chain) -> Chain {
        let last = chain.last();
        chain
            .delegate(
                &self.w.orchestrator,
                Grant {
                    holder: self.w.orchestrator.public(),
                    archives: chain.archives().clone(),
                    scope: last.scope.clone(),
                    window: last.window,
                },
            )
            .unwrap()
    }

    /// `chain` passed through a key the attacker just made up and back to itself.
    fn through_made_up_key(&self, chain: &Chain) -> Chain {
        let made_up = IdentityKey::generate().unwrap();
        let last = chain.last();
        let hop = |holder: PublicKey| Grant {
            holder,
            archives: chain.archives().clone(),
            scope: last.scope.clone(),
            window: last.window,
        };
        chain
            .delegate(&self.w.orchestrator, hop(made_up.public()))
            .unwrap()
            .delegate(&made_up, hop(self.w.orchestrator.public()))
            .unwrap()
    }
}

fn refused_by(result: Result<impl std::fmt::Debug, CallError>, rule: &str) {
    match result {
        Err(e) => assert_eq!(e.code, format!("capability.{rule}"), "{e}"),
        Ok(v) => panic!("expected capability.{rule}, got {v:?}"),
    }
}

async fn appended(attacker: &Attacker<'_>, chain: &Chain) -> i64 {
    let count = Query::aggregate("ledger", [], [Aggregate::count()]).filter(Filter::compare(
        "entry",
        CompareOp::Eq,
        Value::Int(8_888_888),
    ));
    let result = attacker
        .client("sub-01")
        .await
        .query(chain, &count)
        .await
        .unwrap();
    match result.finalize(&count).unwrap().rows[0][0] {
        Value::Int(n) => n,
        ref other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn captured_request_links_are_good_for_their_request_only() {
    let w = world_of(2, 2).await;
    let everything = ["prop-01", "prop-02", "sub-01", "sub-02"];
    let grant = support::grant(
        &w,
        &w.operator,
        &everything,
        vec![
            Operation::Query,
            Operation::command("append"),
            Operation::command("seal"),
        ],
    );
    let (server, captured) = impostor(&w, w.operator.public()).await;
    let deadline = Duration::from_secs(5);
    let options = Options {
        deadline: Some(deadline),
        ..Options::default()
    };
    LocalSet::new()
        .run_until(async {
            let console = support::console(server.local_addr(), &w, &w.operator).await;
            let selected = Selector::Ids(vec!["prop-01".into()]);
            let in_flight = console
                .start_query(&selected, &grant, &noi_by_period(), options)
                .unwrap();
            assert!(
                in_flight.report().await.is_err(),
                "the impostor answers nothing"
            );
            let command_to = Selector::Labels([("entity".into(), "subsidiary".into())].into());
            assert!(
                console
                    .command(&command_to, &grant, &append(), options)
                    .await
                    .is_err()
            );
        })
        .await;
    let chains: Vec<Chain> = captured
        .lock()
        .unwrap()
        .iter()
        .map(|b| Chain::from_bytes(b).unwrap())
        .collect();
    let [query_link, command_link] = &chains[..] else {
        panic!("captured {} chains", chains.len())
    };
    let now = psp_core::window::now();
    for link in [query_link, command_link] {
        let last = link.last();
        assert_eq!(last.holder, w.orchestrator.public());
        assert!(
            last.window.not_after() <= now + (deadline.as_secs() + 30 + 2) as i64,
            "a request link ends with its request: {:?}",
            last.window
        );
    }

    LocalSet::new()
        .run_until(attack_with(&w, query_link, command_link, &everything))
        .await;
    server.shutdown(Duration::from_secs(1)).await;
}

async fn attack_with(w: &World, query_link: &Chain, command_link: &Chain, everything: &[&str]) {
    let attacker = Attacker { w };
    // The query it carried works, as asked.
    attacker
        .query("prop-01", query_link, &noi_by_period())
        .await
        .unwrap();
    // Another collection, another field, another archive of the grant, a command: refused.
    let leases = Query::aggregate("leases", [], [Aggregate::count()]);
    refused_by(
        attacker.query("prop-01", query_link, &leases).await,
        "collection-not-in-scope",
    );
    let revenue = Query::aggregate(
        "statements",
        ["period"],
        [Aggregate::of(AggregateFunction::Sum, "revenue")],
    );
    refused_by(
        attacker.query("prop-01", query_link, &revenue).await,
        "field-not-in-scope",
    );
    refused_by(
        attacker
            .query("prop-02", query_link, &noi_by_period())
            .await,
        "archive-not-in-scope",
    );
    refused_by(
        attacker.query("sub-01", query_link, &noi_by_period()).await,
        "archive-not-in-scope",
    );
    refused_by(
        attacker.command("prop-01", query_link, &append()).await,
        "operation-not-in-scope",
    );

    // The command link: the command the console asked for applies once, however it is replayed.
    assert!(
        attacker
            .command("sub-01", command_link, &append())
            .await
            .unwrap()
    );
    assert!(
        !attacker
            .command("sub-01", command_link, &append())
            .await
            .unwrap()
    );
    for _ in 0..3 {
        let rebound = attacker.to_itself(command_link);
        assert!(
            !attacker
                .command("sub-01", &rebound, &append())
                .await
                .unwrap(),
            "a link to itself, with a fresh id, replays"
        );
        let hopped = attacker.through_made_up_key(command_link);
        assert!(
            !attacker
                .command("sub-01", &hopped, &append())
                .await
                .unwrap(),
            "a hop through a made-up key replays"
        );
    }
    // Nothing the console did not ask for: other arguments, a fresh key, another command.
    let mut other_arguments = append();
    other_arguments.arguments = support::ledger_record(8_888_888, "external", 999_999);
    refused_by(
        attacker
            .command("sub-01", command_link, &other_arguments)
            .await,
        "operation-not-in-scope",
    );
    let mut fresh_key = append();
    fresh_key.idempotency_key = b"attacker-chosen-key-000001".to_vec();
    refused_by(
        attacker.command("sub-01", command_link, &fresh_key).await,
        "operation-not-in-scope",
    );
    let seal = CommandSpec {
        name: "seal".into(),
        collection: "ledger".into(),
        idempotency_key: b"attacker-seal-2026-10-0001".to_vec(),
        arguments: Vec::new(),
    };
    refused_by(
        attacker.command("sub-01", command_link, &seal).await,
        "operation-not-in-scope",
    );
    // Only the archives the command went to: the subsidiaries, never a property.
    refused_by(
        attacker.command("prop-01", command_link, &append()).await,
        "archive-not-in-scope",
    );
    let reader = support::chain(w, everything);
    assert_eq!(
        appended(&attacker, &reader).await,
        1,
        "applied exactly once"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unbound_link_from_an_old_console_still_applies_a_command_once() {
    // An old console delegated its whole scope, commands unbound. The attacker binds one append
    // itself and replays it through every path it controls: one namespace, one application.
    let w = world_of(0, 1).await;
    let grant = support::grant(
        &w,
        &w.operator,
        &["sub-01"],
        vec![Operation::Query, Operation::command("append")],
    );
    let last = grant.last().clone();
    let unbound = grant
        .delegate(
            &w.operator,
            Grant {
                holder: w.orchestrator.public(),
                archives: grant.archives().clone(),
                scope: last.scope,
                window: Window::lasting(psp_core::window::now() - 5, 300),
            },
        )
        .unwrap();
    let attacker = Attacker { w: &w };
    let command = append();
    let digest = psp_core::CommandDigest::of(
        &command.name,
        &command.collection,
        &command.idempotency_key,
        &command.arguments,
    );
    let bind = |chain: &Chain, key: &IdentityKey| {
        let last = chain.last();
        chain
            .delegate(
                key,
                Grant {
                    holder: w.orchestrator.public(),
                    archives: chain.archives().clone(),
                    scope: psp_core::Scope {
                        collections: last.scope.collections.clone(),
                        operations: vec![Operation::bound_command("append", digest)],
                    },
                    window: last.window,
                },
            )
            .unwrap()
    };
    let bound = bind(&unbound, &w.orchestrator);
    let tries = [
        unbound.clone(),
        bound.clone(),
        attacker.to_itself(&bound),
        attacker.through_made_up_key(&bound),
        bind(&attacker.through_made_up_key(&unbound), &w.orchestrator),
    ];
    LocalSet::new()
        .run_until(async {
            let mut applied = 0;
            for chain in &tries {
                if attacker.command("sub-01", chain, &command).await.unwrap() {
                    applied += 1;
                }
            }
            assert_eq!(applied, 1, "five tries, one application");
            let reader = support::chain(&w, &["sub-01"]);
            assert_eq!(appended(&attacker, &reader).await, 1);
        })
        .await;
}
