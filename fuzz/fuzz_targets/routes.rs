//! The route matcher (`telemetry::routes`): `OUTRIDER_ROUTES` text, then
//! request paths.
//!
//! Invariants: nothing panics; a matched index is below `len()`; a path
//! made from a template by putting a non-empty segment without `/` in each
//! `{param}` matches that template or an earlier one; the templates, joined
//! with commas as `--print-config` prints them, parse back to the same list.

#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use outrider::telemetry::routes::Routes;

#[derive(Arbitrary, Debug)]
enum Segment {
    Literal(String),
    Param(String),
}

#[derive(Arbitrary, Debug)]
struct Input {
    /// Templates built segment by segment, most of them valid.
    templates: Vec<Vec<Segment>>,
    /// Appended to the list as it is: anything at all.
    raw: String,
    /// A path as a client sends it.
    path: String,
    /// What goes into the `{param}` segments.
    fills: Vec<String>,
}

fn is_param(segment: &str) -> bool {
    segment.starts_with('{') && segment.ends_with('}') && segment.len() > 2
}

fuzz_target!(|input: Input| {
    let mut list: Vec<String> = input
        .templates
        .iter()
        .map(|segments| {
            let segments: Vec<String> = segments
                .iter()
                .map(|s| match s {
                    Segment::Literal(text) => text.clone(),
                    Segment::Param(name) => format!("{{{name}}}"),
                })
                .collect();
            format!("/{}", segments.join("/"))
        })
        .collect();
    list.push(input.raw.clone());
    let Ok(routes) = Routes::parse(&list.join(",")) else { return };

    if let Some(i) = routes.find(&input.path) {
        assert!(i < routes.len(), "{i} of {}", routes.len());
    }
    assert_eq!(routes.template(routes.len()), "");

    let mut fills = input.fills.iter().map(|f| f.replace('/', "")).filter(|f| !f.is_empty()).cycle();
    for i in 0..routes.len() {
        let template = routes.template(i);
        let path: Vec<String> = template[1..]
            .split('/')
            .map(|segment| if is_param(segment) { fills.next().unwrap_or_else(|| "x".to_owned()) } else { segment.to_owned() })
            .collect();
        let path = format!("/{}", path.join("/"));
        match routes.find(&path) {
            Some(j) => assert!(j <= i, "{path:?} made from template {i} {template:?} matched the later {j}"),
            None => panic!("{path:?} made from template {i} {template:?} matches nothing"),
        }
    }

    let printed = (0..routes.len()).map(|i| routes.template(i)).collect::<Vec<_>>().join(",");
    let again = Routes::parse(&printed).expect("printed templates parse");
    assert_eq!(again.len(), routes.len());
    for i in 0..routes.len() {
        assert_eq!(again.template(i), routes.template(i));
    }
});
