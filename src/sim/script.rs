//! Job scripts for the simulator, loaded from JSON files under `fixtures/` (or the copies
//! embedded in the binary, so `demo` runs from anywhere).

use std::{collections::HashMap, fs, path::Path, time::Duration};

use serde::Deserialize;
use tonic::Code;

/// The scripts compiled into the binary: the files of `fixtures/jobs/`.
const EMBEDDED: &[(&str, &str)] = &[
    ("doc-1.json", include_str!("../../fixtures/jobs/doc-1.json")),
    ("doc-2.json", include_str!("../../fixtures/jobs/doc-2.json")),
    ("doc-3.json", include_str!("../../fixtures/jobs/doc-3.json")),
    ("scan-42.json", include_str!("../../fixtures/jobs/scan-42.json")),
    ("report-q3.json", include_str!("../../fixtures/jobs/report-q3.json")),
];

/// Why the scripts could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ScriptError {
    /// A fixture directory or file could not be read.
    #[error("fixtures {path}: {source}")]
    Read {
        /// The path that failed.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A file is not a valid job script.
    #[error("fixture {file}: {source}")]
    Parse {
        /// The file name.
        file: String,
        /// What serde said.
        source: serde_json::Error,
    },
    /// Two files script the same document.
    #[error("fixture {file}: document {document_id:?} is scripted twice")]
    Duplicate {
        /// The second file.
        file: String,
        /// The document id.
        document_id: String,
    },
    /// A service script names a method the simulator cannot play from it.
    #[error("script {file}: method {method:?} {reason}")]
    Method {
        /// The file.
        file: String,
        /// The method as the script names it.
        method: String,
        /// What is wrong with it, e.g. "is not server-streaming".
        reason: &'static str,
    },
    /// A request or message of a service script is not valid proto3 JSON of its type.
    #[error("script {file}: {place} is not a valid {type_name}: {source}")]
    Message {
        /// The file.
        file: String,
        /// `request` or `messages[i]`.
        place: String,
        /// The full name of the message type.
        type_name: String,
        /// What the proto3 JSON mapping said.
        source: serde_json::Error,
    },
    /// Two service scripts answer the same request.
    #[error("script {file}: {method} with this request is already scripted by {first}")]
    DuplicateRequest {
        /// The second file.
        file: String,
        /// The method.
        method: String,
        /// The first file.
        first: String,
    },
}

/// One scripted job.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Script {
    /// The document this job processes.
    pub document_id: String,
    /// The tenant the document belongs to; other tenants get PERMISSION_DENIED.
    #[serde(default)]
    pub tenant: Option<String>,
    /// When set, every call fails at once with this status (before any message).
    #[serde(default)]
    pub reject: Option<ScriptStatus>,
    /// The updates, in order.
    #[serde(default)]
    pub steps: Vec<Step>,
}

/// One step of a job: after a delay, either an update or the end of the job with an error.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// Delay before this step in milliseconds, at speed 1.
    #[serde(default)]
    pub after_ms: f64,
    /// How many times the step is played (each one a new update after `after_ms`).
    #[serde(default = "one")]
    pub repeat: u32,
    /// `queued`, `running`, `completed` or `failed`; absent for an error step.
    #[serde(default)]
    pub status: Option<String>,
    /// Progress in percent.
    #[serde(default)]
    pub percent: u32,
    /// Stage name.
    #[serde(default)]
    pub stage: String,
    /// Human-readable text.
    #[serde(default)]
    pub message: String,
    /// Repeat `message` until it is at least this many bytes long (for oversized-text tests).
    #[serde(default)]
    pub message_min_bytes: usize,
    /// Set on a failed update, e.g. `UNSUPPORTED_FORMAT`.
    #[serde(default)]
    pub error_code: String,
    /// Ends every attached call with this gRPC status instead of sending an update.
    #[serde(default)]
    pub grpc_error: Option<ScriptStatus>,
}

/// A gRPC status named in a script, e.g. `{"code": "unavailable", "message": "worker lost"}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScriptStatus {
    /// The code in snake case, as in the gRPC spec (`not_found`, `unavailable`, ...).
    pub code: String,
    /// The status message.
    #[serde(default)]
    pub message: String,
}

