//! Token-bucket rate limiting for device I/O (bandwidth in bytes and operations), with
//! Firecracker's semantics:
//!
//! - A bucket holds up to `size` tokens and starts full. It refills continuously at
//!   `size / refill_time` tokens per millisecond.
//! - `one_time_burst` is an extra budget, spent before the regular one and never refilled.
//! - A bucket with `size == 0` or `refill_time == 0` is disabled (unlimited).
//! - A request larger than `size` can never fit, so it is let through when the bucket is full
//!   and leaves the limiter blocked until the excess has been paid back.
//!
//! When a bucket runs dry the limiter arms its [`TimerFd`] for the time the missing tokens need
//! and reports itself blocked; the device stops processing its queue, the event loop watches
//! [`RateLimiter::as_raw_fd`], and on expiry calls [`RateLimiter::event_handler`] and retries.

use std::io;
use std::os::unix::io::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use vmm_sys_util::timerfd::TimerFd;

const NANOS_PER_MILLI: u128 = 1_000_000;
/// Shortest timer we arm, so a nearly-full bucket does not spin the event loop.
const MIN_WAIT: Duration = Duration::from_millis(1);

/// Errors of the rate limiter.
#[derive(Debug, thiserror::Error)]
pub enum RateLimiterError {
    #[error("Cannot create the rate limiter timer")]
    TimerCreate(#[source] io::Error),
    #[error("Cannot make the rate limiter timer non-blocking")]
    TimerFlags(#[source] io::Error),
    #[error("Cannot read the rate limiter timer")]
    TimerRead(#[source] io::Error),
}

/// The configuration of one token bucket (Firecracker's `TokenBucket` JSON object).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TokenBucketConfig {
    /// Capacity in tokens (bytes or operations).
    pub size: u64,
    /// Initial extra tokens, spent first and never refilled.
    pub one_time_burst: u64,
    /// Milliseconds to refill an empty bucket to `size`.
    pub refill_time: u64,
}

/// Both buckets of a limiter; `None` disables that kind of limiting.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateLimiterConfig {
    pub bandwidth: Option<TokenBucketConfig>,
    pub ops: Option<TokenBucketConfig>,
}

/// What a token counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenType {
    Bytes,
    Ops,
}

/// How PATCH changes one bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BucketUpdate {
    /// Keep the bucket as it is.
    None,
    /// Remove the bucket (unlimited).
    Disabled,
    /// Replace the bucket with a fresh, full one.
    Update(TokenBucketConfig),
}

impl From<Option<TokenBucketConfig>> for BucketUpdate {
    /// `Some` replaces the bucket (a zero size disables it); `None` keeps it.
    fn from(cfg: Option<TokenBucketConfig>) -> Self {
        match cfg {
            None => BucketUpdate::None,
            Some(c) if c.size == 0 || c.refill_time == 0 => BucketUpdate::Disabled,
            Some(c) => BucketUpdate::Update(c),
        }
    }
}

/// The outcome of asking a bucket for tokens.
#[derive(Debug, PartialEq, Eq)]
enum Reduce {
    Success,
    /// Not enough tokens; nothing was consumed. Holds the wait until there will be.
    Failure(Duration),
    /// More than `size` requested from a full bucket: granted, the bucket is empty and the
    /// limiter must wait this long to pay the excess back.
    OverConsumption(Duration),
}

/// One token bucket.
#[derive(Debug)]
pub struct TokenBucket {
    size: u64,
    one_time_burst: u64,
    refill_time_ms: u64,
    budget: u64,
    last_update: Instant,
}

impl TokenBucket {
    /// A full bucket, or `None` when `cfg` disables it.
    pub fn new(cfg: TokenBucketConfig) -> Option<Self> {
        if cfg.size == 0 || cfg.refill_time == 0 {
            return None;
        }
        Some(TokenBucket {
            size: cfg.size,
            one_time_burst: cfg.one_time_burst,
            refill_time_ms: cfg.refill_time,
            budget: cfg.size,
            last_update: Instant::now(),
        })
    }

    fn refill_ns(&self) -> u128 {
        self.refill_time_ms as u128 * NANOS_PER_MILLI
    }

