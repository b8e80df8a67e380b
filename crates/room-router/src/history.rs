//! Retained rooms (SPEC section 7): which rooms keep history and how much, where a message
//! stands in its room, and the in-memory ring the in-process bus keeps history in.
//!
//! A retained room's messages get offsets 1, 2, 3, ... in one epoch. The epoch names one
//! life of the room's history: when the history is lost (Redis flushed or restarted without
//! persistence, a node restarted in embedded mode), offsets start again in a new epoch, so a
//! client's position from before is recognised as foreign instead of silently matching other
//! messages.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use protocol::room::RoomPattern;
use protocol::{Envelope, EnvelopeBody, RoomName};
use rand::distr::{Alphanumeric, SampleString};

/// What a retained room keeps: at most `size` messages, each for at most `ttl`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Messages kept per room.
    pub size: usize,
    /// How long each message is kept.
    pub ttl: Duration,
}

/// How long a room's position (epoch and latest offset) outlives its last write: longer than
/// its messages, so that a client that saw the last message of a room gone quiet still hears
/// `recovered: true` rather than a new epoch when it comes back the next day.
pub const POSITION_TTL: Duration = Duration::from_secs(24 * 3600);

/// Where a message stands in its room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    /// 1 for the first message of the epoch; 0 is "before any message".
    pub offset: u64,
    /// The epoch the offset belongs to.
    pub epoch: String,
}

/// What a room retains after a client's position.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryPage {
    /// The room's latest position when it was read.
    pub latest: Position,
    /// Retained room envelopes after the position asked for, oldest first, each with its
    /// offset and epoch; every retained one when the epoch asked for is not the room's.
    pub entries: Vec<Envelope>,
}

impl HistoryPage {
    /// Whether a client at `since` in `epoch` (`None`: the room's) misses nothing by taking
    /// this page: same epoch, `since` not past the latest offset, and every message after it
    /// still retained.
    pub fn recovers(&self, since: u64, epoch: Option<&str>) -> bool {
        if epoch.is_some_and(|e| e != self.latest.epoch) || since > self.latest.offset {
            return false;
        }
        since == self.latest.offset || offset_of(self.entries.first()) == Some(since + 1)
    }
}

/// The offset a room envelope carries.
pub fn offset_of(envelope: Option<&Envelope>) -> Option<u64> {
    match envelope.map(|e| &e.body) {
        Some(EnvelopeBody::Room { offset, .. }) => *offset,
        _ => None,
    }
}

/// Which rooms are retained: `[[history]]` entries, the first whose pattern matches wins.
#[derive(Debug, Clone, Default)]
pub struct RetentionPolicy {
    rules: Vec<(Vec<RoomPattern>, Retention)>,
}

impl RetentionPolicy {
    /// Rules in configuration order.
    pub fn new(rules: Vec<(Vec<RoomPattern>, Retention)>) -> Self {
        RetentionPolicy { rules }
    }

    /// What `room` retains, if it is retained.
    pub fn of(&self, room: &RoomName) -> Option<Retention> {
        self.rules
            .iter()
            .find(|(patterns, _)| protocol::room::any_matches(patterns, room.as_str()))
            .map(|(_, r)| *r)
    }

    /// Whether no room is retained.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

/// Characters in an epoch.
pub const EPOCH_LEN: usize = 12;

/// A fresh epoch: random, so that two lives of a room never share one.
pub fn new_epoch() -> String {
    Alphanumeric.sample_string(&mut rand::rng(), EPOCH_LEN)
}

/// One room's history in memory (the in-process bus): the same semantics as the Redis
/// stream, so embedded mode and a cluster answer clients alike.
#[derive(Debug)]
pub struct Ring {
    epoch: String,
    top: u64,
    entries: VecDeque<(Instant, Envelope)>,
    last_write: Instant,
    /// The retention last applied (the ring outlives its messages by [`POSITION_TTL`]).
    ttl: Duration,
}

impl Ring {
    /// An empty history in a new epoch.
    pub fn new() -> Self {
        Ring {
            epoch: new_epoch(),
            top: 0,
            entries: VecDeque::new(),
            last_write: Instant::now(),
            ttl: Duration::ZERO,
        }
    }

    /// Gives `envelope` the next offset, keeps it, and returns its position.
    pub fn append(&mut self, envelope: &mut Envelope, retention: Retention) -> Position {
        let now = Instant::now();
        self.top += 1;
        let position = Position {
            offset: self.top,
            epoch: self.epoch.clone(),
        };
        stamp(envelope, &position);
        self.entries.push_back((now, envelope.clone()));
        while self.entries.len() > retention.size {
            self.entries.pop_front();
        }
        self.expire(now, retention.ttl);
        self.last_write = now;
        self.ttl = retention.ttl;
        position
    }

