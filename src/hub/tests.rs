//! Component tests of the hub: a fake resource fed by a channel drives a shared call, with a
//! paused clock, so that what a viewer gets can be checked without sockets or timing luck.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    collections::VecDeque,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use futures_util::{StreamExt as _, future::BoxFuture};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::Code;

use super::{Delivery, Hub, HubSettings, ShareScope, Subscription, ViewerStream};
use crate::{
    event::{EventKind, StreamEvent},
    metrics::Metrics,
    routes::Retention,
    upstream::{Call, EventStream, Identity, ParamRejected, Resource, SharedResource, UpstreamError},
};

type Feed = mpsc::UnboundedSender<Result<StreamEvent, UpstreamError>>;
type Events = mpsc::UnboundedReceiver<Result<StreamEvent, UpstreamError>>;

/// Upstream calls whose events the test sends: each `open` takes the next scripted call (an
/// event channel, or an error), and counts itself.
#[derive(Debug)]
struct Fake {
    calls: Mutex<VecDeque<Result<Events, UpstreamError>>>,
    opened: AtomicUsize,
    retention: Retention,
    replay: usize,
    /// Whether the upstream resumes after a point (else only the BFF's log can).
    resumable: bool,
    /// Whether the BFF numbers the events (the route has no id field).
    numbered: bool,
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
        self.resumable
    }

    fn numbered_by_bff(&self) -> bool {
        self.numbered
    }

    fn check(&self, _: &[(String, String)]) -> Result<(), ParamRejected> {
        Ok(())
    }

    fn open(self: Arc<Self>, _: Call, _: u64) -> BoxFuture<'static, Result<EventStream, UpstreamError>> {
        self.opened.fetch_add(1, Ordering::SeqCst);
        let next = self.calls.lock().unwrap().pop_front();
        let call = next.unwrap_or_else(|| Err(UpstreamError::new(Code::Unavailable, "no call scripted")));
        Box::pin(async move { call.map(|events| Box::pin(UnboundedReceiverStream::new(events)) as EventStream) })
    }
}

fn settings() -> HubSettings {
    HubSettings {
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
    }
}

/// A hub over a fake resource with `calls` scripted, and the senders of the scripted channels.
fn scripted(
    retention: Retention,
    replay: usize,
    settings: HubSettings,
    calls: Vec<Result<(), UpstreamError>>,
) -> (Hub, Arc<Fake>, Vec<Feed>) {
    scripted_upstream(retention, replay, settings, calls, false)
}

/// The same, over an upstream that resumes after a point when asked (as the document route's).
fn scripted_upstream(
    retention: Retention,
    replay: usize,
    settings: HubSettings,
    calls: Vec<Result<(), UpstreamError>>,
    resumable: bool,
) -> (Hub, Arc<Fake>, Vec<Feed>) {
    let mut feeds = Vec::new();
    let calls = calls
        .into_iter()
        .map(|call| {
            call.map(|()| {
                let (feed, events) = mpsc::unbounded_channel();
                feeds.push(feed);
                events
            })
        })
        .collect();
    let fake = Arc::new(Fake {
        calls: Mutex::new(calls),
        opened: AtomicUsize::new(0),
        retention,
        replay,
        resumable,
        numbered: false,
    });
    let hub = Hub::new(Arc::clone(&fake) as SharedResource, settings, CancellationToken::new());
    (hub, fake, feeds)
}

fn hub(retention: Retention, replay: usize) -> (Hub, Feed) {
    let (hub, _, mut feeds) = scripted(retention, replay, settings(), vec![Ok(())]);
    (hub, feeds.remove(0))
}

fn event(id: u64) -> Result<StreamEvent, UpstreamError> {
    let kind = if id == 10 { EventKind::COMPLETED } else { EventKind::PROGRESS };
    Ok(StreamEvent::new(id, kind, b"{}", None))
}

fn call() -> Call {
    Call { params: [("id".into(), "1".into())].into(), identity: Identity::default() }
}

