//! Per-node and per-IP connection slots, and the per-connection message rate limit
//! (SPEC section 11).

use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use parking_lot::Mutex;
use tokio::time::Instant;

/// Live connection counts, for `limits.max_connections` and `limits.max_connections_per_ip`.
#[derive(Debug)]
pub struct Slots {
    max_total: usize,
    max_per_ip: usize,
    total: AtomicUsize,
    per_ip: DashMap<IpAddr, usize>,
}

/// Why no slot was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotError {
    /// The node is full (503).
    NodeFull,
    /// This IP has too many connections (429).
    PerIp,
}

impl Slots {
    /// Slots with the given limits (0: unlimited).
    pub fn new(max_total: usize, max_per_ip: usize) -> Arc<Slots> {
        Arc::new(Slots {
            max_total,
            max_per_ip,
            total: AtomicUsize::new(0),
            per_ip: DashMap::new(),
        })
    }

    /// Takes a slot for a connection from `ip` (counted per [`client_key`]); released when
    /// the guard drops.
    pub fn acquire(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, SlotError> {
        let ip = client_key(ip);
        let before = self.total.fetch_add(1, Ordering::AcqRel);
        if self.max_total != 0 && before >= self.max_total {
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err(SlotError::NodeFull);
        }
        if self.max_per_ip != 0 {
            let mut n = self.per_ip.entry(ip).or_insert(0);
            if *n >= self.max_per_ip {
                drop(n);
                self.total.fetch_sub(1, Ordering::AcqRel);
                return Err(SlotError::PerIp);
            }
            *n += 1;
        }
        Ok(Slot {
            slots: self.clone(),
            ip,
        })
    }

    /// Connections holding a slot.
    pub fn total(&self) -> usize {
        self.total.load(Ordering::Acquire)
    }
}

/// The address the per-IP limit counts a client under. An IPv6 client usually holds a whole
/// /64 (and picks new addresses in it at will), so it counts by its /64; an IPv4-mapped IPv6
/// address counts as the IPv4 address it is.
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !u128::from(u64::MAX))),
        },
    }
}

/// The slot of one accepted client connection, taken when it was accepted so that
/// connections still in their handshake count against the limits (SPEC section 3). The
/// handshake moves it into the session on upgrade; a connection that never upgrades releases
/// it when it closes. A connection refused a slot at accept asks again at its upgrade (one may
/// have freed since), and is refused over HTTP if there is still none.
#[derive(Clone)]
pub struct PendingSlot(Arc<Mutex<Option<Result<Slot, SlotError>>>>);

impl PendingSlot {
    /// Takes a slot for a connection just accepted from `ip`.
    pub fn accept(slots: &Arc<Slots>, ip: IpAddr) -> PendingSlot {
        PendingSlot(Arc::new(Mutex::new(Some(slots.acquire(ip)))))
    }

    /// Whether the connection was refused a slot at accept (it will be answered 503 or 429).
    pub fn refused(&self) -> bool {
        matches!(*self.0.lock(), Some(Err(_)))
    }

    /// The connection's slot for its upgrade, or why there is none.
    pub fn take(&self, slots: &Arc<Slots>, ip: IpAddr) -> Result<Slot, SlotError> {
        match self.0.lock().take() {
            Some(Ok(slot)) => Ok(slot),
            Some(Err(_)) | None => slots.acquire(ip),
        }
    }

    /// Gives back a slot taken for an upgrade that was then refused: the connection stays
    /// open (keep-alive) and still counts.
    pub fn give_back(&self, slot: Slot) {
        *self.0.lock() = Some(Ok(slot));
    }
}

/// A held connection slot.
#[derive(Debug)]
pub struct Slot {
    slots: Arc<Slots>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.slots.total.fetch_sub(1, Ordering::AcqRel);
        if self.slots.max_per_ip != 0 {
            self.slots.per_ip.remove_if_mut(&self.ip, |_, n| {
                *n = n.saturating_sub(1);
                *n == 0
            });
        }
    }
}

/// Token bucket over client messages: `rate` per second, at most `burst` at once.
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl RateLimiter {
    /// A full bucket.
    pub fn new(rate: u32, burst: u32, now: Instant) -> Self {
        RateLimiter {
            rate: f64::from(rate),
            burst: f64::from(burst),
            tokens: f64::from(burst),
            last: now,
        }
    }

    /// Takes one token; false when the client is over the limit.
    pub fn try_take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;
    use std::time::Duration;

    #[test]
    fn slots_enforce_both_limits_and_release() {
        let slots = Slots::new(3, 2);
        let a = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
        let b = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
        let s1 = slots.acquire(a).unwrap();
        let _s2 = slots.acquire(a).unwrap();
        assert_eq!(slots.acquire(a).unwrap_err(), SlotError::PerIp);
        let _s3 = slots.acquire(b).unwrap();
        assert_eq!(slots.acquire(b).unwrap_err(), SlotError::NodeFull);
        drop(s1);
        assert_eq!(slots.total(), 2);
        assert!(slots.acquire(a).is_ok());
    }

    #[test]
    fn ipv6_clients_count_by_their_64() {
        let slots = Slots::new(0, 1);
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let same_64: IpAddr = "2001:db8:1:2:ffff:ffff:ffff:ffff".parse().unwrap();
        let other_64: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        let _held = slots.acquire(a).unwrap();
        assert_eq!(slots.acquire(same_64).unwrap_err(), SlotError::PerIp);
        assert!(slots.acquire(other_64).is_ok());
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(client_key(mapped), "192.0.2.7".parse::<IpAddr>().unwrap());
        let _v4 = slots.acquire("192.0.2.7".parse().unwrap()).unwrap();
        assert_eq!(slots.acquire(mapped).unwrap_err(), SlotError::PerIp);
    }

    #[test]
    fn a_pending_slot_is_taken_once_and_given_back() {
        let slots = Slots::new(1, 0);
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let pending = PendingSlot::accept(&slots, ip);
        assert_eq!(slots.total(), 1, "counted from accept");
        let other = PendingSlot::accept(&slots, ip);
        assert_eq!(other.take(&slots, ip).unwrap_err(), SlotError::NodeFull);
        let slot = pending.take(&slots, ip).unwrap();
        pending.give_back(slot);
        assert_eq!(slots.total(), 1);
        drop(pending);
        assert_eq!(slots.total(), 0, "released when the connection goes");
        assert!(other.take(&slots, ip).is_ok(), "asks again at the upgrade");
    }

    #[test]
    fn bucket_allows_burst_then_rate() {
        let t0 = Instant::now();
        let mut r = RateLimiter::new(10, 3, t0);
        assert!(r.try_take(t0) && r.try_take(t0) && r.try_take(t0));
        assert!(!r.try_take(t0));
        assert!(r.try_take(t0 + Duration::from_millis(100)));
        assert!(!r.try_take(t0 + Duration::from_millis(100)));
    }
}
