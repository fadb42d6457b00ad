//! Every documented operation that is not public refuses a caller without
//! a session (401/403, or a GET page's 303 to sign-in), every admin
//! operation refuses a signed-in person who is not an admin (403, even with
//! a valid CSRF token and origin), and the admin is let through: the
//! refusals are about who asks, not about a route that is missing.

use palisade_broker::web::security::csrf_token;
use palisade_tests::{Broker, TestEnv};

use super::{ADMIN, Access, BodyKind, Operation, SESSION_COOKIE, broker, http, operations, session_of};

/// One answer, as far as these checks need it.
struct Answer {
    status: u16,
    location: String,
    body: String,
}

async fn call(broker: &Broker, op: &Operation, cookie: Option<&str>) -> Answer {
    let base = if op.metrics { format!("http://{}", broker.metrics_addr()) } else { broker.public_url() };
    let url = format!("{}{}", base.trim_end_matches('/'), op.concrete_path());
    let method = reqwest::Method::from_bytes(op.method.as_bytes()).expect("an HTTP method");
    let mut request = http(broker).request(method, &url).header("origin", broker.public_url().trim_end_matches('/'));
    if let Some(cookie) = cookie {
        request = request.header("cookie", format!("{SESSION_COOKIE}={cookie}"));
    }
    request = match op.body {
        BodyKind::None => request,
        BodyKind::Json => request.header("content-type", "application/json").body("{}"),
        BodyKind::Form => {
            let token = cookie.map_or_else(|| "forged".to_owned(), csrf_token);
            request.header("content-type", "application/x-www-form-urlencoded").body(format!("csrf={token}"))
        }
    };
    let response = request.send().await.unwrap_or_else(|e| panic!("{} {url}: {e}", op.method));
    let status = response.status().as_u16();
    let location = response.headers().get("location").and_then(|l| l.to_str().ok()).unwrap_or_default().to_owned();
    let body = response.text().await.unwrap_or_default();
    Answer { status, location, body }
}

/// A refusal of someone without a session.
fn refuses_the_anonymous(op: &Operation, a: &Answer) -> bool {
    matches!(a.status, 401 | 403)
        || (op.method == "GET" && a.status == 303 && a.location.starts_with("/login?return_to="))
}

/// An answer from a handler: not a 5xx, not the router's empty 404 or its 405.
fn routed(a: &Answer) -> bool {
    a.status < 500 && a.status != 405 && !(a.status == 404 && a.body.is_empty())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_operation_refuses_who_may_not_use_it() {
    let env = TestEnv::new();
    let broker = broker(&env).await;
    let alice = session_of(&broker, "alice").await;
    let admin = session_of(&broker, ADMIN).await;
    let ops = operations();
    let mut wrong = Vec::new();
    for op in &ops {
        let name = format!("{} {}", op.method, op.path);
        let anonymous = call(&broker, op, None).await;
        match op.access {
            Access::Public if !routed(&anonymous) => wrong.push(format!("{name} (public): {}", anonymous.status)),
            Access::Session | Access::Admin if !refuses_the_anonymous(op, &anonymous) => {
                wrong.push(format!("{name} without a session: {} {}", anonymous.status, anonymous.location));
            }
            _ => {}
        }
        if op.access != Access::Admin {
            continue;
        }
        let person = call(&broker, op, Some(&alice)).await;
        if person.status != 403 {
            wrong.push(format!("{name} as a person who is not an admin: {}", person.status));
        }
        if op.method == "GET" {
            let by_admin = call(&broker, op, Some(&admin)).await;
            if !routed(&by_admin) || matches!(by_admin.status, 401 | 403) {
                wrong.push(format!("{name} as the admin: {}", by_admin.status));
            }
        }
    }
    assert!(wrong.is_empty(), "operations that answer the wrong caller:\n{}", wrong.join("\n"));
    assert!(ops.iter().filter(|op| op.access == Access::Admin).count() >= 20, "the document lost its admin routes");

    let served = call(&broker, ops.iter().find(|op| op.path == "/api/openapi.yaml").expect("documented"), None).await;
    assert_eq!(served.body, std::fs::read_to_string(super::document_path()).unwrap(), "the broker serves the document");
}
