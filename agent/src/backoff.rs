//! Reconnect delays: exponential backoff with full jitter above a floor.
//!
//! Sans-IO: [`Backoff`] only computes durations; whoever reconnects sleeps them. The random
//! source is injected ([`JitterSource`]) so tests can fix it, and the ceiling grows
//! `min_delay · 2^attempt` up to `max_delay`. Each delay is drawn uniformly from
//! `[min_delay, ceiling]` ("full jitter", AWS Architecture Blog, *Exponential Backoff And
//! Jitter*), so a fleet that lost its broker at the same moment does not come back in lockstep,
//! and the floor keeps a failing connection from ever hot-looping.

use std::time::Duration;

/// Bounds of the reconnect delay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffConfig {
    /// The smallest delay, also the ceiling of the first attempt. Must be above zero.
    pub min_delay: Duration,
    /// The largest delay the ceiling grows to.
    pub max_delay: Duration,
}

impl BackoffConfig {
    /// `min_delay` raised to 1 ms and `max_delay` to at least `min_delay`, so any config is usable.
    pub fn normalized(self) -> BackoffConfig {
        let min_delay = self.min_delay.max(Duration::from_millis(1));
        BackoffConfig { min_delay, max_delay: self.max_delay.max(min_delay) }
    }
}

/// Where jitter comes from: any source of uniformly distributed `u64`s.
pub trait JitterSource {
    fn next_u64(&mut self) -> u64;
}

impl<F: FnMut() -> u64> JitterSource for F {
    fn next_u64(&mut self) -> u64 {
        self()
    }
}

/// SplitMix64 (Steele, Lea, Flood 2014): a tiny, fast generator whose quality is ample for
/// jitter. Not for anything secret.
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64 { state: seed }
    }

    /// Seeded from the operating system, falling back to the clock if that fails, because a
    /// poor seed only makes jitter less spread, never wrong.
    pub fn from_entropy() -> Self {
        let mut bytes = [0u8; 8];
        let seed = match getrandom::fill(&mut bytes) {
            Ok(()) => u64::from_le_bytes(bytes),
            Err(_) => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0x9e37_79b9_7f4a_7c15),
        };
        SplitMix64::new(seed)
    }
}

impl JitterSource for SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// The delay before each reconnect attempt; [`Backoff::reset`] after a successful connect.
#[derive(Debug, Clone)]
pub struct Backoff<J> {
    config: BackoffConfig,
    /// Failed attempts since the last reset.
    attempt: u32,
    jitter: J,
}

impl<J: JitterSource> Backoff<J> {
    pub fn new(config: BackoffConfig, jitter: J) -> Self {
        Backoff { config: config.normalized(), attempt: 0, jitter }
    }

    /// How many delays were handed out since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// The ceiling of the next delay: `min_delay · 2^attempt`, at most `max_delay`.
    pub fn ceiling(&self) -> Duration {
        let max = self.config.max_delay;
        if self.attempt >= 64 {
            return max;
        }
        let nanos = self.config.min_delay.as_nanos().saturating_mul(1u128 << self.attempt);
        if nanos >= max.as_nanos() {
            return max;
        }
        // Below `max_delay`, so it fits a Duration.
        let seconds = (nanos / 1_000_000_000) as u64;
        Duration::new(seconds, (nanos % 1_000_000_000) as u32)
    }

    /// The delay to wait before the next attempt, uniformly in `[min_delay, ceiling]`.
    pub fn next_delay(&mut self) -> Duration {
        let low = self.config.min_delay;
        let spread = self.ceiling().saturating_sub(low);
        self.attempt = self.attempt.saturating_add(1);
        let spread_nanos = u64::try_from(spread.as_nanos()).unwrap_or(u64::MAX);
        if spread_nanos == 0 {
            return low;
        }
        // Multiply-shift maps the random word onto 0..=spread without modulo bias worth noting.
        let scaled = (u128::from(self.jitter.next_u64()) * (u128::from(spread_nanos) + 1)) >> 64;
        low + Duration::from_nanos(scaled as u64)
    }

    /// Back to the first attempt's ceiling, after a connection succeeded.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(min_ms: u64, max_ms: u64) -> BackoffConfig {
        BackoffConfig {
            min_delay: Duration::from_millis(min_ms),
            max_delay: Duration::from_millis(max_ms),
        }
    }

    fn delays(backoff: &mut Backoff<impl JitterSource>, n: usize) -> Vec<u64> {
        (0..n).map(|_| backoff.next_delay().as_millis() as u64).collect()
    }

    #[test]
    fn highest_jitter_follows_the_doubling_ceiling_up_to_max() {
        let mut backoff = Backoff::new(config(100, 1_000), || u64::MAX);
        assert_eq!(delays(&mut backoff, 7), [100, 200, 400, 800, 1_000, 1_000, 1_000]);
        assert_eq!(backoff.attempts(), 7);
    }

    #[test]
    fn lowest_jitter_stays_at_the_floor() {
        let mut backoff = Backoff::new(config(100, 1_000), || 0);
        assert_eq!(delays(&mut backoff, 5), [100; 5]);
    }

    #[test]
    fn reset_starts_over() {
        let mut backoff = Backoff::new(config(50, 10_000), || u64::MAX);
        assert_eq!(delays(&mut backoff, 3), [50, 100, 200]);
        backoff.reset();
        assert_eq!(backoff.attempts(), 0);
        assert_eq!(delays(&mut backoff, 2), [50, 100]);
    }

    #[test]
    fn middle_jitter_lands_in_the_middle() {
        let mut backoff = Backoff::new(config(100, 100_000), || u64::MAX / 2);
        // ceilings 100, 200, 400, 800: halfway between floor and ceiling.
        assert_eq!(delays(&mut backoff, 4), [100, 150, 250, 450]);
    }

    #[test]
    fn delays_stay_within_bounds_for_any_random_word_and_many_attempts() {
        let mut rng = SplitMix64::new(7);
        let mut backoff = Backoff::new(config(10, 5_000), SplitMix64::new(42));
        for _ in 0..200 {
            let delay = backoff.next_delay();
            assert!(delay >= Duration::from_millis(10) && delay <= Duration::from_millis(5_000));
            if rng.next_u64().is_multiple_of(17) {
                backoff.reset();
            }
        }
        let mut huge = Backoff::new(config(1, u64::MAX / 4), || u64::MAX);
        for _ in 0..100 {
            huge.next_delay();
        }
        assert_eq!(huge.ceiling(), Duration::from_millis(u64::MAX / 4));
    }

    #[test]
    fn degenerate_configs_are_normalized() {
        let mut zero = Backoff::new(config(0, 0), || u64::MAX);
        assert_eq!(zero.next_delay(), Duration::from_millis(1));
        let mut inverted = Backoff::new(config(500, 10), || u64::MAX);
        assert_eq!(delays(&mut inverted, 2), [500, 500]);
    }

    #[test]
    fn jitter_spreads_a_fleet() {
        let mut seeds = SplitMix64::new(1);
        let firsts: std::collections::BTreeSet<u64> = (0..50)
            .map(|_| {
                let mut backoff =
                    Backoff::new(config(100, 60_000), SplitMix64::new(seeds.next_u64()));
                backoff.next_delay();
                backoff.next_delay();
                backoff.next_delay().as_millis() as u64
            })
            .collect();
        assert!(firsts.len() > 30, "50 devices picked only {} distinct delays", firsts.len());
    }
}
