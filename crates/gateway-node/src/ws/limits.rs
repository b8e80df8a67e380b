//! Per-node and per-IP connection slots, and the per-connection message rate limit
//! (SPEC section 11).

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
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

    /// Whether the node is full, checked before anything else in the handshake.
    pub fn node_full(&self) -> bool {
        self.max_total != 0 && self.total.load(Ordering::Acquire) >= self.max_total
    }

    /// Takes a slot for a connection from `ip`; released when the guard drops.
    pub fn acquire(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, SlotError> {
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
        assert!(slots.node_full());
        assert_eq!(slots.acquire(b).unwrap_err(), SlotError::NodeFull);
        drop(s1);
        assert_eq!(slots.total(), 2);
        assert!(slots.acquire(a).is_ok());
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