    /// Adds the tokens earned since the last update. Only whole tokens are added and only the
    /// time they correspond to is accounted, so no fraction is lost between calls.
    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last_update).as_nanos();
        let earned = elapsed * self.size as u128 / self.refill_ns();
        if earned == 0 {
            return;
        }
        let room = (self.size - self.budget) as u128;
        if earned >= room {
            self.budget = self.size;
            self.last_update = now;
        } else {
            self.budget += earned as u64;
            let used_ns = earned * self.refill_ns() / self.size as u128;
            self.last_update += Duration::from_nanos(used_ns.min(u64::MAX as u128) as u64);
        }
    }

    /// Time to earn `tokens` tokens.
    fn time_for(&self, tokens: u64) -> Duration {
        let ns = (tokens as u128 * self.refill_ns()).div_ceil(self.size as u128);
        Duration::from_nanos(ns.min(u64::MAX as u128) as u64)
    }

    fn reduce_at(&mut self, tokens: u64, now: Instant) -> Reduce {
        self.refill(now);
        let mut needed = tokens;
        let burst = self.one_time_burst;
        if burst > 0 {
            if burst >= needed {
                self.one_time_burst -= needed;
                return Reduce::Success;
            }
            needed -= burst;
        }
        if needed <= self.budget {
            self.one_time_burst = 0;
            self.budget -= needed;
            return Reduce::Success;
        }
        if needed > self.size {
            if self.budget < self.size {
                // Wait until the bucket is full before letting an oversized request through.
                return Reduce::Failure(self.time_for(self.size - self.budget));
            }
            self.one_time_burst = 0;
            self.budget = 0;
            return Reduce::OverConsumption(self.time_for(needed - self.size));
        }
        Reduce::Failure(self.time_for(needed - self.budget))
    }

    fn reduce(&mut self, tokens: u64) -> Reduce {
        self.reduce_at(tokens, Instant::now())
    }

    /// Gives tokens back (e.g. after a request could not proceed for another reason).
    pub fn replenish(&mut self, tokens: u64) {
        self.budget = self.size.min(self.budget.saturating_add(tokens));
    }

    /// Regular tokens currently available (without refilling).
    pub fn budget(&self) -> u64 {
        self.budget
    }

    /// One-time burst tokens left.
    pub fn one_time_burst(&self) -> u64 {
        self.one_time_burst
    }

    /// The bucket's configuration.
    pub fn config(&self) -> TokenBucketConfig {
        TokenBucketConfig {
            size: self.size,
            one_time_burst: self.one_time_burst,
            refill_time: self.refill_time_ms,
        }
    }
}

/// A bandwidth bucket and an ops bucket with a shared retry timer.
#[derive(Debug)]
pub struct RateLimiter {
    bandwidth: Option<TokenBucket>,
    ops: Option<TokenBucket>,
    timer: TimerFd,
    blocked: bool,
}

impl RateLimiter {
    /// A limiter with the given buckets (a `None` or zero-sized bucket means unlimited).
    pub fn new(cfg: RateLimiterConfig) -> Result<Self, RateLimiterError> {
        let timer = TimerFd::new().map_err(|e| RateLimiterError::TimerCreate(e.into()))?;
        set_nonblocking(timer.as_raw_fd()).map_err(RateLimiterError::TimerFlags)?;
        Ok(RateLimiter {
            bandwidth: cfg.bandwidth.and_then(TokenBucket::new),
            ops: cfg.ops.and_then(TokenBucket::new),
            timer,
            blocked: false,
        })
    }

    /// A limiter that never limits.
    pub fn unlimited() -> Result<Self, RateLimiterError> {
        Self::new(RateLimiterConfig::default())
    }

    fn bucket(&mut self, kind: TokenType) -> Option<&mut TokenBucket> {
        match kind {
            TokenType::Bytes => self.bandwidth.as_mut(),
            TokenType::Ops => self.ops.as_mut(),
        }
    }

    /// Takes `tokens` of `kind`. Returns false, and consumes nothing, when the limiter is blocked
    /// or the bucket lacks tokens; the timer is then armed to fire when it is worth retrying.
    pub fn consume(&mut self, tokens: u64, kind: TokenType) -> bool {
        if self.blocked {
            return false;
        }
        let Some(bucket) = self.bucket(kind) else {
            return true;
        };
        match bucket.reduce(tokens) {
            Reduce::Success => true,
            Reduce::Failure(wait) => {
                self.block_for(wait);
                false
            }
            Reduce::OverConsumption(wait) => {
                self.block_for(wait);
                true
            }
        }
    }

