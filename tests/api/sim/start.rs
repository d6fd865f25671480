//! What the simulator serves once started: health and reflection for every service, services
//! from a descriptor set of one's own, and scripts refused at start with the file named.

use std::path::{Path, PathBuf};

use sse_bff::{Sim, pb, sim::SimConfig};
use tonic::{Code, transport::Channel};
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};

use super::{start, watch};

/// A fresh folder with the given files.
fn folder(files: &[(&str, &[u8])]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sse-bff-sim-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    for (name, bytes) in files {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
    dir
}

/// Why the simulator refuses to start with these script files (and the built-in descriptors).
async fn refused(files: &[(&str, &[u8])]) -> (PathBuf, String) {
    let dir = folder(files);
    let mut config = SimConfig::new(Vec::new(), 20.0);
    config.scripts = vec![dir.clone()];
    let error = Sim::build(config).await.expect_err("refused at start").to_string();
    (dir, error)
}

fn grpcurl(args: &[&str]) -> std::process::Output {
    let program = std::env::var("GRPCURL").unwrap_or_else(|_| "grpcurl".to_owned());
    std::process::Command::new(&program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program} (install it as scripts/test-deps does): {e}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn health_and_reflection_cover_every_served_service() {
    let sim = start(|_| {}).await;
    let channel = Channel::from_shared(format!("http://{}", sim.addr)).unwrap().connect().await.unwrap();
    let mut health = HealthClient::new(channel);
    for service in ["", "ci.v1.Builds", "docproc.v1.DocumentProcessor"] {
        let request = HealthCheckRequest { service: service.to_owned() };
        let status = health.check(request).await.unwrap().into_inner().status;
        assert_eq!(status, ServingStatus::Serving as i32, "{service:?}");
    }
    let addr = sim.addr.to_string();
    let (list, call) = tokio::task::spawn_blocking(move || {
        let body = r#"{"project": "web", "build_number": 43}"#;
        let call = ["-plaintext", "-H", "x-tenant-id: acme", "-d", body, &addr, "ci.v1.Builds/WatchBuild"];
        (grpcurl(&["-plaintext", &addr, "list"]), grpcurl(&call))
    })
    .await
    .unwrap();
    let list = String::from_utf8_lossy(&list.stdout).into_owned();
    assert!(list.lines().any(|l| l == "ci.v1.Builds"), "{list}");
    assert!(list.lines().any(|l| l == "docproc.v1.DocumentProcessor"), "{list}");
    assert!(call.status.success(), "{}", String::from_utf8_lossy(&call.stderr));
    let call = String::from_utf8_lossy(&call.stdout);
    assert_eq!(call.matches("\"offset\"").count(), 7, "{call}");
    assert!(call.contains("BUILD_RESULT_FAILED"), "{call}");
}

#[tokio::test]
async fn a_descriptor_set_of_ones_own_is_served_but_never_replaces_the_document_processor() {
    let script = br#"{"method": "/ci.v1.Builds/WatchBuild", "request": {"buildNumber": "7"},
        "messages": [{"message": {"offset": "1", "finished": {"result": "BUILD_RESULT_SUCCEEDED"}}}]}"#;
    let dir = folder(&[("builds.binpb", pb::BUILDS_FILE_DESCRIPTOR_SET), ("docproc.binpb", pb::FILE_DESCRIPTOR_SET)]);
    let scripts = folder(&[("seven.json", script)]);
    let sets = vec![dir.join("builds.binpb"), dir.join("docproc.binpb")];
    let sim = start(|config| {
        config.descriptor_sets = sets;
        config.scripts = vec![scripts.clone()];
    })
    .await;
    let (events, end) = watch(sim.addr, "any-project", 7, Some("any-tenant")).await;
    end.unwrap();
    assert_eq!(events.len(), 1);
    let (_, end) = watch(sim.addr, "web", 42, None).await;
    assert_eq!(end.unwrap_err().code(), Code::NotFound, "the built-in build scripts are not played");
    let (list, call) = tokio::task::spawn_blocking({
        let addr = sim.addr.to_string();
        move || {
            let call = [
                "-plaintext",
                "-d",
                r#"{"document_id": "doc-1"}"#,
                &addr,
                "docproc.v1.DocumentProcessor/ProcessDocument",
            ];
            (grpcurl(&["-plaintext", &addr, "list"]), grpcurl(&call))
        }
    })
    .await
    .unwrap();
    let list = String::from_utf8_lossy(&list.stdout).into_owned();
    assert!(list.lines().any(|l| l == "ci.v1.Builds"), "{list}");
    let call = String::from_utf8_lossy(&call.stdout);
    assert_eq!(call.matches("\"sequence\"").count(), 10, "the built-in job plays: {call}");
    for dir in [dir, scripts] {
        let _ = std::fs::remove_dir_all(dir);
    }
}

#[tokio::test]
async fn bad_scripts_and_descriptor_sets_are_refused_at_start_naming_the_file() {
    let cases: [(&str, &[u8], &str); 5] = [
        ("unknown.json", br#"{"method": "ci.v1.Builds/Nope"}"#, "is not in the descriptor set"),
        ("unary.json", br#"{"method": "ci.v1.Builds/GetBuild"}"#, "is not server-streaming"),
        ("builtin.json", br#"{"method": "docproc.v1.DocumentProcessor/ProcessDocument"}"#, "built-in"),
        (
            "misspelt.json",
            br#"{"method": "ci.v1.Builds/WatchBuild", "messages": [{"message": {"ofset": "1"}}]}"#,
            "messages[0] is not a valid ci.v1.BuildEvent",
        ),
        ("request.json", br#"{"method": "ci.v1.Builds/WatchBuild", "request": {"buildNumber": "x"}}"#, "request"),
    ];
    for (name, text, reason) in cases {
        let (dir, error) = refused(&[(name, text)]).await;
        let file = dir.join(name).display().to_string();
        assert!(error.contains(&file) && error.contains(reason), "{name}: {error}");
        let _ = std::fs::remove_dir_all(dir);
    }
    let (dir, error) = refused(&[
        ("a.json", br#"{"method": "ci.v1.Builds/WatchBuild", "request": {"project": "x"}}"#),
        ("b.json", br#"{"method": "ci.v1.Builds/WatchBuild", "request": {"project": "x"}}"#),
    ])
    .await;
    assert!(error.contains("b.json") && error.contains("a.json"), "{error}");
    let _ = std::fs::remove_dir_all(dir);
    let not_a_set = folder(&[("garbage.binpb", b"\xff\xff not a descriptor set")]);
    let mut config = SimConfig::new(Vec::new(), 20.0);
    config.descriptor_sets = vec![not_a_set.join("garbage.binpb")];
    let error = Sim::build(config).await.expect_err("refused at start").to_string();
    assert!(error.contains(&not_a_set.join("garbage.binpb").display().to_string()), "{error}");
    let _ = std::fs::remove_dir_all(not_a_set);
    let missing = Path::new("/nonexistent/sse-bff/set.binpb");
    let mut config = SimConfig::new(Vec::new(), 20.0);
    config.descriptor_sets = vec![missing.to_path_buf()];
    let error = Sim::build(config).await.expect_err("refused at start").to_string();
    assert!(error.contains("/nonexistent/sse-bff/set.binpb"), "{error}");
}