/// Subscribes after event 1, then sends 2 to 10 at once while the viewer is not reading: far
/// more than its broadcast lag of 2.
async fn lagging_viewer(retention: Retention, replay: usize) -> Vec<String> {
    let (hub, feed) = hub(retention, replay);
    feed.send(event(1)).unwrap();
    let Subscription::Live { events, .. } = hub.subscribe(call(), None).await.unwrap() else { panic!("a live call") };
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

fn progress(id: u64) -> Result<StreamEvent, UpstreamError> {
    Ok(StreamEvent::new(id, EventKind::PROGRESS, b"{}", None))
}

/// The next `n` ids a viewer receives (within a second of paused time).
async fn next_ids(viewer: &mut ViewerStream, n: usize) -> Vec<u64> {
    let mut ids = Vec::new();
    while ids.len() < n {
        match tokio::time::timeout(Duration::from_secs(1), viewer.next()).await {
            Ok(Some(Delivery::Event(event))) => ids.push(event.id),
            other => panic!("after {ids:?}: {:?}", other.map(|d| d.map(|d| matches!(d, Delivery::Reset)))),
        }
    }
    ids
}

/// A reconnect storm: the viewers of an instance that stopped all resume at the event it sent
/// last, arriving over the seconds of their jittered `retry:` while events go on, far more of
/// them than the replay log keeps. Every one is served by the one shared call, none by an
/// upstream call of its own, and none loses or repeats an event.
#[tokio::test(start_paused = true)]
async fn reconnects_resuming_at_one_point_share_one_call_while_events_go_on() {
    let calls = (0..10).map(|_| Ok(())).collect();
    let (hub, fake, feeds) = scripted_upstream(Retention::State, 8, settings(), calls, true);
    // The upstream replays what it keeps when the shared call starts.
    (1..=20).for_each(|id| feeds[0].send(progress(id)).unwrap());
    // Each viewer is read as its connection's task reads it, from the moment it attaches.
    let read = |mut viewer: ViewerStream| tokio::spawn(async move { next_ids(&mut viewer, 30).await });
    let mut viewers = vec![read(live(hub.subscribe(call(), Some(20)).await))];
    for id in 21..=50 {
        feeds[0].send(progress(id)).unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        if id % 5 == 0 {
            viewers.push(read(live(hub.subscribe(call(), Some(20)).await)));
        }
    }
    assert_eq!(fake.opened.load(Ordering::SeqCst), 1, "one upstream call for every reconnect");
    for viewer in viewers {
        assert_eq!(viewer.await.unwrap(), (21..=50).collect::<Vec<_>>());
    }
}

/// A viewer that resumes ahead of a call that is still receiving the upstream's replay (it
/// comes in pieces) must not lose the events after its point when the rest arrives at once,
/// more of them than the broadcast holds for it.
#[tokio::test(start_paused = true)]
async fn a_viewer_ahead_of_a_starting_call_gets_every_event_after_its_point() {
    let (hub, _, feeds) = scripted_upstream(Retention::State, 8, settings(), vec![Ok(())], true);
    (1..=3).for_each(|id| feeds[0].send(progress(id)).unwrap());
    let mut viewer = live(hub.subscribe(call(), Some(6)).await);
    (4..=12).for_each(|id| feeds[0].send(progress(id)).unwrap());
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(next_ids(&mut viewer, 6).await, [7, 8, 9, 10, 11, 12]);
}

fn live(subscription: Result<Subscription, UpstreamError>) -> ViewerStream {
    match subscription {
        Ok(Subscription::Live { events, .. }) => events,
        other => panic!("a live subscription, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_call_lingers_after_its_last_viewer_then_is_cancelled() {
    let (hub, fake, feeds) = scripted(Retention::State, 8, settings(), vec![Ok(()), Ok(())]);
    feeds[0].send(event(1)).unwrap();
    drop(live(hub.subscribe(call(), None).await));
    // Within the linger (10 s) a returning viewer shares the same call.
    tokio::time::sleep(Duration::from_secs(9)).await;
    assert!(!feeds[0].is_closed(), "still open within the linger");
    let again = live(hub.subscribe(call(), None).await);
    assert_eq!(fake.opened.load(Ordering::SeqCst), 1, "the lingering call was reused");
    drop(again);
    tokio::time::sleep(Duration::from_millis(9_990)).await;
    assert!(!feeds[0].is_closed(), "the linger starts again from the last viewer");
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(feeds[0].is_closed(), "cancelled once the linger passed with no viewer");
}

#[tokio::test(start_paused = true)]
async fn a_finished_call_answers_late_reconnects_for_keep_finished_then_leaves() {
    let (hub, fake, feeds) = scripted(Retention::State, 100, settings(), vec![Ok(()), Ok(())]);
    for id in 1..=10 {
        feeds[0].send(event(id)).unwrap();
    }
    let all: Vec<_> = live(hub.subscribe(call(), Some(0)).await).collect().await;
    assert_eq!(all.len(), 10);
    tokio::time::sleep(Duration::from_secs(59)).await;
    assert!(matches!(hub.subscribe(call(), Some(10)).await, Ok(Subscription::Finished { last: 10 })));
    assert_eq!(fake.opened.load(Ordering::SeqCst), 1, "answered from the kept log");
    tokio::time::sleep(Duration::from_secs(2)).await;
    feeds[1].send(event(1)).unwrap();
    let _fresh = live(hub.subscribe(call(), None).await);
    assert_eq!(fake.opened.load(Ordering::SeqCst), 2, "after keep-finished a reconnect calls again");
}

#[tokio::test(start_paused = true)]
async fn a_subscription_waits_the_first_event_wait_then_reports_the_failure_being_retried() {
    let error = || Err(UpstreamError::new(Code::Unavailable, "down"));
    let (hub, fake, _) = scripted(Retention::State, 8, settings(), (0..100).map(|_| error()).collect());
    let started = Instant::now();
    let answer = hub.subscribe(call(), None).await;
    assert_eq!(started.elapsed(), Duration::from_secs(2), "the first-event wait, no longer");
    assert!(matches!(answer, Err(UpstreamError { code: Code::Unavailable, .. })));
    assert!(fake.opened.load(Ordering::SeqCst) >= 3, "retried with backoff meanwhile");
}

#[tokio::test(start_paused = true)]
async fn transient_failures_are_retried_with_backoff_until_the_retry_budget_then_end() {
    let error = || Err(UpstreamError::new(Code::Unavailable, "down"));
    let mut calls = vec![Ok(())];
    calls.extend((0..100).map(|_| error()));
    let mut settings = settings();
    settings.retry_budget = Duration::from_secs(10);
    let (hub, fake, feeds) = scripted(Retention::State, 8, settings, calls);
    feeds[0].send(event(1)).unwrap();
    let mut viewer = live(hub.subscribe(call(), None).await);
    assert!(matches!(viewer.next().await, Some(Delivery::Event(e)) if e.id == 1));
    let broke = Instant::now();
    drop(feeds);
    let ending = viewer.next().await;
    assert!(matches!(ending, Some(Delivery::Failed(UpstreamError { code: Code::Unavailable, .. }))), "{ending:?}");
    let spent = broke.elapsed();
    assert!((Duration::from_secs(10)..Duration::from_secs(13)).contains(&spent), "the budget, then the end: {spent:?}");
    // Backoff from 100 ms doubling to 2 s (jittered ±50 %): far fewer calls than one per tick.
    let opened = fake.opened.load(Ordering::SeqCst);
    assert!((5..=20).contains(&opened), "{opened} calls in the budget");
}

/// A viewer resuming at 3 attaches (after the first-event wait) before the call has any event;
/// then the source says events up to 6 are gone (the cluster's Redis trimmed them) and sends 7
/// to 10. The viewer cannot have 4 to 6: it is told so before it gets anything.
#[tokio::test(start_paused = true)]
async fn a_resume_point_that_turns_out_to_be_gone_after_attaching_gets_reset() {
    let (hub, feed) = hub(Retention::State, 8);
    let subscribed = hub.subscribe(call(), Some(3)).await.unwrap();
    let Subscription::Live { reset: false, events } = subscribed else { panic!("a live call, not reset yet") };
    feed.send(Ok(StreamEvent::new(6, EventKind::TRIMMED, b"{}", None))).unwrap();
    (7..=10).for_each(|id| feed.send(event(id)).unwrap());
    let got: Vec<String> = events
        .map(|delivery| match delivery {
            Delivery::Event(e) => e.id.to_string(),
            Delivery::Reset => "reset".to_owned(),
            Delivery::Failed(e) => format!("failed: {e}"),
        })
        .collect()
        .await;
    assert_eq!(got.first().map(String::as_str), Some("reset"), "{got:?}");
    assert_eq!(got.last().map(String::as_str), Some("10"), "{got:?}");
}

/// The same note before any viewer came: a resume point below it needs a call of its own
/// (here, a route that cannot resume: `reset`), and is never served from the log with a gap.
#[tokio::test(start_paused = true)]
async fn the_log_never_answers_a_resume_point_the_source_no_longer_has() {
    let (hub, _, feeds) = scripted(Retention::State, 8, settings(), vec![Ok(()), Ok(())]);
    feeds[0].send(Ok(StreamEvent::new(6, EventKind::TRIMMED, b"{}", None))).unwrap();
    (7..=8).for_each(|id| feeds[0].send(event(id)).unwrap());
    let Subscription::Live { reset, .. } = hub.subscribe(call(), Some(3)).await.unwrap() else { panic!("live") };
    assert!(reset, "3 is below what the source still has");
    let Subscription::Live { reset, .. } = hub.subscribe(call(), Some(7)).await.unwrap() else { panic!("live") };
    assert!(!reset, "7 is in the log");
}

/// An upstream restarted twice, the second time longer than the retry budget after the first,
/// while the job sent nothing new (a restarted upstream replays up to the viewer's point in
/// silence): the call that stayed up between the restarts was healthy, so the viewer sees no
/// error, and goes on when events come again.
#[tokio::test(start_paused = true)]
async fn a_call_that_stayed_up_for_the_retry_budget_starts_a_new_budget_when_it_breaks() {
    let calls = (0..3).map(|_| Ok(())).collect();
    let (hub, fake, mut feeds) = scripted_upstream(Retention::State, 8, settings(), calls, true);
    feeds[0].send(progress(1)).unwrap();
    let mut viewer = live(hub.subscribe(call(), None).await);
    assert_eq!(next_ids(&mut viewer, 1).await, [1]);
    let third = feeds.pop().unwrap();
    let second = feeds.pop().unwrap();
    drop(feeds);
    // The second call comes up and stays silent for 40 s, past the budget of 30 s.
    tokio::time::sleep(Duration::from_secs(40)).await;
    assert_eq!(fake.opened.load(Ordering::SeqCst), 2);
    drop(second);
    tokio::time::sleep(Duration::from_secs(1)).await;
    third.send(progress(2)).unwrap();
    assert_eq!(next_ids(&mut viewer, 1).await, [2], "no error: the call resumed a third time");
}

/// A route numbered by the BFF whose upstream cannot resume: every call starts over and sends
/// the same first event before it breaks, numbered on by the BFF as if it were new. Those ids
/// prove nothing, so the calls do not renew the retry budget: the viewer gets the error after
/// the budget, and the upstream is not called forever.
#[tokio::test(start_paused = true)]
async fn an_upstream_that_breaks_after_the_same_events_again_and_again_ends_in_an_error() {
    let mut feeds = Vec::new();
    let calls = (0..200)
        .map(|n| {
            let (feed, events) = mpsc::unbounded_channel();
            feed.send(progress(n + 1)).unwrap();
            feeds.push(feed);
            Ok(events)
        })
        .collect();
    drop(feeds);
    let fake = Arc::new(Fake {
        calls: Mutex::new(calls),
        opened: AtomicUsize::new(0),
        retention: Retention::Log,
        replay: 100,
        resumable: false,
        numbered: true,
    });
    let hub = Hub::new(Arc::clone(&fake) as SharedResource, settings(), CancellationToken::new());
    let viewer = live(hub.subscribe(call(), Some(0)).await);
    let ended = tokio::time::timeout(Duration::from_secs(120), async {
        viewer.filter(|d| std::future::ready(matches!(d, Delivery::Failed(_)))).next().await
    })
    .await;
    assert!(matches!(ended, Ok(Some(Delivery::Failed(_)))), "the viewer gets the error");
    let opened = fake.opened.load(Ordering::SeqCst);
    assert!(opened < 50, "{opened} upstream calls: the budget was renewed by repeats");
}
