//! `palisade-broker init`: a data directory with a CA, a server certificate,
//! a database, a config file and a default policy.
//!
//! Init only ever adds what is missing. It never overwrites a file, and it
//! refuses a directory whose parts do not belong together (a CA certificate
//! without its key, a CA without the database that recorded it, a trust
//! domain other than the one recorded). Files are written to a temporary name,
//! synced, and published with a hard link, which fails instead of replacing.

use std::fs::{self, OpenOptions};
use std::io::Write as _;
use std::net::SocketAddr;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use palisade_proto::id::TrustDomain;
use serde_json::json;

use crate::audit::{Audit, AuditError, AuditEvent, EventKind, Outcome};
use crate::config::ServiceConfig;
use crate::db::{self, Db, meta};
use crate::issuance::ca::{self, CA_CERT_FILE, CA_KEY_FILE, Ca, CaError};
use crate::issuance::keystore::{self, Kek, KekSource};

/// The default trust domain.
pub const DEFAULT_TRUST_DOMAIN: &str = "palisade.local";
/// The database file in the data directory.
pub const DB_FILE: &str = "palisade.db";
/// The server certificate chain file.
pub const SERVER_CERT_FILE: &str = "server.pem";
/// The server key file.
pub const SERVER_KEY_FILE: &str = "server.key";
/// The config file.
pub const CONFIG_FILE: &str = "broker.toml";

const DEFAULT_POLICY: &str = r#"// Written by `palisade-broker init`. Anything not permitted here is denied.
//
// Machines (and people) in the ml-agents group may open tunnels to the
// services in the inference segment, and send them HTTP requests.
@id("ml-agents-inference")
permit (
  principal in Group::"ml-agents",
  action in [Action::"connect", Action::"http"],
  resource in Segment::"inference"
);
"#;

/// What to create.
#[derive(Clone, Debug, Default)]
pub struct InitOptions {
    /// The data directory (created 0700 if missing).
    pub data_dir: PathBuf,
    /// Trust domain for a new CA; if the directory has one, it must match.
    pub trust_domain: Option<TrustDomain>,
    /// Names for the server certificate. Default `localhost`, `127.0.0.1`.
    pub server_names: Vec<String>,
    /// Where the KEK lives; created there if missing and a new CA is made.
    pub kek_file: Option<PathBuf>,
    /// Value of `PALISADE_CA_KEK`, if set.
    pub kek_env: Option<String>,
    /// A directory of `*.cedar` files to copy into `<data_dir>/policies`.
    pub policy_src: Option<PathBuf>,
    /// `listen` for a new `broker.toml`.
    pub listen: Option<SocketAddr>,
    /// Services for a new `broker.toml`.
    pub services: Vec<ServiceConfig>,
    /// A database other than `<data_dir>/palisade.db`, e.g. `postgres://…`;
    /// written into a new `broker.toml`.
    pub database_url: Option<String>,
}

/// What init did.
#[derive(Clone, Debug)]
pub struct InitReport {
    /// The trust domain, new or recorded.
    pub trust_domain: TrustDomain,
    /// Files and directories created, relative to the data directory.
    pub created: Vec<String>,
    /// A new KEK was written into the data directory, beside the key it protects.
    pub kek_beside_key: bool,
}

