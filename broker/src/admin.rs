//! The local admin channel: a Unix socket, `<data_dir>/admin.sock` (mode
//! 0600, in a 0700 directory), speaking JSON lines.
//!
//! Requests: `{"cmd":"policy_reload"}` → `{"ok":true,"version":N}` or
//! `{"ok":false,"error":"..."}`; `{"cmd":"ping"}` → `{"ok":true}`.
//!
//! The inventory's JSON API (there is no admin authentication over HTTPS
//! yet, so it lives here, where only the data directory's owner reaches it):
//! `inventory`, `segment_list`, `segment_create`, `segment_delete`,
//! `service_assign` and `service_label` answer `{"ok":true,"data":…}`; see
//! [`crate::inventory::api`]. `identity_groups` changes the groups of a
//! person or machine ([`groups`]).
//! Only the socket's owner (or root) may talk to it.

pub mod groups;
pub mod throttles;

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;

use crate::Broker;
use crate::audit::{Audit, AuditError, AuditEvent, EventKind, Outcome};
use crate::db::{Db, IdentityRecord, identities};

/// The socket's file name in the data directory.
pub const ADMIN_SOCKET: &str = "admin.sock";

const MAX_LINE: u64 = 64 * 1024;
const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

/// One request line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum AdminRequest {
    /// Re-read the policy directory.
    PolicyReload,
    /// Is anybody there?
    Ping,
    /// Every service with its connectors (and whether one is online here),
    /// segment, labels and who can reach it under the active set.
    Inventory,
    /// Every segment and its services.
    SegmentList,
    /// Creates an empty segment.
    SegmentCreate {
        /// Segment name.
        name: String,
        /// What it is for.
        #[serde(default)]
        description: String,
    },
    /// Deletes an empty segment.
    SegmentDelete {
        /// Segment name.
        name: String,
    },
    /// Places a service in a segment (`null`: in none), optionally setting its protocol.
    ServiceAssign {
        /// Service name.
        service: String,
        /// Segment name, or `null`.
        segment: Option<String>,
        /// `tcp` or `http`.
        #[serde(default)]
        protocol: Option<String>,
    },
    /// Adds and removes service labels.
    ServiceLabel {
        /// Service name.
        service: String,
        /// Labels to add.
        #[serde(default)]
        add: Vec<String>,
        /// Labels to remove.
        #[serde(default)]
        remove: Vec<String>,
    },
    /// Adds and removes groups of a person or machine.
    IdentityGroups {
        /// `user` or `machine`.
        role: String,
        /// A person's name, email or id; a machine's name or id.
        who: String,
        /// Groups to add (they count from the identity's next certificate).
        #[serde(default)]
        add: Vec<String>,
        /// Groups to remove (at once, live tunnels included).
        #[serde(default)]
        remove: Vec<String>,
    },
}

/// One response line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminResponse {
    /// Whether the command succeeded.
    pub ok: bool,
    /// The new policy version, after `policy_reload`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// What went wrong.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The answer of an inventory request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
}

impl AdminResponse {
    fn failed(error: impl Into<String>) -> Self {
        Self { ok: false, version: None, error: Some(error.into()), data: None }
    }
}

/// The admin channel failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// Another process already serves this data directory.
    #[error("another broker is already running with this data directory ({})", path.display())]
    InUse {
        /// The socket.
        path: PathBuf,
    },
    /// No broker listens on the socket.
    #[error("no broker is running for this data directory ({} does not answer): start it with `palisade-broker run`", path.display())]
    NotRunning {
        /// The socket.
        path: PathBuf,
    },
    /// The broker did not answer in time.
    #[error("the broker did not answer within {0:?}")]
    Timeout(Duration),
    /// A socket or file operation failed.
    #[error("admin socket {}: {source}", path.display())]
    Io {
        /// The socket.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The broker's answer was not understood.
    #[error("unexpected answer from the broker: {0}")]
    Protocol(String),
}

/// Binds `<data_dir>/admin.sock`, replacing a stale socket left by a broker that died.
///
/// # Errors
/// A live broker already holds the socket, or binding failed.
pub async fn bind(data_dir: &Path) -> Result<UnixListener, AdminError> {
    let path = data_dir.join(ADMIN_SOCKET);
    let io = |source| AdminError::Io { path: path.clone(), source };
    if path.exists() {
        if UnixStream::connect(&path).await.is_ok() {
            return Err(AdminError::InUse { path });
        }
        std::fs::remove_file(&path).map_err(io)?;
    }
    let listener = UnixListener::bind(&path).map_err(io)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    Ok(listener)
}

/// Answers admin requests until `shutdown`, then removes the socket file.
pub async fn serve(broker: Broker, listener: UnixListener, shutdown: CancellationToken) {
    let path = broker.config().data_dir.join(ADMIN_SOCKET);
    let owner = std::fs::metadata(&path).map(|m| m.uid()).ok();
    loop {
        let stream = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "admin socket accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let uid = stream.peer_cred().map(|c| c.uid()).ok();
        if uid.is_none() || (uid != owner && uid != Some(0)) {
            tracing::warn!(?uid, "admin connection from another user refused");
            continue;
        }
        tokio::spawn(handle(broker.clone(), stream));
    }
    let _ = std::fs::remove_file(&path);
}

