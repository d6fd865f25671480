//! Any service from a routes file (`serve --routes`): the CI build log of
//! `proto/ci/v1/builds.proto`, played by the simulator from `fixtures/builds/`, served end to
//! end through the generic path, from a descriptor file and from server reflection.

use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue};
use serde_json::json;
use sse_bff::{App, ServeConfig, Sim, sim::SimConfig};
use tokio_util::sync::CancellationToken;

use crate::helpers::{
    Binary, PATIENCE, SseReader, TestApp, bearer, events, fixture, free_addr, names, problem, temp_file,
};

/// The build-log route; `extra` adds or replaces keys of the route table.
fn build_route(upstream: &str, descriptors: &str, extra: &str) -> String {
    format!(
        r#"
[[upstream]]
name = "ci"
urls = ["{upstream}"]
descriptors = "{descriptors}"
health = "ci.v1.Builds"

[[route]]
path = "/projects/{{project}}/builds/{{build_number}}/log"
upstream = "ci"
method = "ci.v1.Builds/WatchBuild"
retention = "log"
replay = 100
event = {{ oneof = "kind" }}
data = {{ enums = "short-lowercase", int64 = "number" }}
params = {{ project = "^[a-z0-9.-]{{1,64}}$", build_number = "^[0-9]{{1,12}}$" }}
{extra}
"#
    )
}

fn descriptor_file() -> String {
    fixture("routes/builds.binpb").display().to_string()
}

/// A fresh project name, so that every test plays its own build (the simulator matches the
/// part before the first `.`).
fn fresh_project() -> String {
    format!("web.{}", uuid::Uuid::new_v4())
}

fn log_path(project: &str, build: u32) -> String {
    format!("/projects/{project}/builds/{build}/log")
}

fn from(last: u64, token: &str) -> HeaderMap {
    let mut headers = bearer(token);
    headers.insert("last-event-id", HeaderValue::from(last));
    headers
}

async fn spawn(extra: &'static str) -> TestApp {
    TestApp::builder().routes(move |sim| build_route(sim, &descriptor_file(), extra)).spawn().await
}

#[tokio::test]
async fn a_build_log_streams_end_to_end_from_a_descriptor_file() {
    let app = spawn(
        r#"id = "offset"
terminal = ["finished"]"#,
    )
    .await;
    let project = fresh_project();
    let frames = SseReader::new(app.get(&log_path(&project, 42), &from(0, &app.token)).await).read_to_end().await;
    let events = events(&frames);
    let ids: Vec<String> = events.iter().filter_map(|(id, _, _)| id.clone()).collect();
    assert_eq!(ids, (1..=14).map(|i| i.to_string()).collect::<Vec<_>>(), "the offsets are the ids");
    assert_eq!(events[0].1, "step_started", "the oneof case names the event");
    assert_eq!(events[0].2, json!({"step": "checkout", "index": 1}), "data is the case's message");
    assert_eq!(events[1].1, "log_line");
    assert_eq!(events[1].2, json!({"step": "checkout", "text": "Cloning into 'web'...", "stream": "stdout"}));
    assert_eq!(events.last().map(|e| e.1.as_str()), Some("finished"), "the terminal event ends it");
    assert_eq!(events.last().unwrap().2["result"], "succeeded");
    // The multi-line and hostile lines of the fixture arrive whole, one event each.
    assert!(events.iter().all(|(_, name, _)| ["step_started", "log_line", "finished"].contains(&name.as_str())));

    let again = app.get(&log_path(&project, 42), &from(14, &app.token)).await;
    assert_eq!(again.status(), 204, "a reconnect after the terminal event");
    let seen = app.sim.seen();
    assert_eq!(seen.len(), 1, "one upstream call");
    assert_eq!(seen[0].tenant_id.as_deref(), Some("acme"), "identity metadata reaches the upstream");
}

#[tokio::test]
async fn a_build_log_streams_with_descriptors_from_server_reflection_only() {
    let app = TestApp::builder()
        .routes(|sim| build_route(sim, "reflection", "id = \"offset\"\nterminal = [\"finished\"]"))
        .spawn()
        .await;
    let frames =
        SseReader::new(app.get(&log_path(&fresh_project(), 43), &from(0, &app.token)).await).read_to_end().await;
    let names = names(&frames);
    assert_eq!(names.first().map(String::as_str), Some("step_started"));
    assert_eq!(names.last().map(String::as_str), Some("finished"));
    assert_eq!(events(&frames).last().unwrap().2["result"], "failed");
}

