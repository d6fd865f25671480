//! The part of validation that needs descriptors: the method, the request fields filled by the
//! path, `request` and `resume`, the id field, event naming and the `data` options, each
//! resolved to a descriptor handle or reported with the key that names it.

use prost_reflect::{DescriptorPool, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, MethodDescriptor};
use regex::Regex;

use super::{Problems, check_events};
use crate::routes::{
    DataOptions, EventNaming, PathParam, Route,
    file::{EventSpec, RouteSpec},
    mapping::short_lowercase,
};

/// Resolves one route, recording every problem found on the way; `None` when a part is
/// missing. The caller keeps the route only if no problem at all was recorded for it.
pub(super) fn route(
    spec: &RouteSpec,
    pool: &DescriptorPool,
    params: Vec<(String, Option<Regex>)>,
    problems: &mut Problems<'_>,
) -> Option<Route> {
    let method = method(&spec.method, pool, problems)?;
    let (input, output) = (method.input(), method.output());
    let params: Vec<PathParam> = params
        .into_iter()
        .filter_map(|(name, pattern)| match input.get_field_by_name(&name) {
            None => {
                problems.add("path", format!("{{{name}}} names no field of {}", input.full_name()));
                None
            }
            Some(field) if !(is_singular(&field) && (is_integer(&field) || field.kind() == Kind::String)) => {
                problems.add(
                    "path",
                    format!("{{{name}}} is a {}: a parameter fills a string or integer field", type_name(&field)),
                );
                None
            }
            Some(field) => pattern.map(|pattern| PathParam { name, field, pattern }),
        })
        .collect();
    let resume = spec.resume.as_deref().and_then(|name| integer_field(&input, name, "resume", problems));
    if let Some(resume) = &resume
        && params.iter().any(|p| p.field == *resume)
    {
        problems.add("resume", "is already filled by a path parameter");
    }
    let request = request(spec, &input, &params, resume.as_ref(), problems);
    let id = spec.id.as_deref().and_then(|name| integer_field(&output, name, "id", problems));
    let event = naming(&spec.event, &output, problems);
    let data = data_options(spec, &output, event.as_ref(), problems);
    let (Some(request), Some(event), Some(data)) = (request, event, data) else { return None };
    let route = Route {
        path: spec.path.clone(),
        params,
        upstream: spec.upstream.clone(),
        method,
        request,
        id,
        resume,
        retention: spec.retention,
        replay: spec.replay,
        event,
        terminal: spec.terminal.iter().cloned().collect(),
        data,
    };
    check_events(&route, spec, problems);
    Some(route)
}

fn method(name: &str, pool: &DescriptorPool, problems: &mut Problems<'_>) -> Option<MethodDescriptor> {
    let Some((service_name, method_name)) = name.split_once('/') else {
        problems.add("method", format!("{name:?} must be package.Service/Method"));
        return None;
    };
    let Some(service) = pool.get_service_by_name(service_name) else {
        problems.add("method", format!("no service {service_name} in the upstream's descriptors"));
        return None;
    };
    let Some(method) = service.methods().find(|m| m.name() == method_name) else {
        let known = service.methods().map(|m| m.name().to_owned()).collect::<Vec<_>>().join(", ");
        problems.add("method", format!("{service_name} has no method {method_name} (it has: {known})"));
        return None;
    };
    let shape = match (method.is_client_streaming(), method.is_server_streaming()) {
        (false, true) => return Some(method),
        (false, false) => "unary",
        (true, false) => "client-streaming",
        (true, true) => "bidirectional-streaming",
    };
    problems.add("method", format!("{name} is {shape}; a route needs a server-streaming method"));
    None
}

/// The singular integer field `name` of `message`, for `key` (`id` or `resume`).
fn integer_field(
    message: &MessageDescriptor,
    name: &str,
    key: &str,
    problems: &mut Problems<'_>,
) -> Option<FieldDescriptor> {
    match message.get_field_by_name(name) {
        None => problems.add(key, format!("{name:?} names no field of {}", message.full_name())),
        Some(field) if is_singular(&field) && is_integer(&field) => return Some(field),
        Some(field) => problems.add(key, format!("{name} is a {}: it must be an integer field", type_name(&field))),
    }
    None
}

/// The fixed request fields, parsed as proto3 JSON, none of them also filled per call.
fn request(
    spec: &RouteSpec,
    input: &MessageDescriptor,
    params: &[PathParam],
    resume: Option<&FieldDescriptor>,
    problems: &mut Problems<'_>,
) -> Option<DynamicMessage> {
    for key in spec.request.keys() {
        let filled = params.iter().map(|p| &p.field).chain(resume).find(|f| f.name() == key || f.json_name() == key);
        if let Some(field) = filled {
            problems
                .add(format!("request.{key}"), format!("{} is filled per call by the path or resume", field.name()));
        }
    }
    let parsed = serde_json::to_value(&spec.request).and_then(|json| DynamicMessage::deserialize(input.clone(), json));
    match parsed {
        Ok(message) => Some(message),
        Err(e) => {
            problems.add("request", format!("not a valid {} in proto3 JSON: {e}", input.full_name()));
            None
        }
    }
}

