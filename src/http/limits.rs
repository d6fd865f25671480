//! Connection limits: open streams in total and per user. A permit is held by the stream body
//! and released when the body is dropped, however the stream ends.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
};

use super::ApiError;
use crate::flags::count;

/// The open-stream limit flags of `serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct LimitsConfig {
    /// Open streams allowed in total (429 beyond).
    #[arg(long, env = "SSE_BFF_MAX_STREAMS", default_value_t = 10_000, value_parser = count(10_000_000))]
    pub max_streams: usize,
    /// Open streams allowed per user (429 beyond).
    #[arg(long, env = "SSE_BFF_MAX_STREAMS_PER_USER", default_value_t = 32, value_parser = count(10_000_000))]
    pub max_streams_per_user: usize,
}

/// The limits and the current counts.
#[derive(Debug)]
pub struct StreamLimits {
    max_total: usize,
    max_per_user: usize,
    counts: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_user: HashMap<String, usize>,
}

/// One open stream, counted until dropped.
#[derive(Debug)]
pub struct StreamPermit {
    limits: Arc<StreamLimits>,
    user: Option<String>,
}

impl StreamLimits {
    /// Limits of `max_total` streams, and `max_per_user` for each authenticated user.
    pub fn new(max_total: usize, max_per_user: usize) -> Arc<Self> {
        Arc::new(Self { max_total, max_per_user, counts: Mutex::new(Counts::default()) })
    }

    /// The limits `config` sets, with nothing open yet.
    pub fn from_config(config: &LimitsConfig) -> Arc<Self> {
        Self::new(config.max_streams, config.max_streams_per_user)
    }

    /// Takes a permit, or says which limit is reached.
    pub fn acquire(self: &Arc<Self>, user: Option<&str>) -> Result<StreamPermit, ApiError> {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        if counts.total >= self.max_total {
            return Err(ApiError::TooManyStreams(""));
        }
        if let Some(user) = user {
            let open = counts.per_user.entry(user.to_owned()).or_insert(0);
            if *open >= self.max_per_user {
                return Err(ApiError::TooManyStreams(" for this user"));
            }
            *open += 1;
        }
        counts.total += 1;
        Ok(StreamPermit { limits: Arc::clone(self), user: user.map(str::to_owned) })
    }
}

impl Drop for StreamPermit {
    fn drop(&mut self) {
        let mut counts = self.limits.counts.lock().unwrap_or_else(PoisonError::into_inner);
        counts.total = counts.total.saturating_sub(1);
        if let Some(user) = &self.user
            && let Some(open) = counts.per_user.get_mut(user)
        {
            *open -= 1;
            if *open == 0 {
                counts.per_user.remove(user);
            }
        }
    }
}
