//! A hostile regional orchestrator, one member of a top orchestrator's fleet beside an honest
//! region (a real process over real Toteboxes) and a region that breaks the diode. Whatever the
//! hostile region answers (a result that does not fit the query, overflow marks on cells that do
//! not exist, an answer larger than its share, outcomes for archives it was not asked, or none
//! for some it was), it only ever changes its own archives' outcomes: the honest region's
//! figures and outcomes are exactly what they are without it.

mod support;

use std::sync::Arc;

use psp_core::IdentityKey;
use psp_core::Operation;
use psp_core::query::wire::write_result;
use psp_core::query::{Column, Decimal, Group, Partial, QueryResult, ResultBody, Value, ValueType};
use serde_json::Value as Json;
use support::hostile::{Misbehaviour, Rogue};
use support::hostile_region::{HostileRegion, RegionScript};
use support::processes::{Fleet, statuses};

const QUERY: [&str; 7] = [
    "query",
    "--collection",
    "statements",
    "--group-by",
    "period",
    "--aggregate",
    "sum(noi) as noi",
];

/// A one-group answer to [`QUERY`] in the shape a region sends it, `groups` periods long.
fn answer(groups: usize, period_bytes: usize) -> QueryResult {
    QueryResult {
        as_of: 1,
        columns: vec![
            Column {
                name: "period".into(),
                value_type: ValueType::Text,
            },
            Column {
                name: "noi".into(),
                value_type: ValueType::Decimal,
            },
        ],
        body: ResultBody::Groups(
            (0..groups)
                .map(|g| Group {
                    key: vec![Value::Text(format!("{g:0period_bytes$}"))],
                    records: 1,
                    aggregates: vec![Partial::Sum {
                        sum: Value::Decimal(Decimal::new(100, 2).unwrap()),
                        count: 1,
                    }],
                })
                .collect(),
        ),
        suppressed_groups: 0,
        scanned_records: 1,
    }
}

/// A script answering `result` (if any) as its one part with overflow `marks`, and
/// `reported` (archive, ok?) outcomes.
fn script(
    result: Option<QueryResult>,
    marks: Vec<(u32, u32)>,
    reported: Vec<(&'static str, bool)>,
) -> RegionScript {
    Arc::new(move |_, _, mut b| {
        if let Some(result) = &result {
            let mut part = b.reborrow().init_parts(1).get(0);
            part.set_answers(3);
            write_result(result, part.reborrow().init_result());
            let mut cells = part.init_overflows(marks.len() as u32);
            for (i, (row, column)) in marks.iter().enumerate() {
                let mut cell = cells.reborrow().get(i as u32);
                cell.set_row(*row);
                cell.set_column(*column);
            }
        }
        let mut list = b.init_outcomes(reported.len() as u32);
        for (i, (archive, ok)) in reported.iter().enumerate() {
            let outcome = orchestrator::fanout::SourceOutcome::without_answer(
                (*archive).to_owned(),
                if *ok {
                    orchestrator::fanout::SourceStatus::Ok
                } else {
                    orchestrator::fanout::SourceStatus::Error("no".into())
                },
                std::time::Duration::ZERO,
            );
            orchestrator::wire::write_outcome(&outcome, list.reborrow().get(i as u32));
        }
    })
}

fn status_of<'a>(outcomes: &'a [(String, String)], name: &str) -> &'a str {
    outcomes
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, s)| s.as_str())
        .unwrap_or_else(|| panic!("{name} missing from {outcomes:?}"))
}

