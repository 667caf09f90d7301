//! The admin API: which route a request names (`route`, pure and tested on
//! its own) and what each route does to the spool and the delivery
//! scheduler (`respond`). Answers are JSON; the HTTP framing is `http.rs`'s.
//!
//! Adding an endpoint (e.g. `GET /metrics`) is a `Route` variant, a match
//! arm in `route` and one in `respond`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use serde::{Deserialize, Serialize};
use serde_json::json;
use sluice_spool::{QueueEntry, QueueId, RecipientStatus, Spool};

use crate::delivery::DeliveryHandle;
use crate::metrics::{Gauge, METRICS};
use crate::reload::{Reloader, Trigger};

/// Longest header block `GET /queue/{id}` returns; the rest is cut.
const MAX_HEADER_BYTES: usize = 64 * 1024;

/// What the admin API works on: shared by every admin connection.
pub struct AdminState {
    /// The queue the operator inspects and changes.
    pub spool: Spool,
    /// To make a flushed or released message due at once.
    pub delivery: DeliveryHandle,
    /// True once the SMTP listeners accept connections, false again when
    /// shutdown starts: what `/health/ready` reports.
    pub ready: AtomicBool,
    /// `[server] node_name`: which node's queue a listing is.
    pub node: String,
    /// Rebuilds the pipelines for `POST /reload`; set once the server runs.
    reloader: OnceLock<Arc<Reloader>>,
}

impl AdminState {
    pub fn new(spool: Spool, delivery: DeliveryHandle, node: String) -> Self {
        AdminState {
            spool,
            delivery,
            node,
            ready: AtomicBool::new(false),
            reloader: OnceLock::new(),
        }
    }

    pub fn set_reloader(&self, reloader: Arc<Reloader>) {
        let _ = self.reloader.set(reloader);
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }
}

/// The HTTP methods the API knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
    Delete,
    /// Anything else: answered 405 on a known path.
    Other,
}

impl Method {
    pub fn parse(method: &str) -> Method {
        match method {
            "GET" => Method::Get,
            "POST" => Method::Post,
            "DELETE" => Method::Delete,
            _ => Method::Other,
        }
    }
}

/// One endpoint of the API, with its arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `GET /health/live`: the process runs.
    Live,
    /// `GET /health/ready`: listeners bound, spool open, not shutting down.
    Ready,
    /// `GET /health`: both, 200 when ready and 503 when not.
    Health,
    /// `GET /metrics`: Prometheus text format (served by the HTTP layer).
    Metrics,
    /// `POST /reload`: rebuild plugins and pipelines from the config file.
    Reload,
    /// `GET /queue`.
    List,
    /// `POST /queue/flush`: every deferred message due now.
    FlushAll,
    /// `GET /queue/{id}`: entry and message headers.
    Show(QueueId),
    /// `POST /queue/{id}/flush`.
    Flush(QueueId),
    /// `POST /queue/{id}/hold`.
    Hold(QueueId),
    /// `POST /queue/{id}/release`.
    Release(QueueId),
    /// `DELETE /queue/{id}`.
    Delete(QueueId),
}

/// Why a request names no route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteError {
    /// No such path (or a malformed queue id in it): 404.
    NotFound,
    /// The path exists, not with this method: 405, with the `Allow` list.
    MethodNotAllowed(&'static str),
}

/// Maps a method and a path (without query string) to a route.
pub fn route(method: Method, path: &str) -> Result<Route, RouteError> {
    use Method::*;
    let segments: Vec<&str> = path
        .strip_prefix('/')
        .unwrap_or(path)
        .trim_end_matches('/')
        .split('/')
        .collect();
    let only = |allowed: Method, allow: &'static str, route: Route| {
        if method == allowed {
            Ok(route)
        } else {
            Err(RouteError::MethodNotAllowed(allow))
        }
    };
    let id = |text: &str| text.parse::<QueueId>().map_err(|_| RouteError::NotFound);
    match segments.as_slice() {
        ["health", "live"] => only(Get, "GET", Route::Live),
        ["health", "ready"] => only(Get, "GET", Route::Ready),
        ["health"] => only(Get, "GET", Route::Health),
        ["metrics"] => only(Get, "GET", Route::Metrics),
        ["reload"] => only(Post, "POST", Route::Reload),
        ["queue"] => only(Get, "GET", Route::List),
        ["queue", "flush"] => only(Post, "POST", Route::FlushAll),
        ["queue", text] => {
            let id = id(text)?;
            match method {
                Get => Ok(Route::Show(id)),
                Delete => Ok(Route::Delete(id)),
                _ => Err(RouteError::MethodNotAllowed("GET, DELETE")),
            }
        }
        ["queue", text, "flush"] => only(Post, "POST", Route::Flush(id(text)?)),
        ["queue", text, "hold"] => only(Post, "POST", Route::Hold(id(text)?)),
        ["queue", text, "release"] => only(Post, "POST", Route::Release(id(text)?)),
        _ => Err(RouteError::NotFound),
    }
}