#[tokio::test]
async fn a_resume_of_a_route_without_resume_field_is_served_from_the_bffs_log_with_one_call() {
    let app = spawn("id = \"offset\"\nterminal = [\"finished\"]").await;
    let path = log_path(&fresh_project(), 42);
    assert_eq!(events(&SseReader::new(app.get(&path, &from(0, &app.token)).await).read_to_end().await).len(), 14);
    let rest = events(&SseReader::new(app.get(&path, &from(9, &app.token)).await).read_to_end().await);
    let ids: Vec<_> = rest.iter().map(|(id, _, _)| id.clone().unwrap()).collect();
    assert_eq!(ids, ["10", "11", "12", "13", "14"], "every line after the resume point, from the log");
    assert_eq!(app.sim.calls(), 1, "the upstream, which cannot resume, was called once");
}

#[tokio::test]
async fn a_resume_point_older_than_the_log_of_a_route_without_resume_field_is_a_reset() {
    let app = TestApp::builder()
        .routes(|sim| {
            let extra = "id = \"offset\"\nterminal = [\"finished\"]";
            build_route(sim, &descriptor_file(), extra).replace("replay = 100", "replay = 3")
        })
        .spawn()
        .await;
    let path = log_path(&fresh_project(), 42);
    SseReader::new(app.get(&path, &from(0, &app.token)).await).read_to_end().await;
    let frames = SseReader::new(app.get(&path, &from(2, &app.token)).await).read_to_end().await;
    assert_eq!(names(&frames).first().map(String::as_str), Some("reset"), "events 3 to 11 are gone: {frames:?}");
    assert_eq!(events(&frames).last().unwrap().0.as_deref(), Some("14"), "then the current state, to the end");
    assert_eq!(app.sim.calls(), 1, "no upstream call for a point it could not resume from");
}

#[tokio::test]
async fn a_route_without_id_is_numbered_by_the_bff_and_one_without_terminal_ends_with_end() {
    // No `id`, no `terminal`: the stream ends when the upstream ends with OK.
    let app = spawn("").await;
    let path = log_path(&fresh_project(), 42);
    let frames = SseReader::new(app.get(&path, &from(0, &app.token)).await).read_to_end().await;
    let events = events(&frames);
    let ids: Vec<String> = events.iter().filter_map(|(id, _, _)| id.clone()).collect();
    assert_eq!(ids, (1..=15).map(|i| i.to_string()).collect::<Vec<_>>(), "1, 2, 3 by the BFF, and the end");
    assert_eq!(events[13].1, "finished", "finished is an ordinary event here");
    assert_eq!((events[14].1.as_str(), &events[14].2), ("end", &json!({})), "then event: end with {{}}");
    assert_eq!(app.get(&path, &from(15, &app.token)).await.status(), 204, "after the end: 204");
}

#[tokio::test]
async fn a_bad_path_parameter_is_a_400_naming_it_without_an_upstream_call() {
    let app = spawn("id = \"offset\"\nterminal = [\"finished\"]").await;
    for (path, code) in [
        ("/projects/Web/builds/42/log", "invalid_project"),
        ("/projects/web/builds/4x2/log", "invalid_build_number"),
        ("/projects/web/builds/1234567890123/log", "invalid_build_number"),
        ("/projects/web/builds//log", "invalid_build_number"),
    ] {
        let body = problem(app.get(path, &bearer(&app.token)).await, 400).await;
        assert_eq!(body["code"], code, "{path}");
    }
    assert_eq!(app.sim.calls(), 0, "bad requests never reach the upstream");
    let other_tenant = crate::helpers::token("mallory", "evil");
    assert_eq!(app.get(&log_path("web", 42), &bearer(&other_tenant)).await.status(), 403, "the upstream decides");
}

/// Builds the BFF with `routes` (TOML) and returns the error it refuses to start with.
async fn refused(routes: String) -> String {
    let mut config = ServeConfig::with_upstream("http://127.0.0.1:1");
    config.routes = Some(temp_file("routes.toml", &routes));
    match App::build(config, CancellationToken::new()).await {
        Ok(_) => panic!("started with a bad routes file:\n{routes}"),
        Err(error) => error.to_string(),
    }
}

