//! `docs/configuration.md` must list exactly the variables the code reads,
//! with the defaults, bounds and meanings the code declares.

use std::collections::BTreeMap;

fn doc() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/configuration.md")).unwrap()
}

/// The `OUTRIDER_*` table is generated from the settings' declaration; the
/// file must hold it verbatim, and no other `OUTRIDER_*` row.
#[test]
fn configuration_reference_matches_the_code() {
    let doc = doc();
    let table = outrider::config::reference_table();
    assert!(doc.contains(&table), "docs/configuration.md must hold the table of src/config.rs, verbatim:\n\n{table}");
    let rows = |text: &str| text.lines().filter(|l| l.starts_with("| `OUTRIDER_")).count();
    assert_eq!(rows(&doc), rows(&table), "docs/configuration.md has OUTRIDER_ rows outside the generated table");
}

#[test]
fn opentelemetry_reference_matches_the_code() {
    let documented: BTreeMap<String, String> = doc()
        .lines()
        .filter(|l| l.starts_with("| `OTEL_") || l.starts_with("| `K8S_"))
        .map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            (cells[1].trim_matches('`').to_owned(), cells[2].trim_matches('`').to_owned())
        })
        .collect();
    let code: BTreeMap<String, String> =
        outrider::telemetry::otel::OTEL_VARIABLES.iter().map(|(var, default, _)| ((*var).to_owned(), (*default).to_owned())).collect();
    let missing: Vec<_> = code.keys().filter(|k| !documented.contains_key(*k)).collect();
    let extra: Vec<_> = documented.keys().filter(|k| !code.contains_key(*k)).collect();
    assert!(missing.is_empty(), "variables the code reads but docs/configuration.md does not list: {missing:?}");
    assert!(extra.is_empty(), "variables docs/configuration.md lists but the code does not read: {extra:?}");
    for (var, default) in &code {
        assert_eq!(&documented[var], default, "default of {var} differs between code and docs");
    }
}
