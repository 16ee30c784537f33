//! Hostile peers for the containment tests, each speaking real Cap'n Proto over pinned-key TLS:
//!
//! * [`HostileTotebox`]: a Totebox that accepts any capability and answers every query with
//!   whatever its script writes into the result (other columns, wrong kinds, 64-bit edges,
//!   values no reader accepts), so the orchestrator is tested against a peer that lies well.
//! * [`Rogue`]: a Totebox that never gets as far as answering: it hangs after TLS, closes,
//!   sends garbage, or breaks the diode instead of answering `identify`. It counts the
//!   connections it accepted, so a test can tell a quarantined source from one redialed.

use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use capnp::message::ReaderOptions;
use capnp::traits::HasTypeId;
use capnp_rpc::rpc_capnp::message;
use psp_core::IdentityKey;
use psp_core::query::Query;
use psp_core::query::wire::read_query;
use psp_rpc::limits::Limits;
use psp_rpc::runtime::{Connection, ServerHandle};
use psp_rpc::tls::{self, PairedKeys};
use psp_schema::query_capnp::query_result;
use psp_schema::totebox_capnp::{session, totebox};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What a hostile Totebox writes into the result of a query it was sent.
pub type Script = Arc<dyn Fn(&Query, query_result::Builder<'_>) + Send + Sync>;

/// A Totebox that answers with its script, served like a real one.
pub struct HostileTotebox {
    /// Its archive id.
    pub archive: String,
    /// Its machine key.
    pub key: psp_core::PublicKey,
    handle: ServerHandle,
}

/// How a [`HostileTotebox`] answers.
#[derive(Clone)]
pub struct Behaviour {
    /// What it writes into a query's result.
    pub script: Script,
    /// When set, it refuses every query with this exception text instead.
    pub refusal: Option<String>,
    /// Bytes of `detail` it answers every command with.
    pub command_detail: usize,
}

impl HostileTotebox {
    /// Serves `archive` on 127.0.0.1 to `orchestrator`, answering queries with `script`.
    pub async fn start(
        archive: &str,
        orchestrator: psp_core::PublicKey,
        script: Script,
    ) -> HostileTotebox {
        let behaviour = Behaviour {
            script,
            refusal: None,
            command_detail: 0,
        };
        Self::behaving(archive, orchestrator, behaviour).await
    }

    /// Serves `archive` on 127.0.0.1 to `orchestrator`, answering as `behaviour` says.
    pub async fn behaving(
        archive: &str,
        orchestrator: psp_core::PublicKey,
        behaviour: Behaviour,
    ) -> HostileTotebox {
        Self::paired_with(archive, vec![orchestrator], behaviour).await
    }

    /// [`HostileTotebox::behaving`], serving every key of `paired` (orchestrators, regional or
    /// not).
    pub async fn paired_with(
        archive: &str,
        paired: Vec<psp_core::PublicKey>,
        behaviour: Behaviour,
    ) -> HostileTotebox {
        let identity = IdentityKey::generate().unwrap();
        let tls = tls::server_config(&identity, PairedKeys::new(paired)).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let name = archive.to_owned();
        let bootstrap: psp_rpc::runtime::Bootstrap = Arc::new(move |_: Rc<Connection>| {
            let client: totebox::Client = capnp_rpc::new_client(Liar {
                archive: name.clone(),
                behaviour: behaviour.clone(),
            });
            client.client
        });
        let handle = psp_rpc::runtime::serve(listener, tls, bootstrap, Limits::default()).unwrap();
        HostileTotebox {
            archive: archive.to_owned(),
            key: identity.public(),
            handle,
        }
    }

    /// Where it listens.
    pub fn address(&self) -> std::net::SocketAddr {
        self.handle.local_addr()
    }

    /// A `[[fleet]]` entry for it.
    pub fn fleet_toml(&self, labels: &str) -> String {
        format!(
            "[[fleet]]\nid = \"{}\"\naddress = \"{}\"\nkey = \"{}\"\nlabels = {{ {labels} }}\n",
            self.archive,
            self.address(),
            self.key
        )
    }
}

struct Liar {
    archive: String,
    behaviour: Behaviour,
}

impl totebox::Server for Liar {
    async fn identify(
        self: Rc<Self>,
        _: totebox::IdentifyParams,
        mut results: totebox::IdentifyResults,
    ) -> Result<(), capnp::Error> {
        let mut r = results.get();
        r.set_archive(&self.archive);
        r.set_format_version(1);
        r.set_now(psp_core::window::now());
        Ok(())
    }

    async fn open(
        self: Rc<Self>,
        _: totebox::OpenParams,
        mut results: totebox::OpenResults,
    ) -> Result<(), capnp::Error> {
        // Any capability will do: this Totebox checks nothing.
        results
            .get()
            .set_session(capnp_rpc::new_client(LyingSession {
                behaviour: self.behaviour.clone(),
            }));
        Ok(())
    }

    async fn query(
        self: Rc<Self>,
        params: totebox::QueryParams,
        mut results: totebox::QueryResults,
    ) -> Result<(), capnp::Error> {
        self.behaviour
            .answer(params.get()?.get_query()?, results.get().init_result())
    }

    async fn command(
        self: Rc<Self>,
        _: totebox::CommandParams,
        mut results: totebox::CommandResults,
    ) -> Result<(), capnp::Error> {
        self.behaviour.outcome(results.get().init_outcome());
        Ok(())
    }
}

struct LyingSession {
    behaviour: Behaviour,
}

impl Behaviour {
    /// The script's answer to `query`, or the refusal.
    fn answer(
        &self,
        query: psp_schema::query_capnp::query::Reader<'_>,
        result: psp_schema::query_capnp::query_result::Builder<'_>,
    ) -> Result<(), capnp::Error> {
        if let Some(refusal) = &self.refusal {
            return Err(capnp::Error::failed(refusal.clone()));
        }
        let query = read_query(query).map_err(|e| capnp::Error::failed(e.to_string()))?;
        (self.script)(&query, result);
        Ok(())
    }

    /// A command outcome as long as the behaviour says.
    fn outcome(&self, mut outcome: psp_schema::totebox_capnp::command_outcome::Builder<'_>) {
        outcome.set_message("m".repeat(self.command_detail.min(4096)));
        outcome.set_detail(&vec![7u8; self.command_detail]);
    }
}

impl session::Server for LyingSession {
    async fn query(
        self: Rc<Self>,
        params: session::QueryParams,
        mut results: session::QueryResults,
    ) -> Result<(), capnp::Error> {
        self.behaviour
            .answer(params.get()?.get_query()?, results.get().init_result())
    }

    async fn command(
        self: Rc<Self>,
        _: session::CommandParams,
        mut results: session::CommandResults,
    ) -> Result<(), capnp::Error> {
        self.behaviour.outcome(results.get().init_outcome());
        Ok(())
    }
}

/// How a [`Rogue`] treats each connection, in turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Misbehaviour {
    /// Completes TLS, then reads and never answers.
    Hang,
    /// Completes TLS, then closes.
    Close,
    /// Completes TLS, then sends bytes that are no Cap'n Proto frame.
    Garbage,
    /// Answers `identify` with an exception.
    RefuseIdentify,
    /// Sends a `Bootstrap` upstream instead of answering `identify`: a diode violation.
    Bootstrap,
    /// Answers `identify`, answers nothing else, and 300 ms later, while idle, sends a
    /// `Bootstrap` upstream.
    LateBootstrap,
}

