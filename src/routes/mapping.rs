//! One decoded upstream message to one event by its route's options: the event name, the id
//! and the JSON `data` bytes (`json`). Generic: nothing here knows which service it maps.

use prost_reflect::{DynamicMessage, EnumValueDescriptor, FieldDescriptor, Kind, Value};

use super::{EventNaming, Route, json};

/// One mapped message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapped<'r> {
    /// The SSE event name (one of [`Route::event_names`]).
    pub name: &'r str,
    /// Whether the stream ends after this event.
    pub terminal: bool,
    /// The SSE id from the route's `id` field (above zero); `None` when the route has none.
    pub id: Option<u64>,
    /// One line of JSON: serde_json escapes every control character, so no newline or NUL of
    /// upstream text can break the SSE framing.
    pub data: Vec<u8>,
}

/// A message the route cannot turn into an event: the upstream broke its own contract (served
/// as 500 `internal`, like the document route's invalid status).
#[derive(Debug, thiserror::Error)]
pub enum MapError {
    /// The id field is zero or negative.
    #[error("id field {field} is {value}; an id must be above zero")]
    Id { field: String, value: String },
    /// The enum field holds a value with no event name: the zero value ("not set") or a number
    /// the enum does not declare.
    #[error("field {field} holds {value}, which names no event")]
    Enum { field: String, value: i32 },
    /// No case of the naming oneof is set.
    #[error("no case of oneof {oneof} is set")]
    NoCase { oneof: String },
    /// The JSON encoder refused a value (a Timestamp out of range, say).
    #[error("cannot encode data: {0}")]
    Encode(#[from] serde_json::Error),
}

impl Route {
    /// Maps one message of the route's method to its event.
    pub fn map(&self, message: &DynamicMessage) -> Result<Mapped<'_>, MapError> {
        let id = self.id.as_ref().map(|field| id(message, field)).transpose()?;
        let (name, data) = match &self.event {
            EventNaming::Fixed(name) => (name.as_str(), json::encode(message, &self.data)?),
            EventNaming::Enum { field, names } => {
                let value = message.get_field(field).as_enum_number().unwrap_or_default();
                let name = names.get(&value).ok_or_else(|| MapError::Enum { field: field.name().into(), value })?;
                (name.as_str(), json::encode(message, &self.data)?)
            }
            EventNaming::Oneof { oneof, names } => {
                let no_case = || MapError::NoCase { oneof: oneof.name().into() };
                let case = oneof.fields().find(|f| message.has_field(f)).ok_or_else(no_case)?;
                let name = names.get(&case.number()).ok_or_else(no_case)?;
                let value = message.get_field(&case);
                let inner = value.as_message().ok_or_else(no_case)?;
                (name.as_str(), json::encode(inner, &self.data)?)
            }
        };
        Ok(Mapped { name, terminal: self.terminal.contains(name), id, data })
    }
}

fn id(message: &DynamicMessage, field: &FieldDescriptor) -> Result<u64, MapError> {
    let value = message.get_field(field);
    let id = match value.as_ref() {
        Value::U64(v) => Some(*v),
        Value::U32(v) => Some(u64::from(*v)),
        Value::I64(v) => u64::try_from(*v).ok(),
        Value::I32(v) => u64::try_from(*v).ok(),
        _ => None,
    };
    match id {
        Some(id) if id > 0 => Ok(id),
        _ => {
            let value = match value.as_ref() {
                Value::U64(v) => v.to_string(),
                Value::U32(v) => v.to_string(),
                Value::I64(v) => v.to_string(),
                Value::I32(v) => v.to_string(),
                other => format!("{other:?}"),
            };
            Err(MapError::Id { field: field.name().into(), value })
        }
    }
}

/// An enum value's name without its type's prefix, lowercase: `PROCESSING_STATUS_RUNNING` of
/// `ProcessingStatus` → `running`. A name without the prefix is only lowercased.
pub fn short_lowercase(value: &EnumValueDescriptor) -> String {
    let prefix = upper_snake(value.parent_enum().name()) + "_";
    let name = value.name();
    name.strip_prefix(&prefix).filter(|rest| !rest.is_empty()).unwrap_or(name).to_lowercase()
}

/// `ProcessingStatus` → `PROCESSING_STATUS`, `HTTPCode` → `HTTP_CODE`, as protobuf's style
/// guide prefixes enum values.
fn upper_snake(name: &str) -> String {
    let chars: Vec<char> = name.chars().collect();
    let mut out = String::with_capacity(name.len() + 4);
    for (i, &c) in chars.iter().enumerate() {
        let prev = i.checked_sub(1).and_then(|p| chars.get(p));
        let next_lower = chars.get(i + 1).is_some_and(|n| n.is_lowercase());
        let boundary = c.is_uppercase()
            && prev.is_some_and(|p| p.is_lowercase() || p.is_ascii_digit() || (p.is_uppercase() && next_lower));
        if boundary {
            out.push('_');
        }
        out.extend(c.to_uppercase());
    }
    out
}

/// Parses text (a path parameter, a resume point) as the value of a string or integer field;
/// `None` when it does not fit the field's type.
pub fn field_value(field: &FieldDescriptor, text: &str) -> Option<Value> {
    Some(match field.kind() {
        Kind::String => Value::String(text.to_owned()),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => Value::I32(text.parse().ok()?),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => Value::I64(text.parse().ok()?),
        Kind::Uint32 | Kind::Fixed32 => Value::U32(text.parse().ok()?),
        Kind::Uint64 | Kind::Fixed64 => Value::U64(text.parse().ok()?),
        _ => return None,
    })
}

#[cfg(test)]
mod reference;
#[cfg(test)]
mod tests;
