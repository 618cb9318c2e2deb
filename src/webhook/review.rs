//! One AdmissionReview in, one out: the webhook's decision, as a pure
//! function of the request body and the inject options.
//!
//! The answer is always `allowed: true`. A webhook that denies, or fails,
//! blocks a deploy; outrider is an addition to a pod, never a condition
//! for it. What goes wrong is said in the response's `warnings` (kubectl
//! prints them) and in the log.
//!
//! Only a `CREATE` of a `v1` `Pod` (not a subresource) is injected;
//! anything else the configuration sends is allowed unchanged.

use json_patch::Patch;
use kube_core::{
    DynamicObject,
    admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation},
};
use serde_json::Value;

use crate::inject::{self, Options, Outcome};

/// What became of one review; the `outcome` label of
/// `outrider_webhook_admissions_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// A patch that adds outrider.
    Injected,
    /// Injecting changed nothing: outrider is already in the pod at this
    /// version (a reinvocation, or a pod created from an injected manifest).
    AlreadyInjected,
    /// The pod opted out (or cannot run outrider); allowed unchanged.
    Skipped,
    /// Not a pod creation; allowed unchanged.
    Ignored,
    /// The pod could not be injected; allowed unchanged, with a warning.
    Error,
}

impl Verdict {
    pub const ALL: [Self; 5] = [Self::Injected, Self::AlreadyInjected, Self::Skipped, Self::Ignored, Self::Error];

    pub fn label(self) -> &'static str {
        match self {
            Self::Injected => "injected",
            Self::AlreadyInjected => "already_injected",
            Self::Skipped => "skipped",
            Self::Ignored => "ignored",
            Self::Error => "error",
        }
    }
}

/// The answer to a well-formed review, and what the log line needs.
#[derive(Debug)]
pub struct Reviewed {
    pub response: AdmissionReview<DynamicObject>,
    pub verdict: Verdict,
    /// Why it was skipped, ignored or failed; empty when injected.
    pub reason: String,
    /// The request's uid: the API server's audit log has it too.
    pub uid: String,
    pub namespace: String,
    /// The pod's `metadata.generateName` (a controller's pod has no name yet).
    pub generate_name: String,
    pub name: String,
}

