//! `Strict-Transport-Security` on every answer to a request that came over TLS, so a browser
//! that once reached the server over HTTPS never again sends it (its admin session cookie
//! above all) in the clear. Never over plain HTTP: there the header means nothing (browsers
//! ignore it) and a server behind a TLS-terminating proxy leaves it to the proxy.
//!
//! What it is for: that one header. What it is not for: whether a connection is TLS
//! (`crate::connections`), or the web UI's own headers (`fleet_api`).

use axum::extract::Request;
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;

use crate::connections::Connection;

/// One year; no `includeSubDomains`: the server does not speak for other hosts of its domain.
pub const HSTS: &str = "max-age=31536000";

/// The header an answer to a request on `connection` carries, if any.
pub fn hsts_for(connection: Option<&Connection>) -> Option<HeaderValue> {
    connection.filter(|c| c.tls).map(|_| HeaderValue::from_static(HSTS))
}

/// Middleware: adds [`HSTS`] to the answer of a request that came over TLS.
pub async fn strict_transport(req: Request, next: Next) -> Response {
    let hsts = hsts_for(req.extensions().get::<Connection>());
    let mut resp = next.run(req).await;
    if let Some(v) = hsts {
        resp.headers_mut().insert(header::STRICT_TRANSPORT_SECURITY, v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hsts_over_tls_only() {
        let peer = "127.0.0.1:9".parse().unwrap();
        assert_eq!(
            hsts_for(Some(&Connection { peer, tls: true, client_certificate: None })).unwrap(),
            "max-age=31536000"
        );
        assert_eq!(hsts_for(Some(&Connection { peer, tls: false, client_certificate: None })), None);
        assert_eq!(hsts_for(None), None);
    }

    #[tokio::test]
    async fn every_answer_over_tls_carries_it() {
        let app = axum::Router::new()
            .route("/", axum::routing::get(|| async { "page" }))
            .layer(axum::middleware::from_fn(strict_transport));
        let app = hyper_util::service::TowerToHyperService::new(app);
        let peer = "127.0.0.1:9".parse().unwrap();
        for (tls, path) in [(true, "/"), (true, "/nowhere"), (false, "/"), (false, "/nowhere")] {
            let mut req = Request::builder().uri(path).body(axum::body::Body::empty()).unwrap();
            req.extensions_mut().insert(Connection { peer, tls, client_certificate: None });
            let resp = hyper::service::Service::call(&app, req).await.unwrap();
            let got = resp.headers().get(header::STRICT_TRANSPORT_SECURITY);
            assert_eq!(got.is_some(), tls, "{path} tls={tls}: {got:?}");
        }
    }
}
