//! Routes: which server-streaming gRPC method serves which HTTP path, and how its messages
//! become events. Declared in a TOML routes file (`file`), checked against the methods'
//! descriptors (`validate`), and resolved into a [`RouteTable`] whose descriptor handles the
//! serving step (`upstream/dynamic.rs`) uses without further lookups.
//!
//! The built-in document route (`default`) is a route table like any other.
//! `sse-bff routes check FILE` validates a file and describes its routes (`check`).

mod check;
mod default;
mod descriptors;
pub mod file;
mod json;
mod mapping;
mod validate;

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    path::{Path, PathBuf},
    time::Duration,
};

use prost_reflect::{DynamicMessage, FieldDescriptor, MethodDescriptor, OneofDescriptor};
use regex::Regex;

pub use check::{RoutesArgs, RoutesCommand, check};
pub use descriptors::{DescriptorError, fetch_reflection};
pub use file::RouteSpec;
pub use file::{EnumStyle, Int64Style, Retention, RoutesFile, TimestampStyle};
pub use json::rfc3339_nanos;
pub use mapping::{MapError, Mapped, field_value};
pub use validate::{param_rules, validate};

/// Every route of a file, with its upstreams, validated against the descriptors.
#[derive(Debug, Clone)]
pub struct RouteTable {
    /// The upstreams, in file order.
    pub upstreams: Vec<Upstream>,
    /// The routes, in file order; paths are unique.
    pub routes: Vec<Route>,
}

/// One upstream gRPC service.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// The name routes refer to.
    pub name: String,
    /// Its endpoints.
    pub urls: Vec<String>,
    /// Where its descriptors came from.
    pub descriptors: DescriptorSource,
    /// The grpc.health.v1 service name for `/readyz` (`""`: overall); `None`: not checked.
    pub health: Option<String>,
}

/// Where an upstream's descriptors come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DescriptorSource {
    /// The upstream's server reflection (grpc.reflection.v1, else v1alpha).
    Reflection,
    /// An encoded FileDescriptorSet file (already resolved against the routes file's folder).
    File(PathBuf),
    /// The descriptors compiled into this binary.
    BuiltIn,
}

/// One validated route: descriptor handles resolved, patterns compiled.
#[derive(Debug, Clone)]
pub struct Route {
    /// The path template, such as `/documents/{document_id}/progress`.
    pub path: String,
    /// The `{param}`s of the path, in order, each with the request field it fills.
    pub params: Vec<PathParam>,
    /// The upstream's name (an entry of [`RouteTable::upstreams`]).
    pub upstream: String,
    /// The server-streaming method.
    pub method: MethodDescriptor,
    /// The request with the file's fixed fields set; parameters and resume come on top.
    pub request: DynamicMessage,
    /// The response field whose value is the SSE id; `None`: the BFF numbers events 1, 2, 3.
    pub id: Option<FieldDescriptor>,
    /// The request field that asks the upstream to continue after an id; `None`: resume is
    /// served from the BFF's own log.
    pub resume: Option<FieldDescriptor>,
    /// What a slow viewer gets.
    pub retention: Retention,
    /// Events kept per shared call for resuming viewers (at least one).
    pub replay: usize,
    /// How an event gets its name.
    pub event: EventNaming,
    /// Event names after which the stream ends; empty: it ends when the upstream ends with OK.
    pub terminal: BTreeSet<String>,
    /// JSON options for `data`.
    pub data: DataOptions,
}

/// A `{param}` of a route's path.
#[derive(Debug, Clone)]
pub struct PathParam {
    /// Its name, also the request field's name.
    pub name: String,
    /// The request field it fills (a singular string or integer field).
    pub field: FieldDescriptor,
    /// What a value must match, anchored at both ends.
    pub pattern: Regex,
}

/// How a route names its events.
#[derive(Debug, Clone)]
pub enum EventNaming {
    /// By the value of an enum field of the response.
    Enum {
        /// The singular enum field.
        field: FieldDescriptor,
        /// The name of every value an event may have, by enum number: from `names`, else
        /// `default`, else the value's short lowercase name. The zero value (proto3's "not
        /// set") has a name only when `names` gives it one; a value without a name makes the
        /// message malformed.
        names: BTreeMap<i32, String>,
    },
    /// By the set case of a oneof of the response; `data` is the case's message.
    Oneof {
        /// The oneof (never a proto3 `optional`'s synthetic one).
        oneof: OneofDescriptor,
        /// Each case's field name (the event name), by field number.
        names: BTreeMap<u32, String>,
    },
    /// One fixed name.
    Fixed(String),
}

