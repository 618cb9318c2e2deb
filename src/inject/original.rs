//! The record of every field inject changed, kept in the pod template's
//! `outrider.dev/original` annotation, so `--uninject` (and a re-inject)
//! restores exactly what was there rather than guessing.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// What the pod spec looked like where inject touched it. Fields that are
/// absent were not touched.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Original {
    /// The app container's name.
    pub container: String,
    /// The name the app's port had, now carried by outrider's port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_name: Option<PortName>,
    /// Handlers of the app container that named that port, by their place
    /// (`livenessProbe.httpGet`, `lifecycle.postStart.tcpSocket`...), with
    /// the port as written.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub handler_ports: BTreeMap<String, Value>,
    /// The app's readiness probe, now outrider's app health check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness_probe: Option<Value>,
    /// inject added the app's `lifecycle.preStop`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub pre_stop: bool,
    /// The app's own exec `preStop`, which inject wrapped to run after the
    /// drain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wrapped_pre_stop: Option<Value>,
    /// The `hostPort` the app's port had, now on outrider's port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_port: Option<HostPort>,
    /// Keys inject created, to remove again when they are empty:
    /// `lifecycle`, `volumeMounts` (app container), `initContainers`,
    /// `volumes` (pod), `annotations` (pod metadata).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub created: Vec<String>,
    /// `terminationGracePeriodSeconds` before inject raised it; `null`:
    /// it was not set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grace: Option<Grace>,
}

/// A port's number and the name it had.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortName {
    pub port: i32,
    pub name: String,
}

/// A port's number and the `hostPort` it had.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HostPort {
    pub port: i32,
    pub host_port: Value,
}

/// The grace period inject replaced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grace {
    /// `None`: the field was absent (Kubernetes' default, 30 s).
    pub was: Option<i64>,
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if passes a reference
fn is_false(b: &bool) -> bool {
    !*b
}

impl Original {
    /// The annotation's value: compact JSON.
    pub fn to_annotation(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Reads the annotation back.
    ///
    /// # Errors
    /// It is not what inject wrote (edited by hand, or by another version).
    pub fn from_annotation(value: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(value)
    }

    pub fn created(&self, key: &str) -> bool {
        self.created.iter().any(|k| k == key)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn round_trips_and_stays_small() {
        let o = Original {
            container: "app".into(),
            port_name: Some(PortName { port: 8080, name: "http".into() }),
            handler_ports: BTreeMap::from([("livenessProbe.httpGet".into(), json!("http"))]),
            readiness_probe: Some(json!({"httpGet": {"path": "/ready", "port": "http"}})),
            pre_stop: true,
            wrapped_pre_stop: None,
            host_port: None,
            created: vec!["lifecycle".into()],
            grace: Some(Grace { was: None }),
        };
        let a = o.to_annotation();
        assert_eq!(Original::from_annotation(&a).unwrap(), o);
        assert!(a.len() < 300, "{a}");
        assert_eq!(Original::from_annotation(r#"{"container":"app"}"#).unwrap().grace, None);
        assert!(Original::from_annotation(r#"{"container":"app","extra":1}"#).is_err());
    }
}