impl ScriptStatus {
    /// The tonic status this entry describes.
    pub fn to_status(&self) -> tonic::Status {
        tonic::Status::new(code_from_name(&self.code), self.message.clone())
    }
}

fn one() -> u32 {
    1
}

impl Step {
    /// The delay before this step at the given speed factor.
    pub fn delay(&self, speed: f64) -> Duration {
        Duration::try_from_secs_f64(self.after_ms / 1000.0 / speed).unwrap_or(Duration::ZERO)
    }

    /// The message with any padding the script asks for.
    pub fn full_message(&self) -> String {
        let mut message = self.message.clone();
        if !message.is_empty() {
            while message.len() < self.message_min_bytes {
                message.push_str(&self.message);
            }
        }
        message
    }
}

impl Script {
    /// An endless job for load tests: `rate` updates per second (at speed 1) with messages of
    /// `message_bytes`, visible to every tenant, named `steady` (so `steady.1`, `steady.2`, ...
    /// are separate jobs).
    pub fn steady(rate: f64, message_bytes: usize) -> Self {
        let update = |after_ms: f64, repeat: u32| Step {
            after_ms,
            repeat,
            status: Some("running".to_owned()),
            percent: 50,
            stage: "steady".to_owned(),
            message: "x".to_owned(),
            message_min_bytes: message_bytes,
            error_code: String::new(),
            grpc_error: None,
        };
        Self {
            document_id: "steady".to_owned(),
            tenant: None,
            reject: None,
            steps: vec![update(0.0, 1), update(1000.0 / rate, u32::MAX)],
        }
    }
}

/// Loads every `*.json` file of the given directories, or the embedded scripts when none is
/// given.
pub fn load(dirs: &[impl AsRef<Path>]) -> Result<HashMap<String, Script>, ScriptError> {
    let files = if dirs.is_empty() { embedded(EMBEDDED) } else { read_dirs(dirs)? };
    let mut scripts = HashMap::new();
    for (file, text) in files {
        let script: Script =
            serde_json::from_str(&text).map_err(|source| ScriptError::Parse { file: file.clone(), source })?;
        if scripts.contains_key(&script.document_id) {
            return Err(ScriptError::Duplicate { file, document_id: script.document_id });
        }
        scripts.insert(script.document_id.clone(), script);
    }
    Ok(scripts)
}

/// The embedded files as (name, text) pairs.
pub(super) fn embedded(files: &[(&str, &str)]) -> Vec<(String, String)> {
    files.iter().map(|(name, text)| ((*name).to_owned(), (*text).to_owned())).collect()
}

/// Every `*.json` file of the given directories as (path, text), each directory in name order.
pub(super) fn read_dirs(dirs: &[impl AsRef<Path>]) -> Result<Vec<(String, String)>, ScriptError> {
    let mut files = Vec::new();
    for dir in dirs {
        let dir = dir.as_ref();
        let read_err = |source| ScriptError::Read { path: dir.display().to_string(), source };
        let mut paths: Vec<_> = fs::read_dir(dir)
            .map_err(read_err)?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
            .collect();
        paths.sort();
        for path in paths {
            let text = fs::read_to_string(&path)
                .map_err(|source| ScriptError::Read { path: path.display().to_string(), source })?;
            files.push((path.display().to_string(), text));
        }
    }
    Ok(files)
}

fn code_from_name(name: &str) -> Code {
    match name {
        "ok" => Code::Ok,
        "cancelled" => Code::Cancelled,
        "invalid_argument" => Code::InvalidArgument,
        "deadline_exceeded" => Code::DeadlineExceeded,
        "not_found" => Code::NotFound,
        "already_exists" => Code::AlreadyExists,
        "permission_denied" => Code::PermissionDenied,
        "resource_exhausted" => Code::ResourceExhausted,
        "failed_precondition" => Code::FailedPrecondition,
        "aborted" => Code::Aborted,
        "out_of_range" => Code::OutOfRange,
        "unimplemented" => Code::Unimplemented,
        "internal" => Code::Internal,
        "unavailable" => Code::Unavailable,
        "data_loss" => Code::DataLoss,
        "unauthenticated" => Code::Unauthenticated,
        _ => Code::Unknown,
    }
}
