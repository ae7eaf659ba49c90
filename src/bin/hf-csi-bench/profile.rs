//! Network profiles and the TCP proxy that imposes them between every client and the emulator.
//!
//! Each direction of each proxied connection is a pipe: a reader thread stamps every chunk
//! with its delivery time (one-way delay = RTT/2, after serialisation on a shared link of the
//! profile's bandwidth) and a writer thread sleeps until then and forwards it. A new
//! connection pays one RTT for its handshake before its first byte reaches the server.
//!
//! Threads and `std::thread::sleep` are used instead of tokio timers on purpose: tokio's timer
//! wheel has a 1 ms resolution, which would turn the 1 ms RTT of `lan` into about 2 ms.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Largest chunk one pipe forwards at a time.
const CHUNK: usize = 64 * 1024;
/// Chunks queued per pipe (4 MiB): far above the bandwidth-delay product of every profile.
const PIPE_DEPTH: usize = 64;

/// A named network condition.
#[derive(Debug, Clone)]
pub struct Profile {
    pub name: String,
    /// Round-trip time added to every exchange (0 = none).
    pub rtt: Duration,
    /// Link capacity in bytes per second, per direction (`None` = unlimited).
    pub bandwidth: Option<u64>,
}

impl Profile {
    /// `local` (no proxy), `lan` (1 ms RTT), `wan` (30 ms RTT, 200 Mbit/s).
    pub fn by_name(name: &str) -> Result<Profile, String> {
        let (rtt_us, mbit) = match name {
            "local" => (0, None),
            "lan" => (1_000, None),
            "wan" => (30_000, Some(200)),
            other => return Err(format!("unknown profile {other:?} (local, lan, wan)")),
        };
        Ok(Profile {
            name: name.to_string(),
            rtt: Duration::from_micros(rtt_us),
            bandwidth: mbit.map(|m: u64| m * 1_000_000 / 8),
        })
    }

    pub fn rtt_ms(&self) -> f64 {
        self.rtt.as_secs_f64() * 1e3
    }

    pub fn bandwidth_mbit(&self) -> Option<f64> {
        self.bandwidth.map(|b| b as f64 * 8.0 / 1e6)
    }

    /// Whether clients talk to the emulator directly.
    pub fn is_direct(&self) -> bool {
        self.rtt.is_zero() && self.bandwidth.is_none()
    }

    pub fn describe(&self) -> String {
        match (self.rtt.is_zero(), self.bandwidth_mbit()) {
            (true, None) => "no added latency, unlimited bandwidth (loopback)".to_string(),
            (false, None) => format!("{} ms RTT, unlimited bandwidth", self.rtt_ms()),
            (_, Some(m)) => format!("{} ms RTT, {m} Mbit/s per direction", self.rtt_ms()),
        }
    }
}

/// One direction of the simulated network: a serialising link plus propagation delay.
struct Link {
    one_way: Duration,
    bytes_per_sec: Option<f64>,
    /// When the link finishes sending what is already booked on it.
    free_at: Mutex<Instant>,
    /// How far ahead the link may be booked before readers wait (a router queue limit).
    max_backlog: Duration,
    bytes: AtomicU64,
}

impl Link {
    fn new(profile: &Profile) -> Link {
        Link {
            one_way: profile.rtt / 2,
            bytes_per_sec: profile.bandwidth.map(|b| b as f64),
            free_at: Mutex::new(Instant::now()),
            max_backlog: profile.rtt.max(Duration::from_millis(10)),
            bytes: AtomicU64::new(0),
        }
    }

    /// Books `n` bytes read at `now` (not before `earliest`); returns when they arrive.
    fn book(&self, n: usize, earliest: Instant) -> Instant {
        self.bytes.fetch_add(n as u64, Ordering::Relaxed);
        let Some(rate) = self.bytes_per_sec else {
            return Instant::now().max(earliest) + self.one_way;
        };
        loop {
            let backlog = lock(&self.free_at).saturating_duration_since(Instant::now());
            if backlog <= self.max_backlog {
                break;
            }
            std::thread::sleep(backlog - self.max_backlog);
        }
        let mut free = lock(&self.free_at);
        let start = (*free).max(Instant::now()).max(earliest);
        let done = start + Duration::from_secs_f64(n as f64 / rate);
        *free = done;
        done + self.one_way
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Totals of one proxy since it started.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProxyStats {
    pub connections: u64,
    pub bytes_up: u64,
    pub bytes_down: u64,
}

struct Shared {
    upstream: SocketAddr,
    rtt: Duration,
    up: Link,
    down: Link,
    stop: AtomicBool,
    connections: AtomicU64,
    /// Live connections (both sockets), so that stopping can cut them.
    live: Mutex<HashMap<u64, (TcpStream, TcpStream)>>,
}

/// A running proxy; stops (and cuts its connections) when dropped.
pub struct NetProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl NetProxy {
    /// Listens on an ephemeral loopback port and forwards to `upstream` under `profile`.
    pub fn start(upstream: SocketAddr, profile: &Profile) -> std::io::Result<NetProxy> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            upstream,
            rtt: profile.rtt,
            up: Link::new(profile),
            down: Link::new(profile),
            stop: AtomicBool::new(false),
            connections: AtomicU64::new(0),
            live: Mutex::new(HashMap::new()),
        });
        let s = shared.clone();
        let accept = std::thread::Builder::new().name("bench-proxy".into()).spawn(move || accept_loop(listener, s))?;
        Ok(NetProxy { addr, shared, accept: Some(accept) })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn stats(&self) -> ProxyStats {
        ProxyStats {
            connections: self.shared.connections.load(Ordering::Relaxed),
            bytes_up: self.shared.up.bytes.load(Ordering::Relaxed),
            bytes_down: self.shared.down.bytes.load(Ordering::Relaxed),
        }
    }
}

