# syntax=docker/dockerfile:1
# One image for both roles: `sse-bff serve` (the BFF) and `sse-bff upstream-sim`.

FROM rust:1-bookworm AS builder
WORKDIR /src
# build.rs compiles the proto with protox (pure Rust), so no protoc is needed.
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto ./proto
COPY src ./src
COPY fixtures ./fixtures
COPY static ./static
RUN cargo build --release --locked --bin sse-bff

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin sse-bff
COPY --from=builder /src/target/release/sse-bff /usr/local/bin/sse-bff
COPY fixtures /app/fixtures
WORKDIR /app
# Listen on all interfaces inside the container (the binary defaults to loopback).
ENV SSE_BFF_LISTEN=0.0.0.0:8080 \
    SSE_BFF_SIM_LISTEN=0.0.0.0:50051
EXPOSE 8080 50051
USER sse-bff
ENTRYPOINT ["sse-bff"]
CMD ["--help"]
