//! sse-bff: turns server-streaming gRPC calls of internal services into browser-ready
//! Server-Sent Event streams.
//!
//! The binary in `main.rs` only parses the command line and calls into this library, so that
//! every part a test needs (the HTTP server, the simulated upstream, the demo) is reachable here.

pub mod app;
pub mod auth;
pub mod cli;
pub mod cluster;
pub mod demo;
pub mod event;
mod flags;
pub mod http;
pub mod hub;
pub mod metrics;
pub mod pb;
pub mod routes;
pub mod sim;
pub mod sse;
pub mod telemetry;
pub mod upstream;

pub use app::{App, ServeConfig};
pub use sim::Sim;
