//! Accepting a QUIC connection: finish the handshake in bounded time, then
//! decide who the peer is and whether it may use the connection the way its
//! ALPN says (a machine certificate cannot register as a connector, and the
//! reverse).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use palisade_proto::identity::{PeerRole, VerifiedPeer, verify_peer};
use palisade_proto::reject::close;
use palisade_proto::wire::{ALPN_CLIENT, ALPN_CONNECTOR};
use quinn::VarInt;
use rustls_pki_types::CertificateDer;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::audit::{AuditEvent, EventKind, Outcome};
use crate::db;
use crate::state::Broker;

/// A handshake that has not completed by then is dropped, freeing its slot.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Streams of one connection that may be between their header and their
/// splice (deciding, being audited, reaching the connector) at once. The
/// audit trail and the connectors take work in arrival order, so a client
/// opening thousands of streams at once would otherwise put every other
/// identity's next stream behind all of its own; beyond this many,
/// its streams wait their turn here and others' go straight through.
pub(super) const ADMISSIONS_PER_CONNECTION: usize = 32;

/// What the connection is for, from its ALPN protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Purpose {
    Client,
    Connector,
}

impl Purpose {
    fn roles(self) -> &'static [PeerRole] {
        match self {
            Self::Client => &[PeerRole::User, PeerRole::Machine],
            Self::Connector => &[PeerRole::Connector],
        }
    }
}

/// An authenticated peer on one QUIC connection.
pub struct Peer {
    /// Who it is.
    pub identity: VerifiedPeer,
    /// Its certificate chain (DER), forwarded to connectors so they can verify it themselves.
    pub chain: Vec<Vec<u8>>,
    conn: quinn::Connection,
    /// The address its live streams were last decided from.
    decided_from: std::sync::Mutex<SocketAddr>,
    /// Permits for streams being admitted ([`ADMISSIONS_PER_CONNECTION`]).
    pub(super) admissions: tokio::sync::Semaphore,
}

impl Peer {
    /// Where it connects from now. QUIC lets a client move (NAT rebinding,
    /// a new network) without a new handshake, so every decision and audit
    /// event reads the address afresh instead of keeping the one it had at
    /// the handshake.
    pub fn remote(&self) -> SocketAddr {
        self.conn.remote_address()
    }

    /// If the peer moved since its live streams were last decided: where
    /// from and where to, remembering the new address as decided.
    pub(super) fn moved(&self) -> Option<(SocketAddr, SocketAddr)> {
        let now = self.remote();
        let mut decided = self.decided_from.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        (*decided != now).then(|| (std::mem::replace(&mut *decided, now), now))
    }
}

/// Runs one admitted connection, from its handshake to its end.
///
/// `accepted` is what `Incoming::accept` returned: the caller accepts before
/// spawning this task, so the endpoint counts the handshake at once.
pub(crate) async fn handle(
    broker: Broker,
    remote: SocketAddr,
    accepted: Result<quinn::Connecting, quinn::ConnectionError>,
    shutdown: CancellationToken,
) {
    let handshake = match accepted {
        Ok(connecting) => tokio::time::timeout(HANDSHAKE_TIMEOUT, connecting).await,
        Err(e) => Ok(Err(e)),
    };
    let conn = match handshake {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => return refused(&broker, remote, None, &format!("handshake failed: {e}")).await,
        Err(_) => return refused(&broker, remote, None, "handshake timed out").await,
    };
    let (purpose, peer, groups) = match identify(&broker, &conn).await {
        Ok(found) => found,
        Err(refusal) => {
            conn.close(VarInt::from_u32(refusal.code), refusal.reason.as_bytes());
            return refused(&broker, remote, None, &refusal.reason).await;
        }
    };
    let accepted = AuditEvent::new(EventKind::QuicAccepted, Outcome::Success)
        .actor(peer.identity.id().uri())
        .detail(json!({ "remote": remote.to_string(), "purpose": format!("{purpose:?}").to_lowercase(),
                        "serial": peer.identity.serial_hex() }));
    if let Err(e) = broker.audit().record(accepted).await {
        if broker.config().audit.trail.when_unavailable == crate::config::WhenUnavailable::Allow {
            tracing::error!(error = %e, %remote, "audit unavailable; accepting the connection unaudited ([audit] when_unavailable = \"allow\")");
        } else {
            tracing::error!(error = %e, "audit unavailable; refusing the connection");
            conn.close(VarInt::from_u32(close::UNAVAILABLE), b"audit unavailable");
            return;
        }
    }
    let peer = Arc::new(peer);
    match purpose {
        Purpose::Client => serve_client(broker, conn, peer, &groups, shutdown).await,
        Purpose::Connector => crate::control::link::serve(broker, conn, peer, shutdown).await,
    }
}

/// Why a connection was closed right after its handshake.
struct Refusal {
    code: u32,
    reason: String,
}

impl From<String> for Refusal {
    fn from(reason: String) -> Self {
        Self { code: close::IDENTITY_REJECTED, reason }
    }
}

