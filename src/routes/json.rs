//! The JSON `data` of an event: the proto3 canonical JSON mapping (json_name keys, fields at
//! their default value included, unset message fields left out) with a route's options on top.
//!
//! prost-reflect's serializer has no hook for renames or enum styles, so messages are walked
//! here, in field-number order as prost-reflect writes them; well-known types other than
//! `Timestamp` (Duration, Struct, wrappers, ...) are handed to prost-reflect whole.

use base64::{Engine as _, prelude::BASE64_STANDARD};
use prost_reflect::{DynamicMessage, Kind, MapKey, ReflectMessage as _, SerializeOptions, Value};
use serde::ser::{Error as _, Serialize, SerializeMap, SerializeSeq, Serializer};

use super::{DataOptions, EnumStyle, Int64Style, TimestampStyle, mapping::short_lowercase};

/// Encodes `message` as one line of JSON by `options`. Renames and omissions apply to its own
/// fields; the enum, 64-bit integer and Timestamp styles at every depth.
pub fn encode(message: &DynamicMessage, options: &DataOptions) -> Result<Vec<u8>, serde_json::Error> {
    let mut out = Vec::with_capacity(256);
    MessageJson { message, options, top: true }.serialize(&mut serde_json::Serializer::new(&mut out))?;
    Ok(out)
}

struct MessageJson<'a> {
    message: &'a DynamicMessage,
    options: &'a DataOptions,
    /// Whether this is the event's message, to which `rename` and `omit_empty` apply.
    top: bool,
}

impl Serialize for MessageJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let descriptor = self.message.descriptor();
        let full_name = descriptor.full_name();
        if full_name == "google.protobuf.Timestamp" && self.options.timestamps == TimestampStyle::Nanos {
            let timestamp: prost_types::Timestamp = self.message.transcode_to().map_err(S::Error::custom)?;
            return serializer.collect_str(&rfc3339_nanos(timestamp));
        }
        if full_name.starts_with("google.protobuf.") {
            let canonical = SerializeOptions::new()
                .skip_default_fields(false)
                .stringify_64_bit_integers(self.options.int64 == Int64Style::String);
            return self.message.serialize_with_options(serializer, &canonical);
        }
        let mut map = serializer.serialize_map(None)?;
        for field in descriptor.fields() {
            let set = self.message.has_field(&field);
            // Fields with presence (messages, `optional`, oneof cases) are written only when set,
            // as proto3 JSON does even when it includes default values.
            if !set && (field.supports_presence() || (self.top && self.options.omit_empty.contains(field.name()))) {
                continue;
            }
            let renamed = self.top.then(|| self.options.rename.get(field.name())).flatten();
            let key = renamed.map_or(field.json_name(), String::as_str);
            let value = self.message.get_field(&field);
            map.serialize_entry(key, &ValueJson { value: &value, kind: &field.kind(), options: self.options })?;
        }
        map.end()
    }
}

struct ValueJson<'a> {
    value: &'a Value,
    kind: &'a Kind,
    options: &'a DataOptions,
}

impl Serialize for ValueJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let as_string = self.options.int64 == Int64Style::String;
        match self.value {
            Value::Bool(v) => serializer.serialize_bool(*v),
            Value::I32(v) => serializer.serialize_i32(*v),
            Value::U32(v) => serializer.serialize_u32(*v),
            Value::I64(v) if as_string => serializer.collect_str(v),
            Value::I64(v) => serializer.serialize_i64(*v),
            Value::U64(v) if as_string => serializer.collect_str(v),
            Value::U64(v) => serializer.serialize_u64(*v),
            Value::F32(v) if v.is_finite() => serializer.serialize_f32(*v),
            Value::F32(v) => float(serializer, f64::from(*v)),
            Value::F64(v) => float(serializer, *v),
            Value::String(v) => serializer.serialize_str(v),
            Value::Bytes(v) => serializer.serialize_str(&BASE64_STANDARD.encode(v)),
            Value::EnumNumber(number) => {
                let Kind::Enum(enum_type) = self.kind else { return serializer.serialize_i32(*number) };
                match enum_type.get_value(*number) {
                    _ if enum_type.full_name() == "google.protobuf.NullValue" => serializer.serialize_none(),
                    Some(value) if self.options.enums == EnumStyle::ShortLowercase => {
                        serializer.serialize_str(&short_lowercase(&value))
                    }
                    Some(value) => serializer.serialize_str(value.name()),
                    // A number the enum does not declare: proto3 JSON writes the number.
                    None => serializer.serialize_i32(*number),
                }
            }
            Value::Message(message) => MessageJson { message, options: self.options, top: false }.serialize(serializer),
            Value::List(values) => {
                let mut seq = serializer.serialize_seq(Some(values.len()))?;
                for value in values {
                    seq.serialize_element(&ValueJson { value, kind: self.kind, options: self.options })?;
                }
                seq.end()
            }
            Value::Map(entries) => {
                let value_kind = match self.kind {
                    Kind::Message(entry) => entry.map_entry_value_field().kind(),
                    other => other.clone(),
                };
                // Sorted by key, so the same message always gives the same bytes.
                let mut sorted: Vec<_> = entries.iter().collect();
                sorted.sort_by(|a, b| a.0.cmp(b.0));
                let mut map = serializer.serialize_map(Some(sorted.len()))?;
                for (key, value) in sorted {
                    map.serialize_entry(
                        &MapKeyJson(key),
                        &ValueJson { value, kind: &value_kind, options: self.options },
                    )?;
                }
                map.end()
            }
        }
    }
}

/// JSON object keys are strings, whatever the map's key type.
struct MapKeyJson<'a>(&'a MapKey);

impl Serialize for MapKeyJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            MapKey::Bool(v) => serializer.collect_str(v),
            MapKey::I32(v) => serializer.collect_str(v),
            MapKey::I64(v) => serializer.collect_str(v),
            MapKey::U32(v) => serializer.collect_str(v),
            MapKey::U64(v) => serializer.collect_str(v),
            MapKey::String(v) => serializer.serialize_str(v),
        }
    }
}

/// Finite floats as numbers; the others as proto3 JSON's strings.
fn float<S: Serializer>(serializer: S, value: f64) -> Result<S::Ok, S::Error> {
    if value.is_finite() {
        serializer.serialize_f64(value)
    } else if value.is_nan() {
        serializer.serialize_str("NaN")
    } else if value > 0.0 {
        serializer.serialize_str("Infinity")
    } else {
        serializer.serialize_str("-Infinity")
    }
}

/// RFC 3339 in UTC with all nine fractional digits (`timestamps = "nanos"`).
pub fn rfc3339_nanos(mut timestamp: prost_types::Timestamp) -> String {
    timestamp.normalize();
    let nanos = timestamp.nanos;
    timestamp.nanos = 0;
    let whole = timestamp.to_string();
    let seconds = whole.strip_suffix('Z').unwrap_or(&whole);
    format!("{seconds}.{nanos:09}Z")
}
