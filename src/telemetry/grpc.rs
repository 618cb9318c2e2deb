//! What telemetry reads of a gRPC call: whether a request is one, the
//! service and method its path names, and the status the answer carries.
//!
//! Only the request path's own headers and the response's headers and
//! trailers are read; message bodies never are.

use http::HeaderMap;

use crate::grpc::{CODE_NAMES, GRPC_STATUS};

/// `(service, method)` of a path of the shape gRPC gives every call,
/// `/package.Service/Method`; `None` for any other path.
pub fn service_method(path: &str) -> Option<(&str, &str)> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    (!service.is_empty() && !method.is_empty() && !method.contains('/')).then_some((service, method))
}

/// A gRPC status code, `OK` (0) to `UNAUTHENTICATED` (16).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Code(u8);

/// The label values of the codes, by value (formatted once, here).
const VALUES: [&str; 17] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16"];

impl Code {
    /// How many codes there are.
    pub const COUNT: usize = CODE_NAMES.len();
    const UNKNOWN: Self = Self(2);

    /// The codes a server span counts as errors, by the OpenTelemetry
    /// semantic conventions for gRPC: the server failed. The others
    /// (`NOT_FOUND`, `INVALID_ARGUMENT`, `PERMISSION_DENIED`, ...) are the
    /// caller's, as an HTTP 4xx is, and `CANCELLED` is the caller leaving.
    pub const SERVER_ERRORS: [&str; 6] = ["UNKNOWN", "DEADLINE_EXCEEDED", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS"];

    /// The `grpc-status` of `headers` (the trailers, or the headers of a
    /// trailers-only answer). A value outside 0–16 is `UNKNOWN`, as gRPC
    /// clients read it.
    pub fn of(headers: &HeaderMap) -> Option<Self> {
        let value = headers.get(&GRPC_STATUS)?;
        let code = std::str::from_utf8(value.as_bytes()).ok().and_then(|v| v.parse::<u8>().ok());
        Some(code.filter(|c| usize::from(*c) < Self::COUNT).map_or(Self::UNKNOWN, Self))
    }

    pub fn value(self) -> u8 {
        self.0
    }

    /// Index in tables of [`Self::COUNT`] entries.
    pub fn index(self) -> usize {
        usize::from(self.0)
    }

    /// `OK`, `NOT_FOUND`, ...: the `error.type` of a server error.
    pub fn name(self) -> &'static str {
        CODE_NAMES[self.index()]
    }

    /// `"0"` to `"16"`, as a label value.
    pub fn label(self) -> &'static str {
        VALUES[self.index()]
    }

    /// The code is one of [`Self::SERVER_ERRORS`].
    pub fn is_server_error(self) -> bool {
        matches!(self.0, 2 | 4 | 12 | 13 | 14 | 15)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_and_method_from_the_path() {
        assert_eq!(service_method("/grpc.health.v1.Health/Check"), Some(("grpc.health.v1.Health", "Check")));
        assert_eq!(service_method("/Echo/Say"), Some(("Echo", "Say")));
        for other in ["/", "/a", "//m", "/s/", "/a/b/c", "no-slash"] {
            assert_eq!(service_method(other), None, "{other}");
        }
    }

    #[test]
    fn status_codes_from_headers() {
        let of = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(&GRPC_STATUS, v.parse().unwrap());
            Code::of(&h)
        };
        assert_eq!(of("0").map(Code::name), Some("OK"));
        assert_eq!(of("5").map(Code::label), Some("5"));
        assert_eq!(of("14").map(Code::name), Some("UNAVAILABLE"));
        assert_eq!(of("16").map(Code::value), Some(16));
        assert_eq!(of("05").map(Code::value), Some(5));
        for bad in ["17", "99", "256", "-1", "x", ""] {
            assert_eq!(of(bad), Some(Code::UNKNOWN), "{bad:?}");
        }
        assert_eq!(Code::of(&HeaderMap::new()), None);
        let errors: Vec<_> = (0..17).map(Code).filter(|c| c.is_server_error()).map(Code::name).collect();
        assert_eq!(errors, Code::SERVER_ERRORS);
        assert!((0..17).map(Code).all(|c| c.label() == c.value().to_string()));
    }
}