/// JSON options for a route's `data`, on top of the proto3 canonical mapping (json_name
/// keys, fields at their default value included).
#[derive(Debug, Clone, Default)]
pub struct DataOptions {
    /// Key per proto field name of the event's message.
    pub rename: BTreeMap<String, String>,
    /// Proto field names of the event's message left out when they hold their default.
    pub omit_empty: BTreeSet<String>,
    /// How enum values are written, at any depth.
    pub enums: EnumStyle,
    /// How 64-bit integers are written, at any depth.
    pub int64: Int64Style,
    /// How Timestamps are written, at any depth.
    pub timestamps: TimestampStyle,
}

/// One problem of a routes file, naming where it is and the key at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{place}: {key}: {message}")]
pub struct RouteError {
    /// `route /path` or `upstream name`.
    pub place: String,
    /// The key, dotted for nested keys (`event.enum`, `data.rename.progress_percent`).
    pub key: String,
    /// What is wrong, lowercase.
    pub message: String,
}

/// Why a routes file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("cannot read routes file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    /// The file is not TOML of the routes format (a misspelt key, a wrong type).
    #[error("routes file {path}: {source}")]
    Parse { path: PathBuf, source: Box<toml::de::Error> },
    /// Descriptors were unavailable or the routes do not fit them; every problem is listed.
    #[error("routes file {path}: {} problem(s):\n{}", errors.len(), ErrorList(errors))]
    Invalid { path: PathBuf, errors: Vec<RouteError> },
}

/// Reads and parses a routes file, fetches each upstream's descriptors (a file relative to the
/// routes file, or server reflection within `reflection_timeout` per upstream) and validates
/// every route. An unreachable upstream is an error here; serving will instead answer 503 on
/// its routes until reflection succeeds.
pub async fn load(path: &Path, reflection_timeout: Duration) -> Result<RouteTable, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read { path: path.into(), source })?;
    let file =
        RoutesFile::parse(&text).map_err(|source| LoadError::Parse { path: path.into(), source: Box::new(source) })?;
    let base = path.parent().unwrap_or(Path::new("."));
    let (pools, mut errors, _) = descriptors::fetch_all(&file, base, reflection_timeout).await;
    match validate(&file, &pools, base) {
        Ok(table) if errors.is_empty() => Ok(table),
        Ok(_) => Err(LoadError::Invalid { path: path.into(), errors }),
        Err(more) => {
            errors.extend(more);
            Err(LoadError::Invalid { path: path.into(), errors })
        }
    }
}

/// A routes file loaded for serving: the routes whose descriptors are at hand, and the
/// upstreams whose server reflection did not answer at start, whose routes wait for it.
#[derive(Debug)]
pub struct Serving {
    /// Every route that could be validated; with `pending` non-empty, the others are waiting.
    pub table: RouteTable,
    /// The upstreams to ask again, each with the part of the file it concerns.
    pub pending: Vec<Pending>,
    /// Every upstream whose descriptors come from server reflection, with its part of the file:
    /// to ask again after a connection to it broke.
    pub reflected: BTreeMap<String, Pending>,
}

/// An upstream whose server reflection could not be reached at start, with its routes.
#[derive(Debug, Clone)]
pub struct Pending {
    /// Why it is pending (the reflection error).
    pub reason: String,
    /// The file reduced to this upstream and its routes.
    pub file: RoutesFile,
    base: PathBuf,
}

impl Pending {
    /// The part of `file` that concerns upstream `name`: the upstream and its routes.
    fn part(file: &RoutesFile, base: &Path, name: &str, reason: String) -> Self {
        Self {
            reason,
            file: RoutesFile {
                upstreams: file.upstreams.iter().filter(|u| u.name == name).cloned().collect(),
                routes: file.routes.iter().filter(|r| r.upstream == name).cloned().collect(),
            },
            base: base.to_owned(),
        }
    }

    /// The upstream's name.
    pub fn upstream(&self) -> &str {
        self.file.upstreams.first().map_or("", |u| u.name.as_str())
    }

