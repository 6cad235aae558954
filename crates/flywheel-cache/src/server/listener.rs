//! Accepting connections within bounds: a cap on open connections (more wait in the kernel's
//! listen queue), a cap per client address (more are closed at once), deadlines for a request's
//! headers and for a connection idle between requests (`watchdog`), and a deadline for a
//! response the client stops reading. Request bodies have their own idle deadline where handlers
//! read them (`body`), so that a long check of an upload, with no byte moving meanwhile, is not
//! mistaken for a dead peer.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::ConnectInfo;
use axum::Router;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tower::ServiceExt;

use super::watchdog::{Watchdog, Watched};
use super::State;

/// Serves `app` on `listener` until `shutdown` completes, then lets the requests in flight
/// finish.
pub(super) async fn serve(
    listener: TcpListener,
    app: Router,
    state: Arc<State>,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let limits = state.opts.limits;
    let open = Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
    let clients = Arc::new(Clients::default());
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.header_read_timeout(None).keep_alive(true);
    let closed = state.metrics.deadline_closures.clone();
    let watchdog = Watchdog::new(limits.header_timeout, limits.idle_timeout, move || {
        closed.fetch_add(1, Ordering::Relaxed);
    });
    let ticking = tokio::spawn(watchdog.clone().run());
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            p = open.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = &mut shutdown => break,
        };
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait, as axum's own loop does.
                    tracing::warn!("accepting a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let Some(slot) = clients.take(peer.ip(), limits.max_connections_per_client) else {
            state.metrics.connections_refused.fetch_add(1, Ordering::Relaxed);
            tracing::debug!("closing a connection from {peer}: it has {} open", limits.max_connections_per_client);
            drop(tcp);
            continue;
        };
        if let Err(e) = tcp.set_nodelay(true) {
            // Small responses (narinfos, the ends of NARs) go out at once, not after the peer's
            // delayed ACK.
            tracing::debug!("TCP_NODELAY: {e}");
        }
        let watched = watchdog.watch();
        let io = TokioIo::new(Guarded::new(tcp, limits.idle_timeout, watchdog.clone(), watched.clone()));
        let app = app.clone();
        let (dog, conn_state) = (watchdog.clone(), watched.clone());
        let service = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            conn_state.busy(dog.now_ms());
            let answered = app.clone().oneshot(req.map(axum::body::Body::new));
            let (dog, conn_state) = (dog.clone(), conn_state.clone());
            async move {
                let mut response = answered.await;
                if let Ok(r) = &mut response {
                    super::inert::add_headers(r.headers_mut());
                }
                conn_state.idle(dog.now_ms());
                response
            }
        });
        let conn = graceful.watch(http.serve_connection(io, service));
        let open = Open::new(state.clone(), (permit, slot));
        let task = tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!("connection from {peer}: {e}");
            }
            drop(open);
        });
        watchdog.guard(&watched, task.abort_handle());
    }
    drop(listener);
    graceful.shutdown().await;
    ticking.abort();
    Ok(())
}

/// A connection counted open, with its share of the caps, until dropped (its task may end by
/// being aborted).
struct Open {
    state: Arc<State>,
    _held: (tokio::sync::OwnedSemaphorePermit, Slot),
}

impl Open {
    fn new(state: Arc<State>, held: (tokio::sync::OwnedSemaphorePermit, Slot)) -> Open {
        state.metrics.connections.fetch_add(1, Ordering::Relaxed);
        Open { state, _held: held }
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.state.metrics.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Open connections by client address.
#[derive(Default)]
struct Clients(Mutex<HashMap<IpAddr, usize>>);

/// One of a client's connections; its count goes down when dropped.
struct Slot {
    clients: Arc<Clients>,
    ip: IpAddr,
}

impl Clients {
    fn take(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<Slot> {
        let mut open = self.0.lock().ok()?;
        let n = open.entry(ip).or_insert(0);
        if *n >= max.max(1) {
            return None;
        }
        *n += 1;
        Some(Slot { clients: self.clone(), ip })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Ok(mut open) = self.clients.0.lock() {
            if let Some(n) = open.get_mut(&self.ip) {
                *n -= 1;
                if *n == 0 {
                    open.remove(&self.ip);
                }
            }
        }
    }
}

/// A connection's socket as the server sees it: reads and writes tell the watchdog what the
/// connection is doing, and writes fail once one has waited `idle` without progress (a client
/// that stops reading a response, a NAR most often, does not hold the connection for ever; the
/// timer is armed only when a write waits).
struct Guarded<S> {
    inner: S,
    idle: Duration,
    dog: Arc<Watchdog>,
    watched: Arc<Watched>,
    /// Since when writes have been waiting, without a byte taken.
    stalled_since: Option<Instant>,
    timer: Pin<Box<tokio::time::Sleep>>,
}

impl Guarded<TcpStream> {
    fn new(inner: TcpStream, idle: Duration, dog: Arc<Watchdog>, watched: Arc<Watched>) -> Self {
        let timer = Box::pin(tokio::time::sleep(idle));
        Guarded { inner, idle, dog, watched, stalled_since: None, timer }
    }
}

impl<S> Guarded<S> {
    fn progress<T>(&mut self, cx: &mut Context<'_>, polled: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if polled.is_ready() {
            self.stalled_since = None;
            self.watched.wrote_some(self.dog.now_ms());
            return polled;
        }
        let since = *self.stalled_since.get_or_insert_with(Instant::now);
        let deadline = tokio::time::Instant::from(since + self.idle);
        if self.timer.deadline() != deadline {
            self.timer.as_mut().reset(deadline);
        }
        match self.timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the client read nothing for {} s", self.idle.as_secs()),
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.watched.read_some(self.dog.now_ms());
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.progress(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.progress(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.progress(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
