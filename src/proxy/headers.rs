//! Header rewriting that makes outrider a correct intermediary:
//! hop-by-hop stripping (RFC 9110 §7.6.1), and the `X-Forwarded-*` family
//! and `Forwarded` (RFC 7239) under a trust rule.

use std::net::IpAddr;

use http::{
    HeaderMap, HeaderName, HeaderValue,
    header::{CONNECTION, FORWARDED, HOST, PROXY_AUTHENTICATE, PROXY_AUTHORIZATION, TE, TRANSFER_ENCODING, UPGRADE, VIA},
};

pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub static X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Removes the headers that describe the connection rather than the
/// message: the fixed set, plus every header the `Connection` header names.
///
/// `TE: trailers` survives, because gRPC and other trailer users need the
/// next hop to know trailers are welcome; any other `TE` is dropped.
/// When `keep_upgrade` is set (a protocol upgrade being forwarded), the
/// `Upgrade` header is kept and `Connection: upgrade` re-added.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // Most messages carry none of these: one pass over the names, with no
    // hashing, then nothing more to do.
    if !headers.keys().any(is_hop_by_hop) {
        if keep_upgrade {
            headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        }
        return;
    }
    // Names listed in Connection are hop-by-hop too. Collected first
    // because removing while iterating the map is not possible; the common
    // case (no Connection header, or `keep-alive`/`close`) allocates nothing.
    if headers.contains_key(CONNECTION) {
        let mut named: Vec<HeaderName> = Vec::new();
        for value in headers.get_all(CONNECTION) {
            for token in list_elements(value) {
                if token.eq_ignore_ascii_case(b"close") || token.eq_ignore_ascii_case(b"keep-alive") {
                    continue;
                }
                if let Ok(name) = HeaderName::from_bytes(token) {
                    // A client must not be able to make us drop the Host.
                    if name != HOST {
                        named.push(name);
                    }
                }
            }
        }
        for name in named {
            if keep_upgrade && name == UPGRADE {
                continue;
            }
            headers.remove(name);
        }
        headers.remove(CONNECTION);
    }
    let te_trailers = headers.get_all(TE).iter().any(|v| {
        v.to_str().is_ok_and(|v| v.split(',').any(|t| t.split(';').next().is_some_and(|t| t.trim().eq_ignore_ascii_case("trailers"))))
    });
    headers.remove(TE);
    if te_trailers {
        headers.insert(TE, HeaderValue::from_static("trailers"));
    }
    headers.remove(&KEEP_ALIVE);
    headers.remove(&PROXY_CONNECTION);
    headers.remove(PROXY_AUTHENTICATE);
    headers.remove(PROXY_AUTHORIZATION);
    headers.remove(TRANSFER_ENCODING);
    if keep_upgrade {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(UPGRADE);
    }
}

/// The fixed hop-by-hop set, plus `Connection` (which may name more).
fn is_hop_by_hop(name: &HeaderName) -> bool {
    name == CONNECTION
        || name == TE
        || name == TRANSFER_ENCODING
        || name == UPGRADE
        || name == PROXY_AUTHENTICATE
        || name == PROXY_AUTHORIZATION
        || name == KEEP_ALIVE
        || name == PROXY_CONNECTION
}

/// True when an HTTP/1.1 request asks to switch protocols.
pub fn is_upgrade_request(headers: &HeaderMap) -> bool {
    headers.contains_key(UPGRADE)
        && headers.get_all(CONNECTION).iter().any(|v| list_elements(v).any(|t| t.eq_ignore_ascii_case(b"upgrade")))
}

/// The elements of a comma-separated list value, read from its bytes, so
/// that a byte outside visible ASCII (obs-text) in one element does not hide
/// the others: `Connection: x-secret, \xff` still names `x-secret`.
fn list_elements(value: &HeaderValue) -> impl Iterator<Item = &[u8]> {
    value.as_bytes().split(|b| *b == b',').map(<[u8]>::trim_ascii).filter(|t| !t.is_empty())
}

/// Appends `value` to the comma-separated list in `name`, folding any
/// repeated header lines into one, so the original first hop stays first.
/// When the header is absent (the common case) `value` is inserted as it
/// is: no copy, no allocation for static or shared values.
pub fn append_list(headers: &mut HeaderMap, name: &HeaderName, value: HeaderValue) {
    // One hash for the common case, through the entry.
    let mut entry = match headers.entry(name) {
        http::header::Entry::Vacant(vacant) => {
            vacant.insert(value);
            return;
        }
        http::header::Entry::Occupied(entry) => entry,
    };
    let Ok(value) = value.to_str() else { return };
    let mut joined = String::with_capacity(64);
    for v in entry.iter().filter_map(|v| v.to_str().ok()) {
        if !joined.is_empty() {
            joined.push_str(", ");
        }
        joined.push_str(v);
    }
    if !joined.is_empty() {
        joined.push_str(", ");
    }
    joined.push_str(value);
    if let Ok(v) = HeaderValue::from_str(&joined) {
        entry.insert(v);
    }
}

