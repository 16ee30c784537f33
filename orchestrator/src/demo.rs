//! `orchestrator demo`: a realistic local fleet, end to end, in well under a minute.
//!
//! It generates 8 property archives and 4 subsidiary ledgers, serves each from its own Totebox
//! (its own TLS endpoint and machine key, paired with the orchestrator, trusting one owner
//! key), starts an orchestrator over them with a config that defines three viewports, connects
//! a console as an operator, and runs the viewports through the console protocol: NOI by region,
//! the intercompany reconciliation and the executive summary. Everything the demo prints came
//! over pinned-key TLS as Cap'n Proto messages; the orchestrator never holds a record or a key to
//! an archive, only the capability the operator delegated for each request.
//!
//! Only this module uses `psp-archive` (behind the `demo` feature): the aggregator itself never
//! touches a store.

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use psp_archive::generate::{GenerateOptions, generate};
use psp_archive::serve::RunningTotebox;
use psp_core::{ArchiveSet, Chain, Grant, IdentityKey, Operation, PublicKey, Scope, Window};
use psp_rpc::limits::Limits;

use crate::console::{Console, Options};
use crate::render;
use crate::selection::Selector;
use crate::server::RunningOrchestrator;

/// The viewports the demo's orchestrator config defines (the grammar is in [`crate::spec`]).
pub const VIEWPORTS: &str = r#"
[[viewports]]
name = "noi-by-region"
[viewports.rollup]
labels = ["region"]
query = { collection = "statements", where = ["period >= '2025-11'"], aggregates = ["sum(revenue) as revenue", "sum(noi) as noi"], order = ["noi desc"] }

[[viewports]]
name = "intercompany"
[viewports.reconciliation]
collection = "ledger"
counterparty = "counterparty"
period = "period"
currency = "currency"
amount = "amount"
where = ["account in intercompany_receivable | intercompany_payable"]
convention = "opposite"
tolerance = "0.00"

[[viewports]]
name = "executive-summary"
[[viewports.summary]]
name = "Revenue, last 12 months"
unit = "USD"
query = { collection = "statements", where = ["period >= '2025-11'"], aggregates = ["sum(revenue)"] }
[[viewports.summary]]
name = "Net operating income, last 12 months"
unit = "USD"
query = { collection = "statements", where = ["period >= '2025-11'"], aggregates = ["sum(noi)"] }
[[viewports.summary]]
name = "Rent collected, last 12 months"
unit = "USD"
query = { collection = "rent_roll", where = ["period >= '2025-11'"], aggregates = ["sum(collected)"] }
[[viewports.summary]]
name = "Units occupied, 2026-10"
unit = "units"
query = { collection = "occupancy", where = ["period = '2026-10'"], aggregates = ["sum(units_occupied)"] }
[[viewports.summary]]
name = "Units in the portfolio"
unit = "units"
query = { collection = "occupancy", where = ["period = '2026-10'"], aggregates = ["sum(units_total)"] }
[[viewports.summary]]
name = "Portfolio value, 2026-08 valuation"
unit = "USD"
query = { collection = "valuations", where = ["period = '2026-08'"], aggregates = ["sum(value)"] }
"#;

/// Records per generated archive.
const RECORDS: u64 = 3_000;

