//! The services the simulator plays from descriptors: every server-streaming method of the
//! services of a FileDescriptorSet, answered from JSON scripts as prost-reflect
//! [`DynamicMessage`](prost_reflect::DynamicMessage)s, so a team can mock its service with no
//! code. The default is the build-log example (`proto/ci/v1/builds.proto`, `fixtures/builds/`).

mod call;
mod codec;
mod script;

use std::{
    borrow::Cow,
    collections::HashMap,
    path::{Path, PathBuf},
    sync::Arc,
};

use prost_reflect::{DescriptorPool, MethodDescriptor, ServiceDescriptor};

pub use codec::{DynamicCodec, DynamicDecoder, DynamicEncoder};
pub use script::{DynamicScript, ScriptedMessage};

pub(super) use call::Player;

use super::script::{ScriptError, embedded, read_dirs};
use crate::pb;

/// Services the simulator serves itself, never from scripts, even when a descriptor set
/// contains them.
const BUILT_IN: [&str; 4] = [
    "docproc.v1.DocumentProcessor",
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

/// Why a descriptor set could not be used.
#[derive(Debug, thiserror::Error)]
pub enum DescriptorSetError {
    /// The file could not be read.
    #[error("descriptor set {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not a complete, valid FileDescriptorSet (was `--include_imports` left out?).
    #[error("descriptor set {path}: {source}")]
    Decode {
        /// The file.
        path: String,
        /// What prost-reflect said.
        source: prost_reflect::DescriptorError,
    },
}

/// The services played from scripts, with their scripts by method.
#[derive(Debug, Clone)]
pub struct DynamicServices {
    services: Vec<ServiceDescriptor>,
    encoded: Vec<Cow<'static, [u8]>>,
    scripts: HashMap<String, Vec<Arc<DynamicScript>>>,
}

impl DynamicServices {
    /// Loads the descriptor sets (the embedded build-log example when none is given) and the
    /// `*.json` scripts of `script_dirs`. Without script directories, the embedded
    /// `fixtures/builds/` scripts play the embedded set, and a set of one's own has no scripts
    /// (every call is NOT_FOUND). Every script is checked against the descriptors.
    pub fn load(descriptor_sets: &[PathBuf], script_dirs: &[PathBuf]) -> Result<Self, super::SimError> {
        let encoded: Vec<Cow<'static, [u8]>> = if descriptor_sets.is_empty() {
            vec![Cow::Borrowed(pb::BUILDS_FILE_DESCRIPTOR_SET)]
        } else {
            descriptor_sets.iter().map(|path| read(path).map(Cow::Owned)).collect::<Result<_, _>>()?
        };
        let mut pool = DescriptorPool::new();
        for (bytes, path) in encoded.iter().zip(names(descriptor_sets)) {
            pool.decode_file_descriptor_set(bytes.as_ref())
                .map_err(|source| DescriptorSetError::Decode { path, source })?;
        }
        let services: Vec<_> = pool.services().filter(|s| served(s).next().is_some()).collect();
        let files = match (script_dirs.is_empty(), descriptor_sets.is_empty()) {
            (false, _) => read_dirs(script_dirs)?,
            (true, true) => embedded(script::EMBEDDED),
            (true, false) => Vec::new(),
        };
        let mut scripts: HashMap<String, Vec<Arc<DynamicScript>>> = HashMap::new();
        for (file, text) in files {
            let script = script::parse(&file, &text, &pool)?;
            let same = scripts.entry(script.method.clone()).or_default();
            if let Some(first) = same.iter().find(|s| s.request == script.request && s.tenant == script.tenant) {
                return Err(ScriptError::DuplicateRequest {
                    file,
                    method: script.method.clone(),
                    first: first.file.clone(),
                }
                .into());
            }
            same.push(script);
        }
        Ok(Self { services, encoded, scripts })
    }

    /// The full names of the services played from scripts.
    pub fn service_names(&self) -> impl Iterator<Item = &str> {
        self.services.iter().map(ServiceDescriptor::full_name)
    }

    /// The encoded descriptor sets, for the reflection service.
    pub fn encoded_sets(&self) -> impl Iterator<Item = &[u8]> {
        self.encoded.iter().map(AsRef::as_ref)
    }

    /// Routes every served method's gRPC path (`/package.Service/Method`) to its handler.
    pub(super) fn route(&self, mut router: axum::Router, player: &Player) -> axum::Router {
        for method in self.services.iter().flat_map(served) {
            let name = format!("{}/{}", method.parent_service().full_name(), method.name());
            let scripts = self.scripts.get(&name).cloned().unwrap_or_default();
            if scripts.is_empty() {
                tracing::warn!(method = %name, "no scripts: every call gets NOT_FOUND");
            }
            let service = call::MethodService::new(method, name.clone(), scripts, player.clone());
            router = router.route_service(&format!("/{name}"), service);
        }
        router
    }
}

/// Whether the simulator serves `service` (a full name) itself.
fn built_in(service: &str) -> bool {
    BUILT_IN.contains(&service)
}

/// The methods of `service` the simulator plays: server-streaming with one request.
fn served(service: &ServiceDescriptor) -> impl Iterator<Item = MethodDescriptor> {
    let built_in = built_in(service.full_name());
    service.methods().filter(move |m| !built_in && m.is_server_streaming() && !m.is_client_streaming())
}

/// Whether a script may play `method` (of a service that is not built in), and if not, why.
fn check_served(method: &MethodDescriptor) -> Result<(), &'static str> {
    if method.is_client_streaming() {
        Err("takes a stream of requests; only server-streaming methods with one request are played")
    } else if !method.is_server_streaming() {
        Err("is not server-streaming")
    } else {
        Ok(())
    }
}

fn read(path: &Path) -> Result<Vec<u8>, DescriptorSetError> {
    std::fs::read(path).map_err(|source| DescriptorSetError::Read { path: path.display().to_string(), source })
}

/// The name of each descriptor set in errors: its path, or "built-in".
fn names(descriptor_sets: &[PathBuf]) -> Vec<String> {
    if descriptor_sets.is_empty() {
        vec!["built-in".to_owned()]
    } else {
        descriptor_sets.iter().map(|path| path.display().to_string()).collect()
    }
}
