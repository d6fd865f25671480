//! The generic mapping against the compiled one: the built-in document route must give the
//! bytes the compiled mapping gave (`reference.rs`). Also the oneof and fixed namings, and requests.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use proptest::prelude::*;
use prost::Message as _;
use prost_reflect::{DescriptorPool, DynamicMessage};
use serde::Serialize as _;

use crate::{
    pb::{
        self,
        docproc::v1::{ProcessingStatus, ProcessingUpdate},
    },
    routes::{MapError, Route, RouteTable, RoutesFile, validate},
};

use super::reference::map_update;

fn document_route() -> Route {
    let table = RouteTable::built_in(&["http://127.0.0.1:50051".to_owned()]).expect("the built-in table is valid");
    table.routes.into_iter().next().expect("one route")
}

fn update(sequence: u64, status: ProcessingStatus, message: &str, nanos: i32) -> ProcessingUpdate {
    ProcessingUpdate {
        document_id: "doc-1".into(),
        sequence,
        status: status.into(),
        progress_percent: 40,
        stage: "embedding".into(),
        message: message.into(),
        emitted_at: Some(prost_types::Timestamp { seconds: 1_795_428_000, nanos }),
        error_code: String::new(),
    }
}

/// Maps `update` both ways and asserts the same name, id and JSON bytes.
fn assert_same(route: &Route, update: ProcessingUpdate) {
    let dynamic = DynamicMessage::decode(route.method.output(), update.encode_to_vec().as_slice()).unwrap();
    let generic = route.map(&dynamic).unwrap();
    let compiled = map_update(&update).unwrap();
    assert_eq!(String::from_utf8_lossy(&generic.data), String::from_utf8_lossy(&compiled.data), "data differs");
    assert_eq!(generic.data, compiled.data);
    assert_eq!(generic.name, compiled.name);
    assert_eq!(generic.terminal, compiled.terminal);
    assert_eq!(generic.id, Some(compiled.id));
}

#[test]
fn the_document_route_reproduces_todays_json_byte_for_byte() {
    let route = document_route();
    assert_same(&route, update(1, ProcessingStatus::Queued, "Queued", 0));
    assert_same(&route, update(7, ProcessingStatus::Running, "Embedded 120/300 chunks", 123_456_789));
    assert_same(&route, update(8, ProcessingStatus::Running, "two\nlines, a NUL \0, \"quotes\" and \u{2028}", 5));
    assert_same(&route, update(9, ProcessingStatus::Running, "unicode: é ✓ 😀 \u{7f}", 120_000_000));
    assert_same(&route, update(10, ProcessingStatus::Completed, "Done", 0));
    let mut failed = update(u64::MAX, ProcessingStatus::Failed, "Cannot parse", 1);
    failed.error_code = "UNSUPPORTED_FORMAT".into();
    assert_same(&route, failed);
}

#[test]
fn messages_the_compiled_mapping_refuses_are_refused() {
    let route = document_route();
    let decode = |u: ProcessingUpdate| DynamicMessage::decode(route.method.output(), u.encode_to_vec().as_slice());
    let mut unspecified = update(3, ProcessingStatus::Running, "", 0);
    unspecified.status = 0;
    assert!(matches!(route.map(&decode(unspecified.clone()).unwrap()), Err(MapError::Enum { value: 0, .. })));
    assert!(map_update(&unspecified).is_none());
    let mut unknown = update(3, ProcessingStatus::Running, "", 0);
    unknown.status = 99;
    assert!(matches!(route.map(&decode(unknown).unwrap()), Err(MapError::Enum { value: 99, .. })));
    let zero = update(0, ProcessingStatus::Running, "", 0);
    assert!(matches!(route.map(&decode(zero.clone()).unwrap()), Err(MapError::Id { .. })));
    assert!(map_update(&zero).is_none());
}

proptest! {
    #[test]
    fn any_valid_update_maps_to_the_same_bytes(
        sequence in 1..=u64::MAX,
        status in 1..=4_i32,
        percent in 0..=100_u32,
        texts in proptest::array::uniform4(any::<String>()),
        seconds in 0..=253_402_300_799_i64,
        nanos in 0..1_000_000_000_i32,
    ) {
        let [document_id, stage, message, error_code] = texts;
        let update = ProcessingUpdate {
            document_id, sequence, status, progress_percent: percent, stage, message,
            emitted_at: Some(prost_types::Timestamp { seconds, nanos }), error_code,
        };
        assert_same(&document_route(), update);
    }
}

/// A route over the CI example's descriptors.
fn builds_route(route: &str) -> Route {
    let text = format!(
        "[[upstream]]\nname = \"ci\"\nurls = [\"http://127.0.0.1:1\"]\ndescriptors = \"x\"\n\
         [[route]]\nupstream = \"ci\"\nmethod = \"ci.v1.Builds/WatchBuild\"\n{route}"
    );
    let file = RoutesFile::parse(&text).unwrap();
    let pool = DescriptorPool::decode(pb::BUILDS_FILE_DESCRIPTOR_SET).unwrap();
    let table = validate(&file, &[("ci".to_owned(), pool)].into(), "".as_ref()).unwrap();
    table.routes.into_iter().next().unwrap()
}

