//! Header rewriting that makes outrider a correct intermediary:
//! hop-by-hop stripping (RFC 9110 §7.6.1) and the `X-Forwarded-*` family.

use std::net::IpAddr;

use http::{
    HeaderMap, HeaderName, HeaderValue,
    header::{CONNECTION, HOST, PROXY_AUTHENTICATE, PROXY_AUTHORIZATION, TE, TRANSFER_ENCODING, UPGRADE, VIA},
};

pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
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

/// The `X-Forwarded-For` entry for a client: built once per connection.
pub fn forwarded_for(client: IpAddr) -> Option<HeaderValue> {
    let mut buf = [0u8; 64];
    HeaderValue::from_str(format_ip(client, &mut buf)).ok()
}

/// Adds the `X-Forwarded-*` headers for one hop. `client` comes from
/// [`forwarded_for`]; `host` is a clone of the request's Host. Both are
/// reference counts, not copies.
pub fn add_forwarded(headers: &mut HeaderMap, client: Option<HeaderValue>, proto: &'static str, host: Option<HeaderValue>) {
    if let Some(client) = client {
        append_list(headers, &X_FORWARDED_FOR, client);
    }
    append_list(headers, &X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    if let Some(host) = host {
        append_list(headers, &X_FORWARDED_HOST, host);
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

    #[test]
    fn forwarded_for_appends_and_folds() {
        let mut h = map(&[("x-forwarded-for", "1.1.1.1"), ("x-forwarded-for", "2.2.2.2")]);
        add_forwarded(&mut h, forwarded_for("::ffff:10.0.0.1".parse().unwrap()), "http", Some(HeaderValue::from_static("a.example")));
        assert_eq!(h.get("x-forwarded-for").unwrap(), "1.1.1.1, 2.2.2.2, 10.0.0.1");
        assert_eq!(h.get("x-forwarded-proto").unwrap(), "http");
        assert_eq!(h.get("x-forwarded-host").unwrap(), "a.example");
        let mut h = HeaderMap::new();
        add_forwarded(&mut h, forwarded_for("2001:db8::1".parse().unwrap()), "https", None);
        assert_eq!(h.get("x-forwarded-for").unwrap(), "2001:db8::1");
    }
}
