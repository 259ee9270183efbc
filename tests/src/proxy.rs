//! A TCP proxy a test controls: it sits between a service and PostgreSQL or
//! RabbitMQ, and can cut every connection (and refuse new ones) until
//! restored, or blackhole them: stop forwarding while every socket stays
//! open, as a dead route or a hung middlebox does, which no error reveals.
//! It can also slow a link: each chunk is held a chosen time, both ways, as
//! a degraded database or a far-away broker is (the kernel here has no
//! netem). This is how fault tests inject real network failures.
use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

pub struct TcpProxy {
    addr: SocketAddr,
    state: Arc<State>,
    stop: CancellationToken,
}

struct State {
    up: AtomicBool,
    /// Cancelled on cut; replaced on restore.
    generation: std::sync::Mutex<CancellationToken>,
    /// Forwarding is allowed while this is `true` (see [`TcpProxy::blackhole`]).
    flowing: tokio::sync::watch::Sender<bool>,
    /// How long each chunk is held before it is passed on, in microseconds
    /// (see [`TcpProxy::slow`]).
    latency_micros: AtomicU64,
}

impl TcpProxy {
    /// Starts forwarding `127.0.0.1:<random>` to `upstream`.
    pub async fn start(upstream: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let state = Arc::new(State {
            up: AtomicBool::new(true),
            generation: std::sync::Mutex::new(CancellationToken::new()),
            flowing: tokio::sync::watch::Sender::new(true),
            latency_micros: AtomicU64::new(0),
        });
        let stop = CancellationToken::new();
        let upstream = upstream.to_owned();
        {
            let state = state.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                loop {
                    let (client, _) = tokio::select! {
                        () = stop.cancelled() => return,
                        accepted = listener.accept() => match accepted {
                            Ok(a) => a,
                            Err(_) => continue,
                        },
                    };
                    if !state.up.load(Ordering::SeqCst) {
                        drop(client);
                        continue;
                    }
                    let generation = state.generation.lock().expect("lock").clone();
                    let upstream = upstream.clone();
                    let flowing = state.flowing.subscribe();
                    tokio::spawn(pipe(client, upstream, generation, flowing, state.clone()));
                }
            });
        }
        Self { addr, state, stop }
    }

    /// `host:port` to give the service instead of the upstream.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// Drops every open connection and refuses new ones.
    pub fn cut(&self) {
        self.state.up.store(false, Ordering::SeqCst);
        self.state.generation.lock().expect("lock").cancel();
    }

    /// Accepts and forwards connections again, at full speed (after a cut,
    /// a blackhole or [`Self::slow`]).
    pub fn restore(&self) {
        *self.state.generation.lock().expect("lock") = CancellationToken::new();
        self.state.up.store(true, Ordering::SeqCst);
        self.state.latency_micros.store(0, Ordering::SeqCst);
        self.state.flowing.send_replace(true);
    }

    /// Holds every chunk `each_way` before passing it on, in both directions,
    /// on open connections and new ones, until [`Self::restore`]: a round
    /// trip through the proxy then takes at least twice `each_way`. Chunks
    /// queue behind each other as on a real link (a delay line, not one
    /// chunk at a time), so throughput is kept and only latency grows.
    pub fn slow(&self, each_way: Duration) {
        self.state
            .latency_micros
            .store(each_way.as_micros() as u64, Ordering::SeqCst);
    }

    /// Stops forwarding in both directions and keeps every socket open, old
    /// and new: bytes sent either way wait, unread, until [`Self::restore`].
    /// Neither side sees an error; only its own timeouts can tell.
    pub fn blackhole(&self) {
        self.state.flowing.send_replace(false);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.stop.cancel();
        self.state.generation.lock().expect("lock").cancel();
    }
}

async fn pipe(
    client: TcpStream,
    upstream: String,
    generation: CancellationToken,
    flowing: tokio::sync::watch::Receiver<bool>,
    state: Arc<State>,
) {
    // A new connection during a blackhole is accepted and then left
    // hanging, as a dead route leaves a SYN.
    if !wait_flowing(&mut flowing.clone(), &generation).await {
        return;
    }
    let Ok(server) = TcpStream::connect(&upstream).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    tokio::select! {
        () = generation.cancelled() => {}
        () = forward(client_read, server_write, flowing.clone(), &generation, &state) => {}
        () = forward(server_read, client_write, flowing, &generation, &state) => {}
    }
}

/// Copies `from` to `to` while forwarding is allowed; during a blackhole it
/// neither reads nor writes, so the sockets stay open and silent. Each chunk
/// read is due `latency` after it was read; a writer passes chunks on in
/// order, each when it is due, while the reader goes on reading.
async fn forward(
    from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    flowing: tokio::sync::watch::Receiver<bool>,
    generation: &CancellationToken,
    state: &State,
) {
    use tokio::io::AsyncWriteExt;
    let (chunks, mut due) =
        tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    let write = async move {
        while let Some((at, bytes)) = due.recv().await {
            tokio::time::sleep_until(at).await;
            if to.write_all(&bytes).await.is_err() {
                return;
            }
        }
    };
    tokio::select! {
        () = read_chunks(from, chunks, flowing, generation, state) => {}
        () = write => {}
    }
}

/// The reading half of [`forward`]: stamps each chunk with when it is due.
async fn read_chunks(
    mut from: tokio::net::tcp::OwnedReadHalf,
    chunks: tokio::sync::mpsc::UnboundedSender<(tokio::time::Instant, Vec<u8>)>,
    mut flowing: tokio::sync::watch::Receiver<bool>,
    generation: &CancellationToken,
    state: &State,
) {
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if !wait_flowing(&mut flowing, generation).await {
            return;
        }
        let n = tokio::select! {
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            // A blackhole that starts while this side waits for bytes.
            _ = flowing.wait_for(|f| !*f) => continue,
        };
        // Bytes read just before a blackhole are held until it ends.
        if !wait_flowing(&mut flowing, generation).await {
            return;
        }
        let latency = Duration::from_micros(state.latency_micros.load(Ordering::SeqCst));
        if chunks
            .send((tokio::time::Instant::now() + latency, buf[..n].to_vec()))
            .is_err()
        {
            return;
        }
    }
}

/// Waits until forwarding is allowed; `false` if the connection was cut.
async fn wait_flowing(
    flowing: &mut tokio::sync::watch::Receiver<bool>,
    generation: &CancellationToken,
) -> bool {
    tokio::select! {
        ok = flowing.wait_for(|f| *f) => ok.is_ok(),
        () = generation.cancelled() => false,
    }
}
