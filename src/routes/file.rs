//! The routes file as written: the TOML shape, parsed with serde and nothing resolved yet.
//!
//! Every table refuses keys it does not know (`deny_unknown_fields`), so a misspelt key is an
//! error that names it and its line, never a silently ignored setting.

use std::collections::BTreeMap;

use serde::Deserialize;

/// A whole routes file: `[[upstream]]` and `[[route]]` tables.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutesFile {
    /// The gRPC services routes call, by name.
    #[serde(default, rename = "upstream")]
    pub upstreams: Vec<UpstreamSpec>,
    /// The HTTP resources, each one server-streaming method.
    #[serde(default, rename = "route")]
    pub routes: Vec<RouteSpec>,
}

impl RoutesFile {
    /// Parses TOML text. The error names the key or value at fault and its line.
    pub fn parse(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }
}

/// One `[[upstream]]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSpec {
    /// The name routes refer to with `upstream = "..."`.
    pub name: String,
    /// gRPC endpoints (`http://` or `https://`); reflection asks the first.
    pub urls: Vec<String>,
    /// `"reflection"`, or the path of an encoded FileDescriptorSet, relative to the routes file.
    pub descriptors: String,
    /// The grpc.health.v1 service name `/readyz` checks; `""` is the server's overall health,
    /// absent means not checked.
    pub health: Option<String>,
}

/// One `[[route]]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    /// The path template, such as `/documents/{document_id}/progress`; each `{param}` fills the
    /// request field of the same name.
    pub path: String,
    /// The name of an `[[upstream]]`.
    pub upstream: String,
    /// `package.Service/Method`: a server-streaming method.
    pub method: String,
    /// Fixed request fields, as proto3 JSON values.
    #[serde(default)]
    pub request: toml::Table,
    /// The integer field of the response whose value is the SSE id (increasing, above zero).
    pub id: Option<String>,
    /// The integer field of the request that asks the upstream to continue after an id.
    pub resume: Option<String>,
    /// What a slow viewer gets.
    #[serde(default)]
    pub retention: Retention,
    /// Events kept per shared call for resuming viewers, at least one.
    #[serde(default = "default_replay")]
    pub replay: usize,
    /// How events are named.
    pub event: EventSpec,
    /// Event names after which the stream ends.
    #[serde(default)]
    pub terminal: Vec<String>,
    /// JSON options on top of the proto3 canonical mapping.
    #[serde(default)]
    pub data: DataSpec,
    /// A regular expression per path parameter, matched against the whole value.
    #[serde(default)]
    pub params: BTreeMap<String, String>,
}

/// What a viewer that falls behind gets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Retention {
    /// Events are states: a slow viewer skips to the latest one.
    #[default]
    State,
    /// Events are a log: every one is delivered; a viewer that falls out of the log gets
    /// `event: reset`.
    Log,
}

/// `event = { ... }`: exactly one of `enum`, `oneof` or `name`.
///
/// One struct rather than an untagged enum, so that a wrong key gets serde's own "unknown
/// field" message and a missing choice gets ours, naming the keys.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventSpec {
    /// An enum field of the response whose value names the event.
    #[serde(rename = "enum")]
    pub enum_field: Option<String>,
    /// With `enum`: event names for enum values (by value name).
    #[serde(default)]
    pub names: BTreeMap<String, String>,
    /// With `enum`: the name of every value `names` does not list (else its short lowercase name).
    pub default: Option<String>,
    /// A oneof of the response: the set case's field name is the event name, and `data` is
    /// that case's message.
    pub oneof: Option<String>,
    /// One fixed name for every event.
    pub name: Option<String>,
}

/// `data = { ... }`: options on top of the proto3 canonical JSON mapping.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSpec {
    /// JSON key per field (by proto field name) of the event's message, instead of its
    /// json_name.
    #[serde(default)]
    pub rename: BTreeMap<String, String>,
    /// Fields (by proto field name) left out when they hold their default value.
    #[serde(default)]
    pub omit_empty: Vec<String>,
    /// How enum values are written.
    #[serde(default)]
    pub enums: EnumStyle,
    /// How 64-bit integers are written.
    #[serde(default)]
    pub int64: Int64Style,
    /// How `google.protobuf.Timestamp` values are written.
    #[serde(default)]
    pub timestamps: TimestampStyle,
}

/// `data.enums`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum EnumStyle {
    /// The value's name, as proto3 JSON writes it: `PROCESSING_STATUS_RUNNING`.
    #[default]
    #[serde(rename = "name")]
    Name,
    /// The name without the enum type's prefix, lowercase: `running`.
    #[serde(rename = "short-lowercase")]
    ShortLowercase,
}

/// `data.int64`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Int64Style {
    /// A JSON string, as proto3 JSON writes them (JavaScript numbers lose precision past 2^53).
    #[default]
    String,
    /// A JSON number.
    Number,
}

/// `data.timestamps`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TimestampStyle {
    /// RFC 3339 in UTC with 0, 3, 6 or 9 fractional digits, as proto3 JSON writes them.
    #[default]
    Canonical,
    /// RFC 3339 in UTC with always nine fractional digits: every value has the same shape.
    Nanos,
}

fn default_replay() -> usize {
    8
}
