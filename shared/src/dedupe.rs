//! Receiver-side deduplication by (device, sequence number), so QoS 1 redelivery and a device
//! resending its queue after a reconnect count once (DESIGN §3: "a window delivered twice counts
//! once"; `docs/protocol.md`, *Delivery and deduplication*).
//!
//! [`Dedupe`] keeps, per key, a high watermark (the highest sequence number seen) and a bitset
//! of the [`Dedupe::window`] sequence numbers up to it. A sequence number inside that window is
//! accepted exactly once, in any arrival order; one above the watermark moves the window; one
//! below the window is refused as [`Verdict::TooOld`] because whether it was seen can no longer
//! be told, and counting it twice is worse than not counting a window that arrives thousands
//! of windows late. Devices send their queue oldest first, so arrivals are nearly in order and
//! the window only has to absorb redelivery.
//!
//! Memory is bounded per key: `window / 8` bytes plus the watermark. The number of keys is the
//! caller's (one per device); [`Dedupe::forget`] drops one, e.g. for a decommissioned device.
//! No IO, no clock: a control instance that restarts rebuilds the state from what it stored
//! with [`Dedupe::mark_seen`].

use std::collections::HashMap;
use std::hash::Hash;

use crate::wire::DeviceId;

/// Sequence numbers remembered below each key's watermark by default: 4096, which is 512
/// bytes per device and almost three days of 60-second windows.
pub const DEFAULT_WINDOW: u64 = 4096;

/// What to do with an arrival.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// First time: process it.
    New,
    /// Seen before: ignore it.
    Duplicate,
    /// Below the remembered window: ignore it (it may or may not have been seen).
    TooOld,
}

impl Verdict {
    pub fn is_new(self) -> bool {
        self == Verdict::New
    }
}

/// The seen-set of one key: the watermark and a ring of bits for `(high - window, high]`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    high: u64,
    bits: Vec<u64>,
}

impl Seen {
    fn new(window: u64) -> Seen {
        Seen { high: 0, bits: vec![0; (window / 64) as usize] }
    }

    fn window(&self) -> u64 {
        self.bits.len() as u64 * 64
    }

    fn slot(&self, seq: u64) -> (usize, u64) {
        let index = seq % self.window();
        ((index / 64) as usize, 1u64 << (index % 64))
    }

    fn get(&self, seq: u64) -> bool {
        let (word, mask) = self.slot(seq);
        self.bits[word] & mask != 0
    }

    fn set(&mut self, seq: u64) {
        let (word, mask) = self.slot(seq);
        self.bits[word] |= mask;
    }

    fn clear(&mut self, seq: u64) {
        let (word, mask) = self.slot(seq);
        self.bits[word] &= !mask;
    }

    /// Moves the watermark up to `seq`, forgetting the slots it reuses.
    fn advance(&mut self, seq: u64) {
        let distance = seq - self.high;
        if distance >= self.window() {
            self.bits.iter_mut().for_each(|word| *word = 0);
        } else {
            for reused in self.high + 1..=seq {
                self.clear(reused);
            }
        }
        self.high = seq;
    }

    fn check(&mut self, seq: u64, first: bool) -> Verdict {
        if first || seq > self.high {
            if first {
                self.high = seq;
            } else {
                self.advance(seq);
            }
            self.set(seq);
            return Verdict::New;
        }
        if self.high - seq >= self.window() {
            return Verdict::TooOld;
        }
        if self.get(seq) {
            return Verdict::Duplicate;
        }
        self.set(seq);
        Verdict::New
    }
}

/// Deduplicates sequence numbers per key (a [`DeviceId`] unless said otherwise).
#[derive(Debug, Clone)]
pub struct Dedupe<K = DeviceId> {
    window: u64,
    keys: HashMap<K, Seen>,
}

impl<K: Eq + Hash + Clone> Default for Dedupe<K> {
    fn default() -> Self {
        Dedupe::new()
    }
}

impl<K: Eq + Hash + Clone> Dedupe<K> {
    /// With [`DEFAULT_WINDOW`].
    pub fn new() -> Self {
        Dedupe::with_window(DEFAULT_WINDOW)
    }

    /// Remembering `window` sequence numbers per key, rounded up to a multiple of 64 (at
    /// least 64).
    pub fn with_window(window: u64) -> Self {
        let window = window.clamp(64, 1 << 24).div_ceil(64) * 64;
        Dedupe { window, keys: HashMap::new() }
    }

    /// Sequence numbers remembered below each watermark.
    pub fn window(&self) -> u64 {
        self.window
    }

    /// Whether `(key, seq)` is new; records it if so.
    pub fn check(&mut self, key: &K, seq: u64) -> Verdict {
        match self.keys.get_mut(key) {
            Some(seen) => seen.check(seq, false),
            None => {
                let mut seen = Seen::new(self.window);
                let verdict = seen.check(seq, true);
                self.keys.insert(key.clone(), seen);
                verdict
            }
        }
    }

    /// `check(key, seq).is_new()`.
    pub fn accept(&mut self, key: &K, seq: u64) -> bool {
        self.check(key, seq).is_new()
    }

    /// Records `(key, seq)` as seen without asking, e.g. when rebuilding state from storage.
    pub fn mark_seen(&mut self, key: &K, seq: u64) {
        self.check(key, seq);
    }

    /// Whether `(key, seq)` would be refused, without recording anything.
    pub fn is_seen(&self, key: &K, seq: u64) -> bool {
        match self.keys.get(key) {
            None => false,
            Some(seen) if seq > seen.high => false,
            Some(seen) if seen.high - seq >= seen.window() => true,
            Some(seen) => seen.get(seq),
        }
    }

