//! `palisade-broker connector list`: every enrolled connector with its
//! state, the replicas it is linked to, its version and when it was last seen.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use clap::Subcommand;
use palisade_broker::db::{connector_links, identities, unix_seconds};
use palisade_proto::identity::PeerRole;

use super::load_config;

/// `palisade-broker connector …`.
#[derive(Debug, Subcommand)]
pub(super) enum ConnectorCommand {
    /// Every connector: enabled or disabled, online (through which replicas) or offline, version, last seen.
    #[command(after_help = "Examples:\n  palisade-broker connector list --data-dir /var/lib/palisade")]
    List {
        /// The broker's data directory.
        #[arg(long)]
        data_dir: PathBuf,
    },
}

pub(super) async fn connector(command: ConnectorCommand) -> anyhow::Result<ExitCode> {
    let ConnectorCommand::List { data_dir } = command;
    let config = load_config(&data_dir)?;
    let db = config.open_db().await.context("cannot open the database")?;
    let now = unix_seconds(SystemTime::now());
    let listed = async {
        let connectors = identities::list(&db, PeerRole::Connector).await?;
        Ok::<_, sqlx::Error>((connectors, connector_links::statuses(&db, now).await?))
    }
    .await;
    db.close().await;
    let (connectors, statuses) = listed.context("cannot read the connectors")?;
    println!("{:<24}  {:<8}  {:<28}  {:<10}  {:<20}  ID", "NAME", "STATE", "LINK", "VERSION", "LAST SEEN");
    for connector in connectors {
        let (id, name) = (&connector.id, &connector.name);
        let state = if connector.disabled { "disabled" } else { "enabled" };
        let (link, version, seen) = match statuses.get(id) {
            Some(s) if s.online() => {
                (format!("online via {}", s.linked_to.join(",")), s.version.clone(), "now".to_owned())
            }
            Some(s) => ("offline".to_owned(), s.version.clone(), when(s.last_seen)),
            None => ("never linked".to_owned(), "-".to_owned(), "-".to_owned()),
        };
        println!("{name:<24}  {state:<8}  {link:<28}  {version:<10}  {seen:<20}  {id}");
    }
    Ok(ExitCode::SUCCESS)
}

fn when(unix: i64) -> String {
    let t = SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(unix).unwrap_or(0));
    humantime::format_rfc3339_seconds(t).to_string()
}