fn naming(spec: &EventSpec, output: &MessageDescriptor, problems: &mut Problems<'_>) -> Option<EventNaming> {
    if let Some(name) = &spec.name {
        return Some(EventNaming::Fixed(name.clone()));
    }
    if let Some(oneof_name) = &spec.oneof {
        let Some(oneof) = output.oneofs().find(|o| o.name() == oneof_name && !o.is_synthetic()) else {
            problems.add("event.oneof", format!("{oneof_name:?} names no oneof of {}", output.full_name()));
            return None;
        };
        for case in oneof.fields().filter(|f| f.kind().as_message().is_none()) {
            problems.add(
                "event.oneof",
                format!("case {} is a {}: every case must be a message", case.name(), type_name(&case)),
            );
        }
        let names = oneof.fields().map(|f| (f.number(), f.name().to_owned())).collect();
        return Some(EventNaming::Oneof { oneof, names });
    }
    let field_name = spec.enum_field.as_deref()?;
    let Some(field) = output.get_field_by_name(field_name) else {
        problems.add("event.enum", format!("{field_name:?} names no field of {}", output.full_name()));
        return None;
    };
    let kind = field.kind();
    let Some(enum_type) = kind.as_enum().filter(|_| is_singular(&field)) else {
        problems.add("event.enum", format!("{field_name} is a {}, not an enum", type_name(&field)));
        return None;
    };
    let mut names = std::collections::BTreeMap::new();
    for (value_name, event) in &spec.names {
        match enum_type.get_value_by_name(value_name) {
            Some(value) => {
                names.insert(value.number(), event.clone());
            }
            None => problems
                .add(format!("event.names.{value_name}"), format!("{} has no such value", enum_type.full_name())),
        }
    }
    // Every other declared value but zero gets the default name or its own short one.
    for value in enum_type.values().filter(|v| v.number() != 0) {
        names.entry(value.number()).or_insert_with(|| spec.default.clone().unwrap_or_else(|| short_lowercase(&value)));
    }
    Some(EventNaming::Enum { field, names })
}

/// Resolves `data`: renames and omissions must name fields of the event's message (for a
/// oneof, of one of its cases), and no two fields may end up with the same key. `None` when
/// the event's message is unknown (a oneof that does not resolve).
fn data_options(
    spec: &RouteSpec,
    output: &MessageDescriptor,
    event: Option<&EventNaming>,
    problems: &mut Problems<'_>,
) -> Option<DataOptions> {
    let messages: Vec<MessageDescriptor> = match event {
        Some(EventNaming::Oneof { oneof, .. }) => {
            oneof.fields().filter_map(|f| f.kind().as_message().cloned()).collect()
        }
        None if spec.event.oneof.is_some() => return None,
        _ => vec![output.clone()],
    };
    let names = messages.iter().map(|m| m.full_name()).collect::<Vec<_>>().join(" or ");
    let has_field = |name: &str| messages.iter().any(|m| m.get_field_by_name(name).is_some());
    for (field, key) in &spec.data.rename {
        if !has_field(field) {
            problems.add(format!("data.rename.{field}"), format!("names no field of {names}"));
        } else if key.is_empty() {
            problems.add(format!("data.rename.{field}"), "the new key must not be empty");
        }
    }
    for field in spec.data.omit_empty.iter().filter(|f| !has_field(f)) {
        problems.add("data.omit_empty", format!("{field:?} names no field of {names}"));
    }
    for message in &messages {
        let mut keys = std::collections::BTreeSet::new();
        for field in message.fields() {
            let key = spec.data.rename.get(field.name()).map_or(field.json_name(), String::as_str);
            if !keys.insert(key.to_owned()) {
                problems.add(
                    "data.rename",
                    format!("two fields of {} would both be written as {key:?}", message.full_name()),
                );
            }
        }
    }
    Some(DataOptions {
        rename: spec.data.rename.clone(),
        omit_empty: spec.data.omit_empty.iter().cloned().collect(),
        enums: spec.data.enums,
        int64: spec.data.int64,
        timestamps: spec.data.timestamps,
    })
}

fn is_singular(field: &FieldDescriptor) -> bool {
    !field.is_list() && !field.is_map()
}

fn is_integer(field: &FieldDescriptor) -> bool {
    use Kind::*;
    matches!(field.kind(), Int32 | Int64 | Uint32 | Uint64 | Sint32 | Sint64 | Fixed32 | Fixed64 | Sfixed32 | Sfixed64)
}

/// A field's type as a proto file spells it: `uint64`, `repeated string`, `docproc.v1.Status`.
fn type_name(field: &FieldDescriptor) -> String {
    match (field.is_map(), field.is_list()) {
        (true, _) => "map".to_owned(),
        (false, true) => format!("repeated {:?}", field.kind()),
        (false, false) => format!("{:?}", field.kind()),
    }
}
