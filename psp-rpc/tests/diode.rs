//! The diode, attacked: a rogue Totebox built from raw Cap'n Proto RPC frames tries every way to
//! send something upstream. Each attempt cuts its own connection with a recorded violation; the
//! guarded side survives, and its connection to a well-behaved Totebox carries on.

mod support;

use std::time::Duration;

use capnp::message::{Builder, ReaderOptions};
use capnp::traits::HasTypeId;
use capnp_rpc::rpc_capnp::message;
use psp_core::query::{Aggregate, Query};
use psp_core::{IdentityKey, Verifier};
use psp_rpc::client::{ConnectError, ToteboxClient};
use psp_rpc::limits::Limits;
use psp_rpc::tls::{self, PairedKeys};
use psp_schema::totebox_capnp::totebox;
use support::{MemoryArchive, chain, machines, start};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::task::LocalSet;

/// What the rogue does when our `open` arrives.
#[derive(Debug, Clone, Copy)]
enum Attack {
    /// Asks for our bootstrap capability.
    Bootstrap,
    /// Calls a capability it imagines we export.
    Call,
    /// Answers `identify` (which never carries capabilities) with one.
    CapabilityAnsweringIdentify,
    /// Asks for our bootstrap instead of answering `identify`: an attack during connect.
    BootstrapInsteadOfIdentify,
    /// Calls upstream instead of answering `identify`.
    CallInsteadOfIdentify,
    /// Answers `open` with a capability it claims we host.
    CapabilityItDoesNotHost,
    /// Answers our `query` with a capability.
    CapabilityAnsweringQuery,
    /// Answers our `command` with a capability.
    CapabilityAnsweringCommand,
    /// Resolves a promise to a new capability.
    ResolveToCapability,
    /// Starts a three-party handoff.
    Provide,
    /// Starts a join.
    Join,
}

async fn read_frame(stream: &mut (impl AsyncRead + Unpin)) -> Option<Vec<u8>> {
    let segments = stream.read_u32_le().await.ok()? as usize + 1;
    let mut frame = ((segments - 1) as u32).to_le_bytes().to_vec();
    let mut words = 0usize;
    for _ in 0..segments {
        let size = stream.read_u32_le().await.ok()?;
        frame.extend_from_slice(&size.to_le_bytes());
        words += size as usize;
    }
    if segments.is_multiple_of(2) {
        frame.extend_from_slice(&stream.read_u32_le().await.ok()?.to_le_bytes());
    }
    let start = frame.len();
    frame.resize(start + words * 8, 0);
    stream.read_exact(&mut frame[start..]).await.ok()?;
    Some(frame)
}

