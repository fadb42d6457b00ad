//! The document names every route the broker registers, with its methods,
//! and no route it does not: read from the source of the routers
//! (`.route("/path", get(…).post(…))` in `broker/src`) and of the metrics
//! listener (`"/path" =>` arms in `telemetry/src/endpoint.rs`).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::operations;

const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

type Route = (String, String);

#[test]
fn the_document_names_every_route_the_broker_registers_and_no_other() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut registered = BTreeSet::new();
    for file in rust_files(&root.join("broker/src")) {
        let text = std::fs::read_to_string(&file).expect("read a source file");
        for other in [".nest(", ".nest_service(", ".route_service(", ".fallback("] {
            assert!(!text.contains(other), "{}: {other} adds routes this test cannot read", file.display());
        }
        registered.extend(routes_in(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display())));
    }
    let endpoint = std::fs::read_to_string(root.join("telemetry/src/endpoint.rs")).expect("read the metrics endpoint");
    registered.extend(metrics_routes(&endpoint));
    assert!(registered.len() > 40, "the scan found too few routes: {registered:?}");

    let documented: BTreeSet<Route> = operations().into_iter().map(|op| (op.method, op.path)).collect();
    let undocumented: Vec<_> = registered.difference(&documented).collect();
    let unrouted: Vec<_> = documented.difference(&registered).collect();
    assert!(undocumented.is_empty(), "routes missing from broker/openapi.yaml: {undocumented:?}");
    assert!(unrouted.is_empty(), "broker/openapi.yaml documents routes nobody registers: {unrouted:?}");
}

#[test]
fn the_route_reader_sees_chained_methods_and_nested_calls() {
    let text = r#"
        .route("/a", get(page).post(submit))
        .route(
            "/b/{id}",
            post(finish).layer(limit()),
        )
        .route("/c", get(|| async { Redirect::to("/post(") }))
        .route("/d", axum::routing::delete(remove))
    "#;
    let routes = routes_in(text).expect("readable");
    let want = [("GET", "/a"), ("POST", "/a"), ("POST", "/b/{id}"), ("GET", "/c"), ("DELETE", "/d")];
    let want: BTreeSet<Route> = want.iter().map(|(m, p)| ((*m).to_owned(), (*p).to_owned())).collect();
    assert_eq!(routes, want);
    assert!(routes_in(r#".route(PATH, get(page))"#).is_err(), "a path that is not a literal is refused");
}

/// The broker's own sources: not test files, not the quickstart's demo model server.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read a source directory") {
        let path = entry.expect("a directory entry").path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_owned();
        if path.is_dir() && name != "tests" {
            files.extend(rust_files(&path));
        } else if name.ends_with(".rs") && !name.starts_with("tests") && name != "quickstart.rs" {
            files.push(path);
        }
    }
    files
}

/// `(METHOD, path)` of every `.route(` call in `text`.
fn routes_in(text: &str) -> Result<BTreeSet<Route>, String> {
    let mut routes = BTreeSet::new();
    for (start, _) in text.match_indices(".route(") {
        let rest = text[start + ".route(".len()..].trim_start();
        let Some(rest) = rest.strip_prefix('"') else {
            return Err(format!(
                "a .route( whose path is not a string literal: {}",
                &text[start..start + 60.min(text.len() - start)]
            ));
        };
        let end = rest.find('"').ok_or("an unterminated path")?;
        let path = &rest[..end];
        let methods = methods_in(&rest[end + 1..]);
        if methods.is_empty() {
            return Err(format!("no method for {path}"));
        }
        routes.extend(methods.into_iter().map(|m| (m.to_uppercase(), path.to_owned())));
    }
    Ok(routes)
}

/// The method routers called at the top level of a `.route(` call's arguments.
fn methods_in(args: &str) -> Vec<&str> {
    let (mut depth, mut in_string, mut found) = (1usize, false, Vec::new());
    for (i, c) in args.char_indices() {
        match c {
            '"' => in_string = !in_string,
            _ if in_string => {}
            '(' => {
                if depth == 1 {
                    let before = &args[..i];
                    let ident_start =
                        before.rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).map_or(0, |p| p + 1);
                    let ident = &before[ident_start..];
                    if METHODS.contains(&ident) {
                        found.push(ident);
                    }
                }
                depth += 1;
            }
            ')' => {
                depth -= 1;
                if depth == 0 {
                    break;
                }
            }
            _ => {}
        }
    }
    found
}

/// The paths the metrics listener answers (GET only).
fn metrics_routes(endpoint: &str) -> BTreeSet<Route> {
    endpoint
        .lines()
        .filter_map(|l| l.trim().strip_prefix('"'))
        .filter_map(|l| l.split_once("\" =>").map(|(path, _)| path))
        .filter(|path| path.starts_with('/'))
        .map(|path| ("GET".to_owned(), path.to_owned()))
        .collect()
}
