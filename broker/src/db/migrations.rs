//! The schema's migrations, compiled into the broker binary.
//!
//! One list names the files of both directories under `migrations/`.
//! Version and description come from the file name the way sqlx reads a
//! migration directory (`0003_login.sql` is version 3, "login"), and sqlx
//! computes the checksum it records from the same text, so a database
//! migrated by an earlier build (which embedded the files through sqlx's
//! `migrate!` macro) sees exactly the rows it already holds. Building the
//! list here instead of through that macro keeps sqlx's compile-time half
//! (a second build of its drivers, SQLite's C code included) out of the
//! build. A test compares each list with sqlx's own reading of the
//! directory, so a migration file added but not listed here fails it.

use std::borrow::Cow;

use sqlx::SqlStr;
use sqlx::migrate::{MigrateError, Migration, MigrationType, Migrator};

use super::Backend;

/// Both directories hold the same schema, one file per step under the same
/// name in each dialect; this lists the names once and embeds each
/// directory's `(file name, contents)`.
macro_rules! embedded {
    ($($file:literal),* $(,)?) => {
        const SQLITE: &[(&str, &str)] = &[$(($file, include_str!(concat!("../../../migrations/sqlite/", $file)))),*];
        const POSTGRES: &[(&str, &str)] = &[$(($file, include_str!(concat!("../../../migrations/postgres/", $file)))),*];
    };
}

embedded!(
    "0001_initial.sql",
    "0002_sessions_revocations.sql",
    "0003_login.sql",
    "0004_audit_checkpoints.sql",
    "0005_policy_versions.sql",
    "0006_audit_sinks.sql",
    "0007_service_catalog.sql",
    "0008_audit_alerts.sql",
    "0009_assertion_keys.sql",
    "0010_broker_replicas.sql",
    "0014_change_notifications.sql",
    "0015_connector_links.sql",
    "0016_quota_usage.sql",
    "0017_alert_throttles.sql",
);

/// The migrator for `backend`'s schema.
pub(crate) fn migrator(backend: Backend) -> Result<Migrator, MigrateError> {
    let files = match backend {
        Backend::Sqlite => SQLITE,
        Backend::Postgres => POSTGRES,
    };
    let migrations = files.iter().map(|&(file, sql)| migration(file, sql)).collect::<Result<_, _>>()?;
    Ok(Migrator::with_migrations(migrations))
}

/// One migration from its file name (`<version>_<words_of_description>.sql`)
/// and text. A file that opens with `-- no-transaction` runs outside a
/// transaction, as sqlx's directory reader decides.
fn migration(file: &str, sql: &'static str) -> Result<Migration, MigrateError> {
    let unnamed =
        || MigrateError::Source(format!("migration file {file:?} is not named <version>_<description>.sql").into());
    let (version, rest) = file.split_once('_').ok_or_else(unnamed)?;
    let version: i64 = version.parse().map_err(|_| unnamed())?;
    let description = rest.strip_suffix(".sql").ok_or_else(unnamed)?.replace('_', " ");
    let no_tx = sql.starts_with("-- no-transaction");
    Ok(Migration::new(version, Cow::Owned(description), MigrationType::Simple, SqlStr::from_static(sql), no_tx))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    /// What sqlx records of a migration besides its checksum.
    fn name(m: &Migration) -> (i64, String, MigrationType, bool) {
        (m.version, m.description.to_string(), m.migration_type, m.no_tx)
    }

    async fn compare_with_directory(backend: Backend, dir: &str) {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../migrations").join(dir);
        let read = Migrator::new(path.as_path()).await.unwrap();
        let listed = migrator(backend).unwrap();
        assert_eq!(
            listed.iter().map(name).collect::<Vec<_>>(),
            read.iter().map(name).collect::<Vec<_>>(),
            "broker/src/db/migrations.rs must list every file of migrations/{dir}"
        );
        for (l, r) in listed.iter().zip(read.iter()) {
            assert_eq!(
                l.checksum, r.checksum,
                "migration {} of {dir}: the embedded text differs from the file",
                l.version
            );
        }
        assert!(listed.iter().count() > 10);
    }

    #[tokio::test]
    async fn the_sqlite_list_is_what_sqlx_reads_from_the_directory() {
        compare_with_directory(Backend::Sqlite, "sqlite").await;
    }

    #[tokio::test]
    async fn the_postgres_list_is_what_sqlx_reads_from_the_directory() {
        compare_with_directory(Backend::Postgres, "postgres").await;
    }

    #[test]
    fn a_misnamed_file_is_an_error_not_a_panic() {
        for bad in ["initial.sql", "x_initial.sql", "0001_initial.txt"] {
            let err = migration(bad, "SELECT 1").unwrap_err();
            assert!(err.to_string().contains(bad), "{err}");
        }
        let m = migration("0003_two_words.sql", "-- no-transaction\nSELECT 1").unwrap();
        assert_eq!((m.version, m.description.as_ref(), m.no_tx), (3, "two words", true));
    }
}