/// Why init stopped.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// The data directory's parts do not belong together; nothing was changed.
    #[error("{}: inconsistent data directory: {reason}", dir.display())]
    Inconsistent {
        /// The data directory.
        dir: PathBuf,
        /// What does not fit.
        reason: String,
    },
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The CA could not be created or loaded.
    #[error(transparent)]
    Ca(#[from] CaError),
    /// The database failed.
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    /// The audit trail could not be written.
    #[error(transparent)]
    Audit(#[from] AuditError),
}

struct Layout {
    dir: PathBuf,
}

impl Layout {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
    fn exists(&self, name: &str) -> bool {
        self.path(name).exists()
    }
    fn inconsistent(&self, reason: impl Into<String>) -> InitError {
        InitError::Inconsistent { dir: self.dir.clone(), reason: reason.into() }
    }
}

/// Creates or completes a data directory.
///
/// # Errors
/// An inconsistent directory, a changed trust domain, a wrong KEK, or IO and database failures.
pub async fn init(opts: &InitOptions) -> Result<InitReport, InitError> {
    let layout = Layout { dir: opts.data_dir.clone() };
    let mut created = Vec::new();
    if ensure_dir(&layout.dir, 0o700)? {
        created.push(".".to_owned());
    }
    check_pairs(&layout)?;
    let db = match &opts.database_url {
        Some(url) => Db::open(url).await?.with_files_dir(&layout.dir),
        None => open_local_db(&layout, &mut created).await?,
    };
    let result = init_with_db(opts, &layout, &db, &mut created).await;
    db.close().await;
    let (trust_domain, kek_beside_key) = result?;
    Ok(InitReport { trust_domain, created, kek_beside_key })
}

/// The SQLite file in the data directory, which must exist if the CA does.
async fn open_local_db(layout: &Layout, created: &mut Vec<String>) -> Result<Db, InitError> {
    let db_existed = layout.exists(DB_FILE);
    if layout.exists(CA_CERT_FILE) && !db_existed {
        return Err(layout.inconsistent(format!(
            "{CA_CERT_FILE} exists but {DB_FILE} is missing: restore the database from a backup (it holds the audit trail), or start in a new directory"
        )));
    }
    let db = Db::open(&db::sqlite_url(&layout.path(DB_FILE))).await?;
    if !db_existed {
        created.push(DB_FILE.to_owned());
    }
    Ok(db)
}

async fn init_with_db(
    opts: &InitOptions,
    layout: &Layout,
    db: &Db,
    created: &mut Vec<String>,
) -> Result<(TrustDomain, bool), InitError> {
    let recorded_td = meta::get(db, meta::TRUST_DOMAIN).await?;
    let recorded_ca = meta::get(db, meta::CA_SHA256).await?;
    let td = pick_trust_domain(layout, opts.trust_domain.as_ref(), recorded_td.as_deref())?;
    let source = KekSource::choose(opts.kek_file.as_deref(), opts.kek_env.as_deref(), &layout.dir);
    let mut kek_beside_key = false;
    let mut ca = None;
    if layout.exists(CA_CERT_FILE) {
        adopt_existing_ca(layout, db, &td, recorded_ca.as_deref()).await?;
    } else if recorded_ca.is_some() {
        return Err(layout.inconsistent(format!(
            "the database records a CA but {CA_CERT_FILE} and {CA_KEY_FILE} are missing: restore them from a backup"
        )));
    } else {
        let (kek, new_beside) = kek_for_new_ca(&source, opts.kek_env.as_deref(), created)?;
        kek_beside_key = new_beside;
        ca = Some(create_ca(layout, db, &td, &kek, &source, created).await?);
    }
    if !layout.exists(SERVER_CERT_FILE) {
        let ca = match ca {
            Some(ca) => ca,
            None => Ca::load(&layout.dir, &source.read(opts.kek_env.as_deref())?)?,
        };
        write_server_cert(layout, &ca, &server_names(opts), created)?;
    }
    if !layout.exists(CONFIG_FILE) {
        write_new(&layout.path(CONFIG_FILE), render_config(opts).as_bytes(), 0o600)?;
        created.push(CONFIG_FILE.to_owned());
    }
    write_policies(layout, opts.policy_src.as_deref(), created)?;
    Ok((td, kek_beside_key))
}

fn check_pairs(layout: &Layout) -> Result<(), InitError> {
    for (a, b) in [(CA_CERT_FILE, CA_KEY_FILE), (SERVER_CERT_FILE, SERVER_KEY_FILE)] {
        match (layout.exists(a), layout.exists(b)) {
            (true, false) => return Err(layout.inconsistent(format!("{a} exists but {b} is missing"))),
            (false, true) => return Err(layout.inconsistent(format!("{b} exists but {a} is missing"))),
            _ => {}
        }
    }
    if layout.exists(SERVER_CERT_FILE) && !layout.exists(CA_CERT_FILE) {
        return Err(layout.inconsistent(format!("{SERVER_CERT_FILE} exists but the CA ({CA_CERT_FILE}) does not")));
    }
    Ok(())
}

fn pick_trust_domain(
    layout: &Layout,
    requested: Option<&TrustDomain>,
    recorded: Option<&str>,
) -> Result<TrustDomain, InitError> {
    let existing = match recorded {
        Some(td) => {
            Some(td.parse::<TrustDomain>().map_err(|e| layout.inconsistent(format!("recorded trust domain: {e}")))?)
        }
        None if layout.exists(CA_CERT_FILE) => Some(ca::read_ca_cert(&layout.dir)?.1),
        None => None,
    };
    match (existing, requested) {
        (Some(have), Some(want)) if &have != want => Err(layout.inconsistent(format!(
            "the trust domain is {have} and can never change (asked for {want}); use a new data directory for a new trust domain"
        ))),
        (Some(have), _) => Ok(have),
        (None, Some(want)) => Ok(want.clone()),
        (None, None) => DEFAULT_TRUST_DOMAIN.parse().map_err(|e| layout.inconsistent(format!("{e}"))),
    }
}

async fn adopt_existing_ca(
    layout: &Layout,
    db: &Db,
    td: &TrustDomain,
    recorded_ca: Option<&str>,
) -> Result<(), InitError> {
    let (der, ca_td) = ca::read_ca_cert(&layout.dir)?;
    if &ca_td != td {
        return Err(layout.inconsistent(format!("{CA_CERT_FILE} is for trust domain {ca_td}, the database says {td}")));
    }
    let digest = palisade_proto::enroll::hex(&palisade_proto::enroll::sha256(&der));
    match recorded_ca {
        Some(r) if r == digest => Ok(()),
        Some(_) => Err(layout.inconsistent(format!("{CA_CERT_FILE} is not the CA this database was created with"))),
        None => {
            let mut tx = db.begin_write().await?;
            meta::insert_once(&mut tx, meta::TRUST_DOMAIN, td.as_str()).await?;
            meta::insert_once(&mut tx, meta::CA_SHA256, &digest).await?;
            tx.commit().await?;
            Ok(())
        }
    }
}

fn kek_for_new_ca(source: &KekSource, env: Option<&str>, created: &mut Vec<String>) -> Result<(Kek, bool), InitError> {
    let path = match source {
        KekSource::Env => return Ok((source.read(env)?, false)),
        KekSource::File(p) | KekSource::DataDir(p) => p,
    };
    if path.exists() {
        return Ok((Kek::from_file(path)?, false));
    }
    let kek = Kek::generate()?;
    write_new(path, format!("{}\n", kek.to_base64()).as_bytes(), 0o600)?;
    let beside = matches!(source, KekSource::DataDir(_));
    created.push(if beside { "kek".to_owned() } else { path.display().to_string() });
    Ok((kek, beside))
}

async fn create_ca(
    layout: &Layout,
    db: &Db,
    td: &TrustDomain,
    kek: &Kek,
    source: &KekSource,
    created: &mut Vec<String>,
) -> Result<Ca, InitError> {
    let (ca, pkcs8) = Ca::create(td, SystemTime::now())?;
    write_new(&layout.path(CA_KEY_FILE), keystore::seal(kek, &pkcs8)?.as_bytes(), 0o600)?;
    write_new(&layout.path(CA_CERT_FILE), ca.cert_pem().as_bytes(), 0o644)?;
    created.extend([CA_KEY_FILE.to_owned(), CA_CERT_FILE.to_owned()]);
    let digest = palisade_proto::enroll::hex(&palisade_proto::enroll::sha256(ca.cert_der()));
    let kek_from = match source {
        KekSource::File(_) => "file",
        KekSource::Env => "env",
        KekSource::DataDir(_) => "data_dir",
    };
    let mut tx = db.begin_write().await?;
    meta::insert_once(&mut tx, meta::TRUST_DOMAIN, td.as_str()).await?;
    meta::insert_once(&mut tx, meta::CA_SHA256, &digest).await?;
    let event = AuditEvent::new(EventKind::BrokerInitialized, Outcome::Success)
        .actor("cli")
        .subject(format!("spiffe://{td}"))
        .detail(json!({ "ca_sha256": digest, "kek": kek_from }));
    Audit::record_in(&mut tx, event).await?;
    tx.commit().await?;
    Ok(ca)
}

fn server_names(opts: &InitOptions) -> Vec<String> {
    if opts.server_names.is_empty() { vec!["localhost".into(), "127.0.0.1".into()] } else { opts.server_names.clone() }
}

fn write_server_cert(layout: &Layout, ca: &Ca, names: &[String], created: &mut Vec<String>) -> Result<(), InitError> {
    let server = ca.issue_server(names, &uuid::Uuid::new_v4().to_string(), SystemTime::now())?;
    write_new(&layout.path(SERVER_KEY_FILE), server.key_pem.as_bytes(), 0o600)?;
    let chain = format!("{}{}", server.cert_pem, ca.cert_pem());
    write_new(&layout.path(SERVER_CERT_FILE), chain.as_bytes(), 0o644)?;
    created.extend([SERVER_KEY_FILE.to_owned(), SERVER_CERT_FILE.to_owned()]);
    Ok(())
}

fn write_policies(layout: &Layout, src: Option<&Path>, created: &mut Vec<String>) -> Result<(), InitError> {
    let dir = layout.path("policies");
    if dir.exists() {
        return Ok(());
    }
    let staging = layout.path(".policies.tmp");
    if staging.exists() {
        fs::remove_dir_all(&staging).map_err(|source| InitError::Io { path: staging.clone(), source })?;
    }
    ensure_dir(&staging, 0o755)?;
    match src {
        Some(src) => copy_cedar_files(src, &staging)?,
        None => write_new(&staging.join("default.cedar"), DEFAULT_POLICY.as_bytes(), 0o644)?,
    }
    fs::rename(&staging, &dir).map_err(|source| InitError::Io { path: dir.clone(), source })?;
    created.push("policies/".to_owned());
    Ok(())
}

fn copy_cedar_files(src: &Path, dest: &Path) -> Result<(), InitError> {
    let mut copied = 0;
    for entry in fs::read_dir(src).map_err(io_err(src))? {
        let path = entry.map_err(io_err(src))?.path();
        if path.extension().is_some_and(|e| e == "cedar") && path.is_file() {
            let text = fs::read(&path).map_err(io_err(&path))?;
            let name = path.file_name().unwrap_or_default();
            write_new(&dest.join(name), &text, 0o644)?;
            copied += 1;
        }
    }
    if copied == 0 {
        return Err(InitError::Io {
            path: src.to_owned(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no *.cedar files to copy"),
        });
    }
    Ok(())
}

/// Creates `dir` with `mode` if it does not exist; returns whether it did.
fn ensure_dir(dir: &Path, mode: u32) -> Result<bool, InitError> {
    let io = |source| InitError::Io { path: dir.to_owned(), source };
    if dir.exists() {
        if !dir.is_dir() {
            return Err(io(std::io::Error::new(std::io::ErrorKind::AlreadyExists, "exists and is not a directory")));
        }
        return Ok(false);
    }
    fs::create_dir_all(dir).map_err(io)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(mode)).map_err(io)?;
    Ok(true)
}

/// Writes a new file atomically: temp file with `mode`, fsync, hard link to
/// `path` (which fails if `path` exists: nothing is ever overwritten), fsync the directory.
///
/// # Errors
/// `path` exists, or an IO failure.
pub fn write_new(path: &Path, contents: &[u8], mode: u32) -> Result<(), InitError> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let _ = fs::remove_file(&tmp);
    let mut file = OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp).map_err(io_err(&tmp))?;
    let written = file.write_all(contents).and_then(|()| file.sync_all());
    drop(file);
    let published = written.and_then(|()| fs::hard_link(&tmp, path));
    let _ = fs::remove_file(&tmp);
    published.map_err(io_err(path))?;
    fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io_err(dir))
}

