//! What every connection of one server shares (`Shared`: configuration, dispatcher,
//! budgets, observers), and the hand-over of one complete request, whichever protocol
//! carried it: to a static mount or to the application, tracked for the metrics and
//! the access log; and how a connection ends after its last response (lingering,
//! close_notify and FIN), whichever protocol it spoke. No request is read here.

use std::future::poll_fn;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::budget::Budgets;
use super::conn_info::ConnInfo;
use super::dispatch::{Dispatcher, EventLog, LogLevel, Request};
use super::proxy_header;
use super::responder::{OutputLimits, Responder};
use super::shutdown::ShutdownSignal;
use super::socket::Conn;
use super::spool::Body;
use super::static_files::{self, Route, StaticFiles};
use super::tls::Acceptor;
use super::tracking::Observer;
use crate::config::Config;
use crate::http::request::{HeadLimits, RequestHead};
use crate::observe::metrics::{self, ConnState};
use crate::observe::Handler;

/// State shared by every connection of one server.
pub struct Shared {
    pub config: Config,
    pub head_limits: HeadLimits,
    pub output_limits: OutputLimits,
    pub dispatcher: Arc<dyn Dispatcher>,
    pub log: Arc<dyn EventLog>,
    /// Set once when the server starts shutting down.
    pub shutdown: Arc<ShutdownSignal>,
    /// What all connections together may hold in memory and temporary files.
    pub budgets: Arc<Budgets>,
    /// Where PROXY-protocol refusals are logged (rate-limited).
    pub refusals: proxy_header::Refusals,
    /// Hears of every finished request (metrics, access log).
    pub observer: Arc<Observer>,
    /// The `static` mounts, if any.
    pub statics: Option<StaticFiles>,
    /// The TLS sessions' maker, when some listener speaks TLS.
    pub tls: Option<Arc<Acceptor>>,
}

/// The connection's place in `tapster_connections{state}`; leaves it when dropped.
pub struct StateGauge(ConnState);

impl StateGauge {
    #[allow(clippy::new_without_default)] // it counts itself in: not a default value
    pub fn new() -> StateGauge {
        metrics::connection_moved(None, Some(ConnState::Idle));
        StateGauge(ConnState::Idle)
    }

    pub fn set(&mut self, to: ConnState) {
        if self.0 != to {
            metrics::connection_moved(Some(self.0), Some(to));
            self.0 = to;
        }
    }
}

impl Drop for StateGauge {
    fn drop(&mut self) {
        metrics::connection_moved(Some(self.0), None);
    }
}

/// Fails a response when dropped; forgotten once the response has run its course. A
/// connection's task dropped mid-response (the runtime stopping at the end of a
/// shutdown) so fails it: a queued request is then never run, and a parked iterator is
/// resumed only to be closed.
pub struct FailOnDrop<'a>(pub &'a Responder);

impl Drop for FailOnDrop<'_> {
    fn drop(&mut self) {
        self.0.fail();
    }
}

/// One complete request, as the connection read it.
pub struct Exchange {
    pub head: RequestHead,
    pub body: Body,
    /// When its first byte arrived.
    pub started: Instant,
    /// The connection may stay open after the response (static answers say so).
    pub keep_alive: bool,
}

/// Starts answering `exchange` through `responder`: a static mount answers it on this
/// thread, or it goes to the application. Returns the responder the connection then
/// follows to the response's end.
pub fn hand_over(
    shared: &Shared,
    info: &Arc<ConnInfo>,
    mut responder: Responder,
    exchange: Exchange,
) -> Arc<Responder> {
    let Exchange {
        head,
        body,
        started,
        keep_alive,
    } = exchange;
    let route = match &shared.statics {
        Some(statics) => statics.route(&head, keep_alive, shared.config.ident.as_deref()),
        None => Route::Application,
    };
    let handler = match route {
        Route::Application => Handler::Application,
        Route::Answer(_) => Handler::Static,
    };
    let observer = &shared.observer;
    if observer.active() {
        let tracked = observer.begin(&head, info, started, handler);
        responder = responder.tracked(observer.clone(), tracked);
    }
    let responder = Arc::new(responder);
    match route {
        Route::Application => shared.dispatcher.dispatch(Request {
            head,
            body,
            conn: info.clone(),
            responder: responder.clone(),
        }),
        Route::Answer(mut answer) => {
            if let Some(problem) = answer.problem.take() {
                shared.log.log(LogLevel::Error, problem);
            }
            static_files::send(&responder, answer);
        }
    }
    responder
}

/// When a request body must have grown past `received` bytes: after a grace period of
/// `header_timeout`, it must keep arriving at `min_body_rate` bytes a second on
/// average, so a client cannot hold a request open by dribbling its body (`None`: no
/// minimum rate).
pub fn body_deadline(config: &Config, started: Instant, received: u64) -> Option<Instant> {
    if config.min_body_rate == 0 {
        return None;
    }
    let earned = Duration::from_secs_f64(received as f64 / config.min_body_rate as f64);
    Some(started + config.header_timeout.max(earned))
}

/// After the last response of a closing connection, how long and how much we keep
/// reading (and discarding) so the client gets the response instead of a reset.
const LINGER_TIME: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 1 << 20;

/// Reads and discards what the client still sends, within `LINGER_TIME`.
pub async fn linger(conn: &Conn) {
    let _ = tokio::time::timeout(LINGER_TIME, conn.discard_input(LINGER_BYTES)).await;
}

/// Ends a connection after its last response: close_notify (under TLS) and FIN, while
/// what the client still sends is read and discarded, all within `LINGER_TIME`. The
/// two go together: a client blocked sending to us may not read our close_notify
/// until we read its bytes.
pub async fn close_after_response(conn: &Conn) {
    let deadline = tokio::time::Instant::now() + LINGER_TIME;
    let closing = tokio::time::timeout_at(deadline, poll_fn(|cx| conn.poll_close(cx)));
    let draining = tokio::time::timeout_at(deadline, conn.discard_input(LINGER_BYTES));
    let (closed, _) = tokio::join!(closing, draining);
    if !matches!(closed, Ok(Ok(()))) {
        // Given up on at the deadline (or failed): FIN now, after as much of the
        // close_notify as the socket takes.
        conn.shutdown_write();
    }
}
