//! Crash kills with real processes: `kill -9` lands at a random moment while work is in flight,
//! the victim restarts, and the client retries what was not acknowledged with the same
//! idempotency key. Afterwards the archives are read from disk:
//!
//! * a Totebox killed during appends: every acknowledged record is present, none twice, and
//!   nothing is there that was never sent;
//! * an orchestrator killed during a command's fan-out: the console's retries (through the
//!   restarted orchestrator) apply each command exactly once on every archive.
//!
//! Both run in full (100 and 50 kills) in a few seconds, in CI too. `PSP_CRASH_KILLS=N` runs
//! fewer or more; `PSP_CRASH_SEED` replays a run's kill moments.

mod support;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use orchestrator::console::{Console, Options};
use orchestrator::selection::Selector;
use psp_archive::RecordArchive;
use psp_core::archive::Archive;
use psp_core::query::{CompareOp, Filter, Query, Value};
use psp_core::{IdentityKey, Operation, RowSelector};
use psp_rpc::client::{CommandSpec, ToteboxClient};
use psp_rpc::limits::Limits;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use support::processes::{Fleet, Orchestrator, Proc, totebox_binary};
use tokio::task::LocalSet;

/// Appends a client keeps in flight toward the Totebox.
const IN_FLIGHT: usize = 4;
/// The entries these tests append start here (the generated ledger's are far below).
const TOTEBOX_BASE: i64 = 10_000_000;
const FAN_OUT_BASE: i64 = 20_000_000;

