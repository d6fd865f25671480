//! What the authentication targets share: one HS256 authenticator, built once.

use std::sync::OnceLock;

use sse_bff::{app::ServeConfig, auth::Authenticator};

/// The authenticator the targets feed, as `serve --jwt-secret` builds it.
pub fn authenticator() -> &'static Authenticator {
    static AUTH: OnceLock<Authenticator> = OnceLock::new();
    AUTH.get_or_init(|| {
        let mut config = ServeConfig::with_upstream("http://127.0.0.1:1");
        config.auth.insecure_no_auth = false;
        config.auth.jwt_secret = Some("fuzz-secret-that-is-at-least-32-bytes-long".into());
        Authenticator::from_config(&config.auth).expect("the fuzz key loads")
    })
}
