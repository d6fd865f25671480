//! A route whose upstream's descriptors are not known yet: its server reflection did not answer
//! when the BFF started. Until they arrive the route answers UNAVAILABLE (503 with Retry-After,
//! before any upstream call), then it is served as a [`RouteResource`]. The process never exits
//! for an upstream that is down at start.

use std::{
    sync::{Arc, Mutex, OnceLock, PoisonError},
    time::Duration,
};

use futures_util::future::BoxFuture;
use tokio_util::sync::CancellationToken;
use tonic::Code;

use super::{
    Call, EventStream, ParamRejected, Refresh, Resource, RouteResource, UpstreamError, UpstreamPool, dynamic::rule_text,
};
use crate::{
    event::EventKind,
    routes::{Pending, Retention, RouteSpec, param_rules},
};

/// A route waiting for its upstream's descriptors.
#[derive(Debug)]
pub struct Deferred {
    path: &'static str,
    upstream: String,
    retention: Retention,
    replay: usize,
    resumable: bool,
    /// The parameter rules of the file, checked before the descriptors arrive too.
    rules: Vec<(String, regex::Regex, &'static str)>,
    ready: OnceLock<Arc<RouteResource>>,
    /// Why it is still waiting, as the last attempt said.
    reason: Mutex<String>,
}

impl Deferred {
    /// The route of `spec`, waiting for `reason` to go away.
    pub fn new(spec: &RouteSpec, reason: String) -> Self {
        Self {
            path: Box::leak(spec.path.clone().into_boxed_str()),
            upstream: spec.upstream.clone(),
            retention: spec.retention,
            replay: spec.replay.max(1),
            resumable: spec.resume.is_some(),
            rules: param_rules(spec)
                .into_iter()
                .map(|(name, rule)| {
                    let code: &'static str = Box::leak(format!("invalid_{name}").into_boxed_str());
                    (name, rule, code)
                })
                .collect(),
            ready: OnceLock::new(),
            reason: Mutex::new(reason),
        }
    }

    fn reason(&self) -> String {
        self.reason.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

impl Resource for Deferred {
    fn route(&self) -> &'static str {
        self.path
    }

    fn retention(&self) -> Retention {
        self.retention
    }

    fn replay(&self) -> usize {
        self.replay
    }

    fn resumable(&self) -> bool {
        self.resumable
    }

    fn check(&self, params: &[(String, String)]) -> Result<(), ParamRejected> {
        if let Some(ready) = self.ready.get() {
            return ready.check(params);
        }
        // The field types are not known yet; the file's rules are.
        for (name, rule, code) in &self.rules {
            let value = params.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
            if !value.is_some_and(|v| rule.is_match(v)) {
                return Err(ParamRejected { code, rule: rule_text(name, rule.as_str()) });
            }
        }
        Ok(())
    }

    fn kind(&self, name: &str) -> Option<EventKind> {
        self.ready.get().and_then(|ready| ready.kind(name))
    }

    fn numbered_by_bff(&self) -> bool {
        self.ready.get().is_some_and(|ready| ready.numbered_by_bff())
    }

    fn available(&self) -> Result<(), UpstreamError> {
        match self.ready.get() {
            Some(_) => Ok(()),
            None => Err(self.unavailable()),
        }
    }

    fn open(self: Arc<Self>, call: Call, resume_after: u64) -> BoxFuture<'static, Result<EventStream, UpstreamError>> {
        match self.ready.get() {
            Some(ready) => Arc::clone(ready).open(call, resume_after),
            None => Box::pin(std::future::ready(Err(self.unavailable()))),
        }
    }
}

impl Deferred {
    fn unavailable(&self) -> UpstreamError {
        let reason = self.reason();
        UpstreamError::new(
            Code::Unavailable,
            format!("the descriptors of upstream {} are not available yet ({reason})", self.upstream),
        )
    }
}

/// What a waiting upstream needs to serve its routes once its descriptors arrive.
#[derive(Debug)]
pub struct Waiting {
    /// The part of the routes file that waits.
    pub pending: Pending,
    /// Its routes, as the hubs hold them.
    pub routes: Vec<Arc<Deferred>>,
    /// The upstream's connections.
    pub pool: Arc<UpstreamPool>,
    /// The gRPC deadline of each call.
    pub deadline: Duration,
    /// The decode limit of upstream messages, in bytes.
    pub max_message_bytes: usize,
    /// How long one reflection attempt may take.
    pub reflection_timeout: Duration,
}

/// The first and the longest pause between two reflection attempts.
const BACKOFF: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(15));

impl Waiting {
    /// Asks the upstream's server reflection again until it answers and its routes validate,
    /// then serves them; logs each new reason for waiting once. Ends early on `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let upstream = self.pending.upstream().to_owned();
        tracing::warn!(%upstream, reason = %self.pending.reason, "upstream descriptors unavailable; its routes answer 503 until they arrive");
        let mut backoff = BACKOFF.0;
        let mut said = self.pending.reason.clone();
        loop {
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = shutdown.cancelled() => return,
            }
            backoff = (backoff * 2).min(BACKOFF.1);
            let table = match self.pending.resolve(self.reflection_timeout).await {
                Ok(table) => table,
                Err(errors) => {
                    let reason = errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ");
                    if reason != said {
                        tracing::warn!(%upstream, %reason, "upstream routes still unavailable");
                        said = reason.clone();
                    }
                    for route in &self.routes {
                        *route.reason.lock().unwrap_or_else(PoisonError::into_inner) = reason.clone();
                    }
                    continue;
                }
            };
            for route in table.routes {
                let Some(deferred) = self.routes.iter().find(|d| d.path == route.path) else { continue };
                let path = route.path.clone();
                let refresh = Some(Refresh::new(self.pending.clone(), self.reflection_timeout));
                match RouteResource::new(route, Arc::clone(&self.pool), self.deadline, self.max_message_bytes, refresh)
                {
                    Ok(resource) => {
                        let _ = deferred.ready.set(Arc::new(resource));
                    }
                    Err(error) => tracing::error!(route = %path, %error, "route cannot be served"),
                }
            }
            tracing::info!(%upstream, "upstream descriptors arrived; its routes are served");
            return;
        }
    }
}