/// An answer: status code and JSON body; `allow` for 405.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiResponse {
    pub status: u16,
    pub body: serde_json::Value,
    pub allow: Option<&'static str>,
}

impl ApiResponse {
    fn ok(body: serde_json::Value) -> Self {
        ApiResponse {
            status: 200,
            body,
            allow: None,
        }
    }

    /// An error answer: `{"error": message}`.
    pub fn error(status: u16, message: impl Into<String>) -> Self {
        ApiResponse {
            status,
            body: json!({ "error": message.into() }),
            allow: None,
        }
    }

    /// The answer for a request that names no route.
    pub fn for_route_error(error: &RouteError, path: &str) -> Self {
        match error {
            RouteError::NotFound => {
                let message = match path.strip_prefix("/queue/") {
                    Some(rest) if !rest.contains('/') => {
                        format!("no queue entry {rest:?} (ids are 16 hexadecimal digits)")
                    }
                    _ => format!("no such endpoint: {path}"),
                };
                ApiResponse::error(404, message)
            }
            RouteError::MethodNotAllowed(allow) => ApiResponse {
                status: 405,
                allow: Some(allow),
                ..ApiResponse::error(405, format!("method not allowed; allowed: {allow}"))
            },
        }
    }

    fn no_entry(id: QueueId) -> Self {
        ApiResponse::error(404, format!("no queue entry {id}"))
    }

    fn spool_error(e: sluice_spool::SpoolError) -> Self {
        tracing::error!("admin request failed: {e}");
        ApiResponse::error(500, format!("spool error: {e}"))
    }
}

/// A queue entry as the API shows it: the stored entry plus its overall
/// state, so clients need not derive it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EntryView {
    #[serde(flatten)]
    pub entry: QueueEntry,
    /// "damaged", "held", "quarantined", "deferred" or "queued".
    pub state: String,
    /// The node whose queue holds it (each node has its own queue), so
    /// listings of several nodes can be merged.
    #[serde(default)]
    pub node: String,
}

impl EntryView {
    pub fn new(entry: QueueEntry, node: &str) -> Self {
        let state = entry_state(&entry).to_owned();
        EntryView {
            entry,
            state,
            node: node.to_owned(),
        }
    }
}

/// `GET /queue`'s answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ListView {
    /// `[server] node_name` of the node that answered.
    #[serde(default)]
    pub node: String,
    pub count: usize,
    pub entries: Vec<EntryView>,
}

/// One header field of a queued message.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct HeaderView {
    pub name: String,
    pub value: String,
}

/// `GET /queue/{id}`'s answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ShowView {
    pub entry: EntryView,
    /// The message's header fields in order, unfolded.
    pub headers: Vec<HeaderView>,
}

/// The state that decides what happens next to an entry.
pub fn entry_state(entry: &QueueEntry) -> &'static str {
    let any = |status: RecipientStatus| entry.recipients.iter().any(|r| r.status == status);
    if entry.damaged.is_some() {
        "damaged"
    } else if entry.held {
        "held"
    } else if entry.quarantine.is_some() || any(RecipientStatus::Quarantined) {
        "quarantined"
    } else if any(RecipientStatus::Deferred) {
        "deferred"
    } else if any(RecipientStatus::Pending) {
        "queued"
    } else {
        // Only held recipients left (final ones leave the queue).
        "held"
    }
}

