//! Checks of the setting itself: the round trip of a small Hub API call through the profile
//! (to confirm the proxy adds what it should), and a freshly started mount's start-up time
//! and idle memory.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use super::Ctx;
use crate::dataset::{DATA_BUCKET, READ_TOKEN};
use crate::measure::median;
use crate::report::{Row, Target};
use crate::rss;

/// Median ms of `GET /api/buckets/{id}` on one kept-alive HTTP/1.1 connection.
fn api_round_trip(endpoint: &str) -> Result<f64, String> {
    let host = endpoint.trim_start_matches("http://");
    let stream = TcpStream::connect(host).map_err(|e| format!("connecting {host}: {e}"))?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    stream.set_read_timeout(Some(Duration::from_secs(30))).map_err(|e| e.to_string())?;
    let mut reader = BufReader::new(stream.try_clone().map_err(|e| e.to_string())?);
    let mut writer = stream;
    let request = format!(
        "GET /api/buckets/{DATA_BUCKET} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {READ_TOKEN}\r\n\r\n"
    );
    let mut samples = Vec::new();
    for i in 0..21 {
        let t = Instant::now();
        writer.write_all(request.as_bytes()).map_err(|e| e.to_string())?;
        let mut len = 0usize;
        let mut line = String::new();
        loop {
            line.clear();
            reader.read_line(&mut line).map_err(|e| e.to_string())?;
            if i == 0 && line.starts_with("HTTP/") && !line.contains(" 200") {
                return Err(format!("the Hub answered {}", line.trim()));
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().map_err(|_| "bad content-length")?;
            }
            if line == "\r\n" || line.is_empty() {
                break;
            }
        }
        let mut body = vec![0u8; len];
        reader.read_exact(&mut body).map_err(|e| e.to_string())?;
        // The first exchange pays for the connection; keep only the kept-alive ones.
        if i > 0 {
            samples.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    Ok(median(&samples))
}

pub fn run(ctx: &Ctx<'_>) -> Vec<Row> {
    let sec = "setting";
    let rtt = api_round_trip(&ctx.endpoint);
    let idle = (|| {
        let m = ctx.mount(DATA_BUCKET, "idle", None)?;
        let startup = m.startup.as_secs_f64() * 1e3;
        std::thread::sleep(Duration::from_secs(1));
        let r = rss::read(m.pid())?;
        ctx.finish(m, "idle")?;
        Ok::<_, String>((startup, r.now_mib))
    })();
    vec![
        Row::new(sec, "Hub API round trip (small GET, kept-alive connection, median)", "ms")
            .value(rtt)
            .baseline(Ok(ctx.rtt_ms()), "profile RTT"),
        Row::new(sec, "mount start-up (spawn to mounted)", "ms")
            .value(idle.as_ref().map(|i| i.0).map_err(Clone::clone)),
        Row::new(sec, "RSS idle, right after mounting", "MiB").value(idle.map(|i| i.1)).target(Target::AtMost(64.0)),
    ]
}
