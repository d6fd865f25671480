//! Validation: each mistake a routes file can hold is reported with its route and key, and all
//! of them in one run.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use prost_reflect::DescriptorPool;

use crate::{
    pb,
    routes::{EventNaming, RouteError, RouteTable, RoutesFile, validate},
};

const UPSTREAMS: &str = r#"
[[upstream]]
name = "docproc"
urls = ["http://127.0.0.1:50051"]
descriptors = "reflection"

[[upstream]]
name = "ci"
urls = ["http://127.0.0.1:50061"]
descriptors = "routes/builds.binpb"
"#;

const DOCUMENT: &str = r#"
[[route]]
path = "/documents/{document_id}/progress"
upstream = "docproc"
method = "docproc.v1.DocumentProcessor/ProcessDocument"
id = "sequence"
resume = "resume_after"
event = { enum = "status", names = { PROCESSING_STATUS_COMPLETED = "completed", PROCESSING_STATUS_FAILED = "failed" }, default = "progress" }
terminal = ["completed", "failed"]
"#;

fn pools() -> BTreeMap<String, DescriptorPool> {
    [
        ("docproc".to_owned(), DescriptorPool::decode(pb::FILE_DESCRIPTOR_SET).unwrap()),
        ("ci".to_owned(), DescriptorPool::decode(pb::BUILDS_FILE_DESCRIPTOR_SET).unwrap()),
    ]
    .into()
}

fn check(routes: &str) -> Result<RouteTable, Vec<RouteError>> {
    let file = RoutesFile::parse(&format!("{UPSTREAMS}{routes}")).expect("parses");
    validate(&file, &pools(), "fixtures".as_ref())
}

/// The route's problems as `key: message` lines.
fn problems(routes: &str) -> Vec<String> {
    let errors = check(routes).expect_err("refused");
    errors.iter().map(|e| format!("{}: {}", e.key, e.message)).collect()
}

fn has(problems: &[String], key: &str, words: &str) -> bool {
    problems.iter().any(|p| p.starts_with(&format!("{key}: ")) && p.contains(words))
}

#[test]
fn the_document_route_is_valid_and_names_its_events() {
    let table = check(DOCUMENT).unwrap();
    let route = &table.routes[0];
    let names: Vec<_> = route.event_names().into_iter().collect();
    assert_eq!(names, ["completed", "failed", "progress"]);
    assert!(matches!(&route.event, EventNaming::Enum { names, .. } if !names.contains_key(&0)));
    assert_eq!(route.params[0].field.name(), "document_id");
    assert_eq!(route.resume.as_ref().map(|f| f.name()), Some("resume_after"));
}

#[test]
fn an_unknown_or_unary_method_is_refused() {
    let unknown = problems(&DOCUMENT.replace("/ProcessDocument\"", "/ProcessDocuments\""));
    assert!(has(&unknown, "method", "has no method ProcessDocuments (it has: ProcessDocument)"), "{unknown:?}");
    let service = problems(&DOCUMENT.replace("docproc.v1.DocumentProcessor/", "docproc.v2.DocumentProcessor/"));
    assert!(has(&service, "method", "no service docproc.v2.DocumentProcessor"), "{service:?}");
    let unary = problems(
        "[[route]]\npath = \"/b/{project}\"\nupstream = \"ci\"\nmethod = \"ci.v1.Builds/GetBuild\"\nevent = { name = \"x\" }",
    );
    assert!(has(&unary, "method", "is unary; a route needs a server-streaming method"), "{unary:?}");
}

#[test]
fn misspelt_fields_and_wrong_types_name_the_key() {
    let routes = DOCUMENT
        .replace("id = \"sequence\"", "id = \"stage\"")
        .replace("resume = \"resume_after\"", "resume = \"resume_afterr\"")
        .replace("{document_id}", "{documentid}")
        .replace("enum = \"status\"", "enum = \"statuss\"")
        + "data = { rename = { progress_pct = \"percent\" }, omit_empty = [\"eror_code\"] }\n";
    let found = problems(&routes);
    assert!(has(&found, "id", "stage is a string: it must be an integer field"), "{found:?}");
    assert!(has(&found, "resume", "\"resume_afterr\" names no field of docproc.v1.ProcessDocumentRequest"));
    assert!(has(&found, "path", "{documentid} names no field"), "{found:?}");
    assert!(has(&found, "event.enum", "\"statuss\" names no field of docproc.v1.ProcessingUpdate"));
    assert!(has(&found, "data.rename.progress_pct", "names no field"), "{found:?}");
    assert!(has(&found, "data.omit_empty", "\"eror_code\" names no field"), "{found:?}");
    assert_eq!(found.len(), 6, "every problem, once: {found:?}");
    let not_enum = problems(&DOCUMENT.replace("enum = \"status\"", "enum = \"stage\""));
    assert!(has(&not_enum, "event.enum", "stage is a string, not an enum"), "{not_enum:?}");
    let not_oneof =
        problems(&DOCUMENT.replace("enum = \"status\", names = { PROCESSING_STATUS_COMPLETED = \"completed\", PROCESSING_STATUS_FAILED = \"failed\" }, default = \"progress\"", "oneof = \"status\""));
    assert!(has(&not_oneof, "event.oneof", "\"status\" names no oneof"), "{not_oneof:?}");
    let bad_value = problems(&DOCUMENT.replace("PROCESSING_STATUS_FAILED =", "PROCESSING_STATUS_FAIL ="));
    assert!(has(&bad_value, "event.names.PROCESSING_STATUS_FAIL", "has no such value"), "{bad_value:?}");
}

