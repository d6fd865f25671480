//! Each upstream's descriptors: an encoded FileDescriptorSet file, or the upstream's server
//! reflection (grpc.reflection.v1, else v1alpha), asked for the files of the routes' services
//! and everything they import.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    time::Duration,
};

use futures_util::StreamExt as _;
use http::uri::PathAndQuery;
use prost::Message as _;
use prost_reflect::DescriptorPool;
use prost_types::FileDescriptorProto;
use tonic::{Code, Status, client::Grpc, transport::Endpoint};
use tonic_prost::ProstCodec;
use tonic_reflection::pb::v1::{
    ServerReflectionRequest, ServerReflectionResponse, server_reflection_request::MessageRequest,
    server_reflection_response::MessageResponse,
};

use super::{RouteError, file::RoutesFile};

/// Why an upstream's descriptors are unavailable.
#[derive(Debug, thiserror::Error)]
pub enum DescriptorError {
    /// The descriptor-set file could not be read.
    #[error("cannot read descriptor set {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    /// The file, or the files reflection sent, are not a valid set of descriptors.
    #[error("{origin}: not a valid descriptor set: {source}")]
    Decode { origin: String, source: prost_reflect::DescriptorError },
    /// The upstream could not be reached.
    #[error("reflection at {url}: cannot connect: {message}")]
    Connect { url: String, message: String },
    /// The reflection call failed (UNIMPLEMENTED on both versions: no reflection service).
    #[error("reflection at {url}: {code:?}: {message}")]
    Call { url: String, code: Code, message: String },
    /// No complete answer within the timeout.
    #[error("reflection at {url}: no answer within {timeout:?}")]
    Timeout { url: String, timeout: Duration },
}

/// The methods' paths of both protocol versions; their messages are the same on the wire, so
/// the v1 types serve for both.
const REFLECTION_PATHS: [&str; 2] = [
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
];

/// Fetches the descriptors of every upstream of `file`; a failure becomes an error of that
/// upstream (key `descriptors`) and its routes are then validated without descriptors.
/// The third part names the upstreams whose server reflection could not be reached or did not
/// answer in time (not those that answered with an error): a serving BFF waits for those.
pub(super) async fn fetch_all(
    file: &RoutesFile,
    base: &Path,
    timeout: Duration,
) -> (BTreeMap<String, DescriptorPool>, Vec<RouteError>, BTreeSet<String>) {
    let mut pools = BTreeMap::new();
    let mut errors = Vec::new();
    let mut unreachable = BTreeSet::new();
    for upstream in &file.upstreams {
        if pools.contains_key(&upstream.name) || upstream.descriptors.is_empty() {
            continue;
        }
        let fetched = if upstream.descriptors == "reflection" {
            let Some(url) = upstream.urls.first() else { continue };
            let services = file
                .routes
                .iter()
                .filter(|r| r.upstream == upstream.name)
                .filter_map(|r| r.method.split_once('/').map(|(service, _)| service.to_owned()))
                .collect();
            fetch_reflection(url, &services, timeout).await
        } else {
            read_file(&base.join(&upstream.descriptors))
        };
        match fetched {
            Ok(pool) => {
                pools.insert(upstream.name.clone(), pool);
            }
            Err(e) => {
                if matches!(e, DescriptorError::Connect { .. } | DescriptorError::Timeout { .. }) {
                    unreachable.insert(upstream.name.clone());
                }
                errors.push(RouteError {
                    place: format!("upstream {}", upstream.name),
                    key: "descriptors".into(),
                    message: e.to_string(),
                });
            }
        }
    }
    (pools, errors, unreachable)
}

/// Reads an encoded FileDescriptorSet (`protoc --include_imports --descriptor_set_out`,
/// `buf build -o`).
pub fn read_file(path: &Path) -> Result<DescriptorPool, DescriptorError> {
    let bytes = std::fs::read(path).map_err(|source| DescriptorError::Read { path: path.into(), source })?;
    DescriptorPool::decode(bytes.as_slice())
        .map_err(|source| DescriptorError::Decode { origin: path.display().to_string(), source })
}