async fn handle(broker: Broker, stream: UnixStream) {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read.take(MAX_LINE));
    let mut line = String::new();
    while matches!(lines.read_line(&mut line).await, Ok(n) if n > 0) {
        let response = match serde_json::from_str::<AdminRequest>(line.trim()) {
            Ok(request) => execute(&broker, request).await,
            Err(e) => AdminResponse::failed(format!("bad request: {e}")),
        };
        line.clear();
        let mut out = serde_json::to_vec(&response).unwrap_or_default();
        out.push(b'\n');
        if write.write_all(&out).await.is_err() {
            break;
        }
    }
}

async fn execute(broker: &Broker, request: AdminRequest) -> AdminResponse {
    match request {
        AdminRequest::Ping => AdminResponse { ok: true, version: None, error: None, data: None },
        AdminRequest::PolicyReload => match broker.policy().reload(broker).await {
            Ok(version) => {
                tracing::info!(version, "policy reloaded (admin socket)");
                AdminResponse { ok: true, version: Some(version), error: None, data: None }
            }
            Err(e) => {
                tracing::warn!(error = %e, "policy reload refused (admin socket)");
                AdminResponse::failed(e.to_string())
            }
        },
        request @ (AdminRequest::Inventory
        | AdminRequest::SegmentList
        | AdminRequest::SegmentCreate { .. }
        | AdminRequest::SegmentDelete { .. }
        | AdminRequest::ServiceAssign { .. }
        | AdminRequest::ServiceLabel { .. }) => match crate::inventory::api::execute(broker, request).await {
            Ok(data) => AdminResponse { ok: true, version: None, error: None, data: Some(data) },
            Err(e) => AdminResponse::failed(e.to_string()),
        },
        AdminRequest::IdentityGroups { role, who, add, remove } => {
            match identity_groups(broker, &role, who, groups::GroupEdit { add, remove }).await {
                Ok(data) => AdminResponse { ok: true, version: None, error: None, data: Some(data) },
                Err(e) => AdminResponse::failed(e),
            }
        }
    }
}

async fn identity_groups(
    broker: &Broker,
    role: &str,
    who: String,
    edit: groups::GroupEdit,
) -> Result<serde_json::Value, String> {
    let who = match role {
        "user" => groups::Who::User(who),
        "machine" => groups::Who::Machine(who),
        other => return Err(format!("role {other:?}: groups belong to a \"user\" or a \"machine\"")),
    };
    let identity = groups::resolve(broker.db(), &who).await.map_err(|e| e.to_string())?;
    let change = groups::change_groups(broker.db(), &identity, &edit, "admin").await.map_err(|e| e.to_string())?;
    tracing::info!(identity = %change.identity.id, added = ?change.added, removed = ?change.removed, "groups changed (admin socket)");
    // Enforce here without waiting for the next resync.
    broker.sync().announce();
    Ok(serde_json::json!({
        "id": change.identity.id, "role": change.identity.role.as_str(), "name": change.identity.name,
        "groups_before": change.before, "groups": change.identity.groups,
        "added": change.added, "removed": change.removed,
    }))
}

/// Sends one request to the broker serving `data_dir` and returns its answer.
///
/// # Errors
/// No broker is running, it did not answer in time, or the answer was garbled.
pub async fn request(data_dir: &Path, request: &AdminRequest) -> Result<AdminResponse, AdminError> {
    let path = data_dir.join(ADMIN_SOCKET);
    let exchange = async {
        let stream = UnixStream::connect(&path).await.map_err(|_| AdminError::NotRunning { path: path.clone() })?;
        let (read, mut write) = stream.into_split();
        let mut line = serde_json::to_vec(request).map_err(|e| AdminError::Protocol(e.to_string()))?;
        line.push(b'\n');
        write.write_all(&line).await.map_err(|source| AdminError::Io { path: path.clone(), source })?;
        let mut answer = String::new();
        BufReader::new(read.take(MAX_LINE))
            .read_line(&mut answer)
            .await
            .map_err(|source| AdminError::Io { path: path.clone(), source })?;
        serde_json::from_str(answer.trim()).map_err(|e| AdminError::Protocol(format!("{e}: {answer:?}")))
    };
    tokio::time::timeout(CLIENT_TIMEOUT, exchange).await.map_err(|_| AdminError::Timeout(CLIENT_TIMEOUT))?
}

/// Disables an identity and records `identity.disabled`, in one transaction.
/// Returns the identity as it was, or `None` if there is no such id.
///
/// A running broker sees the change in the database; certificates already
/// issued stay valid until they expire but new issuance is refused.
///
/// # Errors
/// A database or audit failure; nothing is changed then.
pub async fn disable_identity(db: &Db, id: &str, actor: &str) -> Result<Option<IdentityRecord>, AuditError> {
    let Some(record) = identities::get_any(db, id).await? else {
        return Ok(None);
    };
    let mut tx = db.begin_write().await?;
    if !identities::set_disabled_in(&mut tx, id, true).await? {
        return Ok(None);
    }
    let now = crate::db::unix_seconds(std::time::SystemTime::now());
    crate::db::revocations::record(
        &mut tx,
        crate::db::revocations::RevocationKind::Identity,
        id,
        "identity disabled",
        now,
    )
    .await?;
    let event = AuditEvent::new(EventKind::IdentityDisabled, Outcome::Success)
        .actor(actor)
        .subject(format!("{}/{}", record.role, record.id))
        .detail(serde_json::json!({ "name": record.name, "disabled": true }));
    Audit::record_in(&mut tx, event).await?;
    tx.commit().await?;
    Ok(Some(record))
}