/// Runs one route against the spool and the scheduler.
pub async fn respond(state: &AdminState, route: Route) -> ApiResponse {
    match route {
        Route::Live => ApiResponse::ok(json!({ "status": "live" })),
        Route::Health => {
            let ready = state.ready.load(Ordering::Relaxed);
            ApiResponse {
                status: if ready { 200 } else { 503 },
                body: json!({ "live": true, "ready": ready }),
                allow: None,
            }
        }
        Route::Ready => {
            if state.ready.load(Ordering::Relaxed) {
                ApiResponse::ok(json!({ "status": "ready" }))
            } else {
                ApiResponse {
                    status: 503,
                    body: json!({ "status": "not ready" }),
                    allow: None,
                }
            }
        }
        Route::Metrics => ApiResponse::ok(json!({ "metrics": metrics_text(state).await })),
        Route::Reload => match state.reloader.get() {
            None => ApiResponse::error(503, "the server is not running yet"),
            Some(reloader) => match reloader.reload(Trigger::Command).await {
                Ok(report) => ApiResponse::ok(json!(report)),
                // The running pipelines are untouched: the request was
                // understood, the new configuration is what failed.
                Err(e) => ApiResponse::error(422, e.to_string()),
            },
        },
        Route::List => match all_entries(&state.spool).await {
            Ok(entries) => {
                let entries: Vec<EntryView> = entries
                    .into_iter()
                    .map(|entry| EntryView::new(entry, &state.node))
                    .collect();
                to_response(&ListView {
                    node: state.node.clone(),
                    count: entries.len(),
                    entries,
                })
            }
            Err(answer) => answer,
        },
        Route::Show(id) => show(state, id),
        Route::Flush(id) => flush(state, id).await,
        Route::FlushAll => match all_entries(&state.spool).await {
            Ok(entries) => {
                let (mut due, mut held) = (0usize, 0usize);
                for entry in &entries {
                    match entry_state(entry) {
                        "held" | "quarantined" => held += 1,
                        _ => due += 1,
                    }
                }
                // The scheduler re-reads the queue; no spool write per
                // message (each would cost a flush).
                state.delivery.retry_all();
                tracing::info!(due, held, "admin: queue flush");
                ApiResponse::ok(json!({ "flushed": due, "skipped_held": held }))
            }
            Err(answer) => answer,
        },
        Route::Hold(id) => match state.spool.set_held(id, true).await {
            Ok(true) => {
                tracing::info!(queue_id = %id, "admin: held");
                ApiResponse::ok(json!({ "id": id, "held": true }))
            }
            Ok(false) => ApiResponse::no_entry(id),
            Err(e) => ApiResponse::spool_error(e),
        },
        Route::Release(id) => match state.spool.release(id).await {
            Ok(true) => {
                tracing::info!(queue_id = %id, "admin: released");
                state.delivery.retry_now(id);
                ApiResponse::ok(json!({ "id": id, "released": true }))
            }
            Ok(false) => ApiResponse::no_entry(id),
            Err(e) => ApiResponse::spool_error(e),
        },
        Route::Delete(id) => match state.spool.remove(id).await {
            Ok(true) => {
                tracing::info!(queue_id = %id, "admin: deleted");
                ApiResponse::ok(json!({ "id": id, "deleted": true }))
            }
            Ok(false) => ApiResponse::no_entry(id),
            Err(e) => ApiResponse::spool_error(e),
        },
    }
}

/// Every metric in the Prometheus text format, with the queue's size and
/// its oldest message's age measured now.
pub async fn metrics_text(state: &AdminState) -> String {
    let mut queue = Vec::new();
    // On a spool error, the other metrics are still worth a scrape.
    if let Ok(entries) = all_entries(&state.spool).await {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let oldest = entries.iter().map(|e| e.received_at).min();
        queue.push(Gauge {
            name: "sluice_queue_messages",
            help: "Messages in the queue (held and quarantined ones included).",
            value: entries.len() as f64,
        });
        queue.push(Gauge {
            name: "sluice_queue_oldest_age_seconds",
            help: "Age of the oldest message in the queue (0 when it is empty).",
            value: oldest.map_or(0, |t| now.saturating_sub(t)) as f64,
        });
        queue.push(Gauge {
            name: "sluice_queue_damaged_messages",
            help: "Messages set aside because their bytes were missing or failed their checksum at start.",
            value: entries.iter().filter(|e| e.damaged.is_some()).count() as f64,
        });
    }
    queue.push(Gauge {
        name: "sluice_spool_segments",
        help: "Segment files holding message bytes.",
        value: state.spool.segment_count() as f64,
    });
    METRICS.render(&queue)
}

/// Every queue entry, read off the async workers: a long queue is a long
/// walk through sled.
async fn all_entries(spool: &Spool) -> Result<Vec<QueueEntry>, ApiResponse> {
    let spool = spool.clone();
    match tokio::task::spawn_blocking(move || spool.entries()).await {
        Ok(result) => result.map_err(ApiResponse::spool_error),
        // Only a panic inside sled gets here.
        Err(e) => {
            tracing::error!("reading the queue failed: {e}");
            Err(ApiResponse::error(500, "reading the queue failed"))
        }
    }
}

