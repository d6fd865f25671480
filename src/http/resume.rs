//! Where a client resumes a resource's stream, and the numbers of the query: `Last-Event-ID`,
//! `?lastEventId=`, and a long-poll's `?after=` and `?wait=`.

use axum::{
    extract::FromRequestParts,
    http::{HeaderMap, request::Parts},
};

use super::{ApiError, representation::Negotiated};

/// `u64::MAX` has 20 digits.
const MAX_LAST_EVENT_ID: usize = 20;

/// The event id a resource's client resumes after; `None` starts at the latest update. A
/// long-poll gives it as `?after=`; the others as `Last-Event-ID`, else `?lastEventId=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResumePoint(pub Option<u64>);

impl<S: Send + Sync> FromRequestParts<S> for ResumePoint {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let long_poll = Negotiated::is_long_poll(parts, state).await?;
        let query = parts.uri.query().unwrap_or("");
        let point = match long_poll {
            true => query_number(query, "after").map_err(|()| ApiError::InvalidLastEventId)?,
            false => last_event_id(&parts.headers, Some(query))?,
        };
        Ok(Self(point))
    }
}

/// The resume point: the `Last-Event-ID` header, else `?lastEventId=` (which EventSource users
/// set on a first connect). An empty value means none; anything but 1 to 20 digits is a 400.
pub fn last_event_id(headers: &HeaderMap, query: Option<&str>) -> Result<Option<u64>, ApiError> {
    let mut values = headers.get_all("last-event-id").iter();
    match (values.next(), values.next()) {
        (Some(_), Some(_)) => Err(()),
        (Some(value), None) => value.to_str().map_err(|_| ()).and_then(number),
        (None, _) => query_number(query.unwrap_or(""), "lastEventId"),
    }
    .map_err(|()| ApiError::InvalidLastEventId)
}

/// A numeric query parameter (`lastEventId`, `after`, `wait`): at most once, 1 to 20 digits.
pub fn query_number(query: &str, key: &str) -> Result<Option<u64>, ()> {
    let mut values = form_urlencoded::parse(query.as_bytes()).filter(|(k, _)| k == key);
    match (values.next(), values.next()) {
        (Some(_), Some(_)) => Err(()),
        (Some((_, value)), None) => number(&value),
        (None, _) => Ok(None),
    }
}

/// 1 to 20 decimal digits that fit a `u64`; empty means none.
fn number(value: &str) -> Result<Option<u64>, ()> {
    match value {
        "" => Ok(None),
        id if id.len() <= MAX_LAST_EVENT_ID && id.bytes().all(|b| b.is_ascii_digit()) => {
            id.parse().map(Some).map_err(|_| ())
        }
        _ => Err(()),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn last_event_id_accepts_exactly_decimal_u64s(value in "\\PC{0,24}|[0-9]{1,22}") {
            let mut headers = axum::http::HeaderMap::new();
            if let Ok(header) = axum::http::HeaderValue::from_str(&value) {
                headers.insert("last-event-id", header);
                let parsed = last_event_id(&headers, None);
                let expected = if value.is_empty() {
                    Some(None)
                } else if value.len() <= 20 && value.bytes().all(|b| b.is_ascii_digit()) {
                    value.parse::<u64>().ok().map(Some)
                } else {
                    None
                };
                prop_assert_eq!(parsed.ok(), expected);
            }
        }
    }
}
