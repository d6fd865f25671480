//! Component tests of the hub: a fake resource fed by a channel drives a shared call, with a
//! paused clock, so that what a viewer gets can be checked without sockets or timing luck.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use futures_util::{StreamExt as _, future::BoxFuture};
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_util::sync::CancellationToken;

use super::{Delivery, Hub, HubSettings, ShareScope, Subscription, ViewerStream};
use crate::{
    event::{EventKind, StreamEvent},
    metrics::Metrics,
    routes::Retention,
    upstream::{Call, EventStream, Identity, ParamRejected, Resource, UpstreamError},
};

type Feed = mpsc::UnboundedSender<Result<StreamEvent, UpstreamError>>;

/// One upstream call whose events the test sends.
#[derive(Debug)]
struct Fake {
    events: Mutex<Option<mpsc::UnboundedReceiver<Result<StreamEvent, UpstreamError>>>>,
    retention: Retention,
    replay: usize,
}

impl Resource for Fake {
    fn route(&self) -> &'static str {
        "/fake/{id}"
    }

    fn retention(&self) -> Retention {
        self.retention
    }

    fn replay(&self) -> usize {
        self.replay
    }

    fn resumable(&self) -> bool {
        false
    }

    fn check(&self, _: &[(String, String)]) -> Result<(), ParamRejected> {
        Ok(())
    }

    fn open(self: Arc<Self>, _: Call) -> BoxFuture<'static, Result<EventStream, UpstreamError>> {
        let events = self.events.lock().unwrap().take().expect("one upstream call");
        Box::pin(async move { Ok(Box::pin(UnboundedReceiverStream::new(events)) as EventStream) })
    }
}

fn hub(retention: Retention, replay: usize) -> (Hub, Feed) {
    let (feed, events) = mpsc::unbounded_channel();
    let fake = Arc::new(Fake { events: Mutex::new(Some(events)), retention, replay });
    let settings = HubSettings {
        first_event_wait: Duration::from_secs(2),
        linger: Duration::from_secs(10),
        keep_finished: Duration::from_secs(60),
        replay: 8,
        retention: Retention::State,
        viewer_lag: 2,
        retry_budget: Duration::from_secs(30),
        idle_timeout: Duration::from_secs(300),
        share_scope: ShareScope::User,
        metrics: Arc::new(Metrics::default()),
    };
    (Hub::new(fake, settings, CancellationToken::new()), feed)
}

fn event(id: u64) -> Result<StreamEvent, UpstreamError> {
    let kind = if id == 10 { EventKind::COMPLETED } else { EventKind::PROGRESS };
    Ok(StreamEvent::new(id, kind, b"{}", None))
}

fn call() -> Call {
    Call { params: [("id".into(), "1".into())].into(), resume_after: 0, identity: Identity::default() }
}

/// Subscribes after event 1, then sends 2 to 10 at once while the viewer is not reading: far
/// more than its broadcast lag of 2.
async fn lagging_viewer(retention: Retention, replay: usize) -> Vec<String> {
    let (hub, feed) = hub(retention, replay);
    feed.send(event(1)).unwrap();
    let Subscription::Live { events, .. } = hub.subscribe(call(), None, None).await.unwrap() else {
        panic!("a live call")
    };
    let mut events: ViewerStream = events;
    assert!(matches!(events.next().await, Some(Delivery::Event(e)) if e.id == 1));
    (2..=10).for_each(|id| feed.send(event(id)).unwrap());
    // The driver publishes the burst while the viewer does not read.
    tokio::time::sleep(Duration::from_millis(10)).await;
    events
        .map(|delivery| match delivery {
            Delivery::Event(e) => e.id.to_string(),
            Delivery::Reset => "reset".to_owned(),
            Delivery::Failed(e) => format!("failed: {e}"),
        })
        .collect()
        .await
}

#[tokio::test(start_paused = true)]
async fn a_log_route_delivers_every_event_to_a_viewer_that_lags_inside_the_log() {
    let got = lagging_viewer(Retention::Log, 100).await;
    assert_eq!(got, ["2", "3", "4", "5", "6", "7", "8", "9", "10"]);
}

#[tokio::test(start_paused = true)]
async fn a_log_route_resets_a_viewer_that_fell_out_of_the_log() {
    let got = lagging_viewer(Retention::Log, 3).await;
    assert_eq!(got, ["reset", "10"], "events 2 to 7 are gone: the viewer is told, then gets the latest");
}

#[tokio::test(start_paused = true)]
async fn a_state_route_conflates_a_lagging_viewer_to_the_latest_event() {
    let got = lagging_viewer(Retention::State, 100).await;
    assert_eq!(got, ["10"], "progress is state: the latest replaces what was missed");
}
