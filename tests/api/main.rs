//! The integration tests: a real simulator and a real BFF on loopback ports, driven through a
#![allow(clippy::unwrap_used, clippy::expect_used)]
//! real HTTP client that parses SSE.

mod cluster;
mod errors;
mod events;
mod faults;
mod grpcurl;
mod helpers;
mod hub;
mod lifecycle;
mod nginx;
mod ops;
mod own_service;
mod representations;
mod routes;
mod security;
mod server;
mod sim;
mod storm;
mod stream;
mod tls;
