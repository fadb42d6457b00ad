//! The Grafana dashboard against the series the programs export.

use super::*;

/// Every PromQL expression of the dashboard, from each panel's targets.
fn dashboard_queries() -> Vec<String> {
    let text = read("grafana/palisade.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("grafana/palisade.json is not JSON: {e}"));
    let panels = dashboard["panels"].as_array().expect("panels");
    let queries: Vec<String> = panels
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .map(|t| t["expr"].as_str().expect("every target has an expr").to_owned())
        .collect();
    assert!(!queries.is_empty(), "the dashboard queries nothing");
    queries
}

/// `palisade_…` names in a query, with a histogram's `_bucket`/`_sum`/`_count` as its base name.
fn metric_names(query: &str, histograms: &BTreeSet<&str>) -> Vec<String> {
    let is_name = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_';
    let mut names = Vec::new();
    let mut rest = query;
    while let Some(at) = rest.find("palisade_") {
        let tail = &rest[at..];
        let end = tail.find(|c: char| !is_name(c)).unwrap_or(tail.len());
        let name = &tail[..end];
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix).filter(|b| histograms.contains(b)))
            .unwrap_or(name);
        names.push(base.to_owned());
        rest = &tail[end..];
    }
    names
}

#[test]
fn grafana_dashboard_queries_only_series_the_programs_export_and_shows_them_all() {
    use palisade_telemetry::exposition::Series;
    let series: Vec<&Series> =
        palisade_broker::metrics::SERIES.iter().chain(palisade_connector::metrics::SERIES.iter()).collect();
    let exported: BTreeSet<&str> = series.iter().map(|s| s.name).collect();
    let histograms: BTreeSet<&str> = series.iter().filter(|s| s.metric.kind() == "histogram").map(|s| s.name).collect();
    let mut used = BTreeSet::new();
    for query in dashboard_queries() {
        let names = metric_names(&query, &histograms);
        assert!(!names.is_empty(), "{query:?} queries no palisade_ series");
        for name in names {
            assert!(
                exported.contains(name.as_str()),
                "the dashboard queries {name}, which no program exports: {query}"
            );
            used.insert(name);
        }
    }
    let unused: Vec<&&str> = exported.iter().filter(|n| !used.contains(**n)).collect();
    assert!(unused.is_empty(), "exported but not on the dashboard: {unused:?}");
    let docs = std::fs::read_to_string(deploy_dir().join("../docs/operator-guide.md")).expect("operator guide");
    for name in &exported {
        assert!(docs.contains(&format!("`{name}`")), "docs/operator-guide.md does not document {name}");
    }
}

#[test]
fn metric_names_see_through_histogram_suffixes_only() {
    let histograms = BTreeSet::from(["palisade_x_seconds"]);
    let query = "histogram_quantile(0.9, rate(palisade_x_seconds_bucket[5m])) / palisade_y_count";
    assert_eq!(metric_names(query, &histograms), ["palisade_x_seconds", "palisade_y_count"]);
}