/// What this hop says about its client, prepared once per connection.
#[derive(Debug, Clone)]
pub struct Hop {
    /// This client's `X-Forwarded-For` entry ([`forwarded_for`]).
    pub client: Option<HeaderValue>,
    /// `X-Forwarded-Proto`: this listener's scheme.
    pub proto: &'static str,
    /// `X-Forwarded-Port`: this listener's port.
    pub port: HeaderValue,
    /// The peer is a trusted front proxy: its forwarding headers stand.
    pub trusted: bool,
    /// `Some` when `Forwarded` is sent: this hop's `for=...;proto=...`.
    pub forwarded: Option<String>,
}

impl Hop {
    /// The hop for a connection from `client` to a listener on `port`.
    pub fn new(client: IpAddr, proto: &'static str, port: u16, trusted: bool, forwarded: bool) -> Self {
        let mut buf = [0u8; 64];
        let ip = format_ip(client, &mut buf);
        Self {
            client: HeaderValue::from_str(ip).ok(),
            proto,
            port: HeaderValue::from(port),
            trusted,
            // IPv6 goes in brackets and quotes (RFC 7239 §6).
            forwarded: forwarded
                .then(|| if ip.contains(':') { format!("for=\"[{ip}]\";proto={proto}") } else { format!("for={ip};proto={proto}") }),
        }
    }
}

/// Adds the forwarding headers for one hop; `host` is a clone of the
/// request's Host (a reference count, not a copy).
///
/// From a trusted front proxy, `X-Forwarded-For` and `Forwarded` are
/// appended to and the other values, if present, stand. From anyone else,
/// all of them are replaced with what this hop saw: a client's own
/// `X-Forwarded-Proto: https` must not reach an app that trusts it.
pub fn add_forwarded(headers: &mut HeaderMap, hop: &Hop, host: Option<HeaderValue>) {
    if hop.trusted {
        if let Some(client) = hop.client.clone() {
            append_list(headers, &X_FORWARDED_FOR, client);
        }
        for (name, value) in [
            (&X_FORWARDED_PROTO, Some(HeaderValue::from_static(hop.proto))),
            (&X_FORWARDED_HOST, host.clone()),
            (&X_FORWARDED_PORT, Some(hop.port.clone())),
        ] {
            if let (http::header::Entry::Vacant(vacant), Some(value)) = (headers.entry(name), value) {
                vacant.insert(value);
            }
        }
    } else {
        match hop.client.clone() {
            Some(client) => headers.insert(&X_FORWARDED_FOR, client),
            None => headers.remove(&X_FORWARDED_FOR),
        };
        headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static(hop.proto));
        match host.clone() {
            Some(host) => headers.insert(&X_FORWARDED_HOST, host),
            None => headers.remove(&X_FORWARDED_HOST),
        };
        headers.insert(&X_FORWARDED_PORT, hop.port.clone());
        headers.remove(FORWARDED);
    }
    if let Some(element) = &hop.forwarded {
        let mut element = element.clone();
        if let Some(host) = host.as_ref().and_then(|h| h.to_str().ok()) {
            element.push_str(";host=\"");
            for c in host.chars() {
                if c == '"' || c == '\\' {
                    element.push('\\');
                }
                element.push(c);
            }
            element.push('"');
        }
        if let Ok(value) = HeaderValue::from_str(&element) {
            append_list(headers, &FORWARDED, value);
        }
    }
}

/// Appends this hop to `Via`.
pub fn add_via(headers: &mut HeaderMap, version: http::Version) {
    let hop = match version {
        http::Version::HTTP_2 => "2 outrider",
        http::Version::HTTP_10 => "1.0 outrider",
        _ => "1.1 outrider",
    };
    append_list(headers, &VIA, HeaderValue::from_static(hop));
}

