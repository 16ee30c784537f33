//! One hostile Totebox in a real fleet, listed first, answering every query with a lie: other
//! columns, rows for groups, wrong kinds and types, sums at the edge of 64 bits, values no reader
//! accepts, answers past its share of the request's memory. Whatever it sends changes only its
//! own outcome: the honest sources' answers merge exactly as if it were absent, the request never
//! fails, and its answer is never taken for the console's fault.

mod support;

use std::sync::Arc;
use std::time::Duration;

use orchestrator::config::Config;
use orchestrator::console::Console;
use orchestrator::fanout::SourceStatus;
use orchestrator::report::{Body, Report};
use orchestrator::selection::Selector;
use orchestrator::viewports::{Kpi, NamedViewport, Viewport};
use psp_core::query::wire::write_result;
use psp_core::query::{
    Aggregate, AggregateFunction, Column, Decimal, Group, Partial, Query, QueryResult, ResultBody,
    Value, ValueType,
};
use psp_core::{Chain, Operation};
use support::hostile::{HostileTotebox, Script};
use support::{World, world};
use tokio::task::LocalSet;

fn noi() -> Query {
    Query::aggregate(
        "statements",
        [],
        [
            Aggregate::of(AggregateFunction::Sum, "noi").named("noi"),
            Aggregate::count().named("n"),
        ],
    )
}

/// The hostile Totebox first, then the honest ones; one tenant over all of them.
fn config(w: &World, hostile: &HostileTotebox, extra: &str) -> Config {
    let mut text = format!(
        "identity = \"unused.pem\"\nlisten = \"127.0.0.1:0\"\n[defaults]\nsource_timeout_ms = 3000\ndeadline_ms = 6000\n{extra}\n"
    );
    text.push_str(&hostile.fleet_toml("entity = \"property\", region = \"north\""));
    for (i, s) in w.sources.iter().enumerate() {
        let region = ["north", "south", "east"][i % 3];
        text.push_str(&format!(
            "[[fleet]]\nid = \"{}\"\naddress = \"{}\"\nkey = \"{}\"\nlabels = {{ entity = \"property\", region = \"{region}\" }}\n",
            s.archive, s.address, s.key
        ));
    }
    text.push_str(&format!(
        "[[tenants]]\nname = \"acme\"\noperators = [\"{}\"]\nselectors = [{{ entity = \"property\" }}]\n",
        w.operator.public()
    ));
    Config::parse(&text).unwrap()
}

/// A script that answers with `result`, whatever was asked.
fn answering(result: QueryResult) -> Script {
    Arc::new(move |_, builder| write_result(&result, builder))
}

fn columns(list: &[(&str, ValueType)]) -> Vec<Column> {
    list.iter()
        .map(|(n, t)| Column {
            name: (*n).into(),
            value_type: *t,
        })
        .collect()
}

fn groups(columns_: Vec<Column>, groups: Vec<Group>) -> QueryResult {
    QueryResult {
        as_of: 1,
        columns: columns_,
        body: ResultBody::Groups(groups),
        suppressed_groups: 0,
        scanned_records: 1,
    }
}

fn noi_group(sum: Value, count: u64, records: u64) -> Group {
    Group {
        key: Vec::new(),
        records,
        aggregates: vec![Partial::Sum { sum, count }, Partial::Count(records)],
    }
}

fn right_columns() -> Vec<Column> {
    columns(&[("noi", ValueType::Decimal), ("n", ValueType::Int)])
}

struct Case {
    name: &'static str,
    script: Script,
    /// The hostile source's expected status word and code.
    expect: (&'static str, &'static str),
}

