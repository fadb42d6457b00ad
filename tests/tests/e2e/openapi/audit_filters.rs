//! UI-14: the audit trail's filters (`GET /admin/audit`) take SQL
//! metacharacters, NUL, wildcards and very long text as data: every answer
//! is a page (200, or 400 with a message) that matches nothing it should
//! not, says nothing about the database, and leaves the trail intact. Runs
//! on SQLite and, in the PostgreSQL pass of `scripts/test`, on PostgreSQL.
//! Then schemathesis fuzzes the same page and its export as the admin.

use palisade_tests::TestEnv;

use super::fuzz::run;
use super::{ADMIN, SESSION_COOKIE, broker, http, session_of};

/// Text filters of the page.
const FILTERS: [&str; 5] = ["person", "machine", "service", "kind", "outcome"];
/// Filters that are numbers or flags.
const OTHERS: [&str; 4] = ["hours", "before", "trail", "audit_size"];

/// What a database error, or a 5xx page, would put in the body.
pub(crate) const LEAKS: [&str; 10] = [
    "error returned from database",
    "sqlx",
    "SQLite",
    "sqlite",
    "PostgreSQL",
    "syntax error",
    "invalid byte sequence",
    "database:",
    "Something went wrong",
    "unrecognized token",
];

fn payloads() -> Vec<String> {
    let mut p: Vec<String> = [
        "' OR 1=1 --",
        "' OR '1'='1",
        "\"; DROP TABLE audit_events; --",
        "x' UNION SELECT seq, kind FROM audit_events --",
        "%",
        "_",
        "\\",
        "%' --",
        "\0",
        "alice\0' OR 1=1",
        "$1",
        "?",
        "é' ∀ 🦀",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    p.push("'".repeat(5_000));
    p.push("a".repeat(20_000));
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_filters_take_sql_metacharacters_as_data_and_never_show_a_database_error() {
    let env = TestEnv::new();
    let broker = broker(&env).await;
    let admin = session_of(&broker, ADMIN).await;
    let client = http(&broker);
    let page = |query: Vec<(String, String)>| {
        let url = format!("{}/admin/audit", broker.public_url().trim_end_matches('/'));
        let request = client.get(url).query(&query).header("cookie", format!("{SESSION_COOKIE}={admin}"));
        async move {
            let response = request.send().await.expect("the audit page answers");
            (response.status().as_u16(), response.text().await.unwrap_or_default())
        }
    };

    let mut wrong = Vec::new();
    for key in FILTERS.iter().chain(&OTHERS) {
        for value in payloads() {
            let (status, body) = page(vec![((*key).to_owned(), value.clone())]).await;
            let shown: String = value.chars().take(40).collect();
            if !matches!(status, 200 | 400) {
                wrong.push(format!("{key}={shown:?}: status {status}"));
            }
            if let Some(leak) = LEAKS.iter().find(|l| body.contains(*l)) {
                wrong.push(format!("{key}={shown:?}: the page shows {leak:?}"));
            }
            if value.contains('\0') && ["person", "machine", "service"].contains(key) && status != 400 {
                wrong.push(format!("{key}={shown:?}: status {status}, not 400 for a NUL"));
            }
            if *key == "service" && status == 200 && !body.contains("No event matches") {
                wrong.push(format!("service={shown:?} matched events"));
            }
        }
    }
    assert!(wrong.is_empty(), "audit filters misbehave:\n{}", wrong.join("\n"));

    let (status, body) = page(Vec::new()).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("Hash chain intact"), "the trail is intact after the attempts:\n{body}");
    assert!(body.contains("session.created"), "the unfiltered trail still lists events:\n{body}");

    let cookie = format!("Cookie: {SESSION_COOKIE}={admin}");
    let base = broker.public_url();
    run(&broker, "admin-audit", &base, &["--include-path-regex", "^/admin/audit", "--header", &cookie]).await;
}
