//! The one door through which generated protobuf code enters the crate.
//!
//! Only `upstream` (the client mapping) and `sim` (the fake service) use these types; the HTTP
//! layer sees [`crate::event::StreamEvent`] instead.

#[allow(missing_debug_implementations, clippy::all, clippy::pedantic)]
pub mod docproc {
    pub mod v1 {
        tonic::include_proto!("docproc.v1");
    }
}

/// The encoded descriptor set of `proto/`, served by the simulator's reflection service.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/docproc_descriptor.bin"));

/// The encoded descriptor set of the CI build-log example (`proto/ci/v1/builds.proto`, with its
/// imports), the same bytes as `fixtures/routes/builds.binpb`.
pub const BUILDS_FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/builds_descriptor.bin"));