#[test]
fn a_hostile_region_changes_only_its_own_archives_outcomes() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let honest_key = IdentityKey::generate().unwrap();
    let fleet = Fleet::start_paired(2, 0, |_| String::new(), &[honest_key.public()]);
    let top_key = IdentityKey::generate().unwrap();
    top_key.save(&fleet.path("top.pem")).unwrap();
    honest_key.save(&fleet.path("honest.pem")).unwrap();
    std::fs::write(
        fleet.path("honest.toml"),
        format!(
            "identity = \"honest.pem\"\nlisten = \"127.0.0.1:0\"\n{}[[tenants]]\nname = \"upper\"\noperators = [\"{}\"]\narchives = [\"prop-01\", \"prop-02\"]\n",
            fleet.fleet_toml(),
            top_key.public()
        ),
    )
    .unwrap();
    let honest = fleet.serve(&fleet.path("honest.toml"));
    let hostile = runtime.block_on(HostileRegion::start(
        top_key.public(),
        vec!["h-1".into(), "h-2".into(), "h-3".into()],
        script(None, Vec::new(), Vec::new()),
    ));
    let rogue = runtime.block_on(Rogue::start(
        top_key.public(),
        vec![Misbehaviour::Bootstrap],
    ));
    let acme = fleet.operator(
        "acme",
        &["prop-01", "prop-02", "h-1", "h-2", "h-3"],
        vec![Operation::Query],
    );
    let member = |id: &str, address: String, key: String| {
        format!(
            "[[fleet]]\nid = \"{id}\"\nkind = \"orchestrator\"\naddress = \"{address}\"\nkey = \"{key}\"\nlabels = {{ site = \"{id}\" }}\n"
        )
    };
    std::fs::write(
        fleet.path("top.toml"),
        format!(
            // A source's share of a request's answers: 64 KiB.
            "identity = \"top.pem\"\nlisten = \"127.0.0.1:0\"\n[defaults]\nmax_request_bytes = 196608\n{}{}{}[[tenants]]\nname = \"acme\"\noperators = [\"{}\"]\narchives = [\"honest\", \"hostile\", \"rogue\"]\n",
            member("honest", honest.address.clone(), honest.key.clone()),
            member("hostile", hostile.address().to_string(), hostile.key.to_string()),
            member("rogue", rogue.address.to_string(), rogue.key.to_string()),
            acme.key
        ),
    )
    .unwrap();
    let top = fleet.serve(&fleet.path("top.toml"));
    // Until both regions have listed their archives, a console cannot name them (the rogue
    // never does: it is listed as itself).
    top.wait_listed(&fleet, &acme, 5, 1);
    // What the honest region alone gives.
    let alone = top.json(
        &fleet,
        &acme,
        &[QUERY.as_slice(), &["--label", "site=honest"]].concat(),
    );
    assert_eq!(
        statuses(&alone),
        vec![
            ("honest/prop-01".into(), "ok".into()),
            ("honest/prop-02".into(), "ok".into())
        ]
    );
    let everyone = |what: &str| -> (Json, Vec<(String, String)>) {
        let report = top.json(&fleet, &acme, &QUERY);
        let outcomes = statuses(&report);
        assert_eq!(
            report["table"], alone["table"],
            "{what}: the honest figures changed"
        );
        assert_eq!(status_of(&outcomes, "honest/prop-01"), "ok", "{what}");
        assert_eq!(status_of(&outcomes, "honest/prop-02"), "ok", "{what}");
        // The region that broke the diode is cut off, and reported as such.
        assert_eq!(status_of(&outcomes, "rogue"), "quarantined", "{what}");
        (report, outcomes)
    };

    // A result that does not fit the query: its archives are rejected, nothing of it merged.
    let mut bogus = answer(1, 7);
    bogus.columns[0].name = "not-period".into();
    hostile.answer_with(script(
        Some(bogus),
        Vec::new(),
        vec![("h-1", true), ("h-2", true), ("h-3", true)],
    ));
    let (report, outcomes) = everyone("malformed");
    for h in ["hostile/h-1", "hostile/h-2", "hostile/h-3"] {
        assert_eq!(status_of(&outcomes, h), "rejected", "{report}");
    }

    // Overflow marks on a cell that does not exist: rejected the same way.
    hostile.answer_with(script(
        Some(answer(1, 7)),
        vec![(9, 1)],
        vec![("h-1", true), ("h-2", true), ("h-3", true)],
    ));
    let (_, outcomes) = everyone("bad marks");
    assert_eq!(status_of(&outcomes, "hostile/h-2"), "rejected");
    // A mark on a sum that holds a value (it would blank the group's figure for everyone).
    hostile.answer_with(script(
        Some(answer(1, 7)),
        vec![(0, 1)],
        vec![("h-1", true), ("h-2", true), ("h-3", true)],
    ));
    let (_, outcomes) = everyone("a mark on a figure it holds");
    assert_eq!(status_of(&outcomes, "hostile/h-1"), "rejected");

    // Larger than its share of the request's answers: rejected before it is read.
    hostile.answer_with(script(
        Some(answer(4_000, 100)),
        Vec::new(),
        vec![("h-1", true), ("h-2", true), ("h-3", true)],
    ));
    let (report, outcomes) = everyone("too large");
    assert_eq!(status_of(&outcomes, "hostile/h-3"), "rejected", "{report}");
    assert!(
        report.to_string().contains("source.answer-too-large"),
        "{report}"
    );

    // Outcomes for archives it was not asked, twice for one, none for another: only the
    // archives asked are reported, each once; the one it left out is an error.
    hostile.answer_with(script(
        None,
        Vec::new(),
        vec![
            ("h-1", true),
            ("h-1", false),
            ("prop-01", true),
            ("../prop-02", true),
            ("h-2", true),
        ],
    ));
    let (report, outcomes) = everyone("lying outcomes");
    assert_eq!(outcomes.len(), 2 + 3 + 1, "{outcomes:?}");
    assert_eq!(status_of(&outcomes, "hostile/h-1"), "ok");
    assert_eq!(status_of(&outcomes, "hostile/h-2"), "ok");
    assert_eq!(status_of(&outcomes, "hostile/h-3"), "error", "{report}");
    assert_eq!(report["complete"], false);

    // Its honest-looking figures are its own contribution, and the whole answer is still exact.
    hostile.answer_with(script(
        Some(answer(1, 7)),
        Vec::new(),
        vec![("h-1", true), ("h-2", true), ("h-3", true)],
    ));
    let report = top.json(&fleet, &acme, &QUERY);
    let rows = report["table"]["rows"].as_array().unwrap();
    assert_eq!(
        rows.len(),
        alone["table"]["rows"].as_array().unwrap().len() + 1
    );
    assert!(
        rows.iter().any(|r| r[0] == "0000000" && r[1] == "1.00"),
        "{report}"
    );

    // What the region was given to spend: the console's request, delegated by the top to it,
    // for its own archives only; never the honest region's.
    let chains = hostile.chains.lock().unwrap();
    let last = chains.last().unwrap();
    assert_eq!(last.last().issuer, top_key.public());
    assert_eq!(last.last().holder, hostile.key);
    assert_eq!(
        last.archives(),
        &psp_core::ArchiveSet::of_ids(["h-1", "h-2", "h-3"])
    );
    for own in ["h-1", "h-2", "h-3"] {
        assert!(last.reaches(&psp_core::ArchiveDigest::of(own)));
    }
    assert!(!last.reaches(&psp_core::ArchiveDigest::of("prop-01")));
}

