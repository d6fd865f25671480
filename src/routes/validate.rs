//! Checks a parsed routes file and resolves it into a [`RouteTable`], reporting every problem
//! at once: upstreams, paths and their parameter rules, event naming and terminal names here;
//! everything that needs the method's descriptors in `resolve`.

mod resolve;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
};

use prost_reflect::DescriptorPool;
use regex::Regex;

use super::{
    DescriptorSource, EventNaming, Route, RouteError, RouteTable, Upstream,
    file::{EventSpec, RouteSpec, RoutesFile, UpstreamSpec},
};

/// The rule of a path parameter without one of its own: today's document id alphabet.
pub const DEFAULT_PARAM_RULE: &str = "^[A-Za-z0-9._-]{1,128}$";

/// Paths the BFF serves itself, which no route may take.
const RESERVED_PATHS: [&str; 6] = ["/", "/healthz", "/readyz", "/metrics", "/events", "/client.js"];

/// Event names the BFF sends itself, which no route may produce.
const RESERVED_EVENTS: [&str; 3] = ["error", "reset", "end"];

/// The most events a route may keep for replay (the same bound as `--replay-log`).
const MAX_REPLAY: usize = 100_000;

/// Validates `file` against each upstream's descriptor pool (`pools`, by upstream name; an
/// upstream missing there had its descriptors fail, reported by the caller, and its routes are
/// checked without them). `base` is the folder descriptor-set paths are relative to.
pub fn validate(
    file: &RoutesFile,
    pools: &BTreeMap<String, DescriptorPool>,
    base: &Path,
) -> Result<RouteTable, Vec<RouteError>> {
    let mut errors = Vec::new();
    let upstreams = upstreams(&file.upstreams, base, &mut errors);
    let mut routes = Vec::new();
    let mut shapes: BTreeMap<String, &str> = BTreeMap::new();
    for spec in &file.routes {
        let before = errors.len();
        let mut problems = Problems { place: format!("route {}", spec.path), errors: &mut errors };
        let shape = path_shape(&spec.path);
        if let Some(first) = shapes.insert(shape.clone(), &spec.path) {
            problems.add("path", format!("matches the same requests as route {first}"));
        }
        if !upstreams.iter().any(|u| u.name == spec.upstream) {
            problems.add("upstream", format!("no [[upstream]] is named {:?}", spec.upstream));
        }
        let params = params(spec, &mut problems);
        fixed_checks(spec, &mut problems);
        // The descriptor checks run even after other problems, so that one run lists them all.
        let route = pools.get(&spec.upstream).and_then(|pool| resolve::route(spec, pool, params, &mut problems));
        if let (Some(route), true) = (route, errors.len() == before) {
            routes.push(route);
        }
    }
    if errors.is_empty() { Ok(RouteTable { upstreams, routes }) } else { Err(errors) }
}

/// Collects the problems of one route or upstream, each with its place.
pub(super) struct Problems<'a> {
    place: String,
    errors: &'a mut Vec<RouteError>,
}

impl Problems<'_> {
    /// Records one problem with `key`.
    pub(super) fn add(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.errors.push(RouteError { place: self.place.clone(), key: key.into(), message: message.into() });
    }
}

fn upstreams(specs: &[UpstreamSpec], base: &Path, errors: &mut Vec<RouteError>) -> Vec<Upstream> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for spec in specs {
        let mut problems = Problems { place: format!("upstream {}", spec.name), errors };
        if spec.name.is_empty() {
            problems.add("name", "must not be empty");
        } else if !seen.insert(spec.name.as_str()) {
            problems.add("name", "another [[upstream]] has the same name");
        }
        if spec.urls.is_empty() {
            problems.add("urls", "needs at least one url");
        }
        for url in &spec.urls {
            let ok = url
                .parse::<http::Uri>()
                .is_ok_and(|uri| matches!(uri.scheme_str(), Some("http" | "https")) && uri.authority().is_some());
            if !ok {
                problems.add("urls", format!("{url:?} must be an http:// or https:// URL with a host"));
            }
        }
        let descriptors = match spec.descriptors.as_str() {
            "reflection" => DescriptorSource::Reflection,
            "" => {
                problems.add("descriptors", "must be \"reflection\" or the path of a FileDescriptorSet");
                DescriptorSource::Reflection
            }
            path => DescriptorSource::File(base.join(path)),
        };
        out.push(Upstream {
            name: spec.name.clone(),
            urls: spec.urls.clone(),
            descriptors,
            health: spec.health.clone(),
        });
    }
    out
}

/// The path with every parameter name blanked: two routes of the same shape would match the
/// same requests.
fn path_shape(path: &str) -> String {
    path.split('/')
        .map(|segment| if segment.starts_with('{') && segment.ends_with('}') { "{}" } else { segment })
        .collect::<Vec<_>>()
        .join("/")
}

/// The compiled rule of every parameter of a route's path, in order, for a route whose
/// descriptors are not at hand yet (a rule that does not compile is left out: the file was
/// refused for it already).
pub fn param_rules(spec: &RouteSpec) -> Vec<(String, Regex)> {
    let mut ignored = Vec::new();
    let mut problems = Problems { place: String::new(), errors: &mut ignored };
    params(spec, &mut problems).into_iter().filter_map(|(name, rule)| Some((name, rule?))).collect()
}

