//! What the cluster keeps in Redis, and how: the key names of a shared resource (hashed, so
//! that no tenant, user, token or parameter appears in clear) and the entries of its stream.
//!
//! One shared resource (a [`crate::hub::ShareKey`]: route, parameters, tenant, user) is a few
//! keys with one prefix (in braces, a hash tag: they would share a slot, but the client speaks
//! to one Redis server, not to a Redis Cluster):
//!
//! | key | holds | expires |
//! |---|---|---|
//! | `sse-bff:{h}:events` | the stream: one entry per event, then an end marker if it failed | `--keep-finished` after the terminal event, `--lease-ttl` (at most) after a failure; while live, refreshed by the holder |
//! | `sse-bff:{h}:lease` | the holder's fencing token `<n>:<instance>` | `--lease-ttl`, renewed by the holder |
//! | `sse-bff:{h}:fence` | the counter `<n>` of fencing tokens | four times the live stream's TTL after the last lease was taken |
//! | `sse-bff:{h}:interest` | `1` while some instance has viewers | twice `--lease-ttl`, refreshed by every such instance |
//! | `sse-bff:{h}:floor` | routes numbered by the BFF: the highest id a follower asked to resume after | the live stream's TTL after that |
//!
//! `h` is the first 128 bits of the SHA-256 of the share key's fields, in hex.
//!
//! An event with id `n` is the entry `n-0` with the fields `n` (its name), `d` (its data, the
//! final JSON) and, when known, `t` (when the upstream produced it, in Unix milliseconds). A
//! call that failed ends with the entry `m-1` (`m`: the last event's id) with the fields `c` (the
//! gRPC code as a number) and `m` (the message). Entry ids are therefore increasing exactly when
//! event ids are, and Redis itself refuses an event at or below the last one.

use std::{
    collections::HashMap,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use redis::Value;
use sha2::{Digest as _, Sha256};
use tonic::Code;

use crate::{
    event::{EventKind, StreamEvent},
    upstream::UpstreamError,
};

/// The Redis keys of one shared resource.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct Keys {
    /// `sse-bff:{h}`, the common prefix.
    pub base: String,
    /// The stream of events.
    pub stream: String,
    /// The lease: who calls the upstream.
    pub lease: String,
    /// The fencing-token counter.
    pub fence: String,
    /// Whether any instance has viewers.
    pub interest: String,
    /// The highest id followers of a route numbered by the BFF have.
    pub floor: String,
}

impl Keys {
    /// The keys of the shared resource `key`.
    pub fn of(key: &crate::hub::ShareKey) -> Self {
        Self::new(key.route, &key.params, key.tenant.as_deref(), key.user.as_deref())
    }

    /// The keys of the resource `params` of `route`, shared by `tenant` and `user` (`None` when
    /// not part of the sharing key).
    pub fn new(route: &str, params: &[(String, String)], tenant: Option<&str>, user: Option<&str>) -> Self {
        let mut hash = Sha256::new();
        // Each field with its length first: no two different keys hash the same bytes.
        let mut field = |bytes: &[u8]| {
            hash.update((bytes.len() as u64).to_be_bytes());
            hash.update(bytes);
        };
        field(b"sse-bff share key v1");
        field(route.as_bytes());
        for (name, value) in params {
            field(name.as_bytes());
            field(value.as_bytes());
        }
        for part in [tenant, user] {
            match part {
                Some(part) => {
                    field(b"1");
                    field(part.as_bytes());
                }
                None => field(b"0"),
            }
        }
        let digest = hash.finalize();
        let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
        let base = format!("sse-bff:{{{hex}}}");
        Self {
            stream: format!("{base}:events"),
            lease: format!("{base}:lease"),
            fence: format!("{base}:fence"),
            interest: format!("{base}:interest"),
            floor: format!("{base}:floor"),
            base,
        }
    }
}

/// A stream entry id, `<ms>-<seq>` in Redis's terms: `(event id, 0)` for an event, `(last, 1)`
/// for an end marker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub(super) struct EntryId(pub u64, pub u64);

impl EntryId {
    /// Parses `<ms>-<seq>`; `None` for anything else.
    pub fn parse(text: &str) -> Option<Self> {
        let (ms, seq) = text.split_once('-')?;
        Some(Self(ms.parse().ok()?, seq.parse().ok()?))
    }
}

impl std::fmt::Display for EntryId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.0, self.1)
    }
}

/// One entry of a resource's stream, decoded.
#[derive(Debug)]
pub(super) enum Entry {
    /// An event.
    Event(StreamEvent),
    /// The upstream call failed after the events before it.
    Failed(UpstreamError),
}

impl Entry {
    /// Whether nothing follows this entry.
    pub fn ends(&self) -> bool {
        match self {
            Self::Event(event) => event.kind.is_terminal(),
            Self::Failed(_) => true,
        }
    }
}

/// The arguments of an event's entry for the append script: id, field count, then the fields.
pub(super) fn event_args(event: &StreamEvent, args: &mut Vec<Vec<u8>>) {
    let at = event.emitted_at.and_then(|at| at.duration_since(UNIX_EPOCH).ok()).map(|d| d.as_millis());
    args.push(EntryId(event.id, 0).to_string().into_bytes());
    args.push(if at.is_some() { b"3".to_vec() } else { b"2".to_vec() });
    args.extend([b"n".to_vec(), event.kind.name().as_bytes().to_vec(), b"d".to_vec(), event.data.to_vec()]);
    if let Some(at) = at {
        args.extend([b"t".to_vec(), at.to_string().into_bytes()]);
    }
}