fn cases() -> Vec<Case> {
    let money = |units: i64| Value::Decimal(Decimal::new(units, 2).unwrap());
    vec![
        Case {
            name: "other columns",
            script: answering(groups(
                columns(&[("stolen", ValueType::Text)]),
                vec![Group {
                    key: vec![],
                    records: 1,
                    aggregates: vec![Partial::Count(1)],
                }],
            )),
            expect: ("rejected", "source.malformed-answer"),
        },
        Case {
            name: "rows to an aggregate query",
            script: answering(QueryResult {
                body: ResultBody::Rows(vec![vec![money(1), Value::Int(1)]]),
                ..groups(right_columns(), vec![])
            }),
            expect: ("rejected", "source.malformed-answer"),
        },
        Case {
            name: "text in a sum",
            script: answering(groups(
                right_columns(),
                vec![noi_group(Value::from("<script>"), 1, 1)],
            )),
            expect: ("rejected", "source.malformed-answer"),
        },
        Case {
            name: "a count where a sum belongs",
            script: answering(groups(
                right_columns(),
                vec![Group {
                    key: vec![],
                    records: 1,
                    aggregates: vec![Partial::Count(1), Partial::Count(1)],
                }],
            )),
            expect: ("rejected", "source.malformed-answer"),
        },
        Case {
            name: "a group key for a query without group-by",
            script: answering(groups(
                right_columns(),
                vec![Group {
                    key: vec![Value::from("x")],
                    ..noi_group(money(1), 1, 1)
                }],
            )),
            expect: ("rejected", "source.malformed-answer"),
        },
        Case {
            name: "a value no reader accepts (decimal scale 200)",
            script: Arc::new(move |_, mut b| {
                write_result(
                    &groups(right_columns(), vec![noi_group(money(1), 1, 1)]),
                    b.reborrow(),
                );
                let body = b.get_body();
                if let Ok(psp_schema::query_capnp::query_result::body::Groups(Ok(list))) =
                    body.which()
                {
                    let aggregate = list.get(0).get_aggregates().unwrap().get(0);
                    if let Ok(psp_schema::query_capnp::partial_aggregate::Sum(Ok(sum))) =
                        aggregate.which()
                    {
                        sum.get_sum().unwrap().init_decimal().set_scale(200);
                    }
                }
            }),
            expect: ("rejected", "source.malformed-answer"),
        },
    ]
}

fn status_of(report: &Report, archive: &str) -> (String, String) {
    let o = report
        .outcomes
        .iter()
        .find(|o| o.archive == archive)
        .unwrap();
    match &o.status {
        SourceStatus::Ok => ("ok".into(), String::new()),
        SourceStatus::Rejected { code, .. } => ("rejected".into(), code.clone()),
        SourceStatus::Denied { code, .. } => ("denied".into(), code.clone()),
        other => (format!("{other:?}"), String::new()),
    }
}

async fn connect(w: &World, address: std::net::SocketAddr) -> Console {
    support::console(address, w, &w.operator).await
}

