//! Scenario `floor`: what a loopback fan-out costs the kernel alone, with no gateway.
//!
//! A sender thread pinned where the node runs in `broadcast` (`--sender-cpu`) writes one
//! `--size`-byte record to each of `--members` loopback TCP connections per burst, `--rate`
//! bursts per second, with the non-blocking `send(2)` the node's fan-out uses; a receiver
//! thread pinned where the harness runs (`--receiver-cpu`) reads them through tokio, as the
//! harness's members do. Its burst span, publish-to-delivery latency and sender CPU per 1,000
//! sends bound what any server on this machine can reach with one TCP segment per recipient
//! from one core: `broadcast` figures are read against it, measured in the same run (the
//! machine's speed moves from day to day).

use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use serde_json::json;
use tokio::io::AsyncReadExt;

use crate::cli::FloorArgs;
use crate::client::source_for;
use crate::report::{self, ms, round, Outcome};
use crate::worker::histogram;

/// Bytes of a record that carry its burst's start time.
const STAMP: usize = 8;

/// How long connecting every member may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(60);

/// Connections one process may hold here, two descriptors each, under the 20,000-file limit.
pub const MAX_MEMBERS: u64 = 9_000;

/// What the receiver saw.
struct Received {
    records: AtomicU64,
    /// Records that did not carry a known burst stamp: a framing bug, never expected.
    garbled: AtomicU64,
    latency_us: Mutex<Histogram<u64>>,
}

/// Runs the scenario and reports.
pub fn run(args: FloorArgs) -> anyhow::Result<()> {
    let m = measure(&args)?;
    outcome(&args, &m)
}

/// What one run measured.
struct Measured {
    members: usize,
    size: usize,
    sent: Sent,
    received: u64,
    garbled: u64,
    latency_us: Histogram<u64>,
}