fn show(state: &AdminState, id: QueueId) -> ApiResponse {
    let entry = match state.spool.entry(id) {
        Ok(Some(entry)) => entry,
        Ok(None) => return ApiResponse::no_entry(id),
        Err(e) => return ApiResponse::spool_error(e),
    };
    let headers = match state.spool.message(id) {
        Ok(Some(message)) => header_fields(&message),
        // Set aside at start: the entry is all there is.
        Ok(None) if entry.damaged.is_some() => Vec::new(),
        // Removed between the two reads: delivered or deleted meanwhile.
        Ok(None) => return ApiResponse::no_entry(id),
        Err(e) => return ApiResponse::spool_error(e),
    };
    to_response(&ShowView {
        entry: EntryView::new(entry, &state.node),
        headers,
    })
}

async fn flush(state: &AdminState, id: QueueId) -> ApiResponse {
    let entry = match state.spool.entry(id) {
        Ok(Some(entry)) => entry,
        Ok(None) => return ApiResponse::no_entry(id),
        Err(e) => return ApiResponse::spool_error(e),
    };
    match entry_state(&entry) {
        "held" => {
            return ApiResponse::error(409, format!("{id} is held: release it to deliver it"))
        }
        "quarantined" => {
            return ApiResponse::error(
                409,
                format!("{id} is quarantined: release it to deliver it"),
            )
        }
        _ => {}
    }
    // Recorded so that `queue list` shows it due, and a restart keeps it so.
    match state.spool.reschedule(id, 0).await {
        Ok(true) => {}
        Ok(false) => return ApiResponse::no_entry(id),
        Err(e) => return ApiResponse::spool_error(e),
    }
    state.delivery.retry_now(id);
    tracing::info!(queue_id = %id, "admin: flushed");
    ApiResponse::ok(json!({ "id": id, "flushed": true }))
}

fn to_response<T: Serialize>(value: &T) -> ApiResponse {
    match serde_json::to_value(value) {
        Ok(body) => ApiResponse::ok(body),
        Err(e) => ApiResponse::error(500, format!("cannot encode the answer: {e}")),
    }
}