fn grant(w: &World, hostile: &str) -> Chain {
    let mut ids: Vec<&str> = w.sources.iter().map(|s| s.archive.as_str()).collect();
    ids.push(hostile);
    support::grant(w, &w.operator, &ids, vec![Operation::Query])
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hostile_totebox_changes_only_its_own_outcome() {
    let w = world(3).await;
    let honest: Vec<String> = w.sources.iter().map(|s| s.archive.clone()).collect();
    let (baseline_server, _) = {
        let placeholder = HostileTotebox::start(
            "prop-00",
            w.orchestrator.public(),
            answering(groups(right_columns(), vec![])),
        )
        .await;
        support::serve(&w, &config(&w, &placeholder, "")).await
    };
    // What the honest sources alone answer: the view every case must reproduce.
    let (honest_table, honest_rollup, honest_summary) = LocalSet::new()
        .run_until(async {
            let console = connect(&w, baseline_server.local_addr()).await;
            let only_honest = Selector::Ids(honest.clone());
            let grant = grant(&w, "prop-00");
            let table = console.query(&only_honest, &grant, &noi()).await.unwrap();
            let rollup = console.view(&only_honest, &grant, &rollup()).await.unwrap();
            let summary = console
                .view(&only_honest, &grant, &summary())
                .await
                .unwrap();
            (table, rollup, summary)
        })
        .await;
    assert!(honest_table.complete && honest_table.table().unwrap().rows[0][0] != Value::Null);

    for case in cases() {
        let hostile = HostileTotebox::start("prop-00", w.orchestrator.public(), case.script).await;
        let (server, _) = support::serve(&w, &config(&w, &hostile, "")).await;
        LocalSet::new()
            .run_until(async {
                let console = connect(&w, server.local_addr()).await;
                let grant = grant(&w, "prop-00");
                let report = console.query(&Selector::All, &grant, &noi()).await;
                let report =
                    report.unwrap_or_else(|e| panic!("{}: the request failed: {e}", case.name));
                assert_eq!(
                    status_of(&report, "prop-00"),
                    (case.expect.0.to_owned(), case.expect.1.to_owned()),
                    "{}",
                    case.name
                );
                for id in &honest {
                    assert_eq!(status_of(&report, id).0, "ok", "{}: {id}", case.name);
                }
                assert_eq!(
                    report.body, honest_table.body,
                    "{}: the honest answer changed",
                    case.name
                );
                assert!(report.overflows.is_empty());

                // The same through a rollup by region and an executive summary.
                let rollup = console
                    .view(&Selector::All, &grant, &rollup())
                    .await
                    .unwrap();
                assert_eq!(rollup.body, honest_rollup.body, "{}: rollup", case.name);
                assert_eq!(
                    status_of(&rollup, "prop-00").1,
                    case.expect.1,
                    "{}",
                    case.name
                );
                let summary = console
                    .view(&Selector::All, &grant, &summary())
                    .await
                    .unwrap();
                let (Body::Summary(got), Body::Summary(want)) =
                    (&summary.body, &honest_summary.body)
                else {
                    panic!("a summary")
                };
                for (g, w) in got.iter().zip(want) {
                    assert_eq!((&g.name, &g.value), (&w.name, &w.value), "{}", case.name);
                }
            })
            .await;
        server.shutdown(Duration::from_secs(1)).await;
    }
    baseline_server.shutdown(Duration::from_secs(1)).await;
}

fn rollup() -> NamedViewport {
    NamedViewport {
        name: "noi-by-region".into(),
        viewport: Viewport::Rollup {
            query: noi(),
            labels: vec!["region".into()],
        },
    }
}

fn summary() -> NamedViewport {
    let kpi = |name: &str, aggregate: Aggregate| Kpi {
        name: name.into(),
        query: Query::aggregate("statements", [], [aggregate]),
        unit: String::new(),
    };
    NamedViewport {
        name: "summary".into(),
        viewport: Viewport::Summary(vec![
            kpi("noi", Aggregate::of(AggregateFunction::Sum, "noi")),
            kpi("statements", Aggregate::count()),
        ]),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sum_at_the_edge_of_64_bits_marks_its_cell_and_fails_nothing() {
    let w = world(2).await;
    // It claims the largest NOI a decimal can hold: the merged total cannot be represented.
    let edge = answering(groups(
        right_columns(),
        vec![noi_group(
            Value::Decimal(Decimal::new(i64::MAX, 2).unwrap()),
            1,
            1,
        )],
    ));
    let hostile = HostileTotebox::start("prop-00", w.orchestrator.public(), edge).await;
    let (server, _) = support::serve(&w, &config(&w, &hostile, "")).await;
    LocalSet::new()
        .run_until(async {
            let console = connect(&w, server.local_addr()).await;
            let report = console
                .query(&Selector::All, &grant(&w, "prop-00"), &noi())
                .await
                .unwrap();
            assert!(
                report.complete,
                "every source answered: {:?}",
                report.outcomes
            );
            let table = report.table().unwrap();
            assert_eq!(table.rows[0][0], Value::Null, "the total cannot be shown");
            assert_eq!(
                report.overflows,
                vec![psp_core::query::CellRef { row: 0, column: 0 }]
            );
            // The count beside it is exact: 24 statements from each honest property, 1 claimed.
            assert_eq!(table.rows[0][1], Value::Int(2 * 24 + 1));
            let text = orchestrator::render::report(&report, false);
            assert!(text.contains("overflow"), "{text}");
        })
        .await;
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_source_past_its_share_of_the_request_budget_is_set_aside() {
    let w = world(3).await;
    // 256 KiB for 4 sources: 64 KiB each. The hostile one answers about 1 MiB of groups.
    let many_groups = support::hostile::flood("flood".into(), 20_000);
    let hostile = HostileTotebox::start("prop-00", w.orchestrator.public(), many_groups).await;
    let (server, _) = support::serve(&w, &config(&w, &hostile, "max_request_bytes = 262144")).await;
    LocalSet::new()
        .run_until(async {
            let console = connect(&w, server.local_addr()).await;
            let by_period =
                Query::aggregate("statements", ["period"], [Aggregate::count().named("n")]);
            let report = console
                .query(&Selector::All, &grant(&w, "prop-00"), &by_period)
                .await
                .unwrap();
            assert_eq!(
                status_of(&report, "prop-00"),
                ("rejected".into(), "source.answer-too-large".into())
            );
            let table = report.table().unwrap();
            assert_eq!(table.rows.len(), 24, "the honest periods only");
            assert!(table.rows.iter().all(|r| r[1] == Value::Int(3)));
        })
        .await;
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hostile_totebox_cannot_end_a_consoles_connection() {
    use support::hostile::{Behaviour, one_huge_group};
    let w = world(1).await;
    // Two sources, each answering 10 MB: within their share (16 MiB each), but together more
    // than a console reads. Sending that view would end the console's connection.
    let big = |id: &'static str, fill: char| {
        HostileTotebox::start(
            id,
            w.orchestrator.public(),
            one_huge_group(fill, 10_000_000),
        )
    };
    let (a, b) = (big("prop-00", 'p').await, big("prop-98", 'q').await);
    // A third refuses with a 1 MB exception, a fourth answers commands with 1 MB of detail.
    let refusing = HostileTotebox::behaving(
        "prop-97",
        w.orchestrator.public(),
        Behaviour {
            script: one_huge_group('r', 1),
            refusal: Some(format!("query.invalid: {}", "x".repeat(1_000_000))),
            command_detail: 0,
        },
    )
    .await;
    let verbose = HostileTotebox::behaving(
        "prop-96",
        w.orchestrator.public(),
        Behaviour {
            script: one_huge_group('r', 1),
            refusal: None,
            command_detail: 1_000_000,
        },
    )
    .await;
    let mut text = String::from(
        "identity = \"unused.pem\"\nlisten = \"127.0.0.1:0\"\n[defaults]\nsource_timeout_ms = 5000\ndeadline_ms = 8000\nmax_request_bytes = 33554432\n",
    );
    for h in [&a, &b, &refusing, &verbose] {
        text.push_str(&h.fleet_toml("entity = \"property\""));
    }
    let s = &w.sources[0];
    text.push_str(&format!(
        "[[fleet]]\nid = \"{}\"\naddress = \"{}\"\nkey = \"{}\"\nlabels = {{ entity = \"property\" }}\n[[tenants]]\nname = \"acme\"\noperators = [\"{}\"]\nselectors = [{{ entity = \"property\" }}]\n",
        s.archive,
        s.address,
        s.key,
        w.operator.public()
    ));
    let (server, _) = support::serve(&w, &Config::parse(&text).unwrap()).await;
    let ids = ["prop-00", "prop-98", "prop-97", "prop-96", "prop-01"];
    let grant = support::grant(
        &w,
        &w.operator,
        &ids,
        vec![Operation::Query, Operation::command("ping")],
    );
    LocalSet::new()
        .run_until(async {
            let console = connect(&w, server.local_addr()).await;
            let by_period =
                Query::aggregate("statements", ["period"], [Aggregate::count().named("n")]);
            let two_big = Selector::Ids(vec!["prop-00".into(), "prop-98".into()]);
            match console.query(&two_big, &grant, &by_period).await {
                Err(error) => assert_eq!(error.code, "fanout.too-large", "{error}"),
                Ok(report) => panic!(
                    "a view of {} rows was sent",
                    report.table().unwrap().rows.len()
                ),
            }
            // The console's connection is whole: the next calls work.
            assert_eq!(console.fleet().await.unwrap().len(), ids.len());
            let small = console
                .query(
                    &Selector::Ids(vec!["prop-97".into(), "prop-01".into()]),
                    &grant,
                    &by_period,
                )
                .await
                .unwrap();
            // The refusal's text is the Totebox's own, kept short.
            let refusal = &small.outcomes[0].status;
            assert!(
                matches!(refusal, SourceStatus::Denied { message, .. } if message.len() < 2_000),
                "{refusal:?}"
            );
            assert_eq!(small.outcomes[1].status, SourceStatus::Ok);

            // A command's answer is held to the source's share too, and its text kept short.
            let ping = psp_rpc::client::CommandSpec {
                name: "ping".into(),
                collection: String::new(),
                idempotency_key: b"ping-2026-12-01-00001".to_vec(),
                arguments: Vec::new(),
            };
            let options = orchestrator::console::Options::default();
            let outcomes = console
                .command(
                    &Selector::Ids(vec!["prop-96".into()]),
                    &grant,
                    &ping,
                    options,
                )
                .await
                .unwrap();
            let answer = outcomes[0]
                .1
                .as_ref()
                .expect("1 MB is within one source's share");
            assert!(answer.message.len() < 2_000);
        })
        .await;
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_totebox_listed_as_another_archive_cannot_answer_for_it() {
    let w = world(2).await;
    // A Totebox listed as "prop-99" that announces itself as prop-01 and answers like it, under
    // an owner's grant that reaches any archive: counted, it would add prop-01's figures twice.
    let impostor = HostileTotebox::start(
        &w.sources[0].archive,
        w.orchestrator.public(),
        answering(groups(
            right_columns(),
            vec![noi_group(
                Value::Decimal(Decimal::new(100_000_000, 2).unwrap()),
                10,
                10,
            )],
        )),
    )
    .await;
    let listed = impostor.fleet_toml("entity = \"property\"").replacen(
        &format!("id = \"{}\"", impostor.archive),
        "id = \"prop-99\"",
        1,
    );
    let text = format!(
        "identity = \"unused.pem\"\nlisten = \"127.0.0.1:0\"\n[defaults]\nsource_timeout_ms = 3000\ndeadline_ms = 6000\n{}{listed}[[tenants]]\nname = \"acme\"\noperators = [\"{}\"]\narchives = [\"{}\", \"{}\", \"prop-99\"]\n",
        support::fleet_toml(&w),
        w.operator.public(),
        w.sources[0].archive,
        w.sources[1].archive,
    );
    let (server, _) = support::serve(&w, &Config::parse(&text).unwrap()).await;
    let anywhere = Chain::mint(
        &w.owner,
        psp_core::Grant {
            holder: w.operator.public(),
            archives: psp_core::ArchiveSet::Any,
            scope: psp_core::Scope::everything(vec![Operation::Query]),
            window: psp_core::Window::lasting(psp_core::window::now() - 5, 3_600),
        },
    )
    .unwrap();
    LocalSet::new()
        .run_until(async {
            let console = connect(&w, server.local_addr()).await;
            let honest: Vec<String> = w.sources.iter().map(|s| s.archive.clone()).collect();
            let alone = console
                .query(&Selector::Ids(honest), &anywhere, &noi())
                .await
                .unwrap();
            let all = console
                .query(&Selector::All, &anywhere, &noi())
                .await
                .unwrap();
            let misdialed = all
                .outcomes
                .iter()
                .find(|o| o.archive == "prop-99")
                .unwrap();
            match &misdialed.status {
                SourceStatus::Error(why) => {
                    assert!(why.contains("transport.wrong-archive"), "{why}");
                    // The archive it named is not quoted to the tenant.
                    assert!(!why.contains(&w.sources[0].archive), "{why}");
                }
                other => panic!("prop-99 answered as {other:?}"),
            }
            // Its answer is not counted.
            assert_eq!(all.body, alone.body);
        })
        .await;
    server.shutdown(Duration::from_secs(1)).await;
}