async fn send(stream: &mut (impl AsyncWrite + Unpin), build: impl FnOnce(message::Builder<'_>)) {
    let mut m = Builder::new_default();
    build(m.init_root());
    let _ = stream
        .write_all(&capnp::serialize::write_message_to_words(&m))
        .await;
    let _ = stream.flush().await;
}

/// A Totebox that speaks raw RPC frames: it answers `identify` like a real one (holding back its
/// bootstrap answer, so our calls stay pipelined on it), then attacks when `open` arrives.
async fn rogue(
    listener: tokio::net::TcpListener,
    config: std::sync::Arc<rustls::ServerConfig>,
    attack: Attack,
) {
    let (tcp, _) = listener.accept().await.unwrap();
    let Ok(stream) = tokio_rustls::TlsAcceptor::from(config).accept(tcp).await else {
        return;
    };
    let (mut reader, mut writer) = tokio::io::split(stream);
    while let Some(frame) = read_frame(&mut reader).await {
        let message =
            capnp::serialize::read_message(&mut &frame[..], ReaderOptions::new()).unwrap();
        let root = message.get_root::<message::Reader<'_>>().unwrap();
        let Ok(message::Call(Ok(call))) = root.which() else {
            continue;
        };
        let (question, interface, method) = (
            call.get_question_id(),
            call.get_interface_id(),
            call.get_method_id(),
        );
        match (interface == totebox::Client::TYPE_ID, method) {
            (true, 0) if matches!(attack, Attack::BootstrapInsteadOfIdentify) => {
                send(&mut writer, |m| m.init_bootstrap().set_question_id(0)).await
            }
            (true, 0) if matches!(attack, Attack::CallInsteadOfIdentify) => {
                send(&mut writer, |m| {
                    let mut c = m.init_call();
                    c.set_question_id(0);
                    c.set_interface_id(totebox::Client::TYPE_ID);
                    c.set_method_id(0);
                    c.reborrow().init_target().set_imported_cap(0);
                    c.init_params();
                })
                .await
            }
            (true, 0) => {
                let with_capability = matches!(attack, Attack::CapabilityAnsweringIdentify);
                send(&mut writer, |m| {
                    let mut ret = m.init_return();
                    ret.set_answer_id(question);
                    let mut results = ret.init_results();
                    if with_capability {
                        results
                            .reborrow()
                            .init_cap_table(1)
                            .get(0)
                            .set_sender_hosted(9);
                    }
                    let mut r = results
                        .init_content()
                        .init_as::<totebox::identify_results::Builder<'_>>();
                    r.set_archive("rogue");
                    r.set_format_version(1);
                    r.set_now(psp_core::window::now());
                })
                .await;
            }
            // `open`, or `query` and `command` (the one-call forms the client sends).
            (true, 1..=3) => match attack {
                Attack::Bootstrap => {
                    send(&mut writer, |m| m.init_bootstrap().set_question_id(0)).await
                }
                Attack::Call => {
                    send(&mut writer, |m| {
                        let mut c = m.init_call();
                        c.set_question_id(0);
                        c.set_interface_id(totebox::Client::TYPE_ID);
                        c.set_method_id(1);
                        c.reborrow().init_target().set_imported_cap(0);
                        c.init_params();
                    })
                    .await
                }
                // Attacked at identify.
                Attack::CapabilityAnsweringIdentify
                | Attack::BootstrapInsteadOfIdentify
                | Attack::CallInsteadOfIdentify => {}
                Attack::CapabilityItDoesNotHost => {
                    send(&mut writer, |m| {
                        let mut ret = m.init_return();
                        ret.set_answer_id(question);
                        ret.init_results()
                            .init_cap_table(1)
                            .get(0)
                            .set_receiver_hosted(0);
                    })
                    .await
                }
                Attack::CapabilityAnsweringQuery | Attack::CapabilityAnsweringCommand
                    if method >= 2 =>
                {
                    send(&mut writer, |m| {
                        let mut ret = m.init_return();
                        ret.set_answer_id(question);
                        ret.init_results()
                            .init_cap_table(1)
                            .get(0)
                            .set_sender_hosted(7);
                    })
                    .await
                }
                Attack::CapabilityAnsweringQuery | Attack::CapabilityAnsweringCommand => {} // waits for the call below
                Attack::ResolveToCapability => {
                    send(&mut writer, |m| {
                        let mut r = m.init_resolve();
                        r.set_promise_id(0);
                        r.init_cap().set_sender_hosted(3);
                    })
                    .await
                }
                Attack::Provide => {
                    send(&mut writer, |m| {
                        let mut p = m.init_provide();
                        p.set_question_id(0);
                        p.init_target().set_imported_cap(0);
                    })
                    .await
                }
                Attack::Join => {
                    send(&mut writer, |m| {
                        let mut j = m.init_join();
                        j.set_question_id(0);
                        j.init_target().set_imported_cap(0);
                    })
                    .await
                }
            },
            _ => {
                if let Attack::CapabilityAnsweringQuery = attack {
                    send(&mut writer, |m| {
                        let mut ret = m.init_return();
                        ret.set_answer_id(question);
                        ret.init_results()
                            .init_cap_table(1)
                            .get(0)
                            .set_sender_hosted(7);
                    })
                    .await;
                }
            }
        }
    }
}

#[tokio::test]
async fn every_attempt_to_send_upstream_cuts_only_that_connection() {
    let m = machines();
    let rogue_key = IdentityKey::from_seed([66; 32]);
    let (good, _) = start(
        &m,
        MemoryArchive::new("tower-a"),
        Verifier::new([m.owner.public()]),
        Limits::default(),
    )
    .await;
    let attacks = [
        (Attack::Bootstrap, "Bootstrap"),
        (Attack::Call, "a Call"),
        (
            Attack::CapabilityAnsweringIdentify,
            "not our Bootstrap or open",
        ),
        (Attack::BootstrapInsteadOfIdentify, "Bootstrap"),
        (Attack::CallInsteadOfIdentify, "a Call"),
        (Attack::CapabilityItDoesNotHost, "does not host"),
        (
            Attack::CapabilityAnsweringQuery,
            "not our Bootstrap or open",
        ),
        (
            Attack::CapabilityAnsweringCommand,
            "not our Bootstrap or open",
        ),
        (Attack::ResolveToCapability, "Resolve to a new capability"),
        (Attack::Provide, "three-party"),
        (Attack::Join, "three-party"),
    ];
    LocalSet::new()
        .run_until(async {
            let healthy = support::connect(&m, good.local_addr(), Limits::default()).await;
            let query = Query::aggregate("units", [], [Aggregate::count()]);
            for (attack, says) in attacks {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                let address = listener.local_addr().unwrap();
                let config =
                    tls::server_config(&rogue_key, PairedKeys::new([m.orchestrator.public()]))
                        .unwrap();
                let rogue = tokio::task::spawn_local(rogue(listener, config, attack));

                let connected = ToteboxClient::connect(
                    address,
                    &m.orchestrator,
                    rogue_key.public(),
                    Limits::default(),
                )
                .await;
                if let Attack::CapabilityAnsweringIdentify
                | Attack::BootstrapInsteadOfIdentify
                | Attack::CallInsteadOfIdentify = attack
                {
                    // Attacked while confirming the session: the connection never comes up, and
                    // the error says it was the diode (so the caller quarantines, not redials).
                    match connected {
                        Err(ConnectError::DiodeViolation { reason, .. }) => {
                            assert!(reason.contains(says), "{attack:?}: {reason}")
                        }
                        Err(other) => {
                            panic!("{attack:?}: not reported as a diode violation: {other}")
                        }
                        Ok(_) => panic!("{attack:?}: the session came up"),
                    }
                    rogue.abort();
                    healthy
                        .query(&chain(&m, &m.orchestrator, "tower-a", 60), &query)
                        .await
                        .unwrap();
                    continue;
                }
                let victim = connected
                    .unwrap_or_else(|e| panic!("{attack:?}: the rogue behaves until open: {e}"));
                let held = chain(&m, &m.orchestrator, "rogue", 60);
                let call = async {
                    if let Attack::CapabilityAnsweringCommand = attack {
                        let ping = psp_rpc::client::CommandSpec {
                            name: "ping".into(),
                            collection: String::new(),
                            idempotency_key: b"diode-test-ping-0001".to_vec(),
                            arguments: Vec::new(),
                        };
                        victim.command(&held, &ping).await.map(drop)
                    } else {
                        victim.query(&held, &query).await.map(drop)
                    }
                };
                let outcome = tokio::time::timeout(Duration::from_secs(5), call).await;
                let error = outcome
                    .unwrap_or_else(|_| panic!("{attack:?}: the guarded side must not hang"))
                    .unwrap_err();
                assert_eq!(error.code, "diode.violation", "{attack:?}: {error}");
                let violation = victim
                    .diode_violation()
                    .unwrap_or_else(|| panic!("{attack:?}: no violation recorded"));
                assert!(violation.contains(says), "{attack:?}: {violation}");
                rogue.abort();

                // The rest of the fleet carries on.
                healthy
                    .query(&chain(&m, &m.orchestrator, "tower-a", 60), &query)
                    .await
                    .unwrap_or_else(|e| panic!("after {attack:?}: {e}"));
            }
            assert!(healthy.diode_violation().is_none());
        })
        .await;
    good.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn an_attack_on_a_pipelined_identify_refuses_the_call_that_rode_with_it() {
    let m = machines();
    let rogue_key = IdentityKey::from_seed([67; 32]);
    let attacks = [
        (Attack::CapabilityAnsweringIdentify, "not our Bootstrap"),
        (Attack::BootstrapInsteadOfIdentify, "Bootstrap"),
        (Attack::CallInsteadOfIdentify, "a Call"),
    ];
    LocalSet::new()
        .run_until(async {
            let query = Query::aggregate("units", [], [Aggregate::count()]);
            for (attack, says) in attacks {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                let address = listener.local_addr().unwrap();
                let config =
                    tls::server_config(&rogue_key, PairedKeys::new([m.orchestrator.public()]))
                        .unwrap();
                let rogue = tokio::task::spawn_local(rogue(listener, config, attack));
                // TLS comes up; the query goes out beside `identify`.
                let victim = ToteboxClient::connect_serving(
                    address,
                    &m.orchestrator,
                    rogue_key.public(),
                    "rogue",
                    Limits::default(),
                )
                .await
                .unwrap_or_else(|e| panic!("{attack:?}: TLS should come up: {e}"));
                let held = chain(&m, &m.orchestrator, "rogue", 60);
                let outcome =
                    tokio::time::timeout(Duration::from_secs(5), victim.query(&held, &query)).await;
                let error = outcome
                    .unwrap_or_else(|_| panic!("{attack:?}: the guarded side must not hang"))
                    .unwrap_err();
                assert_eq!(error.code, "diode.violation", "{attack:?}: {error}");
                assert!(
                    matches!(
                        victim.confirmation_error(),
                        Some(ConnectError::DiodeViolation { reason, .. }) if reason.contains(says)
                    ),
                    "{attack:?}: {:?}",
                    victim.confirmation_error()
                );
                assert!(!victim.is_connected(), "{attack:?}: still counted as up");
                rogue.abort();
            }
        })
        .await;
}