    /// Gives back tokens taken by [`consume`](Self::consume).
    pub fn manual_replenish(&mut self, tokens: u64, kind: TokenType) {
        if let Some(bucket) = self.bucket(kind) {
            bucket.replenish(tokens);
        }
    }

    fn block_for(&mut self, wait: Duration) {
        let wait = wait.max(MIN_WAIT);
        match self.timer.reset(wait, None) {
            Ok(()) => self.blocked = true,
            // Without a timer nobody would unblock us: stay unblocked and let the next
            // notification retry instead.
            Err(e) => tracing::error!("rate limiter: cannot arm timer: {e}"),
        }
    }

    /// Whether the limiter waits for its timer.
    pub fn is_blocked(&self) -> bool {
        self.blocked
    }

    /// Call when the timer fd is readable: consumes the expiration and unblocks the limiter.
    pub fn event_handler(&mut self) -> Result<(), RateLimiterError> {
        match self.timer.wait() {
            Ok(_) => {}
            Err(e) if e.errno() == libc::EAGAIN => {
                // Not expired yet (a spurious wake-up) or already consumed: stay as we are,
                // unless the timer is no longer armed.
                if self.timer.is_armed().unwrap_or(false) {
                    return Ok(());
                }
            }
            Err(e) => return Err(RateLimiterError::TimerRead(e.into())),
        }
        self.blocked = false;
        Ok(())
    }

    /// Applies a PATCH. Replaced buckets start full. A pending timer still fires and unblocks.
    pub fn update_buckets(&mut self, bandwidth: BucketUpdate, ops: BucketUpdate) {
        fn apply(slot: &mut Option<TokenBucket>, update: BucketUpdate) {
            match update {
                BucketUpdate::None => {}
                BucketUpdate::Disabled => *slot = None,
                BucketUpdate::Update(cfg) => *slot = TokenBucket::new(cfg),
            }
        }
        apply(&mut self.bandwidth, bandwidth);
        apply(&mut self.ops, ops);
    }

    /// The bandwidth bucket, if any.
    pub fn bandwidth(&self) -> Option<&TokenBucket> {
        self.bandwidth.as_ref()
    }

    /// The ops bucket, if any.
    pub fn ops(&self) -> Option<&TokenBucket> {
        self.ops.as_ref()
    }
}

impl AsRawFd for RateLimiter {
    /// The timer fd to watch for readability.
    fn as_raw_fd(&self) -> RawFd {
        self.timer.as_raw_fd()
    }
}

fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: F_GETFL on a valid fd we own reads its flags and touches no memory.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: F_SETFL only changes the fd's status flags; the fd is valid and ours.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(size: u64, burst: u64, refill_ms: u64) -> TokenBucketConfig {
        TokenBucketConfig {
            size,
            one_time_burst: burst,
            refill_time: refill_ms,
        }
    }

    #[test]
    fn disabled_buckets() {
        assert!(TokenBucket::new(cfg(0, 0, 100)).is_none());
        assert!(TokenBucket::new(cfg(100, 0, 0)).is_none());
        let mut rl = RateLimiter::unlimited().unwrap();
        assert!(rl.consume(u64::MAX, TokenType::Bytes));
        assert!(rl.consume(u64::MAX, TokenType::Ops));
        assert!(!rl.is_blocked());
        assert_eq!(
            BucketUpdate::from(Some(cfg(0, 0, 1))),
            BucketUpdate::Disabled
        );
        assert_eq!(BucketUpdate::from(None), BucketUpdate::None);
    }

    #[test]
    fn refill_is_proportional_and_capped() {
        let mut b = TokenBucket::new(cfg(1000, 0, 1000)).unwrap();
        let t0 = b.last_update;
        assert_eq!(b.reduce_at(1000, t0), Reduce::Success);
        assert_eq!(b.budget(), 0);
        // 1 token per ms: after 250 ms, 250 tokens.
        b.refill(t0 + Duration::from_millis(250));
        assert_eq!(b.budget(), 250);
        // Fractions are not lost: 0.5 ms twice make one token.
        b.refill(t0 + Duration::from_micros(250_500));
        b.refill(t0 + Duration::from_millis(251));
        assert_eq!(b.budget(), 251);
        // Capped at size.
        b.refill(t0 + Duration::from_secs(100));
        assert_eq!(b.budget(), 1000);
    }

    #[test]
    fn failure_reports_wait_and_consumes_nothing() {
        let mut b = TokenBucket::new(cfg(100, 0, 100)).unwrap();
        let t0 = b.last_update;
        assert_eq!(b.reduce_at(80, t0), Reduce::Success);
        assert_eq!(
            b.reduce_at(50, t0),
            Reduce::Failure(Duration::from_millis(30))
        );
        assert_eq!(b.budget(), 20);
        assert_eq!(
            b.reduce_at(50, t0 + Duration::from_millis(30)),
            Reduce::Success
        );
        assert_eq!(b.budget(), 0);
    }

    #[test]
    fn one_time_burst_is_spent_first_and_not_refilled() {
        let mut b = TokenBucket::new(cfg(100, 50, 100)).unwrap();
        let t0 = b.last_update;
        assert_eq!(b.reduce_at(30, t0), Reduce::Success);
        assert_eq!((b.one_time_burst(), b.budget()), (20, 100));
        // 20 from the burst, 60 from the budget.
        assert_eq!(b.reduce_at(80, t0), Reduce::Success);
        assert_eq!((b.one_time_burst(), b.budget()), (0, 40));
        b.refill(t0 + Duration::from_secs(10));
        assert_eq!((b.one_time_burst(), b.budget()), (0, 100));
        // An oversized request spends the burst and the full budget, then owes the rest.
        let mut b = TokenBucket::new(cfg(10, 5, 100)).unwrap();
        let t0 = b.last_update;
        assert_eq!(
            b.reduce_at(20, t0),
            Reduce::OverConsumption(Duration::from_millis(50))
        );
        assert_eq!((b.one_time_burst(), b.budget()), (0, 0));
    }

    #[test]
    fn oversized_request_passes_when_full_then_blocks() {
        let mut b = TokenBucket::new(cfg(100, 0, 100)).unwrap();
        let t0 = b.last_update;
        assert_eq!(
            b.reduce_at(300, t0),
            Reduce::OverConsumption(Duration::from_millis(200))
        );
        assert_eq!(b.budget(), 0);
        // Not full: an oversized request waits for a full bucket.
        assert_eq!(
            b.reduce_at(300, t0 + Duration::from_millis(40)),
            Reduce::Failure(Duration::from_millis(60))
        );
    }

    #[test]
    fn limiter_blocks_until_timer_fires() {
        let mut rl = RateLimiter::new(RateLimiterConfig {
            bandwidth: Some(cfg(1000, 0, 20)),
            ops: Some(cfg(2, 0, 20)),
        })
        .unwrap();
        assert!(rl.consume(1, TokenType::Ops));
        assert!(rl.consume(1, TokenType::Ops));
        assert!(!rl.consume(1, TokenType::Ops));
        assert!(rl.is_blocked());
        // While blocked, everything is refused, including other kinds.
        assert!(!rl.consume(1, TokenType::Bytes));
        // A spurious wake-up before expiry keeps it blocked.
        rl.event_handler().unwrap();
        assert!(rl.is_blocked());
        std::thread::sleep(Duration::from_millis(25));
        rl.event_handler().unwrap();
        assert!(!rl.is_blocked());
        assert!(rl.consume(1, TokenType::Ops));
        assert!(rl.consume(1000, TokenType::Bytes));
        // Replenish gives tokens back.
        rl.manual_replenish(500, TokenType::Bytes);
        assert!(rl.consume(500, TokenType::Bytes));
    }

    #[test]
    fn update_buckets_replaces_and_disables() {
        let mut rl = RateLimiter::new(RateLimiterConfig {
            bandwidth: Some(cfg(10, 0, 1000)),
            ops: None,
        })
        .unwrap();
        assert!(rl.consume(10, TokenType::Bytes));
        rl.update_buckets(BucketUpdate::Update(cfg(100, 0, 1000)), BucketUpdate::None);
        assert_eq!(rl.bandwidth().unwrap().budget(), 100);
        assert!(rl.ops().is_none());
        rl.update_buckets(BucketUpdate::None, BucketUpdate::Update(cfg(1, 0, 1000)));
        assert_eq!(rl.bandwidth().unwrap().config().size, 100);
        assert!(rl.consume(1, TokenType::Ops));
        rl.update_buckets(BucketUpdate::Disabled, BucketUpdate::Disabled);
        assert!(rl.bandwidth().is_none() && rl.ops().is_none());
    }
}