#[tokio::test]
async fn a_routes_file_with_a_wrong_method_or_field_refuses_to_start_naming_route_and_key() {
    let file = descriptor_file();
    let route = "route /projects/{project}/builds/{build_number}/log";
    let cases = [
        (build_route("http://127.0.0.1:1", &file, "").replace("WatchBuild", "WatchBuilds"), "method"),
        (build_route("http://127.0.0.1:1", &file, "").replace("WatchBuild\"", "GetBuild\""), "method"),
        (build_route("http://127.0.0.1:1", &file, "id = \"ofset\""), "id"),
        (build_route("http://127.0.0.1:1", &file, "resume = \"resume_after\""), "resume"),
        (build_route("http://127.0.0.1:1", &file, "id = \"at\""), "id"),
    ];
    for (routes, key) in cases {
        let error = refused(routes).await;
        assert!(error.contains(&format!("{route}: {key}:")), "names the route and {key}: {error}");
    }
    let misspelt = refused(build_route("http://127.0.0.1:1", &file, "").replace("retention", "retension")).await;
    assert!(misspelt.contains("retension"), "a misspelt key is named: {misspelt}");
}

#[tokio::test]
async fn routes_of_an_upstream_down_at_start_answer_503_until_its_reflection_answers() {
    let sim_addr = free_addr();
    let mut config = ServeConfig::with_upstream("http://127.0.0.1:1");
    config.auth.insecure_no_auth = true;
    let upstream = format!("http://{sim_addr}");
    config.routes = Some(temp_file(
        "routes.toml",
        &build_route(&upstream, "reflection", "id = \"offset\"\nterminal = [\"finished\"]"),
    ));
    config.reflection_timeout = Duration::from_millis(300);
    let shutdown = CancellationToken::new();
    let _stop = shutdown.clone().drop_guard();
    let app = App::build(config, shutdown.clone()).await.expect("starts although the upstream is down");
    let addr = app.local_addr();
    tokio::spawn(app.run());
    let client = reqwest::Client::new();
    let url = format!("http://{addr}{}", log_path("web", 42));
    let down = client.get(&url).send().await.unwrap();
    assert!(down.headers().contains_key("retry-after"), "503 with Retry-After");
    let body = problem(down, 503).await;
    assert!(body["detail"].as_str().unwrap().contains("not available yet"), "{body}");
    let bad = client.get(format!("http://{addr}/projects/Web/builds/42/log")).send().await.unwrap();
    assert_eq!(problem(bad, 400).await["code"], "invalid_project", "the file's rules apply while waiting");
    let ready = problem(client.get(format!("http://{addr}/readyz")).send().await.unwrap(), 503).await;
    assert!(ready["detail"].as_str().unwrap().contains("not available yet"), "not ready while routes wait: {ready}");

    let mut sim_config = SimConfig::new(vec![fixture("jobs")], 20.0);
    sim_config.listen = sim_addr;
    let sim = Sim::build(sim_config).await.expect("sim builds");
    let sim_stop = CancellationToken::new();
    let _sim_stop = sim_stop.clone().drop_guard();
    tokio::spawn(sim.run(sim_stop));
    let served = async {
        loop {
            let response = client.get(&url).header("last-event-id", "0").send().await.unwrap();
            if response.status() == 200 {
                return SseReader::new(response).read_to_end().await;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let frames = tokio::time::timeout(PATIENCE * 2, served).await.expect("served once reflection answers");
    assert_eq!(names(&frames).last().map(String::as_str), Some("finished"));
}

#[tokio::test]
async fn an_upstream_that_starts_over_and_fails_again_ends_the_stream_within_the_retry_budget() {
    // Build 44 loses its agent (UNAVAILABLE) after three events, every time: a call made again
    // replays the same three events, which must not renew the retry budget.
    let app = TestApp::builder()
        .configure(|c| c.hub.retry_budget = Duration::from_secs(1))
        .routes(|sim| build_route(sim, &descriptor_file(), "id = \"offset\"\nterminal = [\"finished\"]"))
        .spawn()
        .await;
    let frames =
        SseReader::new(app.get(&log_path(&fresh_project(), 44), &from(0, &app.token)).await).read_to_end().await;
    let events = events(&frames);
    let ids: Vec<_> = events.iter().filter_map(|(id, _, _)| id.clone()).collect();
    assert_eq!(ids, ["1", "2", "3"], "each event once, however often the upstream replays them");
    let (_, name, error) = events.last().unwrap();
    assert_eq!((name.as_str(), &error["code"]), ("error", &json!("unavailable")), "then the error: {frames:?}");
    assert!(app.sim.calls() < 10, "a bounded number of calls within the budget: {}", app.sim.calls());
}

/// Scripts for the simulator in a folder of their own: a build whose offsets have gaps.
fn gappy_scripts() -> std::path::PathBuf {
    let messages: Vec<String> = [10, 20, 30, 40, 50]
        .iter()
        .map(|offset| {
            let case = if *offset == 50 {
                r#""finished": {"result": "BUILD_RESULT_SUCCEEDED", "durationMs": "50"}"#.to_owned()
            } else {
                format!(r#""logLine": {{"step": "build", "text": "line {offset}"}}"#)
            };
            format!(r#"{{"after_ms": 30, "message": {{"offset": "{offset}", {case}}}}}"#)
        })
        .collect();
    let script = format!(
        r#"{{"method": "ci.v1.Builds/WatchBuild", "request": {{"project": "gappy", "buildNumber": "7"}}, "messages": [{}]}}"#,
        messages.join(",")
    );
    temp_file("gappy.json", &script).parent().unwrap().to_owned()
}

#[tokio::test]
async fn ids_with_gaps_resume_from_the_log_without_loss() {
    let app = TestApp::builder()
        .configure_sim(|s| {
            s.descriptor_sets = vec![fixture("routes/builds.binpb")];
            s.scripts = vec![gappy_scripts()];
        })
        .routes(|sim| build_route(sim, &descriptor_file(), "id = \"offset\"\nterminal = [\"finished\"]"))
        .spawn()
        .await;
    let path = log_path(&format!("gappy.{}", uuid::Uuid::new_v4()), 7);
    let all = events(&SseReader::new(app.get(&path, &from(0, &app.token)).await).read_to_end().await);
    let ids: Vec<_> = all.iter().filter_map(|(id, _, _)| id.clone()).collect();
    assert_eq!(ids, ["10", "20", "30", "40", "50"]);
    let rest = SseReader::new(app.get(&path, &from(20, &app.token)).await).read_to_end().await;
    assert_eq!(names(&rest), ["log_line", "log_line", "finished"], "30, 40 and 50 from the log, no reset: {rest:?}");
    let again = events(&SseReader::new(app.get(&path, &from(0, &app.token)).await).read_to_end().await);
    assert_eq!(again.len(), 5, "from the first event again, all from the log");
    assert_eq!(app.sim.calls(), 1);
}

#[tokio::test]
async fn a_resume_point_ahead_of_a_live_call_waits_for_what_comes_after_it() {
    let app = spawn("id = \"offset\"\nterminal = [\"finished\"]").await;
    let path = log_path(&fresh_project(), 42);
    // The call starts now, at offset 1; a viewer that had 12 (from a BFF that went away) waits
    // for 13 instead of getting a reset and everything again.
    let frames = SseReader::new(app.get(&path, &from(12, &app.token)).await).read_to_end().await;
    let ids: Vec<_> = events(&frames).into_iter().filter_map(|(id, _, _)| id).collect();
    assert_eq!(ids, ["13", "14"], "{frames:?}");
    assert!(!names(&frames).contains(&"reset".to_owned()));
}

#[tokio::test]
async fn an_integer_parameter_that_does_not_fit_its_field_is_a_400_without_an_upstream_call() {
    let app = TestApp::builder()
        .routes(|sim| {
            build_route(sim, &descriptor_file(), "id = \"offset\"")
                .replace(r#"build_number = "^[0-9]{1,12}$""#, r#"build_number = "^[0-9]{1,40}$""#)
        })
        .spawn()
        .await;
    let body = problem(
        app.get(&log_path("web", 0).replace("/0/", &format!("/{}/", "9".repeat(30))), &bearer(&app.token)).await,
        400,
    )
    .await;
    assert_eq!(body["code"], "invalid_build_number");
    assert_eq!(app.sim.calls(), 0);
}

/// The build-log descriptor set, with a field `level` added to `LogLine` when `with_level`
/// (a redeployed upstream), written to a folder with one script for project `redeploy`.
fn redeploy_upstream(with_level: bool) -> (std::path::PathBuf, std::path::PathBuf) {
    use prost::Message as _;
    let mut set =
        prost_types::FileDescriptorSet::decode(std::fs::read(fixture("routes/builds.binpb")).unwrap().as_slice())
            .unwrap();
    if with_level {
        let file = set.file.iter_mut().find(|f| f.package() == "ci.v1").unwrap();
        let line = file.message_type.iter_mut().find(|m| m.name() == "LogLine").unwrap();
        line.field.push(prost_types::FieldDescriptorProto {
            name: Some("level".into()),
            number: Some(9),
            label: Some(prost_types::field_descriptor_proto::Label::Optional as i32),
            r#type: Some(prost_types::field_descriptor_proto::Type::String as i32),
            json_name: Some("level".into()),
            ..Default::default()
        });
    }
    let descriptors = temp_file("builds.binpb", "");
    std::fs::write(&descriptors, set.encode_to_vec()).unwrap();
    let level = if with_level { r#", "level": "warn""# } else { "" };
    let messages: Vec<String> = (1..=8)
        .map(|offset| {
            format!(r#"{{"after_ms": 150, "message": {{"offset": "{offset}", "logLine": {{"step": "build", "text": "line {offset}"{level}}}}}}}"#)
        })
        .collect();
    let script = format!(
        r#"{{"method": "ci.v1.Builds/WatchBuild", "request": {{"project": "redeploy"}}, "messages": [{}]}}"#,
        messages.join(",")
    );
    (descriptors, temp_file("redeploy.json", &script).parent().unwrap().to_owned())
}

/// The upstream as a process of its own, so that killing it breaks its connections.
async fn start_sim(addr: std::net::SocketAddr, with_level: bool) -> Binary {
    let (descriptors, scripts) = redeploy_upstream(with_level);
    let (listen, descriptors, scripts) =
        (addr.to_string(), descriptors.display().to_string(), scripts.display().to_string());
    let args = ["upstream-sim", "--listen", &listen, "--descriptor-set", &descriptors, "--scripts", &scripts];
    Binary::start(&args, &[]).await
}

#[tokio::test]
async fn reflection_is_asked_again_after_the_connection_to_a_redeployed_upstream_broke() {
    let sim_addr = free_addr();
    let first = start_sim(sim_addr, false).await;
    let mut config = ServeConfig::with_upstream("http://127.0.0.1:1");
    config.auth.insecure_no_auth = true;
    let upstream = format!("http://{sim_addr}");
    let routes = build_route(&upstream, "reflection", "id = \"offset\"");
    config.routes = Some(temp_file("routes.toml", &routes));
    let shutdown = CancellationToken::new();
    let _stop = shutdown.clone().drop_guard();
    let app = App::build(config, shutdown.clone()).await.expect("app builds");
    let addr = app.local_addr();
    tokio::spawn(app.run());
    let url = format!("http://{addr}{}", log_path("redeploy", 5));
    let response = reqwest::Client::new().get(&url).header("last-event-id", "0").send().await.unwrap();
    let mut reader = SseReader::new(response);
    let before = reader.next_event().await.expect("a first line");
    assert!(!format!("{before:?}").contains("level"), "the first upstream has no level: {before:?}");

    // The upstream goes away mid-stream (its connections break) and comes back with a new field.
    first.kill().await;
    let second = start_sim(sim_addr, true).await;
    let mut rest = Vec::new();
    while let Some(frame) = reader.next_event().await {
        rest.push(frame);
        if rest.len() == 7 {
            break;
        }
    }
    let rest = events(&rest);
    let ids: Vec<_> = rest.iter().filter_map(|(id, _, _)| id.clone()).collect();
    assert_eq!(ids, ["2", "3", "4", "5", "6", "7", "8"], "nothing lost or repeated across the redeploy");
    assert_eq!(rest.last().unwrap().2["level"], "warn", "the new field, from descriptors asked for again: {rest:?}");
    drop(second);
}
