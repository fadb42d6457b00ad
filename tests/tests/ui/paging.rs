//! Tables that grow are paged on the server: the People table (with more
//! people than a page holds) and the audit trail say which rows they show
//! of how many, go forward and back from the keyboard, change their page
//! size, and answer bad paging parameters with a 400 that says what is
//! wrong, never a 5xx.

use palisade_tests::open_db;

use crate::deployment::Ui;

/// People added straight into the database (names after every real one).
const FILLERS: usize = 14;

async fn add_fillers(ui: &Ui) {
    let db = open_db(ui.broker.database_url()).await;
    for i in 0..FILLERS {
        let (id, name) = (format!("filler-{i:02}"), format!("zz-filler-{i:02}"));
        sqlx::query(
            "INSERT INTO identities (id, role, name, groups, disabled, created_at) VALUES ($1, 'user', $2, '[]', 0, 0)",
        )
        .bind(&id)
        .bind(&name)
        .execute(&db)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO users (identity_id, issuer, subject, email, display_name, created_at, last_login) \
             VALUES ($1, 'https://idp.example', $2, $3, NULL, 0, NULL)",
        )
        .bind(&id)
        .bind(&id)
        .bind(format!("{name}@example.com"))
        .execute(&db)
        .await
        .unwrap();
    }
}

async fn people_count(ui: &Ui) -> i64 {
    let db = open_db(ui.broker.database_url()).await;
    sqlx::query_scalar("SELECT COUNT(*) FROM users").fetch_one(&db).await.unwrap()
}

async fn row_ids(ui: &Ui, css: &str, attr: &str) -> Vec<String> {
    let mut out = Vec::new();
    for row in ui.chrome.find_all(css).await {
        out.push(row.attr(attr).await.unwrap().unwrap_or_default());
    }
    out
}

pub(crate) async fn long_tables_page_on_the_server_from_the_keyboard(ui: &Ui) {
    add_fillers(ui).await;
    let total = people_count(ui).await;
    let chrome = &ui.chrome;
    chrome.goto(&ui.url("/admin/sessions?people_size=10")).await;
    assert_eq!(chrome.text("#people-pager .range").await, format!("Showing 1–10 of {total}"));
    let first = row_ids(ui, "#people tbody tr", "data-user").await;
    assert_eq!(first.len(), 10, "one page of ten people");
    assert!(chrome.find_all("#people-pager a.prev").await.is_empty(), "no previous page from the first");
    let show = "document.getElementById('people').scrollIntoView(); return true;";
    chrome.client().execute(show, vec![]).await.expect("scroll to the People table");
    chrome.screenshot("20-admin-people-paged").await;

    chrome.enter_and_load("#people-pager a.next").await;
    assert_eq!(chrome.text("#people-pager .range").await, format!("Showing 11–{total} of {total}"));
    let second = row_ids(ui, "#people tbody tr", "data-user").await;
    assert_eq!(second.len(), usize::try_from(total).unwrap() - 10, "the rest on page two");
    assert!(second.iter().all(|id| !first.contains(id)), "page two repeats no one from page one");
    assert!(chrome.find_all("#people-pager a.next").await.is_empty(), "no next page from the last");
    assert_eq!(chrome.url().await.query(), Some("people_page=2&people_size=10"), "the page size is kept");

    chrome.enter_and_load("#people-pager a.prev").await;
    assert_eq!(row_ids(ui, "#people tbody tr", "data-user").await, first, "back to page one");
    chrome.find("#people-size").await.select_by_value("25").await.expect("pick 25 rows");
    chrome.click_and_load("#people-pager .page-size button").await;
    assert_eq!(chrome.text("#people-pager .range").await, format!("Showing 1–{total} of {total}"));

    ordering_covers_the_whole_table(ui, &first).await;
    audit_pages_back_and_forth(ui).await;
    bad_paging_is_a_clear_400(ui).await;
}

