//! What a multiplexed stream watches: the `topic` parameters, each the path of a resource that
//! has a route and checked as that route checks it, and where the client resumes each of them.

use std::sync::Arc;

use axum::{
    extract::FromRequestParts,
    http::{HeaderMap, request::Parts},
};

use super::cursor::{self, Position};
use crate::{
    http::{ApiError, AppState, representation::Negotiated},
    hub::Hub,
};

/// The longest topic accepted, in bytes.
const MAX_TOPIC: usize = 1024;

/// One topic of the request: its path, its route's hub and its parameters.
#[derive(Debug)]
pub struct Topic {
    /// The resource's path, as the request gave it.
    pub path: String,
    /// The hub of the route the path matches.
    pub hub: Hub,
    /// The path's parameters, by name, percent-decoded.
    pub params: Arc<[(String, String)]>,
}

/// The request's topics and each one's position in the client's cursor. Extracting them
/// refuses (400), before any upstream call, topics that are missing, repeated, too many or of
/// no route, parameters that break their route's rules, and a cursor (`?after=` for a
/// long-poll, else `Last-Event-ID`, else `?lastEventId=`) that does not fit the topics.
#[derive(Debug)]
pub struct Topics {
    /// The topics, in the order of the request's parameters.
    pub topics: Vec<Topic>,
    /// Each topic's position: `None` starts it at its latest event.
    pub positions: Vec<Position>,
}

impl FromRequestParts<AppState> for Topics {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let topics = topics(parts.uri.query().unwrap_or(""), &state.routes, state.stream.max_topics)?;
        let long_poll = Negotiated::is_long_poll(parts, state).await?;
        let positions = match cursor_text(&parts.headers, parts.uri.query().unwrap_or(""), long_poll)? {
            Some(text) => cursor::parse(&text, topics.len()).map_err(ApiError::InvalidCursor)?,
            None => vec![None; topics.len()],
        };
        Ok(Self { topics, positions })
    }
}

/// The `topic` parameters: 1 to `max` distinct paths, each of a resource that has a route and
/// whose parameters pass its rules. Anything else is a 400, before any upstream call.
fn topics(query: &str, hubs: &[Hub], max: usize) -> Result<Vec<Topic>, ApiError> {
    let mut topics: Vec<Topic> = Vec::new();
    for (key, path) in form_urlencoded::parse(query.as_bytes()) {
        if key != "topic" {
            continue;
        }
        if topics.len() == max {
            return Err(ApiError::InvalidTopic(format!("at most {max} topics (--max-topics)")));
        }
        if topics.iter().any(|t| t.path == path) {
            return Err(ApiError::InvalidTopic(format!("topic {path:?} is given twice")));
        }
        let topic = route(&path, hubs)
            .ok_or_else(|| ApiError::InvalidTopic(format!("topic {:?} is not the path of a resource", cut(&path))))?;
        topic.hub.resource().check(&topic.params).map_err(ApiError::InvalidParameter)?;
        topics.push(topic);
    }
    if topics.is_empty() {
        return Err(ApiError::InvalidTopic("at least one topic=<resource path> is required".into()));
    }
    Ok(topics)
}

/// The route of `path` and its parameters (percent-decoded); `None` when no route matches.
fn route(path: &str, hubs: &[Hub]) -> Option<Topic> {
    if path.len() > MAX_TOPIC || !path.starts_with('/') {
        return None;
    }
    hubs.iter().find_map(|hub| {
        let template = hub.route();
        let (mut names, mut segments) = (template.split('/'), path.split('/'));
        let mut params = Vec::new();
        loop {
            match (names.next(), segments.next()) {
                (None, None) => break,
                (Some(name), Some(segment)) => match name.strip_prefix('{').and_then(|n| n.strip_suffix('}')) {
                    Some(param) => {
                        let value = percent_encoding::percent_decode_str(segment).decode_utf8().ok()?;
                        params.push((param.to_owned(), value.into_owned()));
                    }
                    None if name == segment => {}
                    None => return None,
                },
                _ => return None,
            }
        }
        Some(Topic { path: path.to_owned(), hub: hub.clone(), params: params.into() })
    })
}

/// At most 64 characters of a topic, for error messages.
fn cut(path: &str) -> String {
    path.chars().take(64).collect()
}

/// The cursor: for a long-poll `?after=`, else the `Last-Event-ID` header, else
/// `?lastEventId=`; empty means none.
fn cursor_text(headers: &HeaderMap, query: &str, long_poll: bool) -> Result<Option<String>, ApiError> {
    let key = if long_poll { "after" } else { "lastEventId" };
    let mut header = headers.get_all("last-event-id").iter();
    let text = match (long_poll, header.next(), header.next()) {
        (false, Some(_), Some(_)) => return Err(ApiError::InvalidLastEventId),
        (false, Some(value), None) => Some(value.to_str().map_err(|_| ApiError::InvalidLastEventId)?.to_owned()),
        _ => {
            let mut values = form_urlencoded::parse(query.as_bytes()).filter(|(k, _)| k == key);
            match (values.next(), values.next()) {
                (Some(_), Some(_)) => return Err(ApiError::InvalidLastEventId),
                (Some((_, value)), None) => Some(value.into_owned()),
                (None, _) => None,
            }
        }
    };
    Ok(text.filter(|t| !t.is_empty()))
}
