//! Scripts of the services played from descriptors, checked against them at start.
//!
//! A script answers one method for the requests it matches:
//!
//! ```json
//! { "method": "ci.v1.Builds/WatchBuild",
//!   "request": {"project": "web", "buildNumber": "42"},
//!   "tenant": "acme",
//!   "messages": [ {"after_ms": 0, "message": {"offset": "1", "stepStarted": {"step": "checkout"}}} ],
//!   "status": {"code": "unavailable", "message": "build agent lost"} }
//! ```
//!
//! `request` and each `message` are proto3 JSON of the method's input and output types. A call
//! matches when every field set in `request` equals the call's; a string also matches by the part
//! before its first `.`, so `web.7f3a` plays the script of `web`. `tenant` (optional) is the only
//! `x-tenant-id` that may watch; `status` (optional) ends the call after the messages (else OK).

use std::{sync::Arc, time::Duration};

use prost_reflect::{DescriptorPool, DeserializeOptions, DynamicMessage, MessageDescriptor, Value};
use serde::Deserialize;

use super::{built_in, check_served};
use crate::sim::script::{ScriptError, ScriptStatus};

/// The service scripts compiled into the binary: the files of `fixtures/builds/`.
pub(super) const EMBEDDED: &[(&str, &str)] = &[
    ("web-42-passed.json", include_str!("../../../fixtures/builds/web-42-passed.json")),
    ("web-43-failed.json", include_str!("../../../fixtures/builds/web-43-failed.json")),
    ("web-44-agent-lost.json", include_str!("../../../fixtures/builds/web-44-agent-lost.json")),
];

/// One script, checked against its method's descriptors.
#[derive(Debug, Clone)]
pub struct DynamicScript {
    /// The file it came from.
    pub file: String,
    /// The method, as `package.Service/Method`.
    pub method: String,
    /// The fields a call must match; only the fields set here count.
    pub request: DynamicMessage,
    /// The tenant the stream belongs to; other tenants get PERMISSION_DENIED.
    pub tenant: Option<String>,
    /// The response messages, in order.
    pub messages: Vec<ScriptedMessage>,
    /// The status the call ends with after the messages; `None` ends it with OK.
    pub status: Option<ScriptStatus>,
}

/// One response message of a script and the delay before it.
#[derive(Debug, Clone)]
pub struct ScriptedMessage {
    /// Delay before the message in milliseconds, at speed 1.
    pub after_ms: f64,
    /// The message, of the method's output type.
    pub message: DynamicMessage,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScript {
    method: String,
    #[serde(default)]
    request: Option<serde_json::Value>,
    #[serde(default)]
    tenant: Option<String>,
    #[serde(default)]
    messages: Vec<RawMessage>,
    #[serde(default)]
    status: Option<ScriptStatus>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMessage {
    #[serde(default)]
    after_ms: f64,
    message: serde_json::Value,
}

impl DynamicScript {
    /// Whether a call with `request` plays this script.
    pub fn matches(&self, request: &DynamicMessage) -> bool {
        self.request.fields().all(|(field, expected)| match (expected, request.get_field(&field).as_ref()) {
            (Value::String(expected), Value::String(actual)) => {
                actual == expected || actual.split_once('.').is_some_and(|(base, _)| base == expected)
            }
            (expected, actual) => expected == actual,
        })
    }
}

impl ScriptedMessage {
    /// The delay before this message at the given speed factor.
    pub fn delay(&self, speed: f64) -> Duration {
        Duration::try_from_secs_f64(self.after_ms / 1000.0 / speed).unwrap_or(Duration::ZERO)
    }
}

/// Parses `text` (from `file`) and checks it against `pool` and what the simulator plays.
pub(super) fn parse(file: &str, text: &str, pool: &DescriptorPool) -> Result<Arc<DynamicScript>, ScriptError> {
    let raw: RawScript =
        serde_json::from_str(text).map_err(|source| ScriptError::Parse { file: file.to_owned(), source })?;
    let method_error = |reason| ScriptError::Method { file: file.to_owned(), method: raw.method.clone(), reason };
    let name = raw.method.strip_prefix('/').unwrap_or(&raw.method);
    let (service, method) = name.split_once('/').ok_or_else(|| method_error("is not package.Service/Method"))?;
    if built_in(service) {
        return Err(method_error("is served by the built-in simulator (DocumentProcessor jobs go under --fixtures)"));
    }
    let method = pool
        .get_service_by_name(service)
        .and_then(|service| service.methods().find(|m| m.name() == method))
        .ok_or_else(|| method_error("is not in the descriptor set"))?;
    check_served(&method).map_err(method_error)?;
    let request = raw.request.unwrap_or_else(|| serde_json::json!({}));
    let request = message(file, "request".to_owned(), method.input(), request)?;
    let messages = raw
        .messages
        .into_iter()
        .enumerate()
        .map(|(i, m)| {
            let message = message(file, format!("messages[{i}]"), method.output(), m.message)?;
            Ok(ScriptedMessage { after_ms: m.after_ms, message })
        })
        .collect::<Result<_, ScriptError>>()?;
    Ok(Arc::new(DynamicScript {
        file: file.to_owned(),
        method: format!("{service}/{}", method.name()),
        request,
        tenant: raw.tenant,
        messages,
        status: raw.status,
    }))
}

/// One proto3 JSON value as a message of type `desc`; unknown fields are errors, so a misspelt
/// field name is caught at start rather than silently sent as a default.
fn message(
    file: &str,
    place: String,
    desc: MessageDescriptor,
    json: serde_json::Value,
) -> Result<DynamicMessage, ScriptError> {
    let type_name = desc.full_name().to_owned();
    DynamicMessage::deserialize_with_options(desc, json, &DeserializeOptions::new())
        .map_err(|source| ScriptError::Message { file: file.to_owned(), place, type_name, source })
}
