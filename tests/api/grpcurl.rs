//! The simulator through grpcurl, using only server reflection (no proto files). Runs the binary
//! named by `GRPCURL` or found on PATH; `scripts/test-deps` installs it.

use std::process::Command;

use crate::helpers::TestApp;

fn grpcurl(args: &[&str]) -> String {
    let program = std::env::var("GRPCURL").unwrap_or_else(|_| "grpcurl".to_owned());
    let output = Command::new(&program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program} (install it as scripts/test-deps does): {e}"));
    assert!(output.status.success(), "grpcurl {args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn grpcurl_lists_describes_and_calls_the_simulator() {
    let app = TestApp::spawn().await;
    let addr = app.sim_addr.to_string();
    let (list, describe, call, health) = tokio::task::spawn_blocking({
        move || {
            let addr = addr.as_str();
            (
                grpcurl(&["-plaintext", addr, "list"]),
                grpcurl(&["-plaintext", addr, "describe", "docproc.v1.ProcessingUpdate"]),
                grpcurl(&[
                    "-plaintext",
                    "-d",
                    r#"{"document_id":"doc-1"}"#,
                    addr,
                    "docproc.v1.DocumentProcessor/ProcessDocument",
                ]),
                grpcurl(&["-plaintext", addr, "grpc.health.v1.Health/Check"]),
            )
        }
    })
    .await
    .unwrap();
    assert!(list.lines().any(|l| l == "docproc.v1.DocumentProcessor"), "{list}");
    assert!(list.lines().any(|l| l == "grpc.health.v1.Health"), "{list}");
    assert!(describe.contains("progress_percent"), "{describe}");
    assert!(describe.contains("google.protobuf.Timestamp"), "{describe}");
    assert_eq!(call.matches("\"sequence\"").count(), 10, "ten updates streamed: {call}");
    assert!(call.contains("PROCESSING_STATUS_COMPLETED"), "{call}");
    assert!(health.contains("SERVING"), "{health}");
}
