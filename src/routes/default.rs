//! The built-in route: CONTRACT §3's document progress, declared like any routes-file route
//! and validated against the descriptors compiled into the binary.
//!
//! Its options reproduce the JSON of `upstream/docproc.rs` byte for byte, with two exceptions
//! the generic mapping cannot express: `percent` is not clamped to 100 (the proto bounds it to
//! 0..=100, the compiled mapping enforced that) and an update without `emitted_at` leaves the
//! key out, as proto3 JSON does, where the compiled mapping wrote `null`.

use std::path::PathBuf;

use prost_reflect::DescriptorPool;

use super::{DescriptorSource, LoadError, RouteError, RouteTable, RoutesFile, file::UpstreamSpec, validate};
use crate::pb;

/// The upstream name of the built-in route.
pub const DOCUMENT_UPSTREAM: &str = "docproc";

/// The document route as routes-file TOML (its upstream is added in code, from `--upstream`).
pub const DOCUMENT_ROUTE: &str = r#"
[[route]]
path = "/documents/{document_id}/progress"
upstream = "docproc"
method = "docproc.v1.DocumentProcessor/ProcessDocument"
id = "sequence"
resume = "resume_after"
retention = "state"
replay = 8
event = { enum = "status", names = { PROCESSING_STATUS_COMPLETED = "completed", PROCESSING_STATUS_FAILED = "failed" }, default = "progress" }
terminal = ["completed", "failed"]
data = { rename = { progress_percent = "percent" }, omit_empty = ["error_code"], enums = "short-lowercase", int64 = "number", timestamps = "nanos" }
"#;

impl RouteTable {
    /// The route table without a routes file: the document route, calling `urls`, with the
    /// descriptors compiled into the binary. An error here is a defect of this file, reported
    /// rather than panicking.
    pub fn built_in(urls: &[String]) -> Result<Self, LoadError> {
        let origin = PathBuf::from("<built-in>");
        let invalid = |errors: Vec<RouteError>| LoadError::Invalid { path: origin.clone(), errors };
        let fail = |message: String| {
            invalid(vec![RouteError {
                place: format!("upstream {DOCUMENT_UPSTREAM}"),
                key: "descriptors".into(),
                message,
            }])
        };
        let mut file = RoutesFile::parse(DOCUMENT_ROUTE)
            .map_err(|source| LoadError::Parse { path: origin.clone(), source: Box::new(source) })?;
        file.upstreams.push(UpstreamSpec {
            name: DOCUMENT_UPSTREAM.into(),
            urls: urls.to_vec(),
            descriptors: "built-in".into(),
            health: Some("docproc.v1.DocumentProcessor".into()),
        });
        let pool = DescriptorPool::decode(pb::FILE_DESCRIPTOR_SET).map_err(|e| fail(e.to_string()))?;
        let pools = [(DOCUMENT_UPSTREAM.to_owned(), pool)].into();
        let mut table = validate(&file, &pools, "".as_ref()).map_err(invalid)?;
        for upstream in &mut table.upstreams {
            upstream.descriptors = DescriptorSource::BuiltIn;
        }
        Ok(table)
    }
}