/// The path's parameters with their compiled rules (`None` for a rule that does not compile,
/// recorded as a problem).
fn params(spec: &RouteSpec, problems: &mut Problems<'_>) -> Vec<(String, Option<Regex>)> {
    if !spec.path.starts_with('/') {
        problems.add("path", "must start with /");
    }
    let reserved = |r: &&str| spec.path == *r || (*r != "/" && spec.path.starts_with(&format!("{r}/")));
    if RESERVED_PATHS.iter().any(reserved) {
        problems.add("path", "is served by the BFF itself");
    }
    let mut names = Vec::new();
    for segment in spec.path.split('/').skip(1) {
        match segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            Some(name) if is_identifier(name) => {
                if names.iter().any(|n| n == name) {
                    problems.add("path", format!("{{{name}}} appears twice"));
                }
                names.push(name.to_owned());
            }
            Some(name) => problems.add("path", format!("{{{name}}} is not a field name")),
            None if segment.contains(['{', '}']) => {
                problems.add("path", format!("segment {segment:?}: a parameter must be a whole segment"));
            }
            None if segment.is_empty() && spec.path.len() > 1 => problems.add("path", "has an empty segment"),
            None => {}
        }
    }
    for key in spec.params.keys().filter(|key| !names.contains(key)) {
        problems.add(format!("params.{key}"), "is not a parameter of the path");
    }
    let mut out = Vec::new();
    for name in names {
        let rule = spec.params.get(&name).map_or(DEFAULT_PARAM_RULE, String::as_str);
        let pattern = Regex::new(&format!("^(?:{rule})$"));
        if let Err(e) = &pattern {
            // The regex crate draws a caret under the fault over several lines; its last line
            // says what the fault is.
            let text = e.to_string();
            let what = text.lines().last().unwrap_or_default().trim_start_matches("error: ");
            problems.add(format!("params.{name}"), format!("{rule:?} is not a valid regular expression: {what}"));
        }
        out.push((name, pattern.ok()));
    }
    out
}

/// Checks what needs no descriptors: replay, the shape of `event`, and the event names.
fn fixed_checks(spec: &RouteSpec, problems: &mut Problems<'_>) {
    if !(1..=MAX_REPLAY).contains(&spec.replay) {
        problems.add("replay", format!("must be from 1 to {MAX_REPLAY}"));
    }
    let EventSpec { enum_field, names, default, oneof, name } = &spec.event;
    let chosen = [enum_field.is_some(), oneof.is_some(), name.is_some()].iter().filter(|set| **set).count();
    if chosen != 1 {
        problems.add("event", "give exactly one of enum, oneof or name");
    }
    if enum_field.is_none() && !names.is_empty() {
        problems.add("event.names", "only goes with event.enum");
    }
    if enum_field.is_none() && default.is_some() {
        problems.add("event.default", "only goes with event.enum");
    }
    let named = names.iter().map(|(value, name)| (format!("event.names.{value}"), name));
    let others =
        default.iter().map(|n| ("event.default".to_owned(), n)).chain(name.iter().map(|n| ("event.name".into(), n)));
    for (key, event) in named.chain(others) {
        if let Some(problem) = event_name_problem(event) {
            problems.add(key, problem);
        }
    }
}

/// Why `name` cannot be an SSE event name of a route, if it cannot.
pub(super) fn event_name_problem(name: &str) -> Option<String> {
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')) {
        Some(format!("{name:?} must be letters, digits, '_', '-' or '.'"))
    } else if RESERVED_EVENTS.contains(&name) {
        Some(format!("{name:?} is an event the BFF sends itself"))
    } else {
        None
    }
}

fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Checks the names a resolved route can produce: each must be a valid, unreserved event name
/// (an enum's short names and a oneof's cases come from the proto), and each terminal name must
/// be one of them. A terminal name no event has would mean a stream that never ends early,
/// which is a typo far more often than an intent: an error, not a warning.
pub(super) fn check_events(route: &Route, spec: &RouteSpec, problems: &mut Problems<'_>) {
    let names = route.event_names();
    // Names written in the file were checked with their own keys already.
    let event = &spec.event;
    let written: BTreeSet<&String> = event.names.values().chain(&event.default).chain(&event.name).collect();
    let key = match route.event {
        EventNaming::Enum { .. } => "event.enum",
        EventNaming::Oneof { .. } => "event.oneof",
        EventNaming::Fixed(_) => "event.name",
    };
    for problem in names.iter().filter(|n| !written.contains(n)).filter_map(|name| event_name_problem(name)) {
        problems.add(key, problem);
    }
    for terminal in spec.terminal.iter().filter(|t| !names.contains(*t)) {
        let known = names.iter().cloned().collect::<Vec<_>>().join(", ");
        problems.add("terminal", format!("no event is named {terminal:?} (this route's events: {known})"));
    }
}

#[cfg(test)]
mod tests;
