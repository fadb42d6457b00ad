//! A NUL in any documented query or path parameter, sent by the console
//! admin (so that a handler would run past the sign-in checks, with a
//! valid CSRF token on form posts), is refused with 400 on both stores and
//! the body says nothing of the database. Before `broker/src/web/no_nul.rs`,
//! PostgreSQL (which refuses NUL in text) made most of these a 500 and put
//! the driver's message on the audit page.

use palisade_broker::web::security::csrf_token;
use palisade_tests::TestEnv;

use super::audit_filters::LEAKS;
use super::{ADMIN, BodyKind, Operation, SESSION_COOKIE, broker, http, operations, session_of};

const NUL_VALUES: [&str; 2] = ["\0", "x\0' OR 1=1 --"];

/// An operation, its path with the parameters filled in, its query, and its form fields.
type Probe = (Operation, String, Vec<(String, String)>, Vec<(String, String)>);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nul_in_any_parameter_is_refused_with_400_never_a_server_error() {
    let env = TestEnv::new();
    let broker = broker(&env).await;
    let admin = session_of(&broker, ADMIN).await;
    let client = http(&broker);
    let origin = broker.public_url().trim_end_matches('/').to_owned();

    let mut requests: Vec<Probe> = Vec::new();
    for op in operations().into_iter().filter(|op| !op.metrics) {
        for value in NUL_VALUES {
            for name in &op.query {
                requests.push((op.clone(), op.concrete_path(), vec![(name.clone(), value.to_owned())], Vec::new()));
            }
            for name in &op.form_fields {
                requests.push((op.clone(), op.concrete_path(), Vec::new(), vec![(name.clone(), value.to_owned())]));
            }
        }
        if op.path.contains('{') && !op.path.contains("{version}") {
            let path = op.path.replace("{id}", "x%00y").replace("{token}", "x%00y");
            requests.push((op.clone(), path, Vec::new(), Vec::new()));
        }
    }
    assert!(requests.len() > 40, "too few parameters in the document: {}", requests.len());

    let mut wrong = Vec::new();
    for (op, path, query, mut form) in requests {
        let method = reqwest::Method::from_bytes(op.method.as_bytes()).expect("an HTTP method");
        let mut request = client
            .request(method, format!("{origin}{path}"))
            .query(&query)
            .header("cookie", format!("{SESSION_COOKIE}={admin}"))
            .header("origin", &origin);
        request = match op.body {
            BodyKind::None => request,
            BodyKind::Json => request.header("content-type", "application/json").body("{}"),
            BodyKind::Form => {
                form.push(("csrf".to_owned(), csrf_token(&admin)));
                request.form(&form)
            }
        };
        let response = request.send().await.unwrap_or_else(|e| panic!("{} {path}: {e}", op.method));
        let status = response.status().as_u16();
        let body = response.text().await.unwrap_or_default();
        let shown = format!("{} {path} {query:?} {form:?}", op.method);
        if status != 400 {
            wrong.push(format!("{shown}: status {status}, not 400"));
        }
        if let Some(leak) = LEAKS.iter().find(|l| body.contains(*l)) {
            wrong.push(format!("{shown}: the body shows {leak:?}"));
        }
    }
    assert!(wrong.is_empty(), "a NUL made the broker fail:\n{}", wrong.join("\n"));
}

/// A NUL in a JSON field (`\u0000`) of the JSON API and the sign-in
/// ceremony, as the admin: an answer the document allows (a refusal, not a
/// 5xx) with nothing of the database in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nul_in_a_json_field_is_refused_never_a_server_error() {
    let env = TestEnv::new();
    let broker = broker(&env).await;
    let admin = session_of(&broker, ADMIN).await;
    let client = http(&broker);
    let origin = broker.public_url().trim_end_matches('/').to_owned();
    let ops: Vec<Operation> = operations().into_iter().filter(|op| !op.json_fields.is_empty()).collect();
    assert!(ops.len() >= 3, "too few JSON bodies in the document");

    let mut wrong = Vec::new();
    for op in ops {
        for field in &op.json_fields {
            for value in NUL_VALUES {
                let mut body: serde_json::Map<String, serde_json::Value> =
                    op.json_fields.iter().map(|f| (f.clone(), serde_json::Value::from("x"))).collect();
                body.insert(field.clone(), value.into());
                let response = client
                    .post(format!("{origin}{}", op.concrete_path()))
                    .header("cookie", format!("{SESSION_COOKIE}={admin}"))
                    .json(&body)
                    .send()
                    .await
                    .unwrap_or_else(|e| panic!("{}: {e}", op.path));
                let status = response.status().as_u16();
                let text = response.text().await.unwrap_or_default();
                if status >= 500 {
                    wrong.push(format!("{} {field}={value:?}: status {status}", op.path));
                }
                if let Some(leak) = LEAKS.iter().find(|l| text.contains(*l)) {
                    wrong.push(format!("{} {field}={value:?}: the body shows {leak:?}", op.path));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "a NUL in JSON made the broker fail:\n{}", wrong.join("\n"));
}