/// How many kills: `full`, or `PSP_CRASH_KILLS`.
fn kills(full: usize) -> usize {
    std::env::var("PSP_CRASH_KILLS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .map_or(full, |n| n.max(1))
}

/// The kill moments' generator, from `PSP_CRASH_SEED` or the clock (printed, to replay).
fn moments(test: &str) -> ChaCha8Rng {
    let seed = std::env::var("PSP_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("{test}: PSP_CRASH_SEED={seed}");
    ChaCha8Rng::seed_from_u64(seed)
}

/// An `append` of ledger entry `entry`, under a key of its own.
fn append(entry: i64) -> CommandSpec {
    CommandSpec {
        name: "append".into(),
        collection: "ledger".into(),
        idempotency_key: format!("crash-kill-entry-{entry:012}").into_bytes(),
        arguments: support::ledger_record(entry, "crash-kill", 100),
    }
}

/// The entries at or above `base` in the archive configured at `config`, read from its file (the
/// Totebox must be stopped: the archive is locked by its process), each with how often it occurs.
fn entries_on_disk(config: &Path, base: i64) -> BTreeMap<i64, usize> {
    let archive = RecordArchive::open_config(config).unwrap();
    let query = Query::rows("ledger", ["entry"])
        .filter(Filter::Compare {
            field: "entry".into(),
            op: CompareOp::Ge,
            value: Value::Int(base),
        })
        .limit(1_000_000);
    let result = archive.query(&query, &RowSelector::All).unwrap();
    let mut seen = BTreeMap::new();
    for row in result.finalize(&query).unwrap().rows {
        let Value::Int(entry) = row[0] else {
            panic!("an entry that is not an int: {row:?}")
        };
        *seen.entry(entry).or_default() += 1;
    }
    seen
}

fn archive_config(fleet: &Fleet, id: &str) -> PathBuf {
    fleet.path(&format!("fleet/{id}/archive.toml"))
}

/// Kills Totebox `i` with SIGKILL and starts it again on the same files; returns its address.
fn kill_and_restart_totebox(fleet: &mut Fleet, i: usize, run: usize) -> String {
    let config = archive_config(fleet, &fleet.toteboxes[i].id);
    let log = fleet.path(&format!("{}.{run}.log", fleet.toteboxes[i].id));
    fleet.toteboxes[i].process.kill();
    let mut command = Command::new(totebox_binary());
    command.arg("serve").arg("--config").arg(&config);
    let (process, line) = Proc::start(command, log);
    fleet.toteboxes[i].process = process;
    let address = line.split_whitespace().nth(1).unwrap().to_owned();
    fleet.toteboxes[i].address = address.clone();
    address
}

#[tokio::test(flavor = "multi_thread")]
async fn a_totebox_killed_during_appends_keeps_every_acknowledged_record_once() {
    let runs = kills(100);
    let mut rng = moments("totebox");
    let mut fleet = Fleet::start(0, 1);
    let id = fleet.toteboxes[0].id.clone();
    let key = fleet.toteboxes[0].key.parse().unwrap();
    // Straight from the owner to the machine that calls (a Totebox accepts a last link of at
    // most 15 minutes).
    let chain = psp_core::Chain::mint(
        &fleet.owner,
        psp_core::Grant {
            holder: fleet.orchestrator.public(),
            archives: psp_core::ArchiveSet::of_ids([id.as_str()]),
            scope: psp_core::Scope::everything(vec![Operation::command("append")]),
            window: psp_core::Window::lasting(psp_core::window::now() - 5, 600),
        },
    )
    .unwrap();
    let mut address = fleet.toteboxes[0].address.clone();
    let mut acknowledged: BTreeSet<i64> = BTreeSet::new();
    let mut replayed = 0usize;
    let mut cut = 0usize;
    let mut unanswered: VecDeque<i64> = VecDeque::new();
    let mut next = TOTEBOX_BASE;
    let limits = Limits {
        call_timeout: Duration::from_secs(5),
        ..Limits::default()
    };
    LocalSet::new()
        .run_until(async {
            for run in 0..=runs {
                let client = ToteboxClient::connect_serving(
                    address.parse().unwrap(),
                    &fleet.orchestrator,
                    key,
                    &id,
                    limits,
                )
                .await
                .unwrap();
                // Appends keep `IN_FLIGHT` calls going (retries first, under their own keys)
                // until the kill moment; the last run only settles what is left.
                let last = run == runs;
                let kill_at = Instant::now() + Duration::from_millis(rng.random_range(2..40));
                let mut flying = FuturesUnordered::new();
                loop {
                    while flying.len() < IN_FLIGHT
                        && (last && !unanswered.is_empty() || !last && Instant::now() < kill_at)
                    {
                        let entry = unanswered.pop_front().unwrap_or_else(|| {
                            next += 1;
                            next - 1
                        });
                        let (client, chain) = (&client, &chain);
                        flying.push(
                            async move { (entry, client.command(chain, &append(entry)).await) },
                        );
                    }
                    let settled = if last {
                        flying.next().await
                    } else {
                        tokio::time::timeout_at(kill_at.into(), flying.next())
                            .await
                            .ok()
                            .flatten()
                    };
                    match settled {
                        Some((entry, Ok(answer))) => {
                            replayed += usize::from(!answer.applied);
                            assert!(acknowledged.insert(entry), "{entry} acknowledged twice");
                        }
                        Some((entry, Err(e))) => {
                            assert!(!last, "{entry}: {e} with no kill");
                            unanswered.push_back(entry);
                        }
                        None if last => break,
                        None => {
                            if Instant::now() >= kill_at {
                                break;
                            }
                        }
                    }
                }
                if last {
                    break;
                }
                address = kill_and_restart_totebox(&mut fleet, 0, run);
                // The calls the kill cut short fail (their answer never comes); each is sent
                // again, under its own key, by the next run.
                while let Some((entry, answer)) = flying.next().await {
                    match answer {
                        Ok(answer) => {
                            replayed += usize::from(!answer.applied);
                            assert!(acknowledged.insert(entry), "{entry} acknowledged twice");
                        }
                        Err(_) => {
                            cut += 1;
                            unanswered.push_back(entry);
                        }
                    }
                }
            }
        })
        .await;
    assert!(unanswered.is_empty());
    fleet.toteboxes[0].process.kill();
    let on_disk = entries_on_disk(&archive_config(&fleet, &id), TOTEBOX_BASE);
    // How many restarts found a torn last append (the kill landed mid-write) and cut it.
    let torn = (0..runs)
        .filter(|run| {
            std::fs::read_to_string(fleet.path(&format!("{id}.{run}.log")))
                .unwrap_or_default()
                .contains("recovered: cut a torn last append")
        })
        .count();
    let twice: Vec<_> = on_disk.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "records present twice: {twice:?}");
    let present: BTreeSet<i64> = on_disk.keys().copied().collect();
    let sent: BTreeSet<i64> = (TOTEBOX_BASE..next).collect();
    assert_eq!(present, acknowledged, "on disk against acknowledged");
    assert_eq!(
        acknowledged, sent,
        "every record sent was acknowledged in the end"
    );
    if runs >= 20 {
        // The kills did land on work in flight, and some after a write was durable but before
        // its answer: the retries that prove "none twice" ran.
        assert!(cut > 0 && replayed > 0, "cut {cut}, replayed {replayed}");
    }
    eprintln!(
        "totebox: {runs} kills, {} records acknowledged, {cut} calls cut by a kill and sent again, {replayed} of them found already applied (replayed), {torn} restarts cut a torn append",
        acknowledged.len()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_orchestrator_killed_during_a_fan_out_applies_each_command_once_everywhere() {
    let runs = kills(50);
    let mut rng = moments("orchestrator");
    let mut fleet = Fleet::start(0, 3);
    let subs: Vec<String> = fleet.toteboxes.iter().map(|t| t.id.clone()).collect();
    let names: Vec<&str> = subs.iter().map(String::as_str).collect();
    let operator = IdentityKey::generate().unwrap();
    let grant = fleet.grant(&operator, &names, vec![Operation::command("append")]);
    let config = fleet.orchestrator_config(
        "orchestrator.toml",
        &format!(
            "[[tenants]]\nname = \"holding\"\noperators = [\"{}\"]\narchives = {names:?}\n",
            operator.public()
        ),
    );
    let mut orchestrator = fleet.serve(&config);
    let selector = Selector::Ids(subs.clone());
    // How each kill landed, by what the first answered retry said: every archive had applied
    // the command before the kill (all replayed), none had (all applied), or some had (mixed:
    // the kill cut the fan-out itself).
    let mut landed: BTreeMap<&str, usize> = BTreeMap::new();
    LocalSet::new()
        .run_until(async {
            for run in 0..runs {
                let entry = FAN_OUT_BASE + run as i64;
                let command = append(entry);
                let console = connect(&orchestrator, &operator).await;
                let delay = Duration::from_micros(rng.random_range(0..5_000));
                let first = tokio::time::timeout(
                    delay,
                    console.command(&selector, &grant, &command, Options::default()),
                )
                .await;
                let answered_before_kill = matches!(first, Ok(Ok(_)));
                orchestrator.process.kill();
                drop(console);
                orchestrator = fleet.serve(&config);
                // The console retries, with the same key, until every archive has answered.
                let statuses = retry_until_every_archive_answers(
                    &orchestrator,
                    &operator,
                    &selector,
                    &grant,
                    &command,
                )
                .await;
                let applied = statuses.iter().filter(|applied| **applied).count();
                let how = match (answered_before_kill, applied) {
                    (true, _) => "answered before the kill",
                    (false, 0) => "after every archive applied it",
                    (false, n) if n == statuses.len() => "before any archive applied it",
                    _ => "mid-fan-out",
                };
                *landed.entry(how).or_default() += 1;
                if answered_before_kill {
                    assert_eq!(applied, 0, "an answered command applied again by its retry");
                }
            }
        })
        .await;
    if runs >= 20 {
        // Some kills landed before the fan-out had reached every archive: the retries that
        // prove "exactly once everywhere" had work to finish.
        let early = landed.get("mid-fan-out").copied().unwrap_or(0)
            + landed
                .get("before any archive applied it")
                .copied()
                .unwrap_or(0);
        assert!(
            early > 0,
            "no kill landed before the fan-out ended: {landed:?}"
        );
    }
    orchestrator.process.kill();
    for (i, id) in subs.iter().enumerate() {
        fleet.toteboxes[i].process.kill();
        let on_disk = entries_on_disk(&archive_config(&fleet, id), FAN_OUT_BASE);
        let expected: BTreeMap<i64, usize> =
            (0..runs as i64).map(|r| (FAN_OUT_BASE + r, 1)).collect();
        assert_eq!(
            on_disk, expected,
            "{id}: each command's record exactly once"
        );
    }
    eprintln!(
        "orchestrator: {runs} kills, each command once on each of {} archives; kills landed {landed:?}",
        subs.len()
    );
}

async fn connect(orchestrator: &Orchestrator, operator: &IdentityKey) -> Console {
    Console::open(
        orchestrator.address.parse().unwrap(),
        operator,
        orchestrator.key.parse().unwrap(),
        Limits {
            call_timeout: Duration::from_secs(10),
            ..Limits::default()
        },
    )
    .await
    .unwrap()
}

/// Sends `command` until every selected archive answers it (applied now, or replayed); returns,
/// per archive, whether this answer applied it. A source that is still reconnecting after the
/// restart fails its outcome, and the whole command is sent again, as a console would.
async fn retry_until_every_archive_answers(
    orchestrator: &Orchestrator,
    operator: &IdentityKey,
    selector: &Selector,
    grant: &psp_core::Chain,
    command: &CommandSpec,
) -> Vec<bool> {
    let mut answered: BTreeMap<String, bool> = BTreeMap::new();
    let until = Instant::now() + Duration::from_secs(30);
    let Selector::Ids(ids) = selector else {
        unreachable!()
    };
    while answered.len() < ids.len() {
        assert!(
            Instant::now() < until,
            "no answer from {ids:?} after 30 s: {answered:?}"
        );
        let console = connect(orchestrator, operator).await;
        let outcomes = console
            .command(selector, grant, command, Options::default())
            .await
            .unwrap();
        for (outcome, answer) in outcomes {
            if let Some(answer) = answer {
                // The first answer per archive says whether it applied the command then.
                answered
                    .entry(outcome.archive.clone())
                    .or_insert(answer.applied);
            }
        }
    }
    answered.into_values().collect()
}
