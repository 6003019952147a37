//! The stats HTTP server (the seed's "Runstats"): `GET /stats` and `GET /health`.
//!
//! An edge of the relay beside the listeners, on `stats.address`. [`app`] builds the router from the counters
//! alone, so tests call it with `oneshot` and no socket; [`serve`] runs it on a bound listener until the shutdown
//! token is cancelled. Invariant: a request only reads counters; it never blocks or changes the pipeline.
//!
//! - `GET /stats`: the JSON of a [`Snapshot`], every counter under the name it has in code.
//! - `GET /health`: `200 ok` while the process runs.

use std::sync::Arc;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::stats::{Registry, Snapshot};

/// The admin routes, reading the given counters.
pub fn app(registry: Arc<Registry>) -> Router {
    Router::new()
        .route("/stats", get(stats))
        .route("/health", get(health))
        .with_state(registry)
}

/// Serves `app` on `listener` until `shutdown` is cancelled, then lets requests in flight finish.
///
/// # Errors
///
/// If the server fails for good; `axum::serve` already retries failed accepts, so this is fatal.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

async fn stats(State(registry): State<Arc<Registry>>) -> Json<Snapshot> {
    Json(registry.snapshot())
}

async fn health() -> &'static str {
    "ok"
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use super::*;
    use crate::stats::DropReason;

    async fn get(registry: Arc<Registry>, path: &str) -> (StatusCode, String) {
        let request = Request::get(path).body(Body::empty()).unwrap();
        let response = app(registry).oneshot(request).await.unwrap();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn health_answers_ok() {
        let registry = Arc::new(Registry::new(&[]));
        assert_eq!(
            get(registry, "/health").await,
            (StatusCode::OK, "ok".to_string())
        );
    }

    #[tokio::test]
    async fn stats_shows_counters_and_every_destination() {
        let registry = Arc::new(Registry::new(&[
            "10.0.5.20:2003".to_string(),
            "10.0.5.25:2003".to_string(),
        ]));
        registry
            .relay
            .lines_received
            .fetch_add(42, Ordering::Relaxed);
        registry.destinations[1].add_dropped(DropReason::QueueFull, 7);

        let (status, body) = get(registry, "/stats").await;
        assert_eq!(status, StatusCode::OK);
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(json["lines"]["received"], 42);
        assert_eq!(json["destinations"][0]["address"], "10.0.5.20:2003");
        assert_eq!(json["destinations"][1]["address"], "10.0.5.25:2003");
        assert_eq!(json["destinations"][1]["dropped"]["queue_full"], 7);
    }

    #[tokio::test]
    async fn unknown_paths_are_not_found() {
        let registry = Arc::new(Registry::new(&[]));
        assert_eq!(get(registry, "/nope").await.0, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn serve_stops_when_shutdown_is_cancelled() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve(
            listener,
            app(Arc::new(Registry::new(&[]))),
            shutdown.clone(),
        ));
        shutdown.cancel();
        server.await.unwrap().unwrap();
    }
}
