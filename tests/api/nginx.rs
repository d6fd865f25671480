//! The deployed topology, natively: the simulator, two BFF replicas and Debian's nginx with the
//! shipped `deploy/nginx/default.conf.template`, all on loopback. `scripts/test-deps` installs nginx.

use std::{
    path::PathBuf,
    process::Stdio,
    time::{Duration, Instant, SystemTime},
};

use reqwest::header::HeaderValue;
use sse_bff::sse::Frame;

use crate::{
    cluster::Redis,
    helpers::{PATIENCE, SseReader, TestApp, bearer, fixture, free_addr},
};

/// nginx running the shipped template in front of two replicas; stopped when dropped.
pub struct Nginx {
    pub addr: std::net::SocketAddr,
    child: std::process::Child,
    _dir: TempDir,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM, not SIGKILL: the master then stops its workers too; killed, it would leave
        // them behind, still listening.
        let _ = std::process::Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let _ = self.child.wait();
    }
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// How the shipped template is rendered: what its variables become, and how many connections
/// one worker may hold.
pub struct Setup {
    /// `${BFF_1}` and `${BFF_2}`: an address, with server parameters such as `backup` if wanted.
    pub replicas: [String; 2],
    /// `${PROXY_READ_TIMEOUT}`.
    pub read_timeout: &'static str,
    /// `worker_connections` of the one worker (each proxied stream takes two).
    pub worker_connections: usize,
}

async fn nginx(replicas: [&TestApp; 2], read_timeout: &'static str) -> Nginx {
    let replicas = replicas.map(|app| app.addr.to_string());
    start(Setup { replicas, read_timeout, worker_connections: 512 }).await
}

