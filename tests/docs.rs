//! `docs/configuration.md` must list exactly the variables the code reads,
//! with the defaults the code uses.

use std::collections::BTreeMap;

#[test]
fn configuration_reference_matches_the_code() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/configuration.md")).unwrap();
    let documented: BTreeMap<String, String> = doc
        .lines()
        .filter(|l| l.starts_with("| `OUTRIDER_") || l.starts_with("| `OTEL_") || l.starts_with("| `K8S_"))
        .map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            (cells[1].trim_matches('`').to_owned(), cells[2].trim_matches('`').to_owned())
        })
        .collect();
    let mut code: BTreeMap<String, String> = outrider::config::defaults().into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
    for (var, default, _) in outrider::telemetry::otel::OTEL_VARIABLES {
        code.insert((*var).to_owned(), (*default).to_owned());
    }
    let missing: Vec<_> = code.keys().filter(|k| !documented.contains_key(*k)).collect();
    let extra: Vec<_> = documented.keys().filter(|k| !code.contains_key(*k)).collect();
    assert!(missing.is_empty(), "variables the code reads but docs/configuration.md does not list: {missing:?}");
    assert!(extra.is_empty(), "variables docs/configuration.md lists but the code does not read: {extra:?}");
    for (var, default) in &code {
        assert_eq!(&documented[var], default, "default of {var} differs between code and docs");
    }
}
