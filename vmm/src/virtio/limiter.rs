//! Rate limiters of drives and interfaces: the API's token buckets turned into the devices'
//! configuration, and the snapshot-owned copy of them (kept apart from the API types so a state
//! file accepts fields a newer writer added while the API refuses unknown ones).

use api::models::{RateLimiterConfig, TokenBucket};
use devices::rate_limiter::{self, BucketUpdate, TokenBucketConfig};
use serde::{Deserialize, Serialize};

/// The device-side form of one API token bucket.
pub fn bucket(b: &TokenBucket) -> TokenBucketConfig {
    TokenBucketConfig {
        size: b.size,
        one_time_burst: b.one_time_burst.unwrap_or(0),
        refill_time: b.refill_time,
    }
}

/// The device-side form of an API rate limiter (none: unlimited).
pub fn limiter(cfg: Option<&RateLimiterConfig>) -> rate_limiter::RateLimiterConfig {
    rate_limiter::RateLimiterConfig {
        bandwidth: cfg.and_then(|c| c.bandwidth.as_ref()).map(bucket),
        ops: cfg.and_then(|c| c.ops.as_ref()).map(bucket),
    }
}

/// A PATCH's buckets as device updates: a bucket the PATCH leaves out is left alone.
pub fn updates(r: Option<&RateLimiterConfig>) -> (BucketUpdate, BucketUpdate) {
    match r {
        None => (BucketUpdate::None, BucketUpdate::None),
        Some(r) => (
            r.bandwidth.as_ref().map(bucket).into(),
            r.ops.as_ref().map(bucket).into(),
        ),
    }
}

/// A rate limiter as saved in a snapshot.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimiterState {
    #[serde(default)]
    pub bandwidth: Option<TokenBucketState>,
    #[serde(default)]
    pub ops: Option<TokenBucketState>,
}

/// A token bucket as saved in a snapshot.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenBucketState {
    pub size: u64,
    #[serde(default)]
    pub one_time_burst: Option<u64>,
    pub refill_time: u64,
}

impl From<&TokenBucket> for TokenBucketState {
    fn from(b: &TokenBucket) -> Self {
        TokenBucketState {
            size: b.size,
            one_time_burst: b.one_time_burst,
            refill_time: b.refill_time,
        }
    }
}

impl From<&TokenBucketState> for TokenBucket {
    fn from(b: &TokenBucketState) -> Self {
        TokenBucket {
            size: b.size,
            one_time_burst: b.one_time_burst,
            refill_time: b.refill_time,
        }
    }
}

/// The snapshot form of an API rate limiter.
pub fn to_state(r: Option<&RateLimiterConfig>) -> Option<RateLimiterState> {
    r.map(|r| RateLimiterState {
        bandwidth: r.bandwidth.as_ref().map(Into::into),
        ops: r.ops.as_ref().map(Into::into),
    })
}

/// The API form of a saved rate limiter.
pub fn from_state(r: Option<&RateLimiterState>) -> Option<RateLimiterConfig> {
    r.map(|r| RateLimiterConfig {
        bandwidth: r.bandwidth.as_ref().map(Into::into),
        ops: r.ops.as_ref().map(Into::into),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_round_trip_and_missing_bursts_are_zero() {
        let api = RateLimiterConfig {
            bandwidth: Some(TokenBucket {
                size: 10,
                one_time_burst: None,
                refill_time: 100,
            }),
            ops: None,
        };
        assert_eq!(from_state(to_state(Some(&api)).as_ref()), Some(api.clone()));
        let dev = limiter(Some(&api));
        assert_eq!(dev.bandwidth.unwrap().one_time_burst, 0);
        assert!(dev.ops.is_none());
        assert!(matches!(
            updates(None),
            (BucketUpdate::None, BucketUpdate::None)
        ));
    }
}
