//! `palisade-broker service …` and `segment …`: the service catalog and the
//! inventory, straight on the database (a running broker follows the
//! catalog within a fraction of a second and re-decides live tunnels).
//! Every change is audited. `--json` prints what the web UI's API returns.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Subcommand;
use palisade_broker::db::Db;
use palisade_broker::inventory::{self, InventoryRow, LabelChange, Reachability};
use palisade_broker::policy_store;
use palisade_policies::{Engine, PolicyBundle};

use super::load_config;

#[derive(Debug, Subcommand)]
pub(super) enum ServiceCommand {
    /// Every service: segment, labels, connectors, and who can reach it under the active set.
    List {
        /// Data directory.
        #[arg(long)]
        data_dir: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// One service in detail.
    Show {
        /// Service name.
        name: String,
        /// Data directory.
        #[arg(long)]
        data_dir: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Place a service in a segment (live tunnels the new placement no longer allows close).
    Assign {
        /// Service name.
        name: String,
        /// Segment name (see `segment list`).
        #[arg(required_unless_present = "none")]
        segment: Option<String>,
        /// Take the service out of every segment: nobody reaches it.
        #[arg(long, conflicts_with = "segment")]
        none: bool,
        /// Set the protocol (tcp or http).
        #[arg(long)]
        protocol: Option<String>,
        /// Data directory.
        #[arg(long)]
        data_dir: PathBuf,
    },
    /// Add or remove labels (policies test them with `resource.labels.contains(...)`).
    Label {
        /// Service name.
        name: String,
        /// Label to add (repeatable).
        #[arg(long)]
        add: Vec<String>,
        /// Label to remove (repeatable).
        #[arg(long)]
        remove: Vec<String>,
        /// Data directory.
        #[arg(long)]
        data_dir: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub(super) enum SegmentCommand {
    /// Every segment and its services.
    List {
        /// Data directory.
        #[arg(long)]
        data_dir: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Create an empty segment.
    Create {
        /// Segment name.
        name: String,
        /// What it is for.
        #[arg(long, default_value = "")]
        description: String,
        /// Data directory.
        #[arg(long)]
        data_dir: PathBuf,
    },
    /// Delete an empty segment.
    Delete {
        /// Segment name.
        name: String,
        /// Data directory.
        #[arg(long)]
        data_dir: PathBuf,
    },
}

/// Opens the database with the catalog seeded from the config's
/// `[[services]]`, as the broker does at start (insert-if-missing).
async fn open(data_dir: &Path) -> anyhow::Result<Db> {
    let config = load_config(data_dir)?;
    let db = config.open_db().await.context("cannot open the database")?;
    inventory::seed_from_config(&db, &config).await.context("cannot seed the service catalog")?;
    Ok(db)
}

fn actor() -> String {
    match std::env::var("USER") {
        Ok(user) if !user.is_empty() => format!("cli:{user}"),
        _ => "cli".to_owned(),
    }
}

pub(super) async fn service(command: ServiceCommand) -> anyhow::Result<ExitCode> {
    match command {
        ServiceCommand::List { data_dir, json } => {
            let rows = inventory_rows(&data_dir).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                print_table(&rows);
            }
        }
        ServiceCommand::Show { name, data_dir, json } => {
            let rows = inventory_rows(&data_dir).await?;
            let row = rows.into_iter().find(|r| r.service.name == name).with_context(|| {
                format!("no service named {name:?}: `palisade-broker service list` shows the known ones")
            })?;
            if json {
                println!("{}", serde_json::to_string_pretty(&row)?);
            } else {
                print_one(&row);
            }
        }
        ServiceCommand::Assign { name, segment, none: _, protocol, data_dir } => {
            let db = open(&data_dir).await?;
            let result = inventory::assign(&db, &name, segment.as_deref(), protocol.as_deref(), &actor()).await;
            db.close().await;
            let record = result?;
            match &record.segment {
                Some(segment) => println!("service {} is in segment {segment} ({})", record.name, record.protocol),
                None => println!("service {} is in no segment: nobody reaches it", record.name),
            }
        }
        ServiceCommand::Label { name, add, remove, data_dir } => {
            let changes: Vec<LabelChange<'_>> =
                add.iter().map(|l| LabelChange::Add(l)).chain(remove.iter().map(|l| LabelChange::Remove(l))).collect();
            anyhow::ensure!(!changes.is_empty(), "give --add LABEL or --remove LABEL");
            let db = open(&data_dir).await?;
            let result = inventory::label(&db, &name, &changes, &actor()).await;
            db.close().await;
            let record = result?;
            println!("service {} labels: [{}]", record.name, record.labels.join(", "));
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) async fn segment(command: SegmentCommand) -> anyhow::Result<ExitCode> {
    match command {
        SegmentCommand::List { data_dir, json } => {
            let db = open(&data_dir).await?;
            let segments = inventory::segments(&db).await;
            db.close().await;
            let segments = segments?;
            if json {
                println!("{}", serde_json::to_string_pretty(&segments)?);
                return Ok(ExitCode::SUCCESS);
            }
            println!("{:<24}  {:<40}  SERVICES", "SEGMENT", "DESCRIPTION");
            for s in segments {
                println!("{:<24}  {:<40}  {}", s.name, s.description, s.services.join(", "));
            }
        }
        SegmentCommand::Create { name, description, data_dir } => {
            let db = open(&data_dir).await?;
            let result = inventory::create_segment(&db, &name, &description, &actor()).await;
            db.close().await;
            result?;
            println!("segment {name} created; place services in it with `palisade-broker service assign NAME {name}`");
        }
        SegmentCommand::Delete { name, data_dir } => {
            let db = open(&data_dir).await?;
            let result = inventory::delete_segment(&db, &name, &actor()).await;
            db.close().await;
            result?;
            println!("segment {name} deleted");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The inventory under the store's active version and the database catalog:
/// exactly the set a running broker decides with.
async fn inventory_rows(data_dir: &Path) -> anyhow::Result<Vec<InventoryRow>> {
    let db = open(data_dir).await?;
    let result = async {
        let (version, files) = policy_store::active(&db)
            .await?
            .context("no policy version is active yet: start the broker once, or `palisade-broker policy apply DIR`")?;
        let (_, services) = inventory::catalog(&db).await?;
        let engine = Engine::new(&PolicyBundle { version, files, services })
            .with_context(|| format!("active policy version {version} does not load"))?;
        anyhow::Ok(inventory::inventory(&db, &engine, None).await?)
    }
    .await;
    db.close().await;
    result
}

fn reach(row: &InventoryRow) -> String {
    match row.reachability {
        Reachability::Unassigned => "nobody (no segment)".to_owned(),
        Reachability::Nobody => "nobody (no policy allows a known identity)".to_owned(),
        Reachability::Reachable => row.reachable_by.join(", "),
    }
}

fn print_table(rows: &[InventoryRow]) {
    println!(
        "{:<24}  {:<16}  {:<5}  {:<20}  {:<20}  REACHABLE BY",
        "SERVICE", "SEGMENT", "PROTO", "LABELS", "CONNECTORS"
    );
    for row in rows {
        let s = &row.service;
        let connectors: Vec<&str> = s.connectors.iter().map(|c| c.name.as_str()).collect();
        println!(
            "{:<24}  {:<16}  {:<5}  {:<20}  {:<20}  {}",
            s.name,
            s.segment.as_deref().unwrap_or("-"),
            s.protocol,
            s.labels.join(","),
            if connectors.is_empty() { "-".to_owned() } else { connectors.join(",") },
            reach(row)
        );
    }
}

fn print_one(row: &InventoryRow) {
    let s = &row.service;
    println!("service:      {}", s.name);
    println!("segment:      {}", s.segment.as_deref().unwrap_or("(none: nobody reaches it)"));
    println!("protocol:     {}", s.protocol);
    println!("labels:       [{}]", s.labels.join(", "));
    println!("origin:       {}", s.origin);
    for c in &s.connectors {
        println!("connector:    {} ({}), last hello at unix {}", c.name, c.id, c.last_seen);
    }
    println!("reachable by: {}", reach(row));
}
