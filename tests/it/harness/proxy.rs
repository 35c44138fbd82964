//! A loopback TCP proxy for fault injection between the worker and a server.
//!
//! It runs on its own thread and tokio runtime, so it keeps forwarding even
//! while the test's runtime is busy or blocked, and it is torn down on drop.
#![allow(dead_code)]
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};

/// At most this many proxied connections at once; more are reset.
const MAX_CONNECTIONS: usize = 512;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// What the proxy does with traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyMode {
    /// Forward both ways.
    Pass,
    /// Reset new connections at once and cut existing ones (RST).
    Refuse,
    /// Accept connections but forward nothing; data is held, and flows
    /// again when the mode goes back to `Pass`/`Delay`.
    Stall,
    /// Forward, sleeping this long before each chunk.
    Delay(Duration),
}

#[derive(Clone, Copy)]
struct State {
    mode: ProxyMode,
    /// Bumped by `cut_all`; connections opened before the bump are reset.
    cut_gen: u64,
}

struct Shared {
    state: watch::Sender<State>,
    accepted: AtomicU64,
    active: AtomicUsize,
}

pub struct TcpProxy {
    addr: SocketAddr,
    upstream: SocketAddr,
    shared: Arc<Shared>,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TcpProxy {
    /// Listens on `127.0.0.1:<free port>` and forwards to `upstream`, in
    /// `Pass` mode. Callable from sync or async code.
    pub fn start(upstream: SocketAddr) -> TcpProxy {
        let std_listener = std::net::TcpListener::bind(("127.0.0.1", super::free_port()))
            .or_else(|_| std::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind proxy listener");
        std_listener.set_nonblocking(true).expect("nonblocking");
        let addr = std_listener.local_addr().expect("proxy local addr");
        let (state, _) = watch::channel(State {
            mode: ProxyMode::Pass,
            cut_gen: 0,
        });
        let shared = Arc::new(Shared {
            state,
            accepted: AtomicU64::new(0),
            active: AtomicUsize::new(0),
        });
        let (shutdown_tx, shutdown_rx) = oneshot::channel();
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("proxy-{}", addr.port()))
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("proxy runtime");
                rt.block_on(async move {
                    let listener = TcpListener::from_std(std_listener).expect("proxy listener");
                    accept_loop(listener, upstream, thread_shared, shutdown_rx).await;
                });
                // Dropping the runtime drops every connection task and socket.
            })
            .expect("spawn proxy thread");
        TcpProxy {
            addr,
            upstream,
            shared,
            shutdown: Some(shutdown_tx),
            thread: Some(thread),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    /// `http://127.0.0.1:PORT`, for a ClickHouse URL through the proxy.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `redis://127.0.0.1:PORT`, for a Redis URL through the proxy.
    pub fn redis_url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    pub fn mode(&self) -> ProxyMode {
        self.shared.state.borrow().mode
    }

    pub fn set_mode(&self, mode: ProxyMode) {
        self.shared.state.send_modify(|s| s.mode = mode);
    }

    pub fn pass(&self) {
        self.set_mode(ProxyMode::Pass);
    }

    pub fn refuse(&self) {
        self.set_mode(ProxyMode::Refuse);
    }

    pub fn stall(&self) {
        self.set_mode(ProxyMode::Stall);
    }

    pub fn delay(&self, per_chunk: Duration) {
        self.set_mode(ProxyMode::Delay(per_chunk));
    }

    /// Resets every connection open now, once; the mode stays as it is.
    pub fn cut_all(&self) {
        self.shared.state.send_modify(|s| s.cut_gen += 1);
    }

    /// Connections accepted so far (including refused ones).
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Connections being proxied now.
    pub fn active(&self) -> usize {
        self.shared.active.load(Ordering::SeqCst)
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    shared: Arc<Shared>,
    mut shutdown: oneshot::Receiver<()>,
) {
    loop {
        let client = tokio::select! {
            _ = &mut shutdown => return,
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        shared.accepted.fetch_add(1, Ordering::SeqCst);
        let state = *shared.state.borrow();
        if state.mode == ProxyMode::Refuse
            || shared.active.load(Ordering::SeqCst) >= MAX_CONNECTIONS
        {
            reset(&client);
            continue;
        }
        let _ = client.set_nodelay(true);
        shared.active.fetch_add(1, Ordering::SeqCst);
        let shared = shared.clone();
        tokio::spawn(async move {
            let rx = shared.state.subscribe();
            handle(client, upstream, rx, state.cut_gen).await;
            shared.active.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

/// Closes with RST instead of FIN (SO_LINGER 0); takes effect when the last
/// handle to the socket is dropped.
fn reset_fd(fd: RawFd) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on a socket we own, with a correctly sized struct.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

fn reset(stream: &TcpStream) {
    reset_fd(stream.as_raw_fd());
}

/// True if the connection opened at `gen` must be severed now.
fn must_cut(st: &State, gen: u64) -> bool {
    st.cut_gen != gen || st.mode == ProxyMode::Refuse
}

/// Resolves when the connection opened at `gen` must be severed (or the
/// proxy is going away).
async fn cut_signal(rx: &mut watch::Receiver<State>, gen: u64) {
    loop {
        if must_cut(&rx.borrow_and_update(), gen) {
            return;
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

async fn handle(client: TcpStream, upstream: SocketAddr, mut rx: watch::Receiver<State>, gen: u64) {
    // In Stall mode, hold the connection without even dialling upstream.
    loop {
        let st = *rx.borrow_and_update();
        if must_cut(&st, gen) {
            reset(&client);
            return;
        }
        if st.mode != ProxyMode::Stall {
            break;
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
    let server = tokio::select! {
        r = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(upstream)) => match r {
            Ok(Ok(s)) => s,
            _ => {
                reset(&client);
                return;
            }
        },
        _ = cut_signal(&mut rx, gen) => {
            reset(&client);
            return;
        }
    };
    let _ = server.set_nodelay(true);
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    let up = pump(cr, sw, rx.clone(), gen);
    let down = pump(sr, cw, rx.clone(), gen);
    tokio::pin!(up, down);
    let (mut up_done, mut down_done) = (false, false);
    while !(up_done && down_done) {
        let outcome = tokio::select! {
            o = &mut up, if !up_done => { up_done = true; o }
            o = &mut down, if !down_done => { down_done = true; o }
        };
        if outcome == Outcome::Cut {
            // That pump set SO_LINGER 0 on both sockets; returning drops the
            // other pump and with it the last halves, which sends the RSTs.
            return;
        }
    }
}

#[derive(PartialEq, Eq)]
enum Outcome {
    Eof,
    Cut,
}

/// Copies `from` → `to` under the current mode. On `Cut`, both sockets
/// (this pump holds a half of each) are marked for reset before the halves
/// are dropped.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut rx: watch::Receiver<State>,
    gen: u64,
) -> Outcome {
    let outcome = copy(&mut from, &mut to, &mut rx, gen).await;
    if outcome == Outcome::Cut {
        reset(from.as_ref());
        reset(to.as_ref());
    }
    outcome
}

async fn copy(
    from: &mut tokio::net::tcp::OwnedReadHalf,
    to: &mut tokio::net::tcp::OwnedWriteHalf,
    rx: &mut watch::Receiver<State>,
    gen: u64,
) -> Outcome {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = tokio::select! {
            r = from.read(&mut buf) => match r {
                Ok(0) => {
                    let _ = to.shutdown().await;
                    return Outcome::Eof;
                }
                Ok(n) => n,
                // A reset on one side is passed on as a reset to the other.
                Err(_) => return Outcome::Cut,
            },
            _ = cut_signal(rx, gen) => return Outcome::Cut,
        };
        // Apply the mode to this chunk.
        loop {
            let st = *rx.borrow_and_update();
            if must_cut(&st, gen) {
                return Outcome::Cut;
            }
            match st.mode {
                ProxyMode::Pass => break,
                ProxyMode::Delay(d) => {
                    tokio::select! {
                        _ = tokio::time::sleep(d) => break,
                        _ = cut_signal(rx, gen) => return Outcome::Cut,
                    }
                }
                ProxyMode::Stall | ProxyMode::Refuse => {
                    if rx.changed().await.is_err() {
                        return Outcome::Cut;
                    }
                }
            }
        }
        tokio::select! {
            r = to.write_all(&buf[..n]) => if r.is_err() { return Outcome::Cut },
            _ = cut_signal(rx, gen) => return Outcome::Cut,
        }
    }
}
