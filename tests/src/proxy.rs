//! A TCP proxy a test controls: it sits between a service and PostgreSQL or
//! RabbitMQ, and can cut every connection (and refuse new ones) until
//! restored. This is how fault tests inject real network failures.
use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
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
}

impl TcpProxy {
    /// Starts forwarding `127.0.0.1:<random>` to `upstream`.
    pub async fn start(upstream: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let state = Arc::new(State {
            up: AtomicBool::new(true),
            generation: std::sync::Mutex::new(CancellationToken::new()),
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
                    tokio::spawn(pipe(client, upstream, generation));
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

    /// Accepts and forwards connections again.
    pub fn restore(&self) {
        *self.state.generation.lock().expect("lock") = CancellationToken::new();
        self.state.up.store(true, Ordering::SeqCst);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.stop.cancel();
        self.state.generation.lock().expect("lock").cancel();
    }
}

async fn pipe(mut client: TcpStream, upstream: String, generation: CancellationToken) {
    let Ok(mut server) = TcpStream::connect(&upstream).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    tokio::select! {
        () = generation.cancelled() => {}
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
    }
}
