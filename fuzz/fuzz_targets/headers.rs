//! The header rewriting of a request head (`proxy::headers`), on any header
//! map `http` accepts, in the order the proxy applies it.
//!
//! Invariants: nothing panics; after `strip_hop_by_hop` no header named in
//! `Connection` remains (`Host` is never removed, `Upgrade` stays when the
//! upgrade is kept), none of the fixed hop-by-hop headers remains (but
//! `TE: trailers`, and `Connection: upgrade` with a kept upgrade), and every
//! other header is untouched; after `add_forwarded` there is one
//! `X-Forwarded-For`: from a trusted proxy it ends with the client's entry,
//! after the earlier ones in order, and the proxy's other forwarding
//! headers stand; from anyone else each forwarding header holds exactly
//! what this hop saw and a client's `Forwarded` is gone; after `add_via`
//! one `Via` ends with this hop.

#![no_main]

use std::net::IpAddr;

use arbitrary::Arbitrary;
use http::{HeaderMap, HeaderName, HeaderValue, header};
use libfuzzer_sys::fuzz_target;
use outrider::proxy::headers::{Hop, add_forwarded, add_via, is_upgrade_request, strip_hop_by_hop};

const NAMES: &[&str] = &[
    "connection",
    "keep-alive",
    "te",
    "transfer-encoding",
    "upgrade",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "trailer",
    "host",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "via",
    "close",
    "x-a",
    "x-b",
];

/// Tokens for list values; header names among them.
const TOKENS: &[&str] = &["close", "keep-alive", "upgrade", "Upgrade", "trailers", "trailers;q=1", "gzip", "TE", "Host", "X-A", "x-b"];

const SEPARATORS: &[&str] = &[", ", ",", " , ", ",\t", ",,", " "];