/// Replaces `path` atomically: temp file with `mode`, fsync, rename over `path`, fsync the directory.
///
/// # Errors
/// An IO failure; `path` is then unchanged.
pub fn replace_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), InitError> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let _ = fs::remove_file(&tmp);
    let mut file = OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp).map_err(io_err(&tmp))?;
    let written = file.write_all(contents).and_then(|()| file.sync_all());
    drop(file);
    if let Err(e) = written.and_then(|()| fs::rename(&tmp, path)) {
        let _ = fs::remove_file(&tmp);
        return Err(io_err(path)(e));
    }
    fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io_err(dir))
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> InitError + '_ {
    move |source| InitError::Io { path: path.to_owned(), source }
}

fn render_config(opts: &InitOptions) -> String {
    let q = |s: &str| toml::Value::String(s.to_owned()).to_string();
    let listen = opts.listen.map_or_else(|| "127.0.0.1:8443".to_owned(), |a| a.to_string());
    let names = server_names(opts).iter().map(|n| q(n)).collect::<Vec<_>>().join(", ");
    let kek = match &opts.kek_file {
        Some(p) => format!("kek_file = {}", q(&p.display().to_string())),
        None => "# kek_file = \"/run/secrets/palisade-kek\"   # else PALISADE_CA_KEK, else <data_dir>/kek".to_owned(),
    };
    let database = match &opts.database_url {
        Some(url) => format!("database_url = {}\n\n", q(url)),
        None => "# database_url = \"postgres://palisade@db.internal/palisade\"   # default: SQLite in the data directory\n\n"
            .to_owned(),
    };
    let services = if opts.services.is_empty() {
        "# [[services]]\n# name = \"llm-prod\"\n# segment = \"inference\"\n# protocol = \"http\"   # or \"tcp\"\n# labels = [\"gpu\"]\n".to_owned()
    } else {
        opts.services.iter().map(|s| render_service(s, &q)).collect::<Vec<_>>().join("\n")
    };
    format!(
        "# Palisade broker configuration, written by `palisade-broker init`.\n\
         # Any key can be overridden from the environment: PALISADE_ + the key's path in\n\
         # upper case with __ between levels, e.g. PALISADE_LISTEN or\n\
         # PALISADE_CERTIFICATES__MACHINE_TTL. Relative paths are relative to this file.\n\
         # See deploy/broker.example.toml for every key.\n\n\
         # HTTPS (TCP) and QUIC (UDP) on the same address and port.\n\
         listen = {}\n\n\
         # host:port that clients and connectors dial, if not `listen`.\n\
         # public_addr = \"broker.example.com:8443\"\n\n\
         # Names in the broker's server certificate (issued by init; edit, then delete\n\
         # server.pem and server.key and run init again to reissue).\n\
         server_names = [{names}]\n\n\
         {database}\
         [certificates]\nmachine_ttl = \"8h\"\nconnector_ttl = \"24h\"\n\n\
         [ca]\n{kek}\n\n\
         [relay]\nconnect_timeout = \"10s\"\nudp_buffer_bytes = 4194304\n\n\
         # The private services connectors serve; policies name them and their segment.\n\
         {services}",
        q(&listen)
    )
}

fn render_service(s: &ServiceConfig, q: &dyn Fn(&str) -> String) -> String {
    let labels = s.labels.iter().map(|l| q(l)).collect::<Vec<_>>().join(", ");
    format!(
        "[[services]]\nname = {}\nsegment = {}\nprotocol = {}\nlabels = [{labels}]\n",
        q(s.name.as_str()),
        q(&s.segment),
        q(&s.protocol)
    )
}