/// The arguments of the end marker of a call that failed after the event `last`.
pub(super) fn failure_args(last: u64, error: &UpstreamError, args: &mut Vec<Vec<u8>>) {
    args.push(EntryId(last, 1).to_string().into_bytes());
    args.push(b"2".to_vec());
    let code = i32::from(error.code).to_string();
    args.extend([b"c".to_vec(), code.into_bytes(), b"m".to_vec(), error.message.as_bytes().to_vec()]);
}

/// Decodes an entry. `kind` gives the static kind of an event name (see
/// [`crate::upstream::Resource::kind`]).
///
/// Errors: an entry this version cannot read (another version or routes file wrote it, or the
/// key was written by something else), as a message.
pub(super) fn decode(
    id: &str,
    fields: &HashMap<String, Value>,
    kind: &dyn Fn(&str) -> Option<EventKind>,
) -> Result<(EntryId, Entry), String> {
    let entry = EntryId::parse(id).ok_or_else(|| format!("entry id {id:?} is not <id>-<n>"))?;
    let text = |name: &str| match fields.get(name) {
        Some(Value::BulkString(bytes)) => Some(bytes.as_slice()),
        Some(Value::SimpleString(text)) => Some(text.as_bytes()),
        _ => None,
    };
    if entry.1 == 1 {
        let code = text("c").and_then(|c| std::str::from_utf8(c).ok()?.parse::<i32>().ok()).map(Code::from);
        let message = text("m").map(String::from_utf8_lossy).unwrap_or_default();
        let error = UpstreamError::new(code.unwrap_or(Code::Unknown), message);
        return Ok((entry, Entry::Failed(error)));
    }
    let name = text("n").and_then(|n| std::str::from_utf8(n).ok()).ok_or("an event without a name")?;
    let kind = kind(name).ok_or_else(|| format!("the route has no event named {name:?}"))?;
    let data = text("d").ok_or("an event without data")?;
    let at = text("t")
        .and_then(|t| std::str::from_utf8(t).ok()?.parse::<u64>().ok())
        .map(|ms| UNIX_EPOCH + Duration::from_millis(ms));
    let at: Option<SystemTime> = at;
    Ok((entry, Entry::Event(StreamEvent::new(entry.0, kind, data, at))))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn keys_hide_who_and_what_and_share_one_slot() {
        let params = [("document_id".to_owned(), "doc-secret".to_owned())];
        let keys = Keys::new("/documents/{document_id}/progress", &params, Some("acme"), Some("alice"));
        for key in [&keys.stream, &keys.lease, &keys.fence, &keys.interest, &keys.floor] {
            assert!(key.starts_with(&keys.base), "{key}");
            for secret in ["doc-secret", "acme", "alice", "documents"] {
                assert!(!key.contains(secret), "{key} shows {secret}");
            }
        }
        assert!(keys.base.starts_with("sse-bff:{") && keys.base.ends_with('}') && keys.base.len() == 9 + 32 + 1);
        // Every part of the sharing key tells resources apart, and moving bytes between parts
        // does not make two keys the same.
        let other_user = Keys::new("/documents/{document_id}/progress", &params, Some("acme"), Some("bob"));
        let tenant_wide = Keys::new("/documents/{document_id}/progress", &params, Some("acme"), None);
        let shifted = Keys::new("/documents/{document_id}/progress", &params, Some("acmealice"), None);
        assert_ne!(keys, other_user);
        assert_ne!(keys, tenant_wide);
        assert_ne!(tenant_wide, shifted);
    }

    #[test]
    fn entries_round_trip_and_strangers_are_refused() {
        let event =
            StreamEvent::new(7, EventKind::COMPLETED, br#"{"a":1}"#, Some(UNIX_EPOCH + Duration::from_millis(5)));
        let mut args = Vec::new();
        event_args(&event, &mut args);
        assert_eq!(args[0], b"7-0");
        let fields: HashMap<String, Value> = args[2..]
            .chunks(2)
            .map(|pair| (String::from_utf8(pair[0].clone()).unwrap(), Value::BulkString(pair[1].clone())))
            .collect();
        let kinds = |name: &str| (name == "completed").then_some(EventKind::COMPLETED);
        let (id, entry) = decode("7-0", &fields, &kinds).unwrap();
        let Entry::Event(back) = entry else { panic!("an event") };
        assert_eq!(
            (id, back.id, &back.data[..], back.emitted_at),
            (EntryId(7, 0), 7, &event.data[..], event.emitted_at)
        );
        assert!(back.kind.is_terminal());

        let mut args = Vec::new();
        failure_args(7, &UpstreamError::new(Code::NotFound, "no such job"), &mut args);
        let fields: HashMap<String, Value> = args[2..]
            .chunks(2)
            .map(|pair| (String::from_utf8(pair[0].clone()).unwrap(), Value::BulkString(pair[1].clone())))
            .collect();
        let (id, entry) = decode(std::str::from_utf8(&args[0]).unwrap(), &fields, &kinds).unwrap();
        assert_eq!(id, EntryId(7, 1));
        assert!(matches!(entry, Entry::Failed(e) if e.code == Code::NotFound && e.message == "no such job"));

        assert!(decode("x", &HashMap::new(), &kinds).is_err());
        let unknown: HashMap<String, Value> = [("n".into(), Value::BulkString(b"other".to_vec()))].into();
        assert!(decode("8-0", &unknown, &kinds).is_err());
    }
}