impl Drop for NetProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept.
        let _ = TcpStream::connect(self.addr);
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
        for (_, (a, b)) in lock(&self.shared.live).drain() {
            let _ = a.shutdown(Shutdown::Both);
            let _ = b.shutdown(Shutdown::Both);
        }
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut next_id = 0u64;
    for conn in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(client) = conn else { continue };
        let accepted = Instant::now();
        next_id += 1;
        let id = next_id;
        shared.connections.fetch_add(1, Ordering::Relaxed);
        let s = shared.clone();
        let spawned = std::thread::Builder::new().name("bench-proxy-conn".into()).spawn(move || {
            if let Err(e) = serve(&s, id, client, accepted) {
                tracing::debug!(error = %e, "proxied connection failed");
            }
            lock(&s.live).remove(&id);
        });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start a proxy thread");
        }
    }
}

/// Forwards one connection in both directions until both are finished.
fn serve(s: &Arc<Shared>, id: u64, client: TcpStream, accepted: Instant) -> std::io::Result<()> {
    let server = TcpStream::connect(s.upstream)?;
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    lock(&s.live).insert(id, (client.try_clone()?, server.try_clone()?));
    // The client's first bytes reach the server after the handshake round trip.
    let opened = accepted + s.rtt;
    let up = pipe(s.clone(), true, client.try_clone()?, server.try_clone()?, opened)?;
    let down = pipe(s.clone(), false, server, client, accepted)?;
    for h in up.into_iter().chain(down) {
        let _ = h.join();
    }
    Ok(())
}

/// Starts the reader and writer threads of one direction.
fn pipe(
    s: Arc<Shared>,
    upward: bool,
    from: TcpStream,
    to: TcpStream,
    earliest: Instant,
) -> std::io::Result<[JoinHandle<()>; 2]> {
    let (tx, rx) = sync_channel::<(Instant, Vec<u8>)>(PIPE_DEPTH);
    let from2 = from.try_clone()?;
    let reader = std::thread::Builder::new()
        .name("bench-proxy-rd".into())
        .spawn(move || read_side(&s, upward, from, tx, earliest))?;
    let writer = std::thread::Builder::new().name("bench-proxy-wr".into()).spawn(move || write_side(rx, from2, to))?;
    Ok([reader, writer])
}

fn read_side(s: &Shared, upward: bool, mut from: TcpStream, tx: SyncSender<(Instant, Vec<u8>)>, earliest: Instant) {
    let link = if upward { &s.up } else { &s.down };
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let at = link.book(n, earliest);
        if tx.send((at, buf[..n].to_vec())).is_err() {
            return;
        }
    }
}

fn write_side(rx: Receiver<(Instant, Vec<u8>)>, from: TcpStream, mut to: TcpStream) {
    for (at, chunk) in rx {
        let now = Instant::now();
        if at > now {
            std::thread::sleep(at - now);
        }
        if to.write_all(&chunk).is_err() {
            // The receiver is gone: end both directions.
            let _ = from.shutdown(Shutdown::Both);
            let _ = to.shutdown(Shutdown::Both);
            return;
        }
    }
    // The sender finished: pass the half-close on.
    let _ = to.shutdown(Shutdown::Write);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles() {
        assert!(Profile::by_name("local").unwrap().is_direct());
        let wan = Profile::by_name("wan").unwrap();
        assert_eq!(wan.bandwidth, Some(25_000_000));
        assert_eq!(wan.rtt_ms(), 30.0);
        assert!(Profile::by_name("moon").is_err());
    }

    #[test]
    fn echo_round_trip_costs_one_rtt() {
        let echo = TcpListener::bind("127.0.0.1:0").unwrap();
        let upstream = echo.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut c, _) = echo.accept().unwrap();
            let mut b = [0u8; 1];
            while c.read_exact(&mut b).is_ok() {
                c.write_all(&b).unwrap();
            }
        });
        let profile = Profile { name: "t".into(), rtt: Duration::from_millis(20), bandwidth: None };
        let proxy = NetProxy::start(upstream, &profile).unwrap();
        let mut c = TcpStream::connect(proxy.addr).unwrap();
        c.set_nodelay(true).unwrap();
        let t = Instant::now();
        c.write_all(b"x").unwrap();
        let mut b = [0u8; 1];
        c.read_exact(&mut b).unwrap();
        // Handshake plus one exchange.
        assert!(t.elapsed() >= Duration::from_millis(40), "{:?}", t.elapsed());
        let t = Instant::now();
        c.write_all(b"y").unwrap();
        c.read_exact(&mut b).unwrap();
        let rtt = t.elapsed();
        assert!(rtt >= Duration::from_millis(20), "{rtt:?}");
    }
}