impl From<&str> for Refusal {
    fn from(reason: &str) -> Self {
        Self::from(reason.to_owned())
    }
}

fn revoked(reason: String) -> Refusal {
    Refusal { code: close::REVOKED, reason }
}

/// Who the peer is, and its groups as the database says now.
async fn identify(broker: &Broker, conn: &quinn::Connection) -> Result<(Purpose, Peer, Vec<String>), Refusal> {
    let alpn = conn
        .handshake_data()
        .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|d| d.protocol);
    let purpose = match alpn.as_deref() {
        Some(p) if p == ALPN_CLIENT => Purpose::Client,
        Some(p) if p == ALPN_CONNECTOR => Purpose::Connector,
        _ => return Err(Refusal { code: close::BAD_PROTOCOL, reason: "unknown application protocol".into() }),
    };
    let chain: Vec<CertificateDer<'static>> = conn
        .peer_identity()
        .and_then(|id| id.downcast::<Vec<CertificateDer<'static>>>().ok())
        .map(|chain| *chain)
        .ok_or("no client certificate")?;
    let identity =
        verify_peer(&chain, broker.trust(), SystemTime::now(), purpose.roles()).map_err(|e| e.to_string())?;
    let record = db::identities::get(broker.db(), identity.role(), &identity.id().id)
        .await
        .map_err(|e| format!("identity lookup failed: {e}"))?;
    let groups = match record {
        Some(r) if !r.disabled => r.groups,
        Some(_) => return Err(revoked(format!("identity {} is disabled", identity.id()))),
        None => return Err(format!("identity {} is unknown", identity.id()).into()),
    };
    check_session(broker, &identity)
        .await
        .map_err(|reason| if reason.contains("revoked") { revoked(reason) } else { Refusal::from(reason) })?;
    let chain = chain.iter().map(|c| c.to_vec()).collect();
    let decided_from = std::sync::Mutex::new(conn.remote_address());
    let admissions = tokio::sync::Semaphore::new(ADMISSIONS_PER_CONNECTION);
    Ok((purpose, Peer { identity, chain, conn: conn.clone(), decided_from, admissions }, groups))
}

/// People's certificates name a sign-in session that must still be active;
/// machine and connector certificates may name none.
async fn check_session(broker: &Broker, identity: &VerifiedPeer) -> Result<(), String> {
    let Some(session) = identity.session() else {
        return if identity.role() == PeerRole::User {
            Err("a person's certificate must name a session".into())
        } else {
            Ok(())
        };
    };
    let now = crate::db::unix_seconds(SystemTime::now());
    match db::sessions::get(broker.db(), session).await.map_err(|e| format!("session lookup failed: {e}"))? {
        Some(s) if s.identity_id != identity.id().id => Err("the session belongs to another identity".into()),
        Some(s) if s.revoked_at.is_some() => Err("session revoked".into()),
        Some(s) if s.is_active(now) => Ok(()),
        Some(_) => Err("session expired".into()),
        None => Err("unknown session".into()),
    }
}

async fn refused(broker: &Broker, remote: SocketAddr, actor: Option<String>, reason: &str) {
    tracing::info!(%remote, reason, "QUIC connection refused");
    let mut event = AuditEvent::new(EventKind::QuicRefused, Outcome::Failure)
        .detail(json!({ "remote": remote.to_string(), "reason": reason }));
    if let Some(actor) = actor {
        event = event.actor(actor);
    }
    if let Err(e) = broker.audit().record(event).await {
        tracing::error!(error = %e, "could not audit a refused connection");
    }
}

async fn serve_client(
    broker: Broker,
    conn: quinn::Connection,
    peer: Arc<Peer>,
    groups: &[String],
    shutdown: CancellationToken,
) {
    let identity = peer.identity.id().id.clone();
    let limit = broker.config().relay.max_connections_per_identity;
    if !broker.live().try_add(&identity, peer.identity.session(), &conn, limit, groups) {
        conn.close(VarInt::from_u32(close::TOO_MANY_CONNECTIONS), b"too many connections for this identity");
        return refused(&broker, peer.remote(), Some(peer.identity.id().uri()), "per-identity connection limit").await;
    }
    accept_streams(&broker, &conn, &peer, &shutdown).await;
    broker.live().remove(&identity, &conn);
}

async fn accept_streams(broker: &Broker, conn: &quinn::Connection, peer: &Arc<Peer>, shutdown: &CancellationToken) {
    loop {
        let stream = tokio::select! {
            () = shutdown.cancelled() => break,
            stream = conn.accept_bi() => stream,
        };
        match stream {
            Ok((send, recv)) => {
                tokio::spawn(super::open::handle(broker.clone(), peer.clone(), send, recv));
            }
            Err(e) => {
                tracing::debug!(peer = %peer.identity.id(), error = %e, "client connection ended");
                return;
            }
        }
    }
    conn.close(VarInt::from_u32(close::SHUTTING_DOWN), b"broker shutting down");
}