/// Why a body is not an AdmissionReview this webhook can answer (400).
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    #[error("not JSON: {0}")]
    NotJson(#[source] serde_json::Error),
    #[error("expected apiVersion admission.k8s.io/v1, kind AdmissionReview; got {0}")]
    NotV1(String),
    #[error("not an AdmissionReview: {0}")]
    Shape(#[source] serde_json::Error),
    #[error("an AdmissionReview without a request")]
    NoRequest,
}

/// Reviews one AdmissionReview v1 body.
///
/// # Errors
/// The body is not an AdmissionReview v1 with a request (the caller
/// answers 400: only a client that is not the API server sends that).
pub fn review(body: &[u8], opts: &Options) -> Result<Reviewed, ReviewError> {
    let mut doc: Value = serde_json::from_slice(body).map_err(ReviewError::NotJson)?;
    let api_version = doc.get("apiVersion").and_then(Value::as_str).unwrap_or_default();
    let kind = doc.get("kind").and_then(Value::as_str).unwrap_or_default();
    if api_version != kube_core::admission::META_API_VERSION_V1 || kind != kube_core::admission::META_KIND {
        return Err(ReviewError::NotV1(format!("apiVersion {api_version:?}, kind {kind:?}")));
    }
    // The pod is taken out as sent, before the typed parse: DynamicObject
    // would re-serialise `metadata` through ObjectMeta, and the patch must
    // be computed against exactly what the API server will apply it to.
    let object = doc.pointer_mut("/request/object").map(Value::take);
    if let Some(old) = doc.pointer_mut("/request/oldObject") {
        // Never read; not worth a typed parse.
        old.take();
    }
    let review: AdmissionReview<DynamicObject> = serde_json::from_value(doc).map_err(ReviewError::Shape)?;
    let request: AdmissionRequest<DynamicObject> = review.try_into().map_err(|_| ReviewError::NoRequest)?;
    Ok(decide(&request, object, opts))
}

fn decide(request: &AdmissionRequest<DynamicObject>, object: Option<Value>, opts: &Options) -> Reviewed {
    let meta = |key: &str| {
        object.as_ref().and_then(|o| o.pointer(&format!("/metadata/{key}"))).and_then(Value::as_str).unwrap_or_default().to_owned()
    };
    let mut reviewed = Reviewed {
        response: AdmissionResponse::from(request).into_review(),
        verdict: Verdict::Ignored,
        reason: String::new(),
        uid: request.uid.clone(),
        namespace: request.namespace.clone().unwrap_or_default(),
        generate_name: meta("generateName"),
        name: if request.name.is_empty() { meta("name") } else { request.name.clone() },
    };
    let is_pod = request.kind.group.is_empty() && request.kind.version == "v1" && request.kind.kind == "Pod";
    if !is_pod || request.sub_resource.is_some() || request.operation != Operation::Create {
        reviewed.reason = format!(
            "not a pod creation: {:?} of {}{}",
            request.operation,
            request.kind.kind,
            request.sub_resource.as_deref().map(|s| format!("/{s}")).unwrap_or_default()
        );
        return reviewed;
    }
    let Some(original) = object.filter(Value::is_object) else {
        return failed(reviewed, request, "the request has no pod object".to_owned());
    };
    let mut pod = original.clone();
    match inject::pod(&mut pod, opts) {
        Ok(Outcome::Injected { notes }) => {
            let patch = json_patch::diff(&original, &pod);
            if patch.0.is_empty() {
                reviewed.verdict = Verdict::AlreadyInjected;
                reviewed.reason = "outrider is already in the pod".to_owned();
                return reviewed;
            }
            respond(reviewed, request, patch, notes)
        }
        Ok(Outcome::Skipped { reason }) => {
            reviewed.verdict = Verdict::Skipped;
            reviewed.reason = reason;
            reviewed
        }
        Ok(Outcome::Uninjected) => failed(reviewed, request, "inject answered \"uninjected\"".to_owned()),
        Err(e) => failed(reviewed, request, e.to_string()),
    }
}

fn respond(mut reviewed: Reviewed, request: &AdmissionRequest<DynamicObject>, patch: Patch, notes: Vec<String>) -> Reviewed {
    match AdmissionResponse::from(request).with_patch(patch) {
        Ok(mut response) => {
            if !notes.is_empty() {
                response.warnings = Some(notes.into_iter().map(|n| format!("outrider: {n}")).collect());
            }
            reviewed.response = response.into_review();
            reviewed.verdict = Verdict::Injected;
            reviewed
        }
        Err(e) => failed(reviewed, request, e.to_string()),
    }
}

/// Allowed unchanged, with the reason as a warning: a webhook that cannot
/// do its job must not stop the pod (failurePolicy Ignore's meaning, kept
/// even when the webhook is up).
fn failed(mut reviewed: Reviewed, request: &AdmissionRequest<DynamicObject>, reason: String) -> Reviewed {
    let mut response = AdmissionResponse::from(request);
    response.warnings = Some(vec![format!("outrider: not injected: {reason}")]);
    reviewed.response = response.into_review();
    reviewed.verdict = Verdict::Error;
    reviewed.reason = reason;
    reviewed
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pod() -> Value {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"generateName": "web-7d4b9c-", "namespace": "shop", "labels": {"app": "web"}},
            "spec": {"containers": [{"name": "web", "image": "web:1", "ports": [{"name": "http", "containerPort": 8080}]}]}
        })
    }

    fn body(operation: &str, kind: &str, object: &Value) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {
                "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
                "kind": {"group": "", "version": "v1", "kind": kind},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "namespace": "shop", "operation": operation,
                "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
                "object": object, "oldObject": null, "dryRun": false,
                "unknownFutureField": {"ignored": true}
            }
        }))
        .unwrap()
    }

    fn response(r: &Reviewed) -> Value {
        serde_json::to_value(&r.response).unwrap()
    }

    #[test]
    fn answers_with_the_request_uid_and_v1_types() {
        let r = review(&body("UPDATE", "Pod", &pod()), &Options::default()).unwrap();
        let v = response(&r);
        assert_eq!(v["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(v["kind"], "AdmissionReview");
        assert_eq!(v["response"]["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
        assert_eq!(v["response"]["allowed"], true);
        assert!(v.get("request").is_none());
    }

    #[test]
    fn only_a_pod_create_is_injected() {
        for (operation, kind) in [("UPDATE", "Pod"), ("DELETE", "Pod"), ("CREATE", "Deployment"), ("CONNECT", "Pod")] {
            let r = review(&body(operation, kind, &pod()), &Options::default()).unwrap();
            assert_eq!(r.verdict, Verdict::Ignored, "{operation} {kind}");
            let v = response(&r);
            assert_eq!(v["response"]["allowed"], true);
            assert!(v["response"].get("patch").is_none() && v["response"].get("warnings").is_none());
        }
        let mut sub: Value = serde_json::from_slice(&body("CREATE", "Pod", &pod())).unwrap();
        sub["request"]["subResource"] = json!("ephemeralcontainers");
        let r = review(&serde_json::to_vec(&sub).unwrap(), &Options::default()).unwrap();
        assert_eq!(r.verdict, Verdict::Ignored);
        assert!(r.reason.contains("Pod/ephemeralcontainers"), "{}", r.reason);
    }

    #[test]
    fn an_error_is_allowed_with_a_warning() {
        // No object on a CREATE: never sent by an API server, still no deny.
        let r = review(&body("CREATE", "Pod", &Value::Null), &Options::default()).unwrap();
        assert_eq!(r.verdict, Verdict::Error);
        let v = response(&r);
        assert_eq!(v["response"]["allowed"], true);
        assert!(v["response"].get("patch").is_none());
        let warnings = v["response"]["warnings"].as_array().unwrap();
        assert!(warnings[0].as_str().unwrap().starts_with("outrider: not injected: "), "{warnings:?}");
    }

    #[test]
    fn log_fields_come_from_the_request_and_the_pod() {
        let r = review(&body("CREATE", "Pod", &pod()), &Options::default()).unwrap();
        assert_eq!(
            (r.uid.as_str(), r.namespace.as_str(), r.generate_name.as_str()),
            ("705ab4f5-6393-11e8-b7cc-42010a800002", "shop", "web-7d4b9c-")
        );
    }

    #[test]
    fn malformed_reviews_are_refused_with_the_reason() {
        let opts = Options::default();
        assert!(matches!(review(b"{", &opts), Err(ReviewError::NotJson(_))));
        let v1beta1 = br#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":{}}"#;
        let e = review(v1beta1, &opts).unwrap_err().to_string();
        assert!(e.contains("admission.k8s.io/v1beta1"), "{e}");
        let e = review(br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#, &opts).unwrap_err();
        assert!(matches!(e, ReviewError::NoRequest), "{e}");
        let e = review(br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"x"}}"#, &opts).unwrap_err();
        assert!(matches!(e, ReviewError::Shape(_)), "{e}");
    }

    /// The patch takes the pod as sent to exactly what `inject::pod`
    /// makes of it, and carries its notes as warnings.
    #[test]
    fn the_patch_applies_to_the_injected_pod() {
        let opts = Options::default();
        let r = review(&body("CREATE", "Pod", &pod()), &opts).unwrap();
        let mut expected = pod();
        let Ok(Outcome::Injected { notes }) = inject::pod(&mut expected, &opts) else { panic!("the test pod must be injectable") };
        assert!(!notes.is_empty());
        assert_eq!(r.verdict, Verdict::Injected);
        let v = response(&r);
        assert_eq!(v["response"]["patchType"], "JSONPatch");
        let bytes = r.response.response.as_ref().unwrap().patch.clone().unwrap();
        let patch: Patch = serde_json::from_slice(&bytes).unwrap();
        let mut patched = pod();
        json_patch::patch(&mut patched, &patch).unwrap();
        assert_eq!(patched, expected);
        let warnings: Vec<String> = v["response"].get("warnings").map(|w| serde_json::from_value(w.clone()).unwrap()).unwrap_or_default();
        assert_eq!(warnings, notes.iter().map(|n| format!("outrider: {n}")).collect::<Vec<_>>());

        // Reviewing the injected pod again (a reinvocation) changes nothing.
        let again = review(&body("CREATE", "Pod", &expected), &opts).unwrap();
        assert_eq!(again.verdict, Verdict::AlreadyInjected);
        assert!(again.response.response.unwrap().patch.is_none());
    }

    #[test]
    fn an_opted_out_pod_is_skipped_without_a_warning() {
        let mut pod = pod();
        pod["metadata"]["annotations"] = json!({"outrider.dev/inject": "disabled"});
        let r = review(&body("CREATE", "Pod", &pod), &Options::default()).unwrap();
        assert_eq!(r.verdict, Verdict::Skipped);
        assert!(!r.reason.is_empty());
        let v = response(&r);
        assert!(v["response"].get("patch").is_none() && v["response"].get("warnings").is_none(), "{v}");
    }

    #[test]
    fn a_pod_inject_refuses_is_allowed_with_its_reason_as_a_warning() {
        // No port to put outrider in front of.
        let mut pod = pod();
        pod["spec"]["containers"][0].as_object_mut().unwrap().remove("ports");
        let r = review(&body("CREATE", "Pod", &pod), &Options::default()).unwrap();
        assert_eq!(r.verdict, Verdict::Error);
        let v = response(&r);
        assert_eq!(v["response"]["allowed"], true);
        assert!(v["response"].get("patch").is_none());
        assert_eq!(v["response"]["warnings"], json!([format!("outrider: not injected: {}", r.reason)]));
    }
}
