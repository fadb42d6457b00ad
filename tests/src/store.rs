//! Which database the brokers under test use.
//!
//! `PALISADE_TEST_STORE=postgres` runs every broker a test starts on its own,
//! freshly created PostgreSQL database on the server at `PALISADE_TEST_PG_URL`
//! (default `postgres://postgres@127.0.0.1:5432/postgres`); the database is
//! dropped when the test's [`crate::TestEnv`] goes (kept with
//! `PALISADE_TEST_KEEP`). Anything else, or nothing, is SQLite: a file in the
//! broker's data directory. `scripts/test` runs the end-to-end suite once
//! with each.

use std::sync::atomic::{AtomicU32, Ordering};

use sqlx::Connection as _;

/// The environment variable that picks the store.
pub const STORE_VAR: &str = "PALISADE_TEST_STORE";
/// The environment variable naming the PostgreSQL server (any database on it).
pub const PG_URL_VAR: &str = "PALISADE_TEST_PG_URL";
const DEFAULT_PG_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// The store the brokers in this test run use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Store {
    /// A file in each broker's data directory.
    Sqlite,
    /// A fresh database per broker on one PostgreSQL server.
    Postgres,
}

impl Store {
    /// The store picked by [`STORE_VAR`].
    #[must_use]
    pub fn current() -> Store {
        match std::env::var(STORE_VAR).as_deref() {
            Ok("postgres" | "postgresql" | "pg") => Store::Postgres,
            _ => Store::Sqlite,
        }
    }
}

/// Whether a test that makes sense on one store only runs in this run:
/// one about SQLite itself (its file on a full disk, say) runs in the SQLite
/// pass, one that needs PostgreSQL whatever the store (several broker
/// replicas on one database) in the PostgreSQL pass, so each runs once. Says
/// on stderr what was left out and why.
#[must_use]
pub fn runs_only_on(store: Store, what: &str) -> bool {
    let runs = Store::current() == store;
    if !runs {
        eprintln!("not run in this pass: {what} is for the {store:?} pass (PALISADE_TEST_STORE)");
    }
    runs
}

/// The PostgreSQL server's URL (any database on it).
#[must_use]
pub fn server_url() -> String {
    std::env::var(PG_URL_VAR).unwrap_or_else(|_| DEFAULT_PG_URL.to_owned())
}

/// A database created for one test; dropped (with any connection still
/// open to it) when this value is.
pub struct TestDatabase {
    name: String,
    url: String,
}

impl TestDatabase {
    /// Creates an empty database with a name no other test run uses.
    ///
    /// # Panics
    /// The server cannot be reached or refuses: the test cannot run.
    #[must_use]
    pub fn create() -> TestDatabase {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "palisade_t_{}_{}_{:08x}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed),
            rand::random::<u32>()
        );
        run_on_server(format!("CREATE DATABASE {name}"));
        let url = database_url(&server_url(), &name);
        TestDatabase { name, url }
    }

    /// The URL a broker is given.
    #[must_use]
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if std::env::var_os("PALISADE_TEST_KEEP").is_some() {
            eprintln!("kept database {}", self.url);
            return;
        }
        run_on_server(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name));
    }
}

/// `server` with its database part replaced by `name`.
fn database_url(server: &str, name: &str) -> String {
    let (base, query) = server.split_once('?').map_or((server, None), |(b, q)| (b, Some(q)));
    let authority_end = base.find("://").map_or(0, |i| i + 3);
    let base = match base[authority_end..].find('/') {
        Some(slash) => &base[..authority_end + slash],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{name}?{q}"),
        None => format!("{base}/{name}"),
    }
}

/// Runs one statement on the server, from a thread of its own so that it
/// works from `Drop` and from inside or outside a runtime alike.
fn run_on_server(statement: String) {
    let url = server_url();
    let outcome = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
        rt.block_on(async {
            let mut conn = sqlx::PgConnection::connect(&url).await?;
            sqlx::raw_sql(sqlx::AssertSqlSafe(statement)).execute(&mut conn).await?;
            conn.close().await
        })
    })
    .join()
    .expect("the database thread does not panic");
    if let Err(e) = outcome {
        if std::thread::panicking() {
            eprintln!("PostgreSQL at {}: {e}", server_url());
        } else {
            panic!(
                "PostgreSQL at {} ({PG_URL_VAR}): {e}; is the server running? scripts/test starts one",
                server_url()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::database_url;

    #[test]
    fn the_database_part_of_a_url_is_replaced() {
        assert_eq!(database_url("postgres://u@h:5432/postgres", "x"), "postgres://u@h:5432/x");
        assert_eq!(database_url("postgres://u@h:5432", "x"), "postgres://u@h:5432/x");
        assert_eq!(database_url("postgres://u@h/db?sslmode=disable", "x"), "postgres://u@h/x?sslmode=disable");
    }
}