/// Asks the server reflection at `url` for the files defining `services` and their imports,
/// within `timeout` in all. A service the server does not know is left out (validation then
/// names the route whose method it is), so one wrong route does not hide the others.
pub async fn fetch_reflection(
    url: &str,
    services: &BTreeSet<String>,
    timeout: Duration,
) -> Result<DescriptorPool, DescriptorError> {
    let exchange = async {
        let endpoint = Endpoint::from_shared(url.to_owned())
            .map_err(|e| DescriptorError::Connect { url: url.into(), message: chain(&e) })?
            .connect_timeout(timeout);
        let channel =
            endpoint.connect().await.map_err(|e| DescriptorError::Connect { url: url.into(), message: chain(&e) })?;
        let failed = |status: Status| DescriptorError::Call {
            url: url.into(),
            code: status.code(),
            message: status.message().into(),
        };
        let mut path = REFLECTION_PATHS[0];
        let mut all = BTreeMap::new();
        // One call per service: tonic's reflection server ends the call with NOT_FOUND for an
        // unknown symbol (grpc-go answers with an error message instead), which would leave the
        // other services unanswered.
        for service in services {
            let mut result = files(Grpc::new(channel.clone()), path, service).await;
            if path == REFLECTION_PATHS[0] && matches!(&result, Err(status) if status.code() == Code::Unimplemented) {
                path = REFLECTION_PATHS[1];
                result = files(Grpc::new(channel.clone()), path, service).await;
            }
            match result {
                Ok(files) => all.extend(files),
                Err(status) if status.code() == Code::NotFound => {}
                Err(status) => return Err(failed(status)),
            }
        }
        let mut pool = DescriptorPool::new();
        pool.add_file_descriptor_protos(all.into_values())
            .map_err(|source| DescriptorError::Decode { origin: format!("reflection at {url}"), source })?;
        Ok(pool)
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .unwrap_or_else(|_| Err(DescriptorError::Timeout { url: url.into(), timeout }))
}

/// One reflection call: asks for the file defining `service`, then for every import not yet
/// received, until nothing is pending. The files by name.
async fn files(
    mut grpc: Grpc<tonic::transport::Channel>,
    path: &'static str,
    service: &str,
) -> Result<BTreeMap<String, FileDescriptorProto>, Status> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let ask = |request: MessageRequest| {
        // The receiver lives in the call below until this function returns.
        let _ = tx.send(ServerReflectionRequest { host: String::new(), message_request: Some(request) });
    };
    ask(MessageRequest::FileContainingSymbol(service.to_owned()));
    let mut pending = 1;
    let mut asked: BTreeSet<String> = BTreeSet::new();
    let mut received: BTreeMap<String, FileDescriptorProto> = BTreeMap::new();
    grpc.ready().await.map_err(|e| Status::unavailable(chain(&e)))?;
    let requests = tokio_stream::wrappers::UnboundedReceiverStream::new(rx);
    let codec = ProstCodec::<ServerReflectionRequest, ServerReflectionResponse>::default();
    let mut responses =
        grpc.streaming(tonic::Request::new(requests), PathAndQuery::from_static(path), codec).await?.into_inner();
    while pending > 0 {
        let Some(response) = responses.next().await.transpose()? else { break };
        pending -= 1;
        let Some(MessageResponse::FileDescriptorResponse(found)) = response.message_response else { continue };
        // A server commonly sends a file with its imports in one answer: take them all in
        // before asking for what is still missing.
        let mut new_files = Vec::new();
        for bytes in found.file_descriptor_proto {
            let file = FileDescriptorProto::decode(bytes.as_slice())
                .map_err(|e| Status::internal(format!("undecodable file descriptor: {e}")))?;
            new_files.push(file.name().to_owned());
            received.insert(file.name().to_owned(), file);
        }
        let imports: Vec<String> =
            new_files.iter().filter_map(|n| received.get(n)).flat_map(|f| f.dependency.clone()).collect();
        for import in imports {
            if !received.contains_key(&import) && asked.insert(import.clone()) {
                ask(MessageRequest::FileByFilename(import));
                pending += 1;
            }
        }
    }
    Ok(received)
}

/// An error and its sources on one line: tonic's transport errors say little on their own.
fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        // Many errors repeat their source's words in their own; say each thing once.
        let text = e.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = e.source();
    }
    out
}
