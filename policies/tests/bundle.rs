//! The bundle as it travels from the broker to connectors.

use std::path::PathBuf;

use palisade_policies::{LoadError, PolicyBundle, PolicyFile, ServiceEntry, read_policy_dir};

fn bundle() -> PolicyBundle {
    PolicyBundle {
        version: 3,
        files: vec![
            PolicyFile { name: "a.cedar".to_owned(), text: "permit (principal, action, resource);".to_owned() },
            PolicyFile { name: "b.cedar".to_owned(), text: "forbid (principal, action, resource);".to_owned() },
        ],
        services: vec![
            ServiceEntry {
                name: "llm-prod".to_owned(),
                segment: "inference".to_owned(),
                protocol: "http".to_owned(),
                labels: vec!["gpu".to_owned(), "prod".to_owned()],
            },
            ServiceEntry {
                name: "qdrant".to_owned(),
                segment: "vector-db".to_owned(),
                protocol: "tcp".to_owned(),
                labels: Vec::new(),
            },
        ],
    }
}

#[test]
fn json_round_trips() {
    let json = serde_json::to_string(&bundle()).expect("serialises");
    let back: PolicyBundle = serde_json::from_str(&json).expect("parses");
    assert_eq!(back, bundle());
}

#[test]
fn json_with_an_unknown_field_is_rejected() {
    let mut value = serde_json::to_value(bundle()).expect("serialises");
    value["signature"] = serde_json::json!("abc");
    assert!(serde_json::from_value::<PolicyBundle>(value).is_err());

    let mut value = serde_json::to_value(bundle()).expect("serialises");
    value["services"][0]["upstream"] = serde_json::json!("10.0.0.1:80");
    assert!(serde_json::from_value::<PolicyBundle>(value).is_err());

    let mut value = serde_json::to_value(bundle()).expect("serialises");
    value["files"][0]["mode"] = serde_json::json!(420);
    assert!(serde_json::from_value::<PolicyBundle>(value).is_err());
}

#[test]
fn service_labels_default_to_empty() {
    let entry: ServiceEntry = serde_json::from_str(r#"{"name":"x","segment":"s","protocol":"tcp"}"#).expect("parses");
    assert!(entry.labels.is_empty());
}

#[test]
fn digest_is_hex_sha256_and_ignores_the_version() {
    let original = bundle();
    let digest = original.digest();
    assert_eq!(digest.len(), 64);
    assert!(digest.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
    let mut bumped = original.clone();
    bumped.version = 4;
    assert_eq!(bumped.digest(), digest);
}

#[test]
fn digest_changes_with_the_content() {
    let digest = bundle().digest();
    let changed = |edit: fn(&mut PolicyBundle)| {
        let mut b = bundle();
        edit(&mut b);
        b.digest()
    };
    assert_ne!(changed(|b| b.files[0].text.push(' ')), digest);
    assert_ne!(changed(|b| b.files[0].name = "c.cedar".to_owned()), digest);
    assert_ne!(changed(|b| b.services[1].protocol = "http".to_owned()), digest);
    assert_ne!(changed(|b| b.services[0].labels.push("quarantined".to_owned())), digest);
    assert_ne!(
        changed(|b| {
            b.files.pop();
        }),
        digest
    );
    // Moving text between the name and the body is a different bundle.
    assert_ne!(
        changed(|b| {
            b.files[0].name = "a.cedarpermit".to_owned();
            b.files[0].text = " (principal, action, resource);".to_owned();
        }),
        digest
    );
}

#[test]
fn digest_does_not_depend_on_listing_order() {
    let digest = bundle().digest();
    let mut reordered = bundle();
    reordered.files.reverse();
    reordered.services.reverse();
    reordered.services[1].labels.reverse();
    assert_eq!(reordered.digest(), digest);
}

fn scratch_dir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("policy-dir-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

#[test]
fn a_policy_dir_is_read_sorted_and_filtered() {
    let dir = scratch_dir("sorted");
    for (name, text) in
        [("b.cedar", "// b"), ("a.cedar", "// a"), ("README.md", "not policy"), (".a.cedar.swp", "editor junk")]
    {
        std::fs::write(dir.join(name), text).expect("write");
    }
    std::fs::create_dir(dir.join("nested.cedar")).expect("subdir");
    let files = read_policy_dir(&dir).expect("reads");
    let names: Vec<&str> = files.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["a.cedar", "b.cedar"]);
    assert_eq!(files[0].text, "// a");
}

#[test]
fn an_empty_or_missing_policy_dir_is_an_error() {
    let dir = scratch_dir("empty");
    std::fs::write(dir.join("notes.txt"), "x").expect("write");
    let err = read_policy_dir(&dir).expect_err("no policies");
    assert!(matches!(err, LoadError::NoPolicyFiles { .. }), "{err}");
    assert!(err.to_string().starts_with("no .cedar files in "), "{err}");

    let err = read_policy_dir(&dir.join("missing")).expect_err("missing");
    assert!(matches!(err, LoadError::Io { .. }), "{err}");
}
