//! The systemd units: `systemd-analyze verify` and the sandboxing the units ask for.

use super::*;

const UNITS: [(&str, &str); 2] =
    [("palisade-broker.service", "palisade-broker"), ("palisade-connector.service", "palisade-connector")];

/// CI runs on Debian with systemd installed: a missing tool fails the test
/// rather than skipping the check (scripts/setup-test-deps installs it).
fn systemd_analyze() -> PathBuf {
    let path = PathBuf::from("/usr/bin/systemd-analyze");
    assert!(path.is_file(), "systemd-analyze is missing: run scripts/setup-test-deps (apt-get install systemd)");
    path
}

/// The units with `ExecStart` pointing at the freshly built binaries, since
/// `verify` checks that the program exists and is executable.
fn units_with_built_binaries(dir: &Path) -> Vec<PathBuf> {
    UNITS
        .iter()
        .map(|(unit, bin)| {
            let text = read(&format!("systemd/{unit}"));
            let built = bin_path(bin);
            let text = text.replace(&format!("/usr/bin/{bin} "), &format!("{} ", built.display()));
            let path = dir.join(unit);
            std::fs::write(&path, text).expect("writing the unit copy");
            path
        })
        .collect()
}

fn verify(units: &[PathBuf]) -> (bool, String) {
    let out = Command::new(systemd_analyze()).arg("verify").args(units).output().expect("running systemd-analyze");
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), said)
}

#[test]
fn systemd_units_pass_systemd_analyze_verify_without_a_single_warning() {
    let dir = tempfile::tempdir().expect("tempdir");
    let units = units_with_built_binaries(dir.path());
    let (ok, said) = verify(&units);
    // verify exits 0 on unknown keys and only prints them: any output is a finding.
    assert!(ok && said.trim().is_empty(), "systemd-analyze verify found problems:\n{said}");
}

#[test]
fn systemd_analyze_verify_reports_a_misspelled_sandboxing_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let units = units_with_built_binaries(dir.path());
    let text = std::fs::read_to_string(&units[0]).expect("unit");
    std::fs::write(&units[0], text.replace("ProtectSystem=strict", "ProtectSystm=strict")).expect("write");
    let (_, said) = verify(&units[..1]);
    assert!(said.contains("ProtectSystm"), "a typo in a sandboxing key went unnoticed:\n{said}");
}

#[test]
fn systemd_units_are_sandboxed() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (unit, path) in UNITS.iter().zip(units_with_built_binaries(dir.path())) {
        let text = read(&format!("systemd/{}", unit.0));
        for line in [
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
            "ProtectHome=yes",
            "CapabilityBoundingSet=\n",
            "PrivateTmp=yes",
            "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
            "SystemCallFilter=@system-service",
        ] {
            assert!(text.contains(line), "{} lacks {line:?}", unit.0);
        }
        let user = directive(&text, "User").unwrap_or_else(|| panic!("{} has no User=", unit.0));
        assert!(!["root", "0", "nobody"].contains(&user.as_str()), "{} runs as {user}", unit.0);
        let state = directive(&text, "StateDirectory").expect("StateDirectory=");
        assert_eq!(directive(&text, "ReadWritePaths"), Some(format!("/var/lib/{state}")), "{}", unit.0);
        let sysusers = read("systemd/palisade.sysusers");
        assert!(sysusers.lines().any(|l| l.starts_with(&format!("u {user} "))), "sysusers does not create {user}");
        // systemd's own exposure score (0 = locked down, 10 = unprotected); fails above 2.5.
        let out = Command::new(systemd_analyze())
            .args(["security", "--offline=yes", "--threshold=25", "--no-pager"])
            .arg(&path)
            .output()
            .expect("running systemd-analyze security");
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{} is exposed above 2.5:\n{said}", unit.0);
    }
}

fn directive(unit: &str, key: &str) -> Option<String> {
    unit.lines().find_map(|l| l.strip_prefix(&format!("{key}=")).map(|v| v.trim().to_owned()))
}