    /// Asks the upstream's server reflection again and validates its routes: `Ok` with them
    /// once it answers; `Err` with the reason while it does not, or with the routes' problems.
    pub async fn resolve(&self, reflection_timeout: Duration) -> Result<RouteTable, Vec<RouteError>> {
        let (pools, mut errors, _) = descriptors::fetch_all(&self.file, &self.base, reflection_timeout).await;
        match validate(&self.file, &pools, &self.base) {
            Ok(table) if errors.is_empty() => Ok(table),
            Ok(_) => Err(errors),
            Err(more) => {
                errors.extend(more);
                Err(errors)
            }
        }
    }
}

/// Like [`load`], but an upstream whose server reflection cannot be reached (or does not answer
/// in time) does not stop the start: it becomes [`Pending`], and every other problem is still an
/// error. The routes of a pending upstream are checked again once its descriptors arrive.
pub async fn load_for_serving(path: &Path, reflection_timeout: Duration) -> Result<Serving, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read { path: path.into(), source })?;
    let file =
        RoutesFile::parse(&text).map_err(|source| LoadError::Parse { path: path.into(), source: Box::new(source) })?;
    let base = path.parent().unwrap_or(Path::new("."));
    let (pools, errors, unreachable) = descriptors::fetch_all(&file, base, reflection_timeout).await;
    let (waiting, mut errors): (Vec<_>, Vec<_>) = errors
        .into_iter()
        .partition(|e| e.key == "descriptors" && unreachable.iter().any(|name| e.place == format!("upstream {name}")));
    let table = match validate(&file, &pools, base) {
        Ok(table) if errors.is_empty() => table,
        Ok(_) => return Err(LoadError::Invalid { path: path.into(), errors }),
        Err(more) => {
            errors.extend(more);
            return Err(LoadError::Invalid { path: path.into(), errors });
        }
    };
    let reason = |name: &str| {
        let place = format!("upstream {name}");
        waiting.iter().find(|e| e.place == place).map_or_else(String::new, |e| e.message.clone())
    };
    let pending = unreachable.iter().map(|name| Pending::part(&file, base, name, reason(name))).collect();
    let reflected = table
        .upstreams
        .iter()
        .filter(|u| u.descriptors == DescriptorSource::Reflection)
        .map(|u| (u.name.clone(), Pending::part(&file, base, &u.name, String::new())))
        .collect();
    Ok(Serving { table, pending, reflected })
}

impl Route {
    /// Every event name this route can produce, sorted.
    pub fn event_names(&self) -> BTreeSet<String> {
        match &self.event {
            EventNaming::Fixed(name) => BTreeSet::from([name.clone()]),
            EventNaming::Oneof { names, .. } => names.values().cloned().collect(),
            EventNaming::Enum { names, .. } => names.values().cloned().collect(),
        }
    }

    /// The request of one call: the fixed fields, each path parameter (checked against its
    /// pattern, then parsed for an integer field) and, above zero, the resume point.
    pub fn build_request(&self, params: &[(&str, &str)], resume_after: u64) -> Result<DynamicMessage, ParamError> {
        let mut request = self.request.clone();
        for param in &self.params {
            let value = params.iter().find(|(name, _)| *name == param.name).map(|(_, v)| *v).unwrap_or_default();
            if !param.pattern.is_match(value) {
                return Err(ParamError { param: param.name.clone(), value: value.into() });
            }
            let parsed = mapping::field_value(&param.field, value)
                .ok_or_else(|| ParamError { param: param.name.clone(), value: value.into() })?;
            request.set_field(&param.field, parsed);
        }
        if let (Some(field), true) = (&self.resume, resume_after > 0) {
            let value = mapping::field_value(field, &resume_after.to_string())
                .ok_or_else(|| ParamError { param: field.name().into(), value: resume_after.to_string() })?;
            request.set_field(field, value);
        }
        Ok(request)
    }
}

/// A path parameter (or resume point) that its rule or its field's type refuses: a 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("parameter {param}: {value:?} is not allowed")]
pub struct ParamError {
    /// The parameter's name.
    pub param: String,
    /// The refused value.
    pub value: String,
}

/// Writes errors one per line, indented, for [`LoadError::Invalid`].
struct ErrorList<'a>(&'a [RouteError]);

impl fmt::Display for ErrorList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            let sep = if i == 0 { "" } else { "\n" };
            write!(f, "{sep}  {error}")?;
        }
        Ok(())
    }
}