    /// The highest sequence number seen for `key`.
    pub fn high_watermark(&self, key: &K) -> Option<u64> {
        self.keys.get(key).map(|seen| seen.high)
    }

    /// Forgets `key` entirely.
    pub fn forget(&mut self, key: &K) {
        self.keys.remove(key);
    }

    /// Keys tracked.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;

    fn device(id: &str) -> DeviceId {
        DeviceId::new(id).expect("valid id")
    }

    fn verdicts(dedupe: &mut Dedupe, key: &DeviceId, seqs: &[u64]) -> Vec<Verdict> {
        seqs.iter().map(|seq| dedupe.check(key, *seq)).collect()
    }

    use Verdict::{Duplicate as D, New as N, TooOld as O};

    #[test]
    fn in_order_redelivery_counts_once() {
        let mut dedupe = Dedupe::new();
        let d = device("pump-1");
        assert_eq!(verdicts(&mut dedupe, &d, &[1, 2, 3, 2, 3, 4, 1]), [N, N, N, D, D, N, D]);
        assert_eq!(dedupe.high_watermark(&d), Some(4));
    }

    #[test]
    fn out_of_order_arrivals_within_the_window_count_once() {
        let mut dedupe = Dedupe::with_window(64);
        let d = device("pump-1");
        assert_eq!(
            verdicts(&mut dedupe, &d, &[10, 7, 9, 8, 7, 10, 11, 8]),
            [N, N, N, N, D, D, N, D]
        );
        // The first arrival need not be the lowest.
        let e = device("pump-2");
        assert_eq!(verdicts(&mut dedupe, &e, &[100, 40, 99, 40]), [N, N, N, D]);
    }

    #[test]
    fn below_the_window_is_too_old_and_keys_are_independent() {
        let mut dedupe = Dedupe::with_window(64);
        let (a, b) = (device("a"), device("b"));
        assert_eq!(
            verdicts(&mut dedupe, &a, &[0, 63, 64, 0, 1, 200, 137, 136]),
            [N, N, N, O, N, N, N, O]
        );
        assert_eq!(verdicts(&mut dedupe, &b, &[0, 1]), [N, N]);
        assert!(dedupe.is_seen(&a, 1) && !dedupe.is_seen(&a, 201) && dedupe.is_seen(&a, 5));
        dedupe.forget(&a);
        assert_eq!(dedupe.check(&a, 1), N);
        assert_eq!(dedupe.len(), 2);
    }

    #[test]
    fn a_long_jump_forgets_everything_below_the_new_window() {
        let mut dedupe = Dedupe::with_window(64);
        let d = device("d");
        assert_eq!(verdicts(&mut dedupe, &d, &[5, 6, 1_000_000, 999_999, 6]), [N, N, N, N, O]);
        assert_eq!(verdicts(&mut dedupe, &d, &[u64::MAX, u64::MAX, u64::MAX - 1]), [N, D, N]);
    }

    #[test]
    fn windows_are_rounded_and_bounded() {
        assert_eq!(Dedupe::<u32>::with_window(0).window(), 64);
        assert_eq!(Dedupe::<u32>::with_window(65).window(), 128);
        assert_eq!(Dedupe::<u32>::new().window(), DEFAULT_WINDOW);
        assert_eq!(Dedupe::<u32>::with_window(u64::MAX).window(), 1 << 24);
    }

    #[test]
    fn state_rebuilt_with_mark_seen_refuses_what_was_stored() {
        let mut dedupe = Dedupe::<u32>::new();
        for seq in [3, 1, 2] {
            dedupe.mark_seen(&7, seq);
        }
        assert_eq!(dedupe.check(&7, 2), D);
        assert_eq!(dedupe.check(&7, 4), N);
    }

    /// Sequence numbers `base..base + n` of a few devices, each delivered one to three times,
    /// interleaved at random: every (device, seq) must be accepted exactly once.
    fn deliveries() -> impl Strategy<Value = (u64, Vec<(u8, u64)>)> {
        (0u64..u64::MAX / 2, 1u64..200, prop::collection::vec(1usize..4, 200), 1u8..4)
            .prop_flat_map(|(base, n, copies, devices)| {
                let mut all = Vec::new();
                for device in 0..devices {
                    for offset in 0..n {
                        for _ in 0..copies[offset as usize] {
                            all.push((device, base + offset));
                        }
                    }
                }
                (Just(base), Just(all).prop_shuffle())
            })
    }

    proptest! {
        #[test]
        fn any_interleaving_with_duplicates_yields_each_seq_exactly_once((_base, arrivals) in deliveries()) {
            let mut dedupe = Dedupe::<u8>::with_window(256);
            let mut accepted = Vec::new();
            for (device, seq) in &arrivals {
                if dedupe.accept(device, *seq) {
                    accepted.push((*device, *seq));
                }
            }
            let distinct: BTreeSet<(u8, u64)> = arrivals.iter().copied().collect();
            prop_assert_eq!(accepted.len(), distinct.len(), "something was accepted twice or not at all");
            prop_assert_eq!(accepted.into_iter().collect::<BTreeSet<_>>(), distinct);
        }

        #[test]
        fn nothing_is_ever_accepted_twice(seqs in prop::collection::vec(0u64..5_000, 0..500)) {
            let mut dedupe = Dedupe::<u8>::with_window(64);
            let mut accepted = BTreeSet::new();
            for seq in seqs {
                if dedupe.accept(&0, seq) {
                    prop_assert!(accepted.insert(seq), "{} accepted twice", seq);
                }
                prop_assert!(dedupe.is_seen(&0, seq));
            }
        }
    }
}