    /// What is retained after `since` (everything retained when `epoch` is another one).
    pub fn read(&mut self, since: u64, epoch: Option<&str>, retention: Retention) -> HistoryPage {
        self.expire(Instant::now(), retention.ttl);
        let since = if epoch.is_some_and(|e| e != self.epoch) {
            0
        } else {
            since
        };
        HistoryPage {
            latest: Position {
                offset: self.top,
                epoch: self.epoch.clone(),
            },
            entries: self
                .entries
                .iter()
                .filter(|(_, e)| offset_of(Some(e)).is_some_and(|o| o > since))
                .map(|(_, e)| e.clone())
                .collect(),
        }
    }

    /// Whether the position itself has expired ([`POSITION_TTL`] past the last write): the
    /// ring can go, and the room starts again in a new epoch.
    pub fn expired(&self) -> bool {
        self.last_write.elapsed() > self.ttl + POSITION_TTL
    }

    fn expire(&mut self, now: Instant, ttl: Duration) {
        while self
            .entries
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) > ttl)
        {
            self.entries.pop_front();
        }
    }
}

impl Default for Ring {
    fn default() -> Self {
        Self::new()
    }
}

/// Writes `position` into a room envelope.
pub fn stamp(envelope: &mut Envelope, position: &Position) {
    if let EnvelopeBody::Room { offset, epoch, .. } = &mut envelope.body {
        *offset = Some(position.offset);
        *epoch = Some(position.epoch.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::{NodeId, Payload};

    fn message(n: u8) -> Envelope {
        Envelope {
            origin: NodeId::new("n"),
            body: EnvelopeBody::Room {
                room: RoomName::parse("r").unwrap(),
                from: None,
                exclude: None,
                data: Payload::Json(vec![b'0' + n].into()),
                offset: None,
                epoch: None,
            },
            traceparent: None,
        }
    }

    const KEEP3: Retention = Retention {
        size: 3,
        ttl: Duration::from_secs(60),
    };

    #[test]
    fn offsets_increase_and_the_ring_keeps_the_newest() {
        let mut ring = Ring::new();
        let positions: Vec<u64> = (0..5)
            .map(|n| ring.append(&mut message(n), KEEP3).offset)
            .collect();
        assert_eq!(positions, [1, 2, 3, 4, 5]);
        let epoch = ring.read(0, None, KEEP3).latest.epoch;
        let page = ring.read(3, Some(&epoch), KEEP3);
        assert_eq!(offset_of(page.entries.first()), Some(4));
        assert_eq!(page.entries.len(), 2);
        assert!(page.recovers(3, Some(&epoch)));
        assert!(
            page.recovers(5, Some(&epoch)),
            "nothing missed at the latest"
        );
        let page = ring.read(1, Some(&epoch), KEEP3);
        assert_eq!(page.entries.len(), 3, "what is retained after since");
        assert!(!page.recovers(1, Some(&epoch)), "offset 2 is gone");
        assert!(
            !ring.read(9, None, KEEP3).recovers(9, None),
            "past the latest"
        );
        let other = ring.read(4, Some("other"), KEEP3);
        assert_eq!(other.entries.len(), 3, "another epoch gets everything");
        assert!(!other.recovers(4, Some("other")));
    }

    #[test]
    fn messages_expire_after_ttl_but_the_position_stays() {
        let short = Retention {
            size: 10,
            ttl: Duration::from_millis(20),
        };
        let mut ring = Ring::new();
        ring.append(&mut message(1), short);
        std::thread::sleep(Duration::from_millis(40));
        let page = ring.read(0, None, short);
        assert!(page.entries.is_empty());
        assert_eq!(page.latest.offset, 1);
        assert!(page.recovers(1, None));
        assert!(!page.recovers(0, None), "offset 1 expired");
        assert!(!ring.expired());
    }

    #[test]
    fn first_matching_rule_wins() {
        let rule = |p: &str, size| {
            (
                vec![RoomPattern::new(p)],
                Retention {
                    size,
                    ttl: Duration::from_secs(1),
                },
            )
        };
        let policy = RetentionPolicy::new(vec![rule("chat:vip*", 5), rule("chat:*", 50)]);
        let size = |r: &str| policy.of(&RoomName::parse(r).unwrap()).map(|r| r.size);
        assert_eq!(size("chat:vip1"), Some(5));
        assert_eq!(size("chat:a"), Some(50));
        assert_eq!(size("other"), None);
    }
}
