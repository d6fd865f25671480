//! `sse-bff routes check FILE`: loads a routes file with its descriptors, validates it, and
//! describes each route: where every request field comes from, its event and terminal names.

use std::{fmt::Write as _, path::PathBuf, time::Duration};

use prost_reflect::SerializeOptions;

use super::{EventNaming, LoadError, Retention, Route, RouteTable, Upstream, load};
use crate::flags::parse_duration;

/// `sse-bff routes`: work with routes files.
#[derive(Debug, Clone, clap::Args)]
pub struct RoutesArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: RoutesCommand,
}

/// The subcommands of `sse-bff routes`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum RoutesCommand {
    /// Validate a routes file against its descriptors and print each route; exit 1 with every
    /// problem found.
    Check {
        /// The routes file (TOML).
        file: PathBuf,
        /// How long server reflection may take, per upstream.
        #[arg(long, env = "SSE_BFF_REFLECTION_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
        reflection_timeout: Duration,
    },
}

/// Runs `command`; `Ok` is the text to print, `Err` lists every problem.
pub async fn check(command: &RoutesCommand) -> Result<String, LoadError> {
    let RoutesCommand::Check { file, reflection_timeout } = command;
    let table = load(file, *reflection_timeout).await?;
    Ok(describe(&table, &file.display().to_string()))
}

/// The human-readable description of a valid table.
pub fn describe(table: &RouteTable, origin: &str) -> String {
    let mut out = String::new();
    let _ =
        writeln!(out, "{origin}: {} upstream(s), {} route(s), no problems", table.upstreams.len(), table.routes.len());
    for route in &table.routes {
        let upstream = table.upstreams.iter().find(|u| u.name == route.upstream);
        // Writing to a String cannot fail.
        let _ = describe_route(&mut out, route, upstream);
    }
    out
}

fn describe_route(out: &mut String, route: &Route, upstream: Option<&Upstream>) -> std::fmt::Result {
    writeln!(out, "\nGET {}", route.path)?;
    if let Some(upstream) = upstream {
        let source = match &upstream.descriptors {
            super::DescriptorSource::Reflection => "server reflection".to_owned(),
            super::DescriptorSource::File(path) => path.display().to_string(),
            super::DescriptorSource::BuiltIn => "built in".to_owned(),
        };
        writeln!(out, "  upstream   {} ({}; descriptors: {source})", upstream.name, upstream.urls.join(", "))?;
    }
    let method = &route.method;
    writeln!(out, "  method     {}/{} (server-streaming)", method.parent_service().full_name(), method.name())?;
    writeln!(out, "  request    {}", route.method.input().full_name())?;
    for param in &route.params {
        let rule = param.pattern.as_str();
        let rule = rule.strip_prefix("^(?:").and_then(|r| r.strip_suffix(")$")).unwrap_or(rule);
        writeln!(out, "    {:<14} from the path {{{}}}, matching {rule}", param.field.name(), param.name)?;
    }
    if let Some(resume) = &route.resume {
        writeln!(out, "    {:<14} from the resume point (Last-Event-ID)", resume.name())?;
    }
    let fixed = fixed_fields(route);
    if fixed != "{}" {
        writeln!(out, "    {:<14} {fixed}", "fixed")?;
    }
    writeln!(out, "  response   {}", route.method.output().full_name())?;
    match &route.id {
        Some(id) => writeln!(out, "  id         {}", id.name())?,
        None => writeln!(out, "  id         numbered 1, 2, 3 by the BFF")?,
    }
    let naming = match &route.event {
        EventNaming::Enum { field, .. } => format!("by enum field {}", field.name()),
        EventNaming::Oneof { oneof, .. } => format!("by oneof {}; data is the case's message", oneof.name()),
        EventNaming::Fixed(_) => "one fixed name".to_owned(),
    };
    let names: Vec<_> = route.event_names().into_iter().collect();
    writeln!(out, "  events     {} ({naming})", names.join(", "))?;
    let terminal: Vec<_> = route.terminal.iter().cloned().collect();
    match terminal.is_empty() {
        true => writeln!(out, "  terminal   none: the stream ends with `event: end` when the upstream ends OK")?,
        false => writeln!(out, "  terminal   {}", terminal.join(", "))?,
    }
    let retention = match route.retention {
        Retention::State => "state (a slow viewer skips to the latest event)",
        Retention::Log => "log (every event is delivered)",
    };
    writeln!(out, "  retention  {retention}; replay {}", route.replay)
}

/// The fixed request fields as proto3 JSON (only those set).
fn fixed_fields(route: &Route) -> String {
    let mut out = Vec::new();
    let written =
        route.request.serialize_with_options(&mut serde_json::Serializer::new(&mut out), &SerializeOptions::new());
    match written {
        Ok(()) => String::from_utf8_lossy(&out).into_owned(),
        Err(e) => format!("(cannot show: {e})"),
    }
}