fn measure(args: &FloorArgs) -> anyhow::Result<Measured> {
    if args.members > MAX_MEMBERS {
        bail!(
            "--members {} is more than one process can hold here ({MAX_MEMBERS}: two sockets \
             each under the 20,000-file limit)",
            args.members
        );
    }
    let size = args.size.max(STAMP);
    let members = args.members as usize;
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("binding a listener")?;
    // std listens with a short backlog; thousands of connects arrive at once.
    // SAFETY: a valid listening socket; listen(2) again only changes the backlog.
    if unsafe { libc::listen(listener.as_raw_fd(), 4096) } != 0 {
        return Err(io::Error::last_os_error()).context("setting the listen backlog");
    }
    let addr = listener.local_addr()?;
    let base = Instant::now();
    let received = Arc::new(Received {
        records: AtomicU64::new(0),
        garbled: AtomicU64::new(0),
        latency_us: Mutex::new(histogram()),
    });
    let stop = Arc::new(AtomicBool::new(false));
    let (connected_tx, connected_rx) = mpsc::channel();
    let receiver = {
        let (received, stop) = (received.clone(), stop.clone());
        let cpu = args.receiver_cpu;
        std::thread::spawn(move || -> anyhow::Result<()> {
            pin(cpu)?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(receive(
                addr,
                members,
                size,
                base,
                received,
                stop,
                connected_tx,
            ))
        })
    };

    // Accepted without blocking, so that a receiver that failed (and will never connect)
    // ends the run instead of hanging it.
    listener.set_nonblocking(true)?;
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    let mut sockets = Vec::with_capacity(members);
    while sockets.len() < members {
        match listener.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(true)?;
                s.set_nodelay(true)?;
                sockets.push(s);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if receiver.is_finished() || Instant::now() > deadline {
                    stop.store(true, Ordering::Relaxed);
                    return match receiver.join() {
                        Ok(Err(e)) => Err(e.context("the receiver failed")),
                        _ => Err(anyhow::anyhow!(
                            "only {} of {members} members connected",
                            sockets.len()
                        )),
                    };
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => return Err(e).context("accepting a member"),
        }
    }
    connected_rx
        .recv_timeout(CONNECT_TIMEOUT)
        .context("the receiver did not connect")??;

    let result = send(args, &sockets, size, base);
    // Stragglers: until everything sent was read, or the grace is over.
    let grace_end = Instant::now() + args.grace;
    if let Ok(sent) = &result {
        while received.records.load(Ordering::Relaxed) < sent.records && Instant::now() < grace_end
        {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    stop.store(true, Ordering::Relaxed);
    drop(sockets);
    let receiver_result = receiver
        .join()
        .map_err(|_| anyhow::anyhow!("the receiver panicked"))?;
    let sent = result?;
    receiver_result?;
    let latency_us = received
        .latency_us
        .lock()
        .map_err(|_| anyhow::anyhow!("latency histogram poisoned"))?
        .clone();
    Ok(Measured {
        members,
        size,
        sent,
        received: received.records.load(Ordering::Relaxed),
        garbled: received.garbled.load(Ordering::Relaxed),
        latency_us,
    })
}

/// What the sender did.
struct Sent {
    bursts: u64,
    records: u64,
    /// Sends that did not take the whole record at once (the socket pushed back); after a
    /// partial one, that connection is left out.
    short: u64,
    span_us: Histogram<u64>,
    cpu_seconds: f64,
}

fn send(
    args: &FloorArgs,
    sockets: &[TcpStream],
    size: usize,
    base: Instant,
) -> anyhow::Result<Sent> {
    pin(args.sender_cpu)?;
    let bursts = (f64::from(args.rate) * args.duration.as_secs_f64()).round() as u64;
    let mut record = vec![b'x'; size];
    let mut out = Sent {
        bursts,
        records: 0,
        short: 0,
        span_us: histogram(),
        cpu_seconds: 0.0,
    };
    // A connection whose socket took part of a record is out of step (the reader frames by
    // size): it gets nothing more, and the part it got is never counted.
    let mut in_step = vec![true; sockets.len()];
    let cpu_before = thread_cpu_seconds();
    let start = Instant::now();
    for burst in 0..bursts {
        let due = start + Duration::from_secs_f64(burst as f64 / f64::from(args.rate));
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let t0 = Instant::now();
        let stamp = t0.duration_since(base).as_nanos() as u64;
        record[..STAMP].copy_from_slice(&stamp.to_le_bytes());
        for (mut s, ok) in sockets.iter().zip(in_step.iter_mut()) {
            if !*ok {
                continue;
            }
            match s.write(&record) {
                Ok(n) if n == size => out.records += 1,
                Ok(_) => {
                    out.short += 1;
                    *ok = false;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => out.short += 1,
                Err(e) => return Err(e).context("sending to a member"),
            }
        }
        out.span_us
            .saturating_record(t0.elapsed().as_micros().max(1) as u64);
    }
    out.cpu_seconds = thread_cpu_seconds() - cpu_before;
    Ok(out)
}

#[allow(clippy::too_many_arguments)]
async fn receive(
    addr: SocketAddr,
    members: usize,
    size: usize,
    base: Instant,
    received: Arc<Received>,
    stop: Arc<AtomicBool>,
    connected: mpsc::Sender<anyhow::Result<()>>,
) -> anyhow::Result<()> {
    let mut tasks = Vec::with_capacity(members);
    for i in 0..members {
        let stream = match connect(addr, i).await {
            Ok(s) => s,
            Err(e) => {
                let _ = connected.send(Err(e));
                bail!("member {i} could not connect");
            }
        };
        tasks.push(tokio::spawn(read_records(
            stream,
            size,
            base,
            received.clone(),
        )));
    }
    let _ = connected.send(Ok(()));
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for t in tasks {
        t.abort();
    }
    Ok(())
}

async fn connect(addr: SocketAddr, index: usize) -> anyhow::Result<tokio::net::TcpStream> {
    let s = tokio::net::TcpSocket::new_v4()?;
    s.bind(SocketAddr::new(IpAddr::V4(source_for(index)), 0))
        .context("binding a loopback source address")?;
    s.connect(addr).await.context("connecting a member")
}

/// Reads fixed-size records and records each one's latency from its burst's start.
async fn read_records(
    mut stream: tokio::net::TcpStream,
    size: usize,
    base: Instant,
    received: Arc<Received>,
) {
    let mut buf = vec![0u8; 4096.max(size)];
    // Bytes of the current record seen so far, and its stamp once complete.
    let mut have = 0usize;
    let mut stamp = [0u8; STAMP];
    loop {
        let n = match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let now = base.elapsed().as_nanos() as u64;
        let mut i = 0;
        while i < n {
            let take = (size - have).min(n - i);
            if have < STAMP {
                let k = (STAMP - have).min(take);
                stamp[have..have + k].copy_from_slice(&buf[i..i + k]);
            }
            have += take;
            i += take;
            if have == size {
                have = 0;
                let sent = u64::from_le_bytes(stamp);
                received.records.fetch_add(1, Ordering::Relaxed);
                if sent > now {
                    received.garbled.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let us = ((now - sent) / 1000).max(1);
                if let Ok(mut h) = received.latency_us.lock() {
                    h.saturating_record(us);
                }
            }
        }
    }
}

fn outcome(args: &FloorArgs, m: &Measured) -> anyhow::Result<()> {
    let (members, size, sent, lat) = (m.members, m.size, &m.sent, &m.latency_us);
    let (got, garbled) = (m.received, m.garbled);
    let per_1000 = if sent.records > 0 {
        sent.cpu_seconds / (sent.records as f64 / 1000.0)
    } else {
        0.0
    };
    let span = &sent.span_us;
    let parameters = json!({
        "members": members,
        "rate_per_second": args.rate,
        "duration_seconds": args.duration.as_secs_f64(),
        "record_bytes": size,
        "sender_cpu": args.sender_cpu,
        "receiver_cpu": args.receiver_cpu,
    });
    let figures = json!({
        "bursts": sent.bursts,
        "sends": sent.records,
        "short_sends": sent.short,
        "received": got,
        "lost": sent.records.saturating_sub(got),
        "garbled": garbled,
        "burst_span_ms": { "p50": ms(span, 0.5), "p99": ms(span, 0.99), "max": ms(span, 1.0) },
        "latency_ms": {
            "p50": ms(lat, 0.5),
            "p99": ms(lat, 0.99),
            "p999": ms(lat, 0.999),
            "max": ms(lat, 1.0),
        },
        "sender_cpu_seconds": round(sent.cpu_seconds, 3),
        "sender_cpu_seconds_per_1000_sends": round(per_1000, 6),
    });
    let summary = vec![
        (
            "members",
            format!("{members} loopback TCP connections, {size}-byte records"),
        ),
        (
            "sends",
            format!(
                "{} in {} bursts at {}/s, {} short",
                sent.records, sent.bursts, args.rate, sent.short
            ),
        ),
        (
            "received",
            format!(
                "{got}, {} lost, {garbled} garbled",
                sent.records.saturating_sub(got)
            ),
        ),
        (
            "burst span",
            format!(
                "p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
                ms(span, 0.5),
                ms(span, 0.99),
                ms(span, 1.0)
            ),
        ),
        ("latency", report::latency_line(lat)),
        (
            "sender CPU",
            format!("{:.2} s, {per_1000:.5} s per 1,000 sends", sent.cpu_seconds),
        ),
    ];
    report::finish(
        Outcome {
            scenario: "floor",
            parameters,
            figures,
            summary,
            timeline: None,
        },
        args.out.as_deref(),
    )
}

/// Pins the calling thread to one CPU.
fn pin(cpu: usize) -> anyhow::Result<()> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes inside it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `cpu` is bounds-checked by CPU_SET against the set's size.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: pid 0 is the calling thread; `set` is a valid set of the given size.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc != 0 {
        return Err(io::Error::last_os_error()).with_context(|| format!("pinning to CPU {cpu}"));
    }
    Ok(())
}

/// CPU time of the calling thread, system time included (the loopback receive work the kernel
/// does inside `send` is charged here, as it is to the node in `broadcast`).
fn thread_cpu_seconds() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid clock id and a valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A CPU this process may run on (CPU 0 may not be one of them).
    fn allowed_cpu() -> usize {
        // SAFETY: a zeroed set is valid; sched_getaffinity fills it for this thread.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        // SAFETY: pid 0 is this thread; `set` is a valid set of the given size.
        let rc =
            unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
        assert_eq!(rc, 0);
        // SAFETY: CPU_ISSET reads inside the set.
        (0..libc::CPU_SETSIZE as usize)
            .find(|&c| unsafe { libc::CPU_ISSET(c, &set) })
            .expect("some CPU is allowed")
    }

    #[test]
    fn a_short_run_delivers_every_record() {
        let cpu = allowed_cpu();
        let args = FloorArgs {
            members: 20,
            rate: 50,
            duration: Duration::from_millis(200),
            size: 40,
            sender_cpu: cpu,
            receiver_cpu: cpu,
            // The most it waits: it stops as soon as everything sent was read.
            grace: Duration::from_secs(10),
            out: None,
        };
        let m = measure(&args).unwrap();
        assert_eq!(m.sent.bursts, 10);
        assert_eq!(m.sent.records + m.sent.short, 200);
        assert_eq!(m.received, m.sent.records);
        assert_eq!(m.garbled, 0);
        assert_eq!(m.latency_us.len(), m.received);
        assert_eq!(m.sent.span_us.len(), 10);
    }

    #[test]
    fn too_many_members_is_a_clear_error() {
        let args = FloorArgs {
            members: MAX_MEMBERS + 1,
            rate: 1,
            duration: Duration::from_secs(1),
            size: 100,
            sender_cpu: 0,
            receiver_cpu: 0,
            grace: Duration::ZERO,
            out: None,
        };
        let e = run(args).unwrap_err().to_string();
        assert!(e.contains("20,000-file"), "{e}");
    }
}
