//! The simulator playing a service from its descriptors and JSON scripts (the CI build-log
//! example), through a real tonic client with a DynamicMessage codec and through grpcurl.

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use http::uri::PathAndQuery;
use prost_reflect::{DescriptorPool, DynamicMessage, MethodDescriptor, ReflectMessage as _};
use serde_json::json;
use sse_bff::{
    Sim, pb,
    sim::{SimConfig, SimStats, dynamic::DynamicCodec},
};
use tokio_util::sync::CancellationToken;
use tonic::{Code, Status, transport::Channel};

use crate::helpers::fresh;

mod start;

/// A simulator with the built-in scripts, running until the returned token is dropped.
struct RunningSim {
    addr: SocketAddr,
    stats: Arc<SimStats>,
    _shutdown: tokio_util::sync::DropGuard,
}

async fn start(change: impl FnOnce(&mut SimConfig)) -> RunningSim {
    let mut config = SimConfig::new(Vec::new(), 20.0);
    change(&mut config);
    let sim = Sim::build(config).await.expect("sim builds");
    let (addr, stats, shutdown) = (sim.local_addr(), sim.stats(), CancellationToken::new());
    tokio::spawn(sim.run(shutdown.clone()));
    RunningSim { addr, stats, _shutdown: shutdown.drop_guard() }
}

fn watch_build() -> MethodDescriptor {
    let pool = DescriptorPool::decode(pb::BUILDS_FILE_DESCRIPTOR_SET).unwrap();
    let service = pool.get_service_by_name("ci.v1.Builds").unwrap();
    service.methods().find(|m| m.name() == "WatchBuild").unwrap()
}

/// Calls `ci.v1.Builds/WatchBuild` and reads to the end: the messages, then how the call ended.
async fn watch(
    addr: SocketAddr,
    project: &str,
    build: u64,
    tenant: Option<&str>,
) -> (Vec<DynamicMessage>, Result<(), Status>) {
    let method = watch_build();
    let body = json!({"project": project, "buildNumber": build.to_string()});
    let mut request = tonic::Request::new(DynamicMessage::deserialize(method.input(), body).unwrap());
    if let Some(tenant) = tenant {
        request.metadata_mut().insert("x-tenant-id", tenant.parse().unwrap());
    }
    let channel = Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let path = PathAndQuery::from_static("/ci.v1.Builds/WatchBuild");
    let mut stream = match grpc.server_streaming(request, path, DynamicCodec::new(method.output())).await {
        Ok(response) => response.into_inner(),
        Err(status) => return (Vec::new(), Err(status)),
    };
    let mut messages = Vec::new();
    loop {
        match stream.message().await {
            Ok(Some(message)) => messages.push(message),
            Ok(None) => return (messages, Ok(())),
            Err(status) => return (messages, Err(status)),
        }
    }
}

/// The name of the `kind` case a build event carries.
fn case(event: &DynamicMessage) -> String {
    let kind = event.descriptor().oneofs().find(|o| o.name() == "kind").unwrap();
    let set: Vec<_> = kind.fields().filter(|f| event.has_field(f)).map(|f| f.name().to_owned()).collect();
    assert_eq!(set.len(), 1, "exactly one case set: {event:?}");
    set.into_iter().next().unwrap()
}

fn json(events: &[DynamicMessage]) -> Vec<serde_json::Value> {
    events.iter().map(|event| serde_json::to_value(event).unwrap()).collect()
}