/// Runs the demo in `dir` (an empty folder), printing as it goes through `print`; with `web`,
/// then serves the web console over the demo fleet there until Ctrl-C. Must run on a tokio
/// `LocalSet` (the console is `!Send`).
pub async fn run(
    dir: &Path,
    mut print: impl FnMut(&str),
    web: Option<std::net::SocketAddr>,
) -> Result<(), String> {
    let started = Instant::now();
    let fail = |what: &str| {
        let what = what.to_owned();
        move |e: String| format!("{what}: {e}")
    };
    let manifest = generate(&GenerateOptions {
        out: dir.join("fleet"),
        seed: 2026,
        properties: 8,
        subsidiaries: 4,
        records: RECORDS,
    })
    .map_err(|e| e.to_string())?;
    print(&format!(
        "generated {} archives ({} records) in {:.1} s",
        manifest.archives.len(),
        manifest.archives.iter().map(|a| a.records).sum::<u64>(),
        started.elapsed().as_secs_f64()
    ));

    let key = |name: &str| -> Result<IdentityKey, String> {
        let key = IdentityKey::generate().map_err(|e| e.to_string())?;
        key.save(&dir.join(format!("{name}.pem")))
            .map_err(|e| e.to_string())?;
        Ok(key)
    };
    let owner = key("owner")?;
    let operator = key("operator")?;
    let orchestrator = key("orchestrator")?;

    // One Totebox per archive, each with its own machine key, paired with the orchestrator.
    let mut toteboxes = Vec::new();
    let mut fleet = String::new();
    for entry in &manifest.archives {
        let config = dir.join("fleet").join(&entry.config);
        add_server_section(&config, orchestrator.public(), owner.public())?;
        let totebox = RunningTotebox::start(&config)
            .await
            .map_err(fail(&entry.id))?;
        let labels: Vec<String> = entry
            .labels
            .iter()
            .map(|(k, v)| format!("{k} = {v:?}"))
            .collect();
        let _ = write!(
            fleet,
            "\n[[fleet]]\nid = {:?}\naddress = \"{}\"\nkey = \"{}\"\nlabels = {{ {} }}\n",
            entry.id,
            totebox.local_addr(),
            totebox.key(),
            labels.join(", ")
        );
        toteboxes.push(totebox);
    }
    print(&format!(
        "started {} Toteboxes, each its own TLS endpoint and key, paired with orchestrator {}",
        toteboxes.len(),
        short(&orchestrator.public())
    ));

    let ids: Vec<&str> = manifest.archives.iter().map(|a| a.id.as_str()).collect();
    let config = format!(
        "identity = \"orchestrator.pem\"\nlisten = \"127.0.0.1:0\"\n\n[defaults]\nsource_timeout_ms = 5000\ndeadline_ms = 10000\n\n[[tenants]]\nname = \"demo-asset-management\"\noperators = [\"{}\"]\narchives = {:?}\n{fleet}{VIEWPORTS}",
        operator.public(),
        ids,
    );
    let config_path = dir.join("orchestrator.toml");
    std::fs::write(&config_path, config).map_err(|e| e.to_string())?;
    let server = RunningOrchestrator::start(&config_path).await?;
    print(&format!(
        "orchestrator serving consoles on {}",
        server.local_addr()
    ));

    // The owner grants the operator read access to every archive for an hour. For each request
    // the console delegates to the orchestrator only what that request reads (its archives,
    // collections and fields), until the 10 s deadline plus clock skew.
    let now = psp_core::window::now();
    let operator_cap = Chain::mint(
        &owner,
        Grant {
            holder: operator.public(),
            archives: ArchiveSet::of_ids(ids.iter().copied()),
            scope: Scope::everything(vec![Operation::Query, Operation::Describe]),
            window: Window::lasting(now, 3_600),
        },
    )
    .map_err(|e| e.to_string())?;
    let options = Options {
        deadline: Some(Duration::from_secs(10)),
        ..Options::default()
    };

    let console = Console::connect(
        server.local_addr(),
        &operator,
        server.key(),
        Limits::default(),
    )
    .await
    .map_err(|e| e.to_string())?;
    let label = |k: &str, v: &str| Selector::Labels([(k.to_owned(), v.to_owned())].into());
    let runs = [
        (
            "noi-by-region",
            label("entity", "property"),
            "Portfolio rollup: revenue and NOI over the last 12 months, by region",
        ),
        (
            "intercompany",
            label("entity", "subsidiary"),
            "Cross-entity reconciliation: intercompany balances, 24 months (exceptions shown)",
        ),
        (
            "executive-summary",
            label("entity", "property"),
            "Executive summary",
        ),
    ];
    for (name, selector, title) in runs.clone() {
        let viewport = console.viewport(name).await.map_err(|e| e.to_string())?;
        let asked = Instant::now();
        let report = console
            .start_view(&selector, &operator_cap, &viewport, options)
            .map_err(|e| format!("viewport {name}: {e}"))?
            .report()
            .await
            .map_err(|e| format!("viewport {name}: {e}"))?;

        print(&format!(
            "\n== {title} ({} sources, {} ms)\n\n{}",
            report.outcomes.len(),
            asked.elapsed().as_millis(),
            // An accountant reads the exceptions; the count line still covers every balance.
            render::report(&report, true).trim_end()
        ));
    }
    if let Some(listen) = web {
        let names = runs.iter().map(|(name, _, _)| (*name).to_owned()).collect();
        let selections = ["entity=property", "entity=subsidiary", "entity=property"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        let target = crate::operate::Target {
            address: server.local_addr(),
            orchestrator: server.key(),
            identity: operator.clone(),
        };
        serve_web(
            (console, target),
            operator_cap,
            (names, selections),
            listen,
            &mut print,
        )
        .await?;
    } else {
        drop(console);
    }
    server.shutdown(Duration::from_millis(500)).await;
    futures::future::join_all(
        toteboxes
            .into_iter()
            .map(|t| t.shutdown(Duration::from_millis(500))),
    )
    .await;
    print(&format!(
        "\ndemo finished in {:.1} s",
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// Serves the web console over the demo fleet on `listen` until Ctrl-C.
async fn serve_web(
    (console, target): (Console, crate::operate::Target),
    grant: Chain,
    (viewports, selections): (Vec<String>, Vec<String>),
    listen: std::net::SocketAddr,
    print: &mut impl FnMut(&str),
) -> Result<(), String> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| format!("cannot serve the web console on {listen} (try --listen): {e}"))?;
    let address = listener.local_addr().map_err(|e| e.to_string())?;
    // The demo offers no commands: its grant allows none.
    let web = std::rc::Rc::new(crate::web::WebConsole::new(
        (console, target),
        grant,
        (viewports, selections),
        None,
        (address, false),
    ));
    print(&format!(
        "\nweb console on {} ({}); Ctrl-C stops the demo",
        web.url(),
        if address.ip().is_loopback() {
            "bound to loopback: only this machine can open it"
        } else {
            "other machines can reach it; its key keeps them out"
        }
    ));
    tokio::select! {
        () = crate::web::serve(listener, web) => {}
        _ = tokio::signal::ctrl_c() => print("stopping the demo"),
    }
    Ok(())
}

fn short(key: &PublicKey) -> String {
    let text = key.to_string();
    format!("{}...", &text[..text.len().min(20)])
}

/// Adds a `[server]` section with a fresh machine key to a generated archive's config.
fn add_server_section(
    config: &Path,
    orchestrator: PublicKey,
    owner: PublicKey,
) -> Result<(), String> {
    let key = IdentityKey::generate().map_err(|e| e.to_string())?;
    key.save(&config.with_file_name("identity.pem"))
        .map_err(|e| e.to_string())?;
    let mut text = std::fs::read_to_string(config).map_err(|e| e.to_string())?;
    text.push_str(&format!(
        "\n[server]\nlisten = \"127.0.0.1:0\"\nidentity = \"identity.pem\"\npaired = [\"{orchestrator}\"]\ntrusted_roots = [\"{owner}\"]\n"
    ));
    std::fs::write(config, text).map_err(|e| e.to_string())
}
