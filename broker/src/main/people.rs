//! `palisade-broker user …` and `session …`: thin wrappers over `login::manage`
//! (`user groups` is in `groups_cmd`).

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;
use palisade_broker::admin;
use palisade_broker::db::{Db, sessions, users};
use palisade_broker::login::{local, manage};

use super::{SessionCommand, UserCommand, load_config};

async fn open(data_dir: &Path) -> anyhow::Result<(palisade_broker::config::Config, Db)> {
    let config = load_config(data_dir)?;
    let db = config.open_db().await.context("cannot open the database")?;
    Ok((config, db))
}

fn when(unix: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(u64::try_from(unix).unwrap_or(0));
    humantime::format_rfc3339_seconds(t).to_string()
}

pub(super) async fn user(command: UserCommand) -> anyhow::Result<ExitCode> {
    match command {
        UserCommand::Invite { data_dir, email, groups, name } => {
            let (config, db) = open(&data_dir).await?;
            let invited =
                local::create_invite(&db, &config.public_url(), &email, name.as_deref(), &groups, "cli").await;
            db.close().await;
            let invited = invited?;
            println!("{}", invited.link);
            eprintln!(
                "invite for {email} (user {}, id {}) valid until {}; send the link to them only: it works once",
                invited.name,
                invited.identity_id,
                when(invited.expires_at)
            );
        }
        UserCommand::List { data_dir } => {
            let (_, db) = open(&data_dir).await?;
            let list = users::list(&db).await;
            db.close().await;
            println!("{:<36}  {:<24}  {:<8}  {:<30}  GROUPS", "ID", "NAME", "STATE", "EMAIL");
            for u in list? {
                let state = if u.identity.disabled { "disabled" } else { "active" };
                let email = u.email.unwrap_or_default();
                println!(
                    "{:<36}  {:<24}  {state:<8}  {email:<30}  {}",
                    u.identity.id,
                    u.identity.name,
                    u.identity.groups.join(",")
                );
            }
        }
        UserCommand::Groups { who, edit } => {
            return super::groups_cmd::change(palisade_broker::admin::groups::Who::User(who), edit).await;
        }
        UserCommand::Disable { data_dir, who } => {
            let (_, db) = open(&data_dir).await?;
            let result = async {
                let user = manage::find_user(&db, &who).await?;
                admin::disable_identity(&db, &user.identity.id, "cli").await?;
                let revoked = manage::revoke_sessions_of(&db, &user.identity.id, "cli", "identity disabled").await?;
                anyhow::Ok((user, revoked))
            };
            let result = result.await;
            db.close().await;
            let (user, revoked) = result?;
            println!(
                "user {} ({}) disabled; {} session(s) revoked",
                user.identity.name,
                user.identity.id,
                revoked.len()
            );
        }
        UserCommand::ResetCredentials { data_dir, who } => {
            let (config, db) = open(&data_dir).await?;
            let result = async {
                let user = manage::find_user(&db, &who).await?;
                let reset = manage::reset_credentials(&db, &user, &config.public_url(), "cli").await?;
                anyhow::Ok((user, reset))
            };
            let result = result.await;
            db.close().await;
            let (user, reset) = result?;
            println!(
                "user {} ({}): {} credential(s) removed, {} session(s) revoked",
                user.identity.name,
                user.identity.id,
                reset.removed,
                reset.sessions.len()
            );
            if let Some(link) = reset.invite_link {
                println!("new invite link (local account): {link}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) async fn session(command: SessionCommand) -> anyhow::Result<ExitCode> {
    match command {
        SessionCommand::List { data_dir, user } => {
            let (_, db) = open(&data_dir).await?;
            let result = async {
                let who = match user {
                    Some(who) => Some(manage::find_user(&db, &who).await?.identity.id),
                    None => None,
                };
                let now = palisade_broker::db::unix_seconds(std::time::SystemTime::now());
                anyhow::Ok(sessions::list_active(&db, who.as_deref(), now).await?)
            };
            let result = result.await;
            db.close().await;
            println!("{:<36}  {:<36}  {:<20}  {:<20}  METHODS", "SESSION", "USER", "EXPIRES", "MFA");
            for s in result? {
                let mfa = s.record.mfa_at.map(when).unwrap_or_default();
                println!(
                    "{:<36}  {:<36}  {:<20}  {mfa:<20}  {}",
                    s.record.id,
                    s.record.identity_id,
                    when(s.record.expires_at),
                    s.auth_methods.join(",")
                );
            }
        }
        SessionCommand::Revoke { data_dir, id } => {
            let (_, db) = open(&data_dir).await?;
            let result = manage::revoke_session(&db, &id, "cli").await;
            db.close().await;
            result?;
            println!("session {id} revoked");
        }
    }
    Ok(ExitCode::SUCCESS)
}