/// Reversing the order shows, on page one, the people who were last: the
/// server orders the whole table, not the page shown.
async fn ordering_covers_the_whole_table(ui: &Ui, first_by_name: &[String]) {
    let chrome = &ui.chrome;
    chrome.goto(&ui.url("/admin/sessions?people_size=10")).await;
    chrome.click_and_load("#people thead th:first-child a").await;
    let reversed = row_ids(ui, "#people tbody tr", "data-user").await;
    let last_ten: Vec<String> = (FILLERS - 10..FILLERS).rev().map(|i| format!("filler-{i:02}")).collect();
    assert_eq!(reversed, last_ten, "page one holds the ten last names of the whole table, Z to A");
    assert_ne!(reversed, first_by_name);
    assert!(chrome.url().await.query().unwrap().contains("people_size=10"), "the page size is kept");
    chrome.click_and_load("#people thead th:nth-child(4) a").await;
    assert_eq!(chrome.text("#people-pager .range").await.split(' ').nth(1), Some("1–10"), "back to page one");
    let by_sign_in = row_ids(ui, "#people tbody tr", "data-user").await;
    assert!(!by_sign_in[0].starts_with("filler-"), "people who signed in come before those who never did");
}

async fn audit_pages_back_and_forth(ui: &Ui) {
    let chrome = &ui.chrome;
    chrome.goto(&ui.url("/admin/audit?audit_size=10")).await;
    let range = chrome.text("#audit-pager .range").await;
    let total: u64 = range.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(total > 20, "the test has made plenty of events: {range}");
    assert_eq!(range, format!("Showing 1–10 of {total}"));
    let newest = row_ids(ui, "#audit-events tbody tr", "data-seq").await;
    chrome.enter_and_load("#audit-pager a.next").await;
    let range = chrome.text("#audit-pager .range").await;
    assert!(range.starts_with("Showing 11–20 of "), "page two, however many events arrived since: {range}");
    let older = row_ids(ui, "#audit-events tbody tr", "data-seq").await;
    let (newest_last, older_first): (u64, u64) = (newest[9].parse().unwrap(), older[0].parse().unwrap());
    assert!(older_first < newest_last, "page two is older than page one");
    chrome.enter_and_load("#audit-pager a.prev").await;
    let again = row_ids(ui, "#audit-events tbody tr", "data-seq").await;
    assert_eq!(again[9], newest[9], "previous goes back to the page before (a new event may have arrived on top)");
}

async fn bad_paging_is_a_clear_400(ui: &Ui) {
    let cookie = ui.session_cookie().await;
    for (path, says) in [
        ("/admin/sessions?people_page=abc", "people_page must be a page number"),
        ("/admin/sessions?sessions_page=0", "sessions_page must be a page number"),
        ("/admin/machines?machines_size=100000", "machines_size must be one of 10, 25, 50 or 100"),
        ("/admin/connectors?connectors_page=-3", "connectors_page must be a page number"),
        ("/admin/audit?audit_size=7", "audit_size must be one of"),
        ("/admin/audit?before=%3Cimg%3E", "before must be an event number"),
        ("/admin/sessions?people_sort=i.name", "people_sort must be one of name, email, last_sign_in, state"),
        ("/admin/machines?machines_dir=%3Cimg%3E", "machines_dir must be asc or desc"),
    ] {
        let response = ui.http().get(ui.url(path)).header("cookie", &cookie).send().await.unwrap();
        assert_eq!(response.status(), 400, "{path}");
        let body = response.text().await.unwrap();
        assert!(body.contains(says), "{path} says what is wrong: {body}");
        assert!(!body.contains("<img>"), "{path} echoes its input as text");
    }
    let past = ui.http().get(ui.url("/admin/machines?machines_page=999")).header("cookie", &cookie).send().await;
    let past = past.unwrap();
    assert_eq!(past.status(), 200, "a page past the end shows the last page");
    assert!(past.text().await.unwrap().contains("Page 1 of 1"));
}