#[test]
fn an_archive_whose_field_has_another_type_leaves_its_regions_other_archives_alone() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let region_key = IdentityKey::generate().unwrap();
    let fleet = Fleet::start_paired(2, 0, |_| String::new(), &[region_key.public()]);
    // prop-09 keeps `noi` as an int: its sums are ints, its siblings' decimals.
    let ints: support::hostile::Script = Arc::new(|_, b| {
        let mut result = answer(1, 7);
        result.columns[1].value_type = ValueType::Int;
        if let ResultBody::Groups(groups) = &mut result.body {
            groups[0].key = vec![Value::from("2026-10")];
            groups[0].aggregates[0] = Partial::Sum {
                sum: Value::Int(5),
                count: 1,
            };
        }
        write_result(&result, b);
    });
    let odd = runtime.block_on(support::hostile::HostileTotebox::paired_with(
        "prop-09",
        vec![region_key.public(), fleet.orchestrator.public()],
        support::hostile::Behaviour {
            script: ints,
            refusal: None,
            command_detail: 0,
        },
    ));
    let members = format!(
        "{}{}",
        fleet.fleet_toml(),
        odd.fleet_toml("entity = \"property\"")
    );
    let ids = ["prop-01", "prop-02", "prop-09"];
    let acme = fleet.operator("acme", &ids, vec![Operation::Query]);
    let top_key = IdentityKey::generate().unwrap();
    top_key.save(&fleet.path("top.pem")).unwrap();
    region_key.save(&fleet.path("region.pem")).unwrap();
    let write = |name: &str,
                 identity: &str,
                 fleet_section: &str,
                 operator: &str,
                 archives: &[&str]| {
        std::fs::write(
            fleet.path(name),
            format!(
                "identity = \"{identity}\"\nlisten = \"127.0.0.1:0\"\n{fleet_section}[[tenants]]\nname = \"t\"\noperators = [\"{operator}\"]\narchives = {archives:?}\n"
            ),
        )
        .unwrap();
        fleet.path(name)
    };
    let region = fleet.serve(&write(
        "region.toml",
        "region.pem",
        &members,
        &top_key.public().to_string(),
        &ids,
    ));
    let top = fleet.serve(&write(
        "top.toml",
        "top.pem",
        &format!(
            "[[fleet]]\nid = \"eu\"\nkind = \"orchestrator\"\naddress = \"{}\"\nkey = \"{}\"\n",
            region.address, region.key
        ),
        &acme.key.to_string(),
        &["eu"],
    ));
    let flat = fleet.serve(&write(
        "flat.toml",
        "orchestrator.pem",
        &members,
        &acme.key.to_string(),
        &ids,
    ));
    top.wait_listed(&fleet, &acme, 3, 0);
    let through = top.json(&fleet, &acme, &QUERY);
    let direct = flat.json(&fleet, &acme, &QUERY);
    let mut outcomes = statuses(&through);
    outcomes.sort();
    assert_eq!(
        outcomes,
        vec![
            ("eu/prop-01".to_owned(), "ok".to_owned()),
            ("eu/prop-02".to_owned(), "ok".to_owned()),
            ("eu/prop-09".to_owned(), "ok".to_owned()),
        ],
        "{through}"
    );
    assert_eq!(
        through["table"], direct["table"],
        "as the flat fleet merges it"
    );
}