/// Formats an IP without a heap allocation.
fn format_ip(ip: IpAddr, buf: &mut [u8; 64]) -> &str {
    use std::io::Write;
    // Unwrap IPv4-mapped IPv6 so apps see the address they expect.
    let ip = ip.to_canonical();
    let mut cursor = std::io::Cursor::new(&mut buf[..]);
    // An IPv6 address is at most 45 bytes; 64 always fits.
    let _ = write!(cursor, "{ip}");
    let len = usize::try_from(cursor.position()).unwrap_or(0);
    std::str::from_utf8(&buf[..len]).unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn strips_fixed_and_connection_named_headers() {
        let mut h = map(&[
            ("connection", "close, x-secret, Host"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("te", "gzip, trailers;q=1"),
            ("trailer", "x-checksum"),
            ("host", "example.com"),
            ("x-keep", "yes"),
        ]);
        strip_hop_by_hop(&mut h, false);
        let names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(h.get("te").unwrap(), "trailers");
        assert_eq!(h.get("trailer").unwrap(), "x-checksum");
        for gone in ["connection", "x-secret", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade"] {
            assert!(!names.contains(&gone), "{gone} survived: {names:?}");
        }
        assert_eq!(h.get("host").unwrap(), "example.com");
        assert_eq!(h.get("x-keep").unwrap(), "yes");
    }

    #[test]
    fn keeps_upgrade_when_asked() {
        let mut h = map(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        assert!(is_upgrade_request(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h.get("upgrade").unwrap(), "websocket");
        assert_eq!(h.get("connection").unwrap(), "upgrade");
    }

    /// Found by the `headers` fuzz target
    /// (fuzz/corpus-regressions/headers/connection-obs-text): a `Connection`
    /// value with one non-ASCII byte was skipped whole, so the headers it
    /// named were forwarded and the upgrade it asked for was not seen.
    #[test]
    fn connection_is_read_from_bytes() {
        let mut h = HeaderMap::new();
        h.append(CONNECTION, HeaderValue::from_bytes(b"upgrade,via\xff").unwrap());
        h.append(UPGRADE, HeaderValue::from_bytes(b"\xdd").unwrap());
        assert!(is_upgrade_request(&h));
        let mut h = HeaderMap::new();
        h.append(CONNECTION, HeaderValue::from_bytes(b"x-secret, \xff, Keep-Alive").unwrap());
        h.append("x-secret", HeaderValue::from_static("1"));
        h.append("x-keep", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.keys().map(HeaderName::as_str).collect::<Vec<_>>(), ["x-keep"]);
    }

    fn hop(client: &str, trusted: bool, forwarded: bool) -> Hop {
        Hop::new(client.parse().unwrap(), "http", 8080, trusted, forwarded)
    }

    const SPOOFED: &[(&str, &str)] = &[
        ("x-forwarded-for", "1.1.1.1"),
        ("x-forwarded-for", "2.2.2.2"),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "bank.example"),
        ("x-forwarded-port", "443"),
        ("forwarded", "for=1.1.1.1;proto=https"),
    ];

    #[test]
    fn an_untrusted_clients_forwarding_headers_are_replaced() {
        let mut h = map(SPOOFED);
        add_forwarded(&mut h, &hop("::ffff:10.0.0.1", false, false), Some(HeaderValue::from_static("a.example")));
        assert_eq!(h.get("x-forwarded-for").unwrap(), "10.0.0.1");
        assert_eq!(h.get("x-forwarded-proto").unwrap(), "http");
        assert_eq!(h.get("x-forwarded-host").unwrap(), "a.example");
        assert_eq!(h.get("x-forwarded-port").unwrap(), "8080");
        assert!(!h.contains_key("forwarded"), "a client's Forwarded must not pass");
        for name in ["x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "x-forwarded-port"] {
            assert_eq!(h.get_all(name).iter().count(), 1, "{name}");
        }
    }

    #[test]
    fn a_trusted_proxys_stand_and_for_is_appended() {
        let mut h = map(SPOOFED);
        add_forwarded(&mut h, &hop("10.0.0.1", true, true), Some(HeaderValue::from_static("a.example:8080")));
        assert_eq!(h.get("x-forwarded-for").unwrap(), "1.1.1.1, 2.2.2.2, 10.0.0.1");
        assert_eq!(h.get("x-forwarded-proto").unwrap(), "https");
        assert_eq!(h.get("x-forwarded-host").unwrap(), "bank.example");
        assert_eq!(h.get("x-forwarded-port").unwrap(), "443");
        assert_eq!(h.get("forwarded").unwrap(), "for=1.1.1.1;proto=https, for=10.0.0.1;proto=http;host=\"a.example:8080\"");
        // A trusted proxy that sent none: ours fill in.
        let mut h = HeaderMap::new();
        add_forwarded(&mut h, &hop("2001:db8::1", true, true), None);
        assert_eq!(h.get("x-forwarded-for").unwrap(), "2001:db8::1");
        assert_eq!(h.get("x-forwarded-proto").unwrap(), "http");
        assert_eq!(h.get("forwarded").unwrap(), "for=\"[2001:db8::1]\";proto=http");
    }
}