/// A Totebox that fails every session before it starts, in the ways `plan` lists (cycled).
pub struct Rogue {
    /// Its machine key.
    pub key: psp_core::PublicKey,
    /// Where it listens.
    pub address: std::net::SocketAddr,
    /// TLS sessions it completed.
    pub accepted: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Rogue {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Rogue {
    /// Listens on 127.0.0.1 for `orchestrator`.
    pub async fn start(orchestrator: psp_core::PublicKey, plan: Vec<Misbehaviour>) -> Rogue {
        let identity = IdentityKey::generate().unwrap();
        let config = tls::server_config(&identity, PairedKeys::new([orchestrator])).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        let task = tokio::spawn(async move {
            let acceptor = tokio_rustls::TlsAcceptor::from(config);
            let mut turn = 0usize;
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let how = plan[turn % plan.len()];
                turn += 1;
                let (acceptor, counter) = (acceptor.clone(), counter.clone());
                tokio::spawn(async move {
                    let Ok(stream) = acceptor.accept(tcp).await else {
                        return;
                    };
                    counter.fetch_add(1, Ordering::SeqCst);
                    misbehave(stream, how).await;
                });
            }
        });
        Rogue {
            key: identity.public(),
            address,
            accepted,
            task,
        }
    }

    /// A `[[fleet]]` entry for it.
    pub fn fleet_toml(&self, id: &str, labels: &str) -> String {
        format!(
            "[[fleet]]\nid = \"{id}\"\naddress = \"{}\"\nkey = \"{}\"\nlabels = {{ {labels} }}\n",
            self.address, self.key
        )
    }
}

async fn misbehave(
    mut stream: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    how: Misbehaviour,
) {
    match how {
        // Reads until the peer goes away, answering nothing (so the socket closes only when
        // the peer closes its side).
        Misbehaviour::Hang => {
            let mut sink = [0u8; 4096];
            while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
        }
        Misbehaviour::Close => {
            let _ = stream.shutdown().await;
        }
        Misbehaviour::Garbage => {
            let _ = stream.write_all(&[0xff; 64]).await;
            let mut sink = [0u8; 4096];
            while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
        }
        Misbehaviour::RefuseIdentify | Misbehaviour::Bootstrap | Misbehaviour::LateBootstrap => {
            while let Some(frame) = read_frame(&mut stream).await {
                let Ok(reader) =
                    capnp::serialize::read_message(&mut &frame[..], ReaderOptions::new())
                else {
                    return;
                };
                let Ok(root) = reader.get_root::<message::Reader<'_>>() else {
                    return;
                };
                let Ok(message::Call(Ok(call))) = root.which() else {
                    continue;
                };
                // A bootstrap upstream answers any call (a regional orchestrator's `fleet`
                // too); the others play a Totebox.
                if how != Misbehaviour::Bootstrap
                    && call.get_interface_id() != totebox::Client::TYPE_ID
                {
                    continue;
                }
                let question = call.get_question_id();
                let is_identify = call.get_method_id() == 0;
                if how == Misbehaviour::LateBootstrap && !is_identify {
                    continue;
                }
                let mut m = capnp::message::Builder::new_default();
                {
                    let root = m.init_root::<message::Builder<'_>>();
                    match how {
                        Misbehaviour::Bootstrap => root.init_bootstrap().set_question_id(0),
                        Misbehaviour::LateBootstrap => {
                            let mut ret = root.init_return();
                            ret.set_answer_id(question);
                            let mut r = ret
                                .init_results()
                                .init_content()
                                .init_as::<totebox::identify_results::Builder<'_>>();
                            r.set_archive("rogue");
                            r.set_format_version(1);
                            r.set_now(psp_core::window::now());
                        }
                        _ => {
                            let mut ret = root.init_return();
                            ret.set_answer_id(question);
                            ret.init_exception().set_reason("no");
                        }
                    }
                }
                let _ = stream
                    .write_all(&capnp::serialize::write_message_to_words(&m))
                    .await;
                if how == Misbehaviour::LateBootstrap {
                    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                    let mut late = capnp::message::Builder::new_default();
                    late.init_root::<message::Builder<'_>>()
                        .init_bootstrap()
                        .set_question_id(0);
                    let _ = stream
                        .write_all(&capnp::serialize::write_message_to_words(&late))
                        .await;
                }
            }
        }
    }
}