fn build_event(route: &Route, json: &str) -> DynamicMessage {
    let mut de = serde_json::Deserializer::from_str(json);
    DynamicMessage::deserialize(route.method.output(), &mut de).unwrap()
}

#[test]
fn a_oneof_names_the_event_by_its_case_and_data_is_the_cases_message() {
    let route = builds_route(
        "path = \"/p/{project}/b/{build_number}\"\nid = \"offset\"\nevent = { oneof = \"kind\" }\n\
         terminal = [\"finished\"]\ndata = { enums = \"short-lowercase\", rename = { text = \"line\" } }",
    );
    let line = r#"{"offset":"7","at":"2026-11-23T10:00:00.120Z","logLine":{"step":"test","text":"ok","stream":"LOG_STREAM_STDERR"}}"#;
    let mapped = route.map(&build_event(&route, line)).unwrap();
    assert_eq!((mapped.name, mapped.id, mapped.terminal), ("log_line", Some(7), false));
    assert_eq!(String::from_utf8(mapped.data).unwrap(), r#"{"step":"test","line":"ok","stream":"stderr"}"#);
    let finished = r#"{"offset":"8","finished":{"result":"BUILD_RESULT_SUCCEEDED","durationMs":"1200"}}"#;
    let mapped = route.map(&build_event(&route, finished)).unwrap();
    assert_eq!((mapped.name, mapped.terminal), ("finished", true));
    // 64-bit integers are strings unless `int64 = "number"`, as proto3 JSON writes them.
    assert_eq!(String::from_utf8(mapped.data).unwrap(), r#"{"result":"succeeded","durationMs":"1200"}"#);
    let none = route.map(&build_event(&route, r#"{"offset":"9"}"#));
    assert!(matches!(none, Err(MapError::NoCase { .. })), "{none:?}");
}

#[test]
fn a_fixed_name_without_id_keeps_the_canonical_json() {
    let route = builds_route("path = \"/p/{project}/b/{build_number}\"\nevent = { name = \"update\" }");
    let json = r#"{"offset":"3","at":"2026-11-23T10:00:00.120Z","stepStarted":{"step":"build","index":2}}"#;
    let mapped = route.map(&build_event(&route, json)).unwrap();
    assert_eq!((mapped.name, mapped.id, mapped.terminal), ("update", None, false));
    assert_eq!(
        String::from_utf8(mapped.data).unwrap(),
        r#"{"offset":"3","at":"2026-11-23T10:00:00.120Z","stepStarted":{"step":"build","index":2}}"#
    );
}

#[test]
fn requests_take_path_parameters_by_their_rules_and_the_resume_point() {
    let route = builds_route(
        "path = \"/p/{project}/b/{build_number}\"\nevent = { name = \"u\" }\nparams = { project = \"[a-z]+\" }",
    );
    let request = route.build_request(&[("project", "web"), ("build_number", "42")], 0).unwrap();
    let mut out = Vec::new();
    request.serialize(&mut serde_json::Serializer::new(&mut out)).unwrap();
    assert_eq!(String::from_utf8(out).unwrap(), r#"{"project":"web","buildNumber":"42"}"#);
    // The whole value must match: the rule is anchored.
    assert!(route.build_request(&[("project", "web1"), ("build_number", "42")], 0).is_err());
    // The default rule lets "4x" through; the integer field does not.
    assert!(route.build_request(&[("project", "web"), ("build_number", "4x")], 0).is_err());
    let document = document_route();
    let request = document.build_request(&[("document_id", "doc-1")], 7).unwrap();
    assert_eq!(
        request.encode_to_vec(),
        pb::docproc::v1::ProcessDocumentRequest { document_id: "doc-1".into(), resume_after: 7 }.encode_to_vec()
    );
    assert!(document.build_request(&[("document_id", "a/b")], 0).is_err());
}

#[test]
fn enum_prefixes_follow_protobufs_style_guide() {
    assert_eq!(super::upper_snake("ProcessingStatus"), "PROCESSING_STATUS");
    assert_eq!(super::upper_snake("HTTPCode"), "HTTP_CODE");
    assert_eq!(super::upper_snake("LogStream2Kind"), "LOG_STREAM2_KIND");
    assert_eq!(super::upper_snake("Status"), "STATUS");
}

proptest! {
    #[test]
    fn the_document_id_rule_is_the_contracts(id in "[A-Za-z0-9._-]{0,130}|\\PC{0,140}") {
        let route = document_route();
        let expected = (1..=128).contains(&id.len())
            && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        prop_assert_eq!(route.params[0].pattern.is_match(&id), expected);
    }
}
