//! `sse-bff routes check FILE` on the real binary: a good file prints its routes, a bad one
//! exits 1 listing every problem, and `descriptors = "reflection"` asks the real simulator.

use std::path::PathBuf;

use sse_bff::pb;

use crate::helpers::TestApp;

/// A fresh folder holding `routes.toml` (with `routes`) and the two example descriptor sets.
fn routes_dir(routes: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sse-bff-routes-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("docproc.binpb"), pb::FILE_DESCRIPTOR_SET).unwrap();
    std::fs::write(dir.join("builds.binpb"), pb::BUILDS_FILE_DESCRIPTOR_SET).unwrap();
    std::fs::write(dir.join("routes.toml"), routes).unwrap();
    dir
}

/// Runs `routes check` on the folder's routes file: exit code, stdout, stderr.
async fn check(dir: &std::path::Path) -> (Option<i32>, String, String) {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_sse-bff"))
        .args(["routes", "check"])
        .arg(dir.join("routes.toml"))
        .args(["--reflection-timeout", "3s"])
        .output()
        .await
        .expect("binary runs");
    let _ = std::fs::remove_dir_all(dir);
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    (output.status.code(), text(&output.stdout), text(&output.stderr))
}

fn example() -> String {
    std::fs::read_to_string(crate::helpers::fixture("routes.example.toml")).unwrap()
}

#[tokio::test]
async fn a_good_file_prints_each_route_with_its_fields_and_events() {
    let routes =
        example().replace("\"reflection\"", "\"docproc.binpb\"").replace("routes/builds.binpb", "builds.binpb");
    let (code, out, err) = check(&routes_dir(&routes)).await;
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("2 upstream(s), 2 route(s), no problems"), "{out}");
    assert!(out.contains("GET /documents/{document_id}/progress"), "{out}");
    assert!(out.contains("method     docproc.v1.DocumentProcessor/ProcessDocument (server-streaming)"), "{out}");
    assert!(out.contains("document_id    from the path {document_id}, matching ^[A-Za-z0-9._-]{1,128}$"), "{out}");
    assert!(out.contains("resume_after   from the resume point"), "{out}");
    assert!(out.contains("events     completed, failed, progress (by enum field status)"), "{out}");
    assert!(out.contains("GET /projects/{project}/builds/{build_number}/log"), "{out}");
    assert!(out.contains("events     finished, log_line, step_started (by oneof kind"), "{out}");
    assert!(out.contains("terminal   finished"), "{out}");
}

#[tokio::test]
async fn a_bad_file_exits_1_listing_every_problem() {
    let routes = example()
        .replace("\"reflection\"", "\"docproc.binpb\"")
        .replace("routes/builds.binpb", "builds.binpb")
        .replace("/ProcessDocument\"", "/ProcessDocuments\"")
        .replace("id = \"offset\"", "id = \"at\"")
        .replace("terminal = [\"finished\"]", "terminal = [\"done\"]")
        .replace("^[0-9]{1,12}$", "[0-9");
    let (code, out, err) = check(&routes_dir(&routes)).await;
    assert_eq!(code, Some(1), "{out}");
    assert!(out.is_empty(), "{out}");
    assert!(err.contains("4 problem(s)"), "{err}");
    assert!(err.contains("route /documents/{document_id}/progress: method: docproc.v1.DocumentProcessor has no method ProcessDocuments"), "{err}");
    let build = "route /projects/{project}/builds/{build_number}/log";
    assert!(
        err.contains(&format!("{build}: id: at is a google.protobuf.Timestamp: it must be an integer field")),
        "{err}"
    );
    assert!(err.contains(&format!("{build}: terminal: no event is named \"done\"")), "{err}");
    assert!(
        err.contains(&format!("{build}: params.build_number: \"[0-9\" is not a valid regular expression")),
        "{err}"
    );
}

#[tokio::test]
async fn a_misspelt_key_is_named_with_its_line() {
    let routes = example().replace("retention = \"log\"", "retension = \"log\"");
    let (code, _, err) = check(&routes_dir(&routes)).await;
    assert_eq!(code, Some(1));
    assert!(err.contains("unknown field `retension`"), "{err}");
    assert!(err.contains("line 32"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn reflection_asks_the_running_upstream() {
    let app = TestApp::spawn().await;
    let document = example().split("[[route]]").nth(1).unwrap().to_owned();
    let upstream = format!(
        "[[upstream]]\nname = \"docproc\"\nurls = [\"http://{}\"]\ndescriptors = \"reflection\"\n",
        app.sim_addr
    );
    let (code, out, err) = check(&routes_dir(&format!("{upstream}[[route]]{document}"))).await;
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains(&format!("docproc (http://{}; descriptors: server reflection)", app.sim_addr)), "{out}");
    assert!(out.contains("events     completed, failed, progress"), "{out}");

    // A service the upstream does not serve is named; so is an upstream that does not answer.
    let other = document.replace("docproc.v1.DocumentProcessor/", "docproc.v2.DocumentProcessor/");
    let (code, _, err) = check(&routes_dir(&format!("{upstream}[[route]]{other}"))).await;
    assert_eq!(code, Some(1));
    assert!(err.contains("method: no service docproc.v2.DocumentProcessor in the upstream's descriptors"), "{err}");
    let down = upstream.replace(&app.sim_addr.to_string(), &crate::helpers::free_addr().to_string());
    let (code, _, err) = check(&routes_dir(&format!("{down}[[route]]{document}"))).await;
    assert_eq!(code, Some(1));
    assert!(err.contains("upstream docproc: descriptors: reflection at http://"), "{err}");
    assert!(err.contains("cannot connect"), "{err}");
}

#[tokio::test]
async fn reflection_falls_back_to_v1alpha() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .unwrap();
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let server = tokio::spawn(tonic::transport::Server::builder().add_service(v1alpha).serve_with_incoming(incoming));
    let services = ["docproc.v1.DocumentProcessor".to_owned()].into();
    let timeout = std::time::Duration::from_secs(3);
    let pool = sse_bff::routes::fetch_reflection(&format!("http://{addr}"), &services, timeout).await.unwrap();
    let service = pool.get_service_by_name("docproc.v1.DocumentProcessor").expect("the service was fetched");
    let method = service.methods().find(|m| m.name() == "ProcessDocument").unwrap();
    // The Timestamp import came along, so the message resolves completely.
    assert!(method.output().get_field_by_name("emitted_at").is_some());
    server.abort();
}
