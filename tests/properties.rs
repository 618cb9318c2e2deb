//! Property tests (proptest) over the input outrider parses itself: the
//! configuration and the header rewriting. Arbitrary input must give a
//! value or a clean error, never a panic, and the rewriting must keep its
//! invariants.

use http::{HeaderMap, HeaderName, HeaderValue};
use outrider::{
    config::{Config, RawConfig, SETTINGS},
    proxy::headers,
    telemetry::routes::Routes,
};
use proptest::prelude::*;

/// Header names: hop-by-hop ones, their mixed-case forms, and random tokens.
fn header_name() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "connection",
            "Connection",
            "keep-alive",
            "te",
            "TE",
            "transfer-encoding",
            "upgrade",
            "proxy-connection",
            "proxy-authorization",
            "host",
            "x-forwarded-for",
            "trailer",
            "x-a",
            "x-b",
        ])
        .prop_map(str::to_owned),
        "[a-z][a-z0-9-]{0,12}",
    ]
}

fn header_value() -> impl Strategy<Value = String> {
    prop_oneof!["[ -~]{0,40}", "(x-a|x-b|close|keep-alive|upgrade|host|te|trailers)(, ?(x-a|x-b|close|upgrade|trailers)){0,3}",]
}

fn header_map() -> impl Strategy<Value = HeaderMap> {
    prop::collection::vec((header_name(), header_value()), 0..12).prop_map(|pairs| {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            if let (Ok(k), Ok(v)) = (HeaderName::from_bytes(k.as_bytes()), HeaderValue::from_str(&v)) {
                map.append(k, v);
            }
        }
        map
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn hop_by_hop_stripping_leaves_no_connection_header_behind(mut map in header_map(), keep_upgrade in any::<bool>()) {
        let named: Vec<String> = map
            .get_all("connection")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(',').map(|t| t.trim().to_ascii_lowercase()).collect::<Vec<_>>())
            .filter(|t| !t.is_empty() && t != "host" && t != "close" && t != "keep-alive" && !(keep_upgrade && t == "upgrade"))
            .collect();
        let host_before = map.get("host").cloned();
        headers::strip_hop_by_hop(&mut map, keep_upgrade);
        for name in named {
            prop_assert!(!map.contains_key(name.as_str()), "{} survived", name);
        }
        for fixed in ["keep-alive", "proxy-connection", "proxy-authorization", "transfer-encoding"] {
            prop_assert!(!map.contains_key(fixed));
        }
        if let Some(te) = map.get("te") {
            prop_assert_eq!(te, "trailers");
        }
        prop_assert_eq!(map.get("host").cloned(), host_before);
        if keep_upgrade {
            prop_assert_eq!(map.get("connection").map(|v| v.to_str().unwrap_or("")), Some("upgrade"));
        } else {
            prop_assert!(!map.contains_key("connection") && !map.contains_key("upgrade"));
        }
    }

    #[test]
    fn forwarded_for_keeps_every_earlier_hop_in_order_behind_a_trusted_proxy_only(
        existing in prop::collection::vec("[0-9.a-f:]{1,20}", 0..4),
        last in any::<std::net::Ipv4Addr>(),
        trusted in any::<bool>(),
    ) {
        let mut map = HeaderMap::new();
        for e in &existing {
            map.append("x-forwarded-for", HeaderValue::from_str(e).unwrap());
        }
        headers::add_forwarded(&mut map, &headers::Hop::new(last.into(), "http", 8080, trusted, false), None);
        let value = map.get("x-forwarded-for").unwrap().to_str().unwrap().to_owned();
        let mut expected = if trusted { existing.clone() } else { Vec::new() };
        expected.push(last.to_string());
        prop_assert_eq!(value, expected.join(", "));
        prop_assert_eq!(map.get_all("x-forwarded-for").iter().count(), 1);
    }

    #[test]
    fn any_config_value_parses_or_names_its_variable(field in 0..SETTINGS.len(), value in "\\PC{0,30}") {
        let setting = &SETTINGS[field];
        let mut raw = RawConfig::default();
        prop_assert!(raw.set(setting.key, value.clone()));
        match Config::try_from(raw) {
            Ok(config) => {
                // What --print-config prints loads back into the same
                // configuration; the admin token is printed redacted.
                let printed = config.to_toml();
                if setting.key != "admin_token" {
                    prop_assert_eq!(reload(&printed).map(|c| c.to_toml()), Ok(printed));
                }
            }
            Err(e) => {
                let text = e.to_string();
                let vars: Vec<String> = std::iter::once(setting.key).chain(related(setting.key).iter().copied())
                    .map(|key| format!("OUTRIDER_{}", key.to_ascii_uppercase())).collect();
                prop_assert!(text.starts_with("invalid OUTRIDER_"), "{}", text);
                prop_assert!(!text.contains('\n'), "multi-line error: {}", text);
                prop_assert!(vars.iter().any(|v| text.contains(&format!("{v}="))), "{} does not name {:?}", text, vars);
            }
        }
    }

    #[test]
    fn route_matching_never_panics(templates in "[/{}a-z,]{0,40}", path in "[/a-z{}]{0,30}") {
        if let Ok(routes) = Routes::parse(&templates)
            && let Some(i) = routes.find(&path) {
                prop_assert!(i < routes.len());
            }
    }
}

/// The other settings an error about `key` may name: a value can conflict
/// with a related setting's.
fn related(key: &str) -> &'static [&'static str] {
    match key {
        "drain_timeout" => &["drain_delay"],
        "tls_cert" => &["tls_key"],
        "tls_key" => &["tls_cert"],
        // An https:// upstream needs the system CA bundle.
        "upstream" => &["upstream_ca"],
        _ => &[],
    }
}

/// Loads `--print-config` output as a file would be, the redacted admin
/// token aside.
fn reload(printed: &str) -> Result<Config, String> {
    use figment::providers::Format as _;
    let file: std::collections::BTreeMap<String, String> =
        figment::Figment::from(figment::providers::Toml::string(printed)).extract().map_err(|e| e.to_string())?;
    let mut raw = RawConfig::default();
    for (key, value) in file.into_iter().filter(|(key, _)| key != "admin_token") {
        raw.set(&key, value);
    }
    Config::try_from(raw).map_err(|e| e.to_string())
}
