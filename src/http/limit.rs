//! Per-source request limits of the HTTP API (joins per address and minute).
//!
//! A fixed window per source: cheap, bounded in memory, and good enough against one
//! address filling rooms. IPv6 sources count by their /64, which one client can
//! usually spread over.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};

use crate::net::client::client_prefix;

/// Sources remembered at once; when full, finished windows are forgotten first, and if
/// none has finished, the new source is refused (better than forgetting a busy one).
const MAX_SOURCES: usize = 65_536;

/// At most `limit` requests per source in each window of `window_secs`.
#[derive(Debug)]
pub(crate) struct PerSource {
    limit: u32,
    window_secs: u64,
    /// Source → (start of its window, requests in it).
    seen: Mutex<HashMap<IpAddr, (u64, u32)>>,
}

impl PerSource {
    pub(crate) fn new(limit: u32, window_secs: u64) -> PerSource {
        PerSource {
            limit,
            window_secs: window_secs.max(1),
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// Counts one request of `source` at `now` (unix seconds): `Err(seconds)` until
    /// the source may ask again when it is over its limit.
    pub(crate) fn check(&self, source: IpAddr, now: u64) -> Result<(), u64> {
        let key = client_prefix(source);
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        if !seen.contains_key(&key) && seen.len() >= MAX_SOURCES {
            let window = self.window_secs;
            seen.retain(|_, (start, _)| now < start.saturating_add(window));
            if seen.len() >= MAX_SOURCES {
                return Err(window);
            }
        }
        let (start, count) = seen.entry(key).or_insert((now, 0));
        if now >= start.saturating_add(self.window_secs) {
            *start = now;
            *count = 0;
        }
        if *count >= self.limit {
            return Err(start
                .saturating_add(self.window_secs)
                .saturating_sub(now)
                .max(1));
        }
        *count += 1;
        Ok(())
    }
}

impl PerSource {
    /// Whether `source` is over its limit now, without counting a request: the
    /// seconds until it may ask again.
    pub(crate) fn blocked(&self, source: IpAddr, now: u64) -> Option<u64> {
        let seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        let &(start, count) = seen.get(&client_prefix(source))?;
        let end = start.saturating_add(self.window_secs);
        (now < end && count >= self.limit).then(|| end.saturating_sub(now).max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_over_its_limit_waits_for_the_next_window() {
        let limit = PerSource::new(3, 60);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        for _ in 0..3 {
            assert_eq!(limit.check(a, 100), Ok(()));
        }
        assert_eq!(limit.check(a, 130), Err(30));
        assert_eq!(limit.check(b, 130), Ok(()), "others are not held back");
        assert_eq!(limit.check(a, 160), Ok(()));
    }

    #[test]
    fn blocked_looks_without_counting() {
        let limit = PerSource::new(2, 60);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(limit.blocked(a, 0), None);
        limit.check(a, 0).unwrap();
        assert_eq!(limit.blocked(a, 1), None);
        limit.check(a, 1).unwrap();
        assert_eq!(limit.blocked(a, 10), Some(50));
        assert_eq!(limit.blocked(a, 60), None);
    }

    #[test]
    fn ipv6_counts_by_its_64_and_mapped_ipv4_as_ipv4() {
        let limit = PerSource::new(1, 60);
        let one: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let same_64: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        assert_eq!(limit.check(one, 0), Ok(()));
        assert!(limit.check(same_64, 0).is_err());
        let v4: IpAddr = "192.0.2.1".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(limit.check(v4, 0), Ok(()));
        assert!(limit.check(mapped, 0).is_err());
    }
}