/// Renders the shipped template as `setup` says and starts Debian's nginx on a free port.
pub async fn start(setup: Setup) -> Nginx {
    let binary = ["/usr/sbin/nginx", "/usr/bin/nginx"].into_iter().find(|p| std::path::Path::new(p).exists());
    let binary = binary.expect("nginx is installed (apt-get install nginx-light, as scripts/test-deps does)");
    let addr = free_addr();
    let dir = std::env::temp_dir().join(format!("sse-bff-nginx-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let template = std::fs::read_to_string(fixture("../deploy/nginx/default.conf.template")).unwrap();
    let site = template
        .replace("${BFF_1}", &setup.replicas[0])
        .replace("${BFF_2}", &setup.replicas[1])
        .replace("${NGINX_LISTEN}", &addr.to_string())
        .replace("${PROXY_READ_TIMEOUT}", setup.read_timeout);
    assert!(!site.contains("${"), "every template variable is set");
    std::fs::write(dir.join("site.conf"), site).unwrap();
    let d = dir.display();
    let connections = setup.worker_connections;
    let main = format!(
        "daemon off; worker_processes 1; worker_rlimit_nofile {files}; pid {d}/nginx.pid; error_log {d}/error.log warn;\n\
         events {{ worker_connections {connections}; }}\n\
         http {{ access_log off; client_body_temp_path {d}/body; proxy_temp_path {d}/proxy;\n\
         fastcgi_temp_path {d}/fastcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;\n\
         include {d}/site.conf; }}\n",
        files = connections + 64,
    );
    std::fs::write(dir.join("nginx.conf"), main).unwrap();
    let child = std::process::Command::new(binary)
        .args(["-p", &dir.display().to_string(), "-c", &dir.join("nginx.conf").display().to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nginx starts");
    let started = Instant::now();
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(
            started.elapsed() < PATIENCE,
            "nginx listens: {}",
            std::fs::read_to_string(dir.join("error.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Nginx { addr, child, _dir: TempDir(dir) }
}

/// Two replicas sharing one simulator, one cluster on their own `redis-server`, as
/// `docker-compose.yml` runs them.
async fn replicas(heartbeat: Duration) -> (TestApp, TestApp, Redis) {
    let redis = Redis::start(free_addr());
    let url = redis.url();
    let cluster = |c: &mut sse_bff::ServeConfig| c.cluster.redis_url = Some(url.clone());
    let first = TestApp::builder().speed(1.0).heartbeat(heartbeat).configure(cluster).spawn().await;
    let second = TestApp::builder().upstream(first.sim_addr).heartbeat(heartbeat).configure(cluster).spawn().await;
    (first, second, redis)
}

#[tokio::test]
async fn behind_nginx_the_replicas_make_one_upstream_call_per_document() {
    let (a, b, _redis) = replicas(Duration::from_secs(15)).await;
    let proxy = nginx([&a, &b], "60s").await;
    let url = format!("http://{}/documents/{}/progress", proxy.addr, crate::helpers::fresh("doc-1"));
    // nginx spreads the viewers over both replicas.
    let viewers = (0..20).map(|_| {
        let request = a.client.get(&url).headers(bearer(&a.token));
        async move { SseReader::new(request.send().await.unwrap()).read_to_end().await }
    });
    for frames in futures_util::future::join_all(viewers).await {
        let names = crate::helpers::names(&frames);
        assert_eq!(names.last().map(String::as_str), Some("completed"), "{names:?}");
    }
    for replica in [&a, &b] {
        let metrics = replica.metrics().await;
        let sent = metrics.lines().find(|l| l.starts_with("sse_bff_events_sent_total")).unwrap_or_default();
        assert!(!sent.is_empty() && !sent.ends_with(" 0"), "each replica served viewers: {sent:?}");
    }
    // `b`'s own simulator is unused: both call the one `a` started.
    assert_eq!(a.sim.calls(), 1, "one upstream call for the document in the whole cluster");
}

#[tokio::test]
async fn through_nginx_events_arrive_one_at_a_time_uncompressed() {
    let (a, b, _redis) = replicas(Duration::from_secs(15)).await;
    let proxy = nginx([&a, &b], "60s").await;
    let mut headers = bearer(&a.token);
    headers.insert("accept-encoding", HeaderValue::from_static("gzip, deflate, br"));
    headers.insert("last-event-id", HeaderValue::from_static("0"));
    let response =
        a.client.get(format!("http://{}/documents/doc-1/progress", proxy.addr)).headers(headers).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers().get("content-encoding").is_none(), "never compressed");
    assert_eq!(response.headers()["content-type"], "text/event-stream");

    let mut reader = SseReader::new(response);
    let mut lags = Vec::new();
    while let Some(frame) = reader.next().await {
        if let Frame::Event { data, .. } = frame {
            let received = SystemTime::now();
            let update: serde_json::Value = serde_json::from_str(&data).unwrap();
            let emitted: prost_types::Timestamp = update["emittedAt"].as_str().unwrap().parse().unwrap();
            let emitted = SystemTime::try_from(emitted).unwrap();
            lags.push(received.duration_since(emitted).unwrap_or_default());
        }
    }
    assert_eq!(lags.len(), 10, "every event through the proxy");
    // The script spaces updates 600-700 ms apart: a buffering proxy would hold some of them back
    // for the length of several updates.
    assert!(lags.iter().all(|lag| *lag < Duration::from_millis(250)), "each event arrives as it is emitted: {lags:?}");
}

#[tokio::test]
async fn heartbeats_keep_a_silent_stream_open_past_the_proxy_read_timeout() {
    let (a, b, _redis) = replicas(Duration::from_millis(500)).await;
    let proxy = nginx([&a, &b], "2s").await;
    let response = a
        .client
        .get(format!("http://{}/documents/silent/progress", proxy.addr))
        .headers(bearer(&a.token))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut reader = SseReader::new(response);
    assert!(matches!(reader.next_event().await, Some(Frame::Event { .. })));
    let started = Instant::now();
    let mut heartbeats = 0;
    while started.elapsed() < Duration::from_secs(5) {
        match reader.next().await {
            Some(Frame::Comment(text)) if text == "keep-alive" => heartbeats += 1,
            Some(other) => panic!("unexpected {other:?}"),
            None => panic!("the proxy closed the stream after {:?}", started.elapsed()),
        }
    }
    assert!(heartbeats >= 8, "heartbeats flowed through the proxy: {heartbeats}");
}