async fn read_frame(stream: &mut (impl tokio::io::AsyncRead + Unpin)) -> Option<Vec<u8>> {
    let segments = stream.read_u32_le().await.ok()? as usize + 1;
    if segments > 64 {
        return None;
    }
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

/// A script answering any query with one group whose `period` key is `fill` `bytes` times.
pub fn one_huge_group(fill: char, bytes: usize) -> Script {
    use psp_core::query::{Column, Group, Partial, QueryResult, ResultBody, Value, ValueType};
    Arc::new(move |_, builder| {
        let answer = QueryResult {
            as_of: 1,
            columns: vec![
                Column {
                    name: "period".into(),
                    value_type: ValueType::Text,
                },
                Column {
                    name: "n".into(),
                    value_type: ValueType::Int,
                },
            ],
            body: ResultBody::Groups(vec![Group {
                key: vec![Value::Text(fill.to_string().repeat(bytes))],
                records: 1,
                aggregates: vec![Partial::Count(1)],
            }]),
            suppressed_groups: 0,
            scanned_records: 1,
        };
        psp_core::query::wire::write_result(&answer, builder);
    })
}

/// A script answering any query with `groups` distinct periods named `<prefix>-<n>`, each a
/// valid one-record group of `count(*) as n` by `period`: a flood that is well-formed, so only
/// its size can set it aside.
pub fn flood(prefix: String, groups: usize) -> Script {
    use psp_core::query::{Column, Group, Partial, QueryResult, ResultBody, Value, ValueType};
    Arc::new(move |_, builder| {
        let answer = QueryResult {
            as_of: 1,
            columns: vec![
                Column {
                    name: "period".into(),
                    value_type: ValueType::Text,
                },
                Column {
                    name: "n".into(),
                    value_type: ValueType::Int,
                },
            ],
            body: ResultBody::Groups(
                (0..groups)
                    .map(|i| Group {
                        key: vec![Value::Text(format!("{prefix}-{i:012}-a-long-period-name"))],
                        records: 1,
                        aggregates: vec![Partial::Count(1)],
                    })
                    .collect(),
            ),
            suppressed_groups: 0,
            scanned_records: 1,
        };
        psp_core::query::wire::write_result(&answer, builder);
    })
}