fn script(name: &str) -> serde_json::Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/builds").join(name);
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[tokio::test]
async fn a_build_streams_its_scripted_events_in_order_for_a_fresh_id() {
    let sim = start(|_| {}).await;
    let project = fresh("web");
    let (events, end) = watch(sim.addr, &project, 42, Some("acme")).await;
    end.unwrap();
    let scripted = script("web-42-passed.json");
    let scripted = scripted["messages"].as_array().unwrap();
    let scripted: Vec<_> = scripted.iter().map(|step| step["message"].clone()).collect();
    assert_eq!(json(&events), scripted, "played as scripted");
    let offsets: Vec<_> = events.iter().map(|e| e.get_field_by_name("offset").unwrap().as_u64().unwrap()).collect();
    assert_eq!(offsets, (1..=14).collect::<Vec<_>>());
    let cases: Vec<_> = events.iter().map(case).collect();
    assert_eq!(cases[0], "step_started");
    assert_eq!(cases.iter().filter(|c| *c == "log_line").count(), 10, "{cases:?}");
    assert_eq!(cases.last().map(String::as_str), Some("finished"));
    let hostile = serde_json::to_value(&events[9]).unwrap();
    assert!(hostile["logLine"]["text"].as_str().unwrap().starts_with("event: finished\ndata: "), "{hostile}");
    let seen = sim.stats.seen();
    assert_eq!(seen.len(), 1, "one upstream call");
    assert_eq!(seen[0].method, "ci.v1.Builds/WatchBuild");
    assert_eq!(seen[0].request, json!({"project": project, "buildNumber": "42"}));
    assert_eq!(seen[0].tenant_id.as_deref(), Some("acme"));
}

#[tokio::test]
async fn a_failed_build_finishes_failed_and_a_lost_agent_ends_unavailable_midway() {
    let sim = start(|_| {}).await;
    let (failed, end) = watch(sim.addr, "web", 43, Some("acme")).await;
    end.unwrap();
    let last = serde_json::to_value(failed.last().unwrap()).unwrap();
    assert_eq!(last["finished"]["result"], "BUILD_RESULT_FAILED", "{last}");
    let (lost, end) = watch(sim.addr, "web", 44, None).await;
    assert_eq!(lost.len(), 3, "the events before the agent was lost");
    let status = end.unwrap_err();
    assert_eq!((status.code(), status.message()), (Code::Unavailable, "build agent lost"));
    // Every call plays from the first event: there is no shared job and no resume.
    let (again, _) = watch(sim.addr, "web", 44, None).await;
    assert_eq!(json(&again), json(&lost));
    assert!(sim.stats.wait_until(Duration::from_secs(5), |s| s.calls() == 3 && s.active() == 0).await);
}

#[tokio::test]
async fn another_tenant_is_denied_and_an_unknown_build_is_not_found() {
    let sim = start(|_| {}).await;
    let (events, end) = watch(sim.addr, "web", 42, Some("globex")).await;
    assert!(events.is_empty());
    assert_eq!(end.unwrap_err().code(), Code::PermissionDenied);
    let (events, end) = watch(sim.addr, "web", 4242, Some("acme")).await;
    assert!(events.is_empty());
    assert_eq!(end.unwrap_err().code(), Code::NotFound);
    let (_, end) = watch(sim.addr, "api", 42, Some("acme")).await;
    assert_eq!(end.unwrap_err().code(), Code::NotFound, "every scripted field must match");
    assert_eq!(sim.stats.calls(), 3, "rejected calls are counted too");
}

#[tokio::test]
async fn a_client_that_leaves_is_counted_as_cancelled() {
    let sim = start(|config| config.speed = 0.5).await;
    let method = watch_build();
    let body = json!({"project": fresh("web"), "buildNumber": "42"});
    let request = tonic::Request::new(DynamicMessage::deserialize(method.input(), body).unwrap());
    let channel = Channel::from_shared(format!("http://{}", sim.addr)).unwrap().connect().await.unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let path = PathAndQuery::from_static("/ci.v1.Builds/WatchBuild");
    let response = grpc.server_streaming(request, path, DynamicCodec::new(method.output())).await.unwrap();
    let mut stream = response.into_inner();
    assert!(stream.message().await.unwrap().is_some());
    drop(stream);
    assert!(sim.stats.wait_until(Duration::from_secs(5), |s| s.cancelled() == 1 && s.active() == 0).await);
}
