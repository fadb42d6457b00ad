//! `palisade-broker user groups` and `machine groups`: add and remove
//! groups; a removal cuts live tunnels it no longer allows within a second.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use palisade_broker::admin::groups::{self, GroupChange, GroupEdit, Who};

use super::load_config;

/// The groups to change, shared by `user groups` and `machine groups`.
#[derive(Debug, Args)]
pub(super) struct GroupArgs {
    /// Data directory.
    #[arg(long)]
    data_dir: PathBuf,
    /// Group to add (repeatable); counts from the identity's next certificate.
    #[arg(long = "add", value_name = "GROUP")]
    add: Vec<String>,
    /// Group to remove (repeatable); takes effect at once, live tunnels included.
    #[arg(long = "remove", value_name = "GROUP")]
    remove: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub(super) enum MachineCommand {
    /// Add or remove a machine's groups.
    #[command(
        after_help = "Examples:\n  palisade-broker machine groups --data-dir /var/lib/palisade eval-agent --remove ml-agents\n  palisade-broker machine groups --data-dir /var/lib/palisade eval-agent --add gpu-team --remove interns"
    )]
    Groups {
        /// The machine's name or id.
        name: String,
        #[command(flatten)]
        edit: GroupArgs,
    },
}

pub(super) async fn machine(command: MachineCommand) -> anyhow::Result<ExitCode> {
    match command {
        MachineCommand::Groups { name, edit } => change(Who::Machine(name), edit).await,
    }
}

/// Applies the edit through the database (a running broker, and every
/// replica, picks it up from there) and says what changed.
pub(super) async fn change(who: Who, args: GroupArgs) -> anyhow::Result<ExitCode> {
    let edit = GroupEdit { add: args.add, remove: args.remove };
    edit.check()?;
    let config = load_config(&args.data_dir)?;
    let db = config.open_db().await.context("cannot open the database")?;
    let result = async {
        let identity = groups::resolve(&db, &who).await?;
        groups::change_groups(&db, &identity, &edit, "cli").await
    };
    let result = result.await;
    db.close().await;
    println!("{}", report(&result?));
    Ok(ExitCode::SUCCESS)
}

fn report(change: &GroupChange) -> String {
    let who = format!("{} {} ({})", change.identity.role, change.identity.name, change.identity.id);
    let now = if change.identity.groups.is_empty() { "none".to_owned() } else { change.identity.groups.join(", ") };
    if change.is_unchanged() {
        return format!("{who}: no change; groups: {now}");
    }
    let mut lines = vec![format!("{who}: groups now {now}")];
    if !change.removed.is_empty() {
        lines.push(format!(
            "  removed {}: live tunnels that needed it close within a second",
            change.removed.join(", ")
        ));
    }
    if !change.added.is_empty() {
        lines.push(format!("  added {}: counts from the identity's next certificate", change.added.join(", ")));
    }
    lines.join("\n")
}
