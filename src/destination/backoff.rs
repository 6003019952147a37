//! Reconnect delays: exponential from a base up to a ceiling, with jitter so that many relays restarted together do
//! not reconnect in lockstep. Pure: the caller sleeps.

use std::time::Duration;

use rand::Rng;

/// Why a [`Backoff`] could not be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InvalidBackoff {
    /// The base delay is zero or above the ceiling.
    #[error("backoff base must be more than zero and at most the ceiling")]
    Range,
}

/// Exponential backoff with "equal jitter": each delay is drawn from `[d/2, d]` where `d` doubles from `base` up to
/// `max` after every failure.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    /// A backoff starting at `base` and never longer than `max`.
    ///
    /// # Errors
    ///
    /// [`InvalidBackoff::Range`] if `base` is zero or greater than `max`.
    pub fn try_new(base: Duration, max: Duration) -> Result<Backoff, InvalidBackoff> {
        if base.is_zero() || base > max {
            return Err(InvalidBackoff::Range);
        }
        Ok(Backoff {
            base,
            max,
            current: base,
        })
    }

    /// The delay before the next attempt; every call doubles the next one, up to the ceiling.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.current;
        self.current = (self.current * 2).min(self.max);
        let half = ceiling / 2;
        let jitter_nanos = rand::rng().random_range(0..=half.as_nanos() as u64);
        half + Duration::from_nanos(jitter_nanos)
    }

    /// Starts over from the base delay, after a success.
    pub fn reset(&mut self) {
        self.current = self.base;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_ceiling_with_jitter_in_the_upper_half() {
        let mut backoff =
            Backoff::try_new(Duration::from_millis(100), Duration::from_secs(1)).unwrap();
        let ceilings = [100, 200, 400, 800, 1000, 1000];
        for ceiling in ceilings {
            let delay = backoff.next_delay();
            let ceiling = Duration::from_millis(ceiling);
            assert!(
                delay >= ceiling / 2 && delay <= ceiling,
                "{delay:?} not in [{:?}, {ceiling:?}]",
                ceiling / 2
            );
        }
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(100));
    }

    #[test]
    fn a_base_above_the_ceiling_is_refused() {
        assert_eq!(
            Backoff::try_new(Duration::from_secs(2), Duration::from_secs(1)).unwrap_err(),
            InvalidBackoff::Range
        );
        assert_eq!(
            Backoff::try_new(Duration::ZERO, Duration::from_secs(1)).unwrap_err(),
            InvalidBackoff::Range
        );
    }
}