#[test]
fn unknown_keys_in_the_file_are_errors_naming_the_key() {
    let error = RoutesFile::parse(&DOCUMENT.replace("resume =", "resum =")).unwrap_err().to_string();
    assert!(error.contains("unknown field `resum`"), "{error}");
    assert!(error.contains("line 7"), "{error}");
    let error = RoutesFile::parse("[[route]]\nevent = { enums = \"status\" }").unwrap_err().to_string();
    assert!(error.contains("unknown field `enums`"), "{error}");
    let error = RoutesFile::parse(&format!("{DOCUMENT}data = {{ int64 = \"bigint\" }}")).unwrap_err().to_string();
    assert!(error.contains("unknown variant `bigint`"), "{error}");
}

#[test]
fn routes_that_clash_or_point_nowhere_are_refused() {
    let twice = problems(&format!("{DOCUMENT}{}", DOCUMENT.replace("{document_id}/progress", "{id}/progress")));
    assert!(has(&twice, "path", "matches the same requests as route /documents/{document_id}/progress"), "{twice:?}");
    let nowhere = problems(&DOCUMENT.replace("upstream = \"docproc\"", "upstream = \"docs\""));
    assert!(has(&nowhere, "upstream", "no [[upstream]] is named \"docs\""), "{nowhere:?}");
    let reserved = problems(&DOCUMENT.replace("/documents/{document_id}/progress", "/healthz"));
    assert!(has(&reserved, "path", "served by the BFF itself"), "{reserved:?}");
}

#[test]
fn terminal_names_must_be_event_names_and_rules_must_compile() {
    let routes = DOCUMENT.replace("terminal = [\"completed\", \"failed\"]", "terminal = [\"complete\"]")
        + "params = { document_id = \"[a-z\", other = \"x\" }\n";
    let found = problems(&routes);
    assert!(has(
        &found,
        "terminal",
        "no event is named \"complete\" (this route's events: completed, failed, progress)"
    ));
    assert!(has(&found, "params.document_id", "\"[a-z\" is not a valid regular expression: unclosed character class"));
    assert!(has(&found, "params.other", "is not a parameter of the path"), "{found:?}");
    let reserved = problems(&DOCUMENT.replace("default = \"progress\"", "default = \"error\""));
    assert!(has(&reserved, "event.default", "an event the BFF sends itself"), "{reserved:?}");
}

#[test]
fn fixed_request_fields_are_proto3_json_and_not_filled_twice() {
    let found = problems(&format!("{DOCUMENT}request = {{ document_id = \"x\", colour = 1 }}\n"));
    assert!(has(&found, "request.document_id", "filled per call by the path"), "{found:?}");
    assert!(has(&found, "request", "not a valid docproc.v1.ProcessDocumentRequest"), "{found:?}");
    let fine = DOCUMENT.replace("resume = \"resume_after\"\n", "") + "request = { resumeAfter = \"5\" }\n";
    let table = check(&fine).unwrap();
    let request = table.routes[0].build_request(&[("document_id", "d")], 0).unwrap();
    assert_eq!(request.get_field_by_name("resume_after").unwrap().as_u64(), Some(5));
}

#[test]
fn the_example_file_is_valid_and_its_descriptor_set_is_current() {
    let text = std::fs::read_to_string("fixtures/routes.example.toml").unwrap();
    let file = RoutesFile::parse(&text).unwrap();
    let table = validate(&file, &pools(), "fixtures".as_ref()).unwrap();
    assert_eq!(table.routes.len(), 2);
    let builds = std::fs::read("fixtures/routes/builds.binpb").unwrap();
    assert!(
        builds == pb::BUILDS_FILE_DESCRIPTOR_SET,
        "fixtures/routes/builds.binpb is stale: copy builds_descriptor.bin from the build's OUT_DIR over it"
    );
}
