//! Request rate limits (`[auth] rate_limit_per_second`, `rate_limit_burst`): one bucket
//! (GCRA, from `governor`) per token, and per source address for calls without a valid
//! token, so random tokens do not each get a fresh bucket. Decided before the handler
//! runs, in the `Caller` extractor (`http/mod.rs`).

use crate::error::{ApiError, ApiResult};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use std::net::IpAddr;
use std::num::NonZeroU32;

/// Whose bucket a request draws from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Key {
    /// A valid token, by its hash (as the token cache keys it).
    Token(String),
    /// No token, or one that is not valid: the peer's address.
    Addr(IpAddr),
    /// A sign-in's user name (`POST /api/v1/sessions`), known or not.
    User(String),
    /// A sign-in's user name from one source address.
    UserFrom(String, IpAddr),
    /// A user changing its own password (the current one is checked).
    PasswordOf(String),
}

pub struct RateLimits {
    limiter: DefaultKeyedRateLimiter<Key>,
}

impl RateLimits {
    pub fn new(per_second: NonZeroU32, burst: NonZeroU32) -> Self {
        let quota = Quota::per_second(per_second).allow_burst(burst);
        RateLimits { limiter: DefaultKeyedRateLimiter::dashmap_with_clock(quota, DefaultClock::default()) }
    }

    /// `per_minute` requests a minute, `burst` at once (the sign-in limits).
    pub fn per_minute(per_minute: NonZeroU32, burst: NonZeroU32) -> Self {
        let quota = Quota::per_minute(per_minute).allow_burst(burst);
        RateLimits { limiter: DefaultKeyedRateLimiter::dashmap_with_clock(quota, DefaultClock::default()) }
    }

    /// Takes one request from `key`'s bucket, or refuses with 429 and the whole seconds
    /// to wait (at least 1: `Retry-After` has no fractions).
    pub fn check(&self, key: &Key) -> ApiResult<()> {
        self.limiter.check_key(key).map_err(|not_until| {
            let wait = not_until.wait_time_from(self.limiter.clock().now());
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            ApiError::RateLimited { retry_after_secs: secs.max(1) }
        })
    }

    /// Forgets the buckets that are full again (a key unseen for burst / rate seconds is
    /// the same as a new one), so memory follows the active callers, not every caller
    /// ever seen. Called periodically by the server.
    pub fn evict(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }

    /// Keys currently held.
    pub fn len(&self) -> usize {
        self.limiter.len()
    }

    pub fn is_empty(&self) -> bool {
        self.limiter.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_refusal_per_key_and_eviction() {
        let n = |v| NonZeroU32::new(v).unwrap();
        let r = RateLimits::new(n(1), n(3));
        let a = Key::Token("a".into());
        for _ in 0..3 {
            r.check(&a).unwrap();
        }
        match r.check(&a) {
            Err(ApiError::RateLimited { retry_after_secs }) => assert_eq!(retry_after_secs, 1),
            other => panic!("{other:?}"),
        }
        // Another key has its own bucket.
        r.check(&Key::Addr("192.0.2.1".parse().unwrap())).unwrap();
        assert_eq!(r.len(), 2);
        // A bucket not yet full again is kept.
        r.evict();
        assert_eq!(r.len(), 2);
    }
}