#[derive(Arbitrary, Debug)]
enum Name {
    Known(u8),
    Raw(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
enum Value {
    /// A comma-separated list of known tokens and names, with arbitrary
    /// bytes after it.
    List(Vec<(u8, u8)>, Vec<u8>),
    Raw(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
enum Client {
    V4([u8; 4]),
    V6([u8; 16]),
}

#[derive(Arbitrary, Debug)]
struct Input {
    headers: Vec<(Name, Value)>,
    keep_upgrade: bool,
    client: Client,
    https: bool,
    version: u8,
    /// The peer is a trusted front proxy.
    trusted: bool,
    /// `Forwarded` is sent too.
    forwarded: bool,
    port: u16,
}

fn header_name(n: &Name) -> Option<HeaderName> {
    match n {
        Name::Known(i) => Some(HeaderName::from_static(NAMES[usize::from(*i) % NAMES.len()])),
        Name::Raw(bytes) => HeaderName::from_bytes(bytes).ok(),
    }
}

fn header_value(v: &Value) -> Option<HeaderValue> {
    let bytes = match v {
        Value::Raw(bytes) => bytes.clone(),
        Value::List(tokens, tail) => {
            let mut out = Vec::new();
            for (i, (token, sep)) in tokens.iter().enumerate() {
                if i > 0 {
                    out.extend_from_slice(SEPARATORS[usize::from(*sep) % SEPARATORS.len()].as_bytes());
                }
                let t = usize::from(*token);
                out.extend_from_slice(if t < TOKENS.len() { TOKENS[t] } else { NAMES[t % NAMES.len()] }.as_bytes());
            }
            out.extend_from_slice(tail);
            out
        }
    };
    HeaderValue::from_bytes(&bytes).ok()
}

/// The elements of a comma-separated list, read from the bytes: a value
/// with a non-ASCII byte in one element still names the others.
fn elements(value: &HeaderValue) -> impl Iterator<Item = &[u8]> {
    value.as_bytes().split(|b| *b == b',').map(<[u8]>::trim_ascii).filter(|t| !t.is_empty())
}

fn is_fixed_hop_by_hop(name: &HeaderName) -> bool {
    [
        header::CONNECTION,
        header::TE,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
    ]
    .contains(name)
}

fn values(map: &HeaderMap, name: &HeaderName) -> Vec<HeaderValue> {
    map.get_all(name).iter().cloned().collect()
}

fuzz_target!(|input: Input| {
    let mut map = HeaderMap::new();
    for (name, value) in &input.headers {
        if let (Some(name), Some(value)) = (header_name(name), header_value(value)) {
            map.append(name, value);
        }
    }
    let before = map.clone();
    let keep_upgrade = input.keep_upgrade;

    // What the request asks, read from the bytes.
    let named: Vec<HeaderName> = before
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(elements)
        .filter(|t| !t.eq_ignore_ascii_case(b"close") && !t.eq_ignore_ascii_case(b"keep-alive"))
        .filter_map(|t| HeaderName::from_bytes(t).ok())
        .collect();
    let asks_upgrade = before.contains_key(header::UPGRADE) && named.contains(&header::UPGRADE);
    assert_eq!(is_upgrade_request(&before), asks_upgrade, "{before:?}");

    strip_hop_by_hop(&mut map, keep_upgrade);
    for name in &named {
        let allowed = *name == header::HOST || (keep_upgrade && (*name == header::UPGRADE || *name == header::CONNECTION));
        assert!(allowed || !map.contains_key(name), "{name} is named in Connection and survived: {before:?} -> {map:?}");
    }
    for name in ["keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization", "transfer-encoding"] {
        assert!(!map.contains_key(name), "{name} survived: {before:?} -> {map:?}");
    }
    if !keep_upgrade {
        assert!(!map.contains_key(header::UPGRADE) && !map.contains_key(header::CONNECTION), "{before:?} -> {map:?}");
    } else {
        assert_eq!(values(&map, &header::CONNECTION), [HeaderValue::from_static("upgrade")], "{before:?} -> {map:?}");
        assert_eq!(values(&map, &header::UPGRADE), values(&before, &header::UPGRADE), "{before:?} -> {map:?}");
    }
    let te = values(&map, &header::TE);
    assert!(te.is_empty() || te == [HeaderValue::from_static("trailers")], "{before:?} -> {map:?}");
    if !te.is_empty() {
        let asked = before
            .get_all(header::TE)
            .iter()
            .flat_map(elements)
            .any(|t| t.split(|b| *b == b';').next().is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(b"trailers")));
        assert!(asked && !named.contains(&header::TE), "TE: trailers out of nothing: {before:?} -> {map:?}");
    }
    for name in before.keys() {
        if !is_fixed_hop_by_hop(name) && (!named.contains(name) || *name == header::HOST) {
            assert_eq!(values(&map, name), values(&before, name), "{name} changed: {before:?} -> {map:?}");
        }
    }
    for name in map.keys() {
        assert!(before.contains_key(name) || is_fixed_hop_by_hop(name), "{name} came from nowhere: {before:?} -> {map:?}");
    }

    // Then the proxy adds this hop.
    let stripped = map.clone();
    let client: IpAddr = match input.client {
        Client::V4(b) => b.into(),
        Client::V6(b) => b.into(),
    };
    let proto = if input.https { "https" } else { "http" };
    let hop = Hop::new(client, proto, input.port, input.trusted, input.forwarded);
    let entry = hop.client.clone().expect("an IP address is a valid header value");
    assert_eq!(entry.to_str().unwrap(), client.to_canonical().to_string());
    let host = stripped.get(header::HOST).cloned();
    add_forwarded(&mut map, &hop, host.clone());
    let named = |n: &'static str| values(&map, &HeaderName::from_static(n));
    let xff = named("x-forwarded-for");
    assert_eq!(xff.len(), 1, "{stripped:?} -> {map:?}");
    let xff = xff[0].to_str().expect("visible ASCII");
    if !input.trusted {
        assert_eq!(xff, entry.to_str().unwrap(), "an untrusted client's X-Forwarded-For stood: {map:?}");
        assert_eq!(named("x-forwarded-proto"), [HeaderValue::from_static(proto)], "{map:?}");
        assert_eq!(named("x-forwarded-port"), [HeaderValue::from(input.port)], "{map:?}");
        assert_eq!(named("x-forwarded-host"), host.iter().cloned().collect::<Vec<_>>(), "{map:?}");
        if !input.forwarded {
            assert!(!map.contains_key(header::FORWARDED), "an untrusted client's Forwarded passed: {map:?}");
        }
    } else {
        let earlier = xff.strip_suffix(entry.to_str().unwrap()).unwrap_or_else(|| panic!("{xff:?} does not end with {entry:?}"));
        assert!(earlier.is_empty() || earlier.ends_with(", "), "{xff:?}");
        // Earlier entries (those that are text) are kept, in order.
        let mut rest = earlier;
        for v in stripped.get_all("x-forwarded-for").iter().filter_map(|v| v.to_str().ok()).filter(|v| !v.is_empty()) {
            let at = rest.find(v).unwrap_or_else(|| panic!("{v:?} lost or out of order in {xff:?}"));
            rest = &rest[at + v.len()..];
        }
        // The trusted proxy's own values stand; ours only fill a gap.
        for (n, ours) in [("x-forwarded-proto", Some(HeaderValue::from_static(proto))), ("x-forwarded-host", host.clone())] {
            let theirs = values(&stripped, &HeaderName::from_static(n));
            let expected = if theirs.is_empty() { ours.into_iter().collect() } else { theirs };
            assert_eq!(named(n), expected, "{n}: {stripped:?} -> {map:?}");
        }
    }

    let version = [http::Version::HTTP_10, http::Version::HTTP_11, http::Version::HTTP_2][usize::from(input.version) % 3];
    add_via(&mut map, version);
    let via = values(&map, &header::VIA);
    assert!(via.len() == 1 && via[0].to_str().is_ok_and(|v| v.ends_with(" outrider")), "{map:?}");
});