/// The header fields of a raw message (up to the first empty line, at most
/// `MAX_HEADER_BYTES`), unfolded; bytes that are not UTF-8 are replaced.
pub fn header_fields(message: &[u8]) -> Vec<HeaderView> {
    let block = &message[..message.len().min(MAX_HEADER_BYTES)];
    let mut fields: Vec<HeaderView> = Vec::new();
    for line in block.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            break;
        }
        let text = String::from_utf8_lossy(line);
        if line[0] == b' ' || line[0] == b'\t' {
            // A continuation line: unfold into the previous field.
            if let Some(last) = fields.last_mut() {
                last.value.push(' ');
                last.value.push_str(text.trim());
            }
            continue;
        }
        match text.split_once(':') {
            Some((name, value)) => fields.push(HeaderView {
                name: name.trim_end().to_owned(),
                value: value.trim().to_owned(),
            }),
            // Not a header line: the body started without an empty line.
            None => break,
        }
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> QueueId {
        QueueId::from_u64(0x0123_4567_89ab_cdef)
    }

    #[test]
    fn routes() {
        use Method::*;
        assert_eq!(route(Get, "/health/live"), Ok(Route::Live));
        assert_eq!(route(Get, "/health/ready"), Ok(Route::Ready));
        assert_eq!(route(Get, "/metrics"), Ok(Route::Metrics));
        assert_eq!(route(Get, "/health"), Ok(Route::Health));
        assert_eq!(route(Get, "/queue"), Ok(Route::List));
        assert_eq!(route(Get, "/queue/"), Ok(Route::List));
        assert_eq!(route(Post, "/queue/flush"), Ok(Route::FlushAll));
        assert_eq!(route(Get, "/queue/0123456789abcdef"), Ok(Route::Show(id())));
        assert_eq!(
            route(Delete, "/queue/0123456789ABCDEF"),
            Ok(Route::Delete(id()))
        );
        assert_eq!(
            route(Post, "/queue/0123456789abcdef/flush"),
            Ok(Route::Flush(id()))
        );
        assert_eq!(
            route(Post, "/queue/0123456789abcdef/hold"),
            Ok(Route::Hold(id()))
        );
        assert_eq!(
            route(Post, "/queue/0123456789abcdef/release"),
            Ok(Route::Release(id()))
        );
    }

    #[test]
    fn unknown_paths_and_ids_are_not_found() {
        use Method::*;
        for path in [
            "/",
            "",
            "/healthz",
            "/queue/xyz",
            "/queue/0123456789abcdef/bounce",
            "/queue/0123456789abcdef/flush/now",
            "/health/x",
            "/metrics/x",
            "//queue",
        ] {
            assert_eq!(route(Get, path), Err(RouteError::NotFound), "{path}");
        }
        assert_eq!(route(Post, "/queue/nothex/hold"), Err(RouteError::NotFound));
    }

    #[test]
    fn wrong_methods_are_not_allowed() {
        use Method::*;
        assert_eq!(
            route(Post, "/queue"),
            Err(RouteError::MethodNotAllowed("GET"))
        );
        assert_eq!(
            route(Get, "/queue/flush"),
            Err(RouteError::MethodNotAllowed("POST"))
        );
        assert_eq!(
            route(Post, "/queue/0123456789abcdef"),
            Err(RouteError::MethodNotAllowed("GET, DELETE"))
        );
        assert_eq!(
            route(Get, "/queue/0123456789abcdef/hold"),
            Err(RouteError::MethodNotAllowed("POST"))
        );
        assert_eq!(
            route(Other, "/health/live"),
            Err(RouteError::MethodNotAllowed("GET"))
        );
        assert_eq!(Method::parse("PATCH"), Other);
        assert_eq!(Method::parse("get"), Other);
    }

    #[test]
    fn error_responses_are_json() {
        let r = ApiResponse::for_route_error(&RouteError::NotFound, "/queue/abc");
        assert_eq!(r.status, 404);
        assert!(r.body["error"].as_str().unwrap().contains("\"abc\""));
        let r = ApiResponse::for_route_error(&RouteError::NotFound, "/nope");
        assert_eq!(r.body["error"], "no such endpoint: /nope");
        let r = ApiResponse::for_route_error(&RouteError::MethodNotAllowed("POST"), "/queue/flush");
        assert_eq!((r.status, r.allow), (405, Some("POST")));
        assert!(r.body["error"].as_str().unwrap().contains("POST"));
    }

    #[test]
    fn headers_are_unfolded_and_stop_at_the_body() {
        let message = b"Received: from a\r\n\tby b; Mon, 1 Jan 2026\r\nSubject: hi \xff\r\nX-Empty:\r\n\r\nBody: not a header\r\n";
        let fields = header_fields(message);
        let pairs: Vec<(&str, &str)> = fields
            .iter()
            .map(|h| (h.name.as_str(), h.value.as_str()))
            .collect();
        assert_eq!(
            pairs,
            vec![
                ("Received", "from a by b; Mon, 1 Jan 2026"),
                ("Subject", "hi \u{fffd}"),
                ("X-Empty", ""),
            ]
        );
        assert!(header_fields(b"").is_empty());
        assert_eq!(header_fields(b"no colon here\r\nA: b\r\n").len(), 0);
    }

    #[test]
    fn states() {
        let mut entry: QueueEntry = serde_json::from_value(json!({
            "id": "0123456789abcdef", "reverse_path": "", "received_at": 1,
            "client": "127.0.0.1:1", "size": 1, "attempts": 0, "next_attempt": 0,
            "held": false, "quarantine": null,
            "recipients": [
                {"address": "a@x.test", "status": "delivered", "last_reply": null, "attempts": 1},
                {"address": "b@x.test", "status": "pending", "last_reply": null, "attempts": 0}
            ]
        }))
        .unwrap();
        assert_eq!(entry_state(&entry), "queued");
        entry.recipients[1].status = RecipientStatus::Deferred;
        assert_eq!(entry_state(&entry), "deferred");
        entry.quarantine = Some("spam".into());
        assert_eq!(entry_state(&entry), "quarantined");
        entry.held = true;
        assert_eq!(entry_state(&entry), "held");
        let view = EntryView::new(entry.clone(), "mx2");
        let json = serde_json::to_value(&view).unwrap();
        assert_eq!(json["state"], "held");
        assert_eq!(json["node"], "mx2");
        assert_eq!(json["id"], "0123456789abcdef");
        let back: EntryView = serde_json::from_value(json).unwrap();
        assert_eq!(back.entry, entry);
    }
}
