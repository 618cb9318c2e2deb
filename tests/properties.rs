//! Property tests (proptest) over the input outrider parses itself: the
//! configuration and the header rewriting. Arbitrary input must give a
//! value or a clean error, never a panic, and the rewriting must keep its
//! invariants.

use http::{HeaderMap, HeaderName, HeaderValue};
use outrider::{
    config::{Config, RawConfig},
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
    fn forwarded_for_keeps_every_earlier_hop_in_order(existing in prop::collection::vec("[0-9.a-f:]{1,20}", 0..4), last in any::<std::net::Ipv4Addr>()) {
        let mut map = HeaderMap::new();
        for e in &existing {
            map.append("x-forwarded-for", HeaderValue::from_str(e).unwrap());
        }
        headers::add_forwarded(&mut map, headers::forwarded_for(last.into()), "http", None);
        let value = map.get("x-forwarded-for").unwrap().to_str().unwrap().to_owned();
        let mut expected = existing.clone();
        expected.push(last.to_string());
        prop_assert_eq!(value, expected.join(", "));
        prop_assert_eq!(map.get_all("x-forwarded-for").iter().count(), 1);
    }

    #[test]
    fn any_config_value_parses_or_names_its_variable(field in 0usize..33, value in "\\PC{0,30}") {
        let mut raw = RawConfig::default();
        let vars = set_field(&mut raw, field, value.clone());
        match Config::try_from(raw) {
            Ok(config) => { let _ = config.to_toml(); }
            Err(e) => {
                let text = e.to_string();
                prop_assert!(text.starts_with("invalid OUTRIDER_"), "{}", text);
                prop_assert!(!text.contains('\n'), "multi-line error: {}", text);
                prop_assert!(vars.iter().any(|v| text.contains(v)), "{} does not name {:?}", text, vars);
            }
        }
    }

    #[test]
    fn route_matching_never_panics(templates in "[/{}a-z,]{0,40}", path in "[/a-z{}]{0,30}") {
        if let Ok(routes) = Routes::parse(&templates) {
            if let Some(i) = routes.find(&path) {
                prop_assert!(i < routes.len());
            }
        }
    }
}

/// Sets one RawConfig field by index; returns the variables an error about
/// it may name (a value can conflict with a related variable).
fn set_field(raw: &mut RawConfig, field: usize, value: String) -> Vec<&'static str> {
    macro_rules! fields {
        ($($i:literal => $f:ident, [$($var:literal),+]);+ $(;)?) => {
            match field {
                $($i => { raw.$f = value; vec![$($var),+] })+
                _ => vec!["OUTRIDER_LISTEN"],
            }
        };
    }
    fields! {
        0 => listen, ["OUTRIDER_LISTEN"];
        1 => upstream, ["OUTRIDER_UPSTREAM"];
        2 => upstream_protocol, ["OUTRIDER_UPSTREAM_PROTOCOL"];
        3 => admin_listen, ["OUTRIDER_ADMIN_LISTEN"];
        4 => log, ["OUTRIDER_LOG"];
        5 => log_format, ["OUTRIDER_LOG_FORMAT"];
        6 => upstream_connect_timeout, ["OUTRIDER_UPSTREAM_CONNECT_TIMEOUT"];
        7 => request_timeout, ["OUTRIDER_REQUEST_TIMEOUT"];
        8 => upstream_pool_idle_timeout, ["OUTRIDER_UPSTREAM_POOL_IDLE_TIMEOUT"];
        9 => upstream_pool_max_idle, ["OUTRIDER_UPSTREAM_POOL_MAX_IDLE"];
        10 => header_read_timeout, ["OUTRIDER_HEADER_READ_TIMEOUT"];
        11 => max_header_bytes, ["OUTRIDER_MAX_HEADER_BYTES"];
        12 => via, ["OUTRIDER_VIA"];
        13 => drain_delay, ["OUTRIDER_DRAIN_DELAY"];
        14 => drain_timeout, ["OUTRIDER_DRAIN_TIMEOUT", "OUTRIDER_DRAIN_DELAY"];
        15 => app_stop_timeout, ["OUTRIDER_APP_STOP_TIMEOUT"];
        16 => app_health, ["OUTRIDER_APP_HEALTH"];
        17 => app_health_interval, ["OUTRIDER_APP_HEALTH_INTERVAL"];
        18 => app_health_failures, ["OUTRIDER_APP_HEALTH_FAILURES"];
        19 => app_health_successes, ["OUTRIDER_APP_HEALTH_SUCCESSES"];
        20 => buffer_max, ["OUTRIDER_BUFFER_MAX"];
        21 => buffer_timeout, ["OUTRIDER_BUFFER_TIMEOUT"];
        22 => admin_token, ["OUTRIDER_ADMIN_TOKEN"];
        23 => app_process, ["OUTRIDER_APP_PROCESS"];
        24 => app_pidfile, ["OUTRIDER_APP_PIDFILE"];
        25 => routes, ["OUTRIDER_ROUTES"];
        26 => access_log, ["OUTRIDER_ACCESS_LOG"];
        27 => trace_query, ["OUTRIDER_TRACE_QUERY"];
        28 => trace_response, ["OUTRIDER_TRACE_RESPONSE"];
        29 => tls_cert, ["OUTRIDER_TLS_CERT", "OUTRIDER_TLS_KEY"];
        30 => tls_key, ["OUTRIDER_TLS_KEY", "OUTRIDER_TLS_CERT"];
        31 => max_inflight, ["OUTRIDER_MAX_INFLIGHT"];
        32 => max_body_bytes, ["OUTRIDER_MAX_BODY_BYTES"];
    }
}
