//! Cluster mode with real processes: Debian's `redis-server` on a free loopback port (installed
//! by `scripts/test-deps`), the simulator and several `sse-bff serve --redis` processes, killed,
//! paused and restarted by PID.

use std::{net::SocketAddr, process::Stdio, time::Duration};

use futures_util::future::join_all;
use sse_bff::sse::{Decoder, Frame};

use crate::helpers::{Binary, PATIENCE, fixture, free_addr, fresh};

/// A `redis-server` child on a loopback port, without persistence; killed when dropped.
pub struct Redis {
    addr: SocketAddr,
    child: std::process::Child,
}

impl Redis {
    pub fn start(addr: SocketAddr) -> Self {
        let binary = ["/usr/bin/redis-server", "/usr/sbin/redis-server"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect("redis-server is installed (apt-get install redis-server, as scripts/test-deps does)");
        let child = std::process::Command::new(binary)
            .args(["--bind", "127.0.0.1", "--port", &addr.port().to_string(), "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        let deadline = std::time::Instant::now() + PATIENCE;
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(std::time::Instant::now() < deadline, "redis-server listens on {addr}");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { addr, child }
    }

    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// SIGKILL: Redis is gone at once, with everything it held.
    fn kill(mut self) -> SocketAddr {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.addr
    }

    /// What `redis-cli` answers to `args`.
    fn cli(&self, args: &[&str]) -> String {
        let out = std::process::Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.addr.port().to_string()])
            .args(args)
            .output()
            .expect("redis-cli runs");
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    /// Every entry id of a stream key matching `pattern`, in order.
    fn entry_ids(&self, pattern: &str) -> Vec<String> {
        let cli = |args: &[&str]| self.cli(args);
        let keys = cli(&["--scan", "--pattern", pattern]);
        let key = keys.lines().next().expect("the stream exists").to_owned();
        cli(&["XRANGE", &key, "-", "+"])
            .lines()
            .filter(|l| l.contains('-') && l.chars().all(|c| c.is_ascii_digit() || c == '-'))
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `n` instances of `serve --redis` against the simulator at `sim`, with `extra` arguments.
async fn instances(n: usize, sim: SocketAddr, redis: &str, extra: &[&str]) -> Vec<Binary> {
    let mut args = vec!["--insecure-no-auth", "--redis", redis, "--lease-ttl", "1s", "--linger", "2s"];
    args.extend_from_slice(extra);
    join_all((0..n).map(|_| Binary::serve(sim, &args, &[]))).await
}

/// The value of an unlabelled or single-series metric of an instance.
async fn metric(instance: &Binary, name: &str) -> f64 {
    let text = reqwest::get(instance.url("/metrics")).await.expect("metrics answer").text().await.expect("text");
    text.lines()
        .filter(|line| line.starts_with(name) && !line.starts_with('#'))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Upstream calls started, summed over `instances`.
async fn upstream_calls(instances: &[&Binary]) -> f64 {
    join_all(instances.iter().map(|i| metric(i, "sse_bff_upstream_calls_started_total"))).await.into_iter().sum()
}

/// One viewer's SSE stream, read frame by frame; a broken connection is an end, not a panic.
struct Viewer {
    response: reqwest::Response,
    decoder: Decoder,
    pending: std::collections::VecDeque<Frame>,
}

impl Viewer {
    async fn open(url: String, last_event_id: Option<u64>) -> Self {
        let mut request = reqwest::Client::new().get(url);
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id.to_string());
        }
        let response = request.send().await.expect("the stream opens");
        assert_eq!(response.status(), 200, "the stream is served");
        Self { response, decoder: Decoder::new(), pending: Default::default() }
    }

    /// The next event as (id, name), or `None` at the end or when the connection broke.
    async fn next(&mut self) -> Option<(u64, String)> {
        loop {
            while let Some(frame) = self.pending.pop_front() {
                if let Frame::Event { id, event, .. } = frame {
                    return Some((id.and_then(|id| id.parse().ok()).unwrap_or(0), event));
                }
            }
            let chunk = tokio::time::timeout(PATIENCE, self.response.chunk()).await.expect("a chunk within patience");
            match chunk {
                Ok(Some(chunk)) => self.pending.extend(self.decoder.feed(&chunk)),
                Ok(None) | Err(_) => return None,
            }
        }
    }

    /// Reads until the stream ends or breaks; appends to `ids` and returns the last event name.
    async fn read_all(&mut self, ids: &mut Vec<u64>) -> Option<String> {
        let mut last = None;
        while let Some((id, name)) = self.next().await {
            ids.push(id);
            last = Some(name);
        }
        last
    }
}

/// One viewer per instance of `path`, from the first event, each having read `first` events:
/// the viewers and the ids each saw.
async fn watched(cluster: &[Binary], path: &str, first: usize) -> (Vec<Viewer>, Vec<Vec<u64>>) {
    let mut viewers = Vec::new();
    for instance in cluster {
        viewers.push(Viewer::open(instance.url(path), Some(0)).await);
    }
    let mut seen = vec![Vec::new(); viewers.len()];
    for (viewer, ids) in viewers.iter_mut().zip(&mut seen) {
        for _ in 0..first {
            ids.push(viewer.next().await.expect("an early event").0);
        }
    }
    (viewers, seen)
}

/// The ids are 1, 2, 3, ... with nothing missing and nothing repeated.
fn assert_whole(ids: &[u64], who: &str) {
    let expected: Vec<u64> = (1..=ids.len() as u64).collect();
    assert_eq!(ids, expected, "{who}: every event once, in order");
}

/// The instance that holds the only lease now.
async fn holder(instances: &[Binary]) -> usize {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let held = join_all(instances.iter().map(|i| metric(i, "sse_bff_cluster_leases_held"))).await;
        if let Some(index) = held.iter().position(|n| *n == 1.0) {
            assert_eq!(held.iter().sum::<f64>(), 1.0, "one lease in the cluster: {held:?}");
            return index;
        }
        assert!(tokio::time::Instant::now() < deadline, "some instance holds the lease: {held:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hundred_viewers_on_three_instances_cost_one_upstream_call() {
    let redis = Redis::start(free_addr());
    let sim = Binary::sim(free_addr(), 5.0).await;
    let cluster = instances(3, sim.addr, &redis.url(), &[]).await;
    let document = fresh("doc-1");
    let viewers = (0..300).map(|i| {
        let url = cluster[i % 3].url(&format!("/documents/{document}/progress"));
        async move {
            let mut viewer = Viewer::open(url, None).await;
            let mut ids = Vec::new();
            let last = viewer.read_all(&mut ids).await;
            (ids, last)
        }
    });
    let seen = join_all(viewers).await;
    for (i, (ids, last)) in seen.iter().enumerate() {
        assert_eq!(last.as_deref(), Some("completed"), "viewer {i} saw the end: {ids:?}");
        let first = ids[0];
        let expected: Vec<u64> = (first..first + ids.len() as u64).collect();
        assert_eq!(ids, &expected, "viewer {i}: nothing lost or repeated after its first event");
    }
    let all: Vec<&Binary> = cluster.iter().collect();
    assert_eq!(upstream_calls(&all).await, 1.0, "one upstream call for the whole cluster");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_holder_dies_a_survivor_resumes_the_call_and_nobody_loses_an_event() {
    let redis = Redis::start(free_addr());
    // `slow`: 31 updates, one every 200 ms at this speed.
    let sim = Binary::sim(free_addr(), 10.0).await;
    let mut cluster = instances(3, sim.addr, &redis.url(), &[]).await;
    let document = fresh("slow");
    let path = format!("/documents/{document}/progress");
    let mut viewers = Vec::new();
    for (i, instance) in cluster.iter().enumerate() {
        for _ in 0..4 {
            viewers.push((i, Viewer::open(instance.url(&path), Some(0)).await));
        }
    }
    let mut seen: Vec<Vec<u64>> = vec![Vec::new(); viewers.len()];
    for (n, (_, viewer)) in viewers.iter_mut().enumerate() {
        for _ in 0..3 {
            seen[n].push(viewer.next().await.expect("an early event").0);
        }
    }
    let victim = holder(&cluster).await;
    let calls_before = metric(&cluster[victim], "sse_bff_upstream_calls_started_total").await;
    assert_eq!(calls_before, 1.0);
    let killed = cluster.remove(victim);
    killed.kill().await;
    let survivors: Vec<&Binary> = cluster.iter().collect();

    let reads = viewers.into_iter().zip(seen).map(|((i, mut viewer), mut ids)| {
        let survivor = survivors[i % survivors.len()].url(&path);
        async move {
            let mut last = viewer.read_all(&mut ids).await;
            if i == victim {
                // Its instance died: reconnect elsewhere with Last-Event-ID, as EventSource does.
                assert_ne!(last.as_deref(), Some("completed"), "the killed instance's viewer was cut mid-job");
                let mut again = Viewer::open(survivor, ids.last().copied()).await;
                last = again.read_all(&mut ids).await;
            }
            (i, ids, last)
        }
    });
    for (i, ids, last) in join_all(reads).await {
        assert_eq!(last.as_deref(), Some("completed"), "a viewer of instance {i} saw the end");
        assert_whole(&ids, &format!("a viewer of instance {i}"));
        assert_eq!(ids.len(), 31);
    }
    let calls_after = upstream_calls(&survivors).await;
    assert_eq!(calls_before + calls_after, 2.0, "the first call, and one that resumed it");
}

/// The simulator playing the CI build log at `speed`, and a routes file for it whose route has
/// `id_line` (`id = "offset"`, or nothing: numbered by the BFF) and no resume field.
async fn builds_upstream(speed: &str, id_line: &str) -> (Binary, String) {
    let listen = free_addr().to_string();
    let (descriptors, builds) = (fixture("routes/builds.binpb"), fixture("builds"));
    let (descriptors, builds) = (descriptors.display().to_string(), builds.display().to_string());
    let args =
        ["upstream-sim", "--listen", &listen, "--descriptor-set", &descriptors, "--scripts", &builds, "--speed", speed];
    let sim = Binary::start(&args, &[]).await;
    let routes = crate::helpers::temp_file(
        "cluster-routes.toml",
        &format!(
            "[[upstream]]\nname = \"ci\"\nurls = [\"http://{}\"]\ndescriptors = \"{descriptors}\"\n\n\
             [[route]]\npath = \"/projects/{{project}}/builds/{{build_number}}/log\"\nupstream = \"ci\"\n\
             method = \"ci.v1.Builds/WatchBuild\"\n{id_line}\nretention = \"log\"\nreplay = 1000\n\
             event = {{ oneof = \"kind\" }}\nterminal = [\"finished\"]\n\
             params = {{ project = \"^[a-z0-9.-]{{1,64}}$\", build_number = \"^[0-9]{{1,12}}$\" }}\n",
            sim.addr
        ),
    );
    (sim, routes.display().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_without_a_resume_field_resumes_on_another_instance_from_redis() {
    let redis = Redis::start(free_addr());
    let (_sim, routes) = builds_upstream("0.5", "id = \"offset\"").await;
    let args = ["--insecure-no-auth", "--redis", &redis.url(), "--lease-ttl", "1s", "--routes", &routes];
    let first = Binary::start(&[&["serve", "--listen", "127.0.0.1:0"][..], &args[..]].concat(), &[]).await;
    let second = Binary::start(&[&["serve", "--listen", "127.0.0.1:0"][..], &args[..]].concat(), &[]).await;
    let path = format!("/projects/{}/builds/42/log", fresh("web"));

    let mut viewer = Viewer::open(first.url(&path), None).await;
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(viewer.next().await.expect("an early line").0);
    }
    drop(viewer);
    let mut again = Viewer::open(second.url(&path), ids.last().copied()).await;
    let mut names = Vec::new();
    while let Some((id, name)) = again.next().await {
        ids.push(id);
        names.push(name);
    }
    assert!(!names.contains(&"reset".to_owned()), "resumed, not reset: {names:?}");
    assert_eq!(names.last().map(String::as_str), Some("finished"));
    assert_whole(&ids, "the viewer that moved");
    // At the end, on either instance: nothing more will come.
    for instance in [&first, &second] {
        let last = ids.last().unwrap().to_string();
        let done = reqwest::Client::new().get(instance.url(&path)).header("last-event-id", last).send().await.unwrap();
        assert_eq!(done.status(), 204, "a reconnect after the end gets 204 on every instance");
    }
    assert_eq!(upstream_calls(&[&first, &second]).await, 1.0, "the second instance read Redis, not the upstream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_every_instance_calls_the_upstream_itself_and_rejoins_when_it_returns() {
    let redis = Redis::start(free_addr());
    let sim = Binary::sim(free_addr(), 10.0).await;
    let cluster = instances(2, sim.addr, &redis.url(), &[]).await;
    let path = format!("/documents/{}/progress", fresh("slow"));
    let (mut viewers, mut seen) = watched(&cluster, &path, 3).await;
    let addr = redis.kill();
    // Every viewer keeps receiving while Redis is gone.
    for (viewer, ids) in viewers.iter_mut().zip(&mut seen) {
        for _ in 0..8 {
            ids.push(viewer.next().await.expect("events while Redis is down").0);
        }
    }
    for instance in &cluster {
        let ready = reqwest::get(instance.url("/readyz")).await.unwrap();
        assert_eq!(ready.status(), 200, "a degraded cluster still serves");
        let body: serde_json::Value = ready.json().await.unwrap();
        assert_eq!(body["cluster"], "degraded");
        assert_eq!(metric(instance, "sse_bff_cluster_degraded").await, 1.0);
    }
    let redis = Redis::start(addr);
    for instance in &cluster {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while metric(instance, "sse_bff_cluster_degraded").await != 0.0 {
            assert!(tokio::time::Instant::now() < deadline, "the instance rejoins the cluster");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let calls = upstream_calls(&cluster.iter().collect::<Vec<_>>()).await;
    for (viewer, ids) in viewers.iter_mut().zip(&mut seen) {
        assert_eq!(viewer.read_all(ids).await.as_deref(), Some("completed"));
        assert_whole(ids, "a viewer through the outage");
    }
    let rejoined = upstream_calls(&cluster.iter().collect::<Vec<_>>()).await - calls;
    assert!(rejoined <= 1.0, "after rejoining, one call for the resource: {rejoined} more");
    // And a new resource costs one call again.
    let before = upstream_calls(&cluster.iter().collect::<Vec<_>>()).await;
    let fresh_path = format!("/documents/{}/progress", fresh("doc-1"));
    let ends = join_all(cluster.iter().map(|i| {
        let url = i.url(&fresh_path);
        async move {
            let mut ids = Vec::new();
            (Viewer::open(url, None).await.read_all(&mut ids).await, ids)
        }
    }))
    .await;
    assert!(
        ends.iter().all(|(end, _)| end.as_deref() == Some("completed")),
        "{ends:?} {} {}",
        cluster[0].log(),
        cluster[1].log()
    );
    assert_eq!(upstream_calls(&cluster.iter().collect::<Vec<_>>()).await - before, 1.0);
    drop(redis);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_paused_past_its_lease_is_fenced_off_when_it_wakes() {
    let redis = Redis::start(free_addr());
    let sim = Binary::sim(free_addr(), 10.0).await;
    let cluster = instances(2, sim.addr, &redis.url(), &[]).await;
    let document = fresh("slow");
    let path = format!("/documents/{document}/progress");
    let (mut viewers, mut seen) = watched(&cluster, &path, 1).await;
    let paused = holder(&cluster).await;
    let other = 1 - paused;
    let pid = cluster[paused].pid().to_string();
    assert!(std::process::Command::new("kill").args(["-STOP", &pid]).status().unwrap().success());
    // Past the lease: the other instance takes over and goes on appending.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while metric(&cluster[other], "sse_bff_cluster_leases_held").await != 1.0 {
        assert!(tokio::time::Instant::now() < deadline, "the other instance takes the lease");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for _ in 0..3 {
        seen[other].push(viewers[other].next().await.expect("events from the new holder").0);
    }
    assert!(std::process::Command::new("kill").args(["-CONT", &pid]).status().unwrap().success());
    // Awake, the old holder finds its token stale: it stops calling the upstream.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while metric(&cluster[paused], "sse_bff_cluster_leases_held").await != 0.0
        || metric(&cluster[paused], "sse_bff_upstream_calls_active").await != 0.0
    {
        assert!(tokio::time::Instant::now() < deadline, "the woken holder lets go: {}", cluster[paused].log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(metric(&cluster[other], "sse_bff_cluster_leases_held").await, 1.0, "the new holder keeps the lease");
    for (viewer, ids) in viewers.iter_mut().zip(&mut seen) {
        assert_eq!(viewer.read_all(ids).await.as_deref(), Some("completed"));
        assert_whole(ids, "a viewer across the pause");
    }
    // What Redis kept (the replay size and more: trimming is approximate) is each event once.
    let entries = redis.entry_ids("sse-bff:*:events");
    let numbers: Vec<u64> = entries.iter().filter_map(|e| e.strip_suffix("-0")?.parse().ok()).collect();
    let first = numbers.first().copied().unwrap_or(0);
    assert_eq!(numbers, (first..=31).collect::<Vec<_>>(), "the stream holds each event once, in order: {entries:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_point_redis_trimmed_away_is_not_served_with_a_gap() {
    let redis = Redis::start(free_addr());
    let listen = free_addr().to_string();
    // An endless job at 200 updates/s: Redis keeps about the last 2 + 64 of them.
    let sim = Binary::start(&["upstream-sim", "--listen", &listen, "--steady-rate", "200"], &[]).await;
    let cluster = instances(2, sim.addr, &redis.url(), &["--replay-log", "2"]).await;
    let path = format!("/documents/steady.{}/progress", uuid::Uuid::new_v4().simple());
    let mut first = Viewer::open(cluster[0].url(&path), Some(0)).await;
    while first.next().await.expect("events").0 < 300 {}
    drop(first);
    // Event 10 left Redis long ago: the other instance must not answer from what Redis still
    // has (a silent gap) but resume the upstream call at 10 (the route has a resume field).
    let mut moved = Viewer::open(cluster[1].url(&path), Some(10)).await;
    let (id, name) = moved.next().await.expect("an event");
    let all: Vec<&Binary> = cluster.iter().collect();
    if name == "reset" {
        // The instance attached the viewer before Redis answered (a loaded machine, past the
        // first-event wait): it could only learn afterwards that the point is gone, and says so.
        return;
    }
    assert_eq!((id, name.as_str()), (11, "progress"), "the event after the resume point");
    assert_eq!(upstream_calls(&all).await, 2.0, "the shared call, and one that resumed at 10");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_refuses_writes_degrades_the_cluster_and_nobody_waits_on_it() {
    let redis = Redis::start(free_addr());
    let sim = Binary::sim(free_addr(), 10.0).await;
    let cluster = instances(2, sim.addr, &redis.url(), &[]).await;
    let path = format!("/documents/{}/progress", fresh("slow"));
    let (mut viewers, mut seen) = watched(&cluster, &path, 1).await;
    // Out of memory with `noeviction`: Redis answers PING but refuses every write.
    redis.cli(&["CONFIG", "SET", "maxmemory", "1"]);
    for (viewer, ids) in viewers.iter_mut().zip(&mut seen) {
        for _ in 0..6 {
            ids.push(viewer.next().await.expect("events while Redis refuses writes").0);
        }
    }
    for instance in &cluster {
        let body: serde_json::Value = reqwest::get(instance.url("/readyz")).await.unwrap().json().await.unwrap();
        assert_eq!(body["cluster"], "degraded");
    }
    redis.cli(&["CONFIG", "SET", "maxmemory", "0"]);
    for (viewer, ids) in viewers.iter_mut().zip(&mut seen) {
        assert_eq!(viewer.read_all(ids).await.as_deref(), Some("completed"));
        assert_whole(ids, "a viewer while Redis refused writes");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_numbered_by_the_bff_goes_on_after_redis_comes_back_empty() {
    let redis = Redis::start(free_addr());
    let (_sim, routes) = builds_upstream("0.2", "").await;
    let args = ["--insecure-no-auth", "--redis", &redis.url(), "--lease-ttl", "1s", "--routes", &routes];
    let instance = Binary::start(&[&["serve", "--listen", "127.0.0.1:0"][..], &args[..]].concat(), &[]).await;
    let path = format!("/projects/{}/builds/42/log", fresh("web"));
    let mut viewer = Viewer::open(instance.url(&path), None).await;
    let mut names = Vec::new();
    let mut ids = Vec::new();
    for _ in 0..3 {
        let (id, name) = viewer.next().await.expect("an early line");
        ids.push(id);
        names.push(name);
    }
    let addr = redis.kill();
    // The instance's own call starts the job over and numbers on from 3, past the 14 lines the
    // job has; Redis then comes back with nothing in it, before that call ends.
    while ids.last().is_some_and(|id| *id < 15) {
        let (id, name) = viewer.next().await.expect("a line while Redis is gone");
        ids.push(id);
        names.push(name);
    }
    let _redis = Redis::start(addr);
    while let Some((id, name)) = viewer.next().await {
        ids.push(id);
        names.push(name);
    }
    assert_eq!(names.last().map(String::as_str), Some("finished"), "the stream ends, it does not stall: {names:?}");
    assert!(ids.windows(2).all(|pair| pair[0] < pair[1]), "ids only go up: {ids:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_of_one_document_on_two_instances_never_share_a_call() {
    let redis = Redis::start(free_addr());
    let sim = Binary::sim(free_addr(), 5.0).await;
    let url = redis.url();
    let args = ["--jwt-secret", crate::helpers::SECRET, "--redis", &url, "--lease-ttl", "1s"];
    let cluster = join_all((0..2).map(|_| Binary::serve(sim.addr, &args, &[]))).await;
    let path = format!("/documents/{}/progress", fresh("doc-1"));
    let viewers = [("alice", 0), ("bob", 1), ("alice", 1)].map(|(user, i)| {
        let request =
            reqwest::Client::new().get(cluster[i].url(&path)).bearer_auth(crate::helpers::token(user, "acme"));
        async move {
            let response = request.send().await.expect("the stream opens");
            assert_eq!(response.status(), 200);
            let mut viewer = Viewer { response, decoder: Decoder::new(), pending: Default::default() };
            viewer.read_all(&mut Vec::new()).await
        }
    });
    for end in join_all(viewers).await {
        assert_eq!(end.as_deref(), Some("completed"));
    }
    let all: Vec<&Binary> = cluster.iter().collect();
    assert_eq!(upstream_calls(&all).await, 2.0, "one call per user (the default share scope), across instances");
}
