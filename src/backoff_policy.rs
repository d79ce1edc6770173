//! The one place that knows the `backoff` crate: exponential delays with
//! jitter for reconnects and for debit retries. Swap the crate here alone.

use std::time::Duration;

use backoff::backoff::Backoff as _;

/// Exponential backoff with jitter and no overall deadline.
#[derive(Debug)]
pub(crate) struct Backoff {
    inner: backoff::ExponentialBackoff,
}

impl Backoff {
    /// The delays between reconnects and between tries through an outage:
    /// from `amqp.reconnect_initial`, doubling, up to `amqp.reconnect_max`,
    /// spread by a fifth.
    pub(crate) fn reconnect(amqp: &crate::settings::AmqpSettings) -> Backoff {
        Backoff::new(amqp.reconnect_initial, 2.0, amqp.reconnect_max, 0.2)
    }

    /// Delays start near `initial`, grow by `multiplier`, stay under `max`,
    /// and are spread by +/- `jitter` (a fraction from 0 to 1).
    pub(crate) fn new(initial: Duration, multiplier: f64, max: Duration, jitter: f64) -> Backoff {
        let inner = backoff::ExponentialBackoffBuilder::new()
            .with_initial_interval(initial)
            .with_multiplier(multiplier)
            .with_max_interval(max)
            .with_randomization_factor(jitter)
            .with_max_elapsed_time(None)
            .build();
        Backoff { inner }
    }

    /// The delay before the next try.
    pub(crate) fn next_delay(&mut self) -> Duration {
        // With no deadline the crate always yields a delay; fall back to the cap.
        self.inner.next_backoff().unwrap_or(self.inner.max_interval)
    }

    /// Starts again from the initial delay, after a success.
    pub(crate) fn reset(&mut self) {
        self.inner.reset();
    }
}

/// The delay before retry number `retry` (1 is the first retry) of a failed
/// debit: the `retry` settings' exponential schedule with its jitter.
pub(crate) fn retry_delay(settings: &crate::settings::RetrySettings, retry: u32) -> Duration {
    let mut backoff = Backoff::new(settings.initial, settings.multiplier, settings.max, settings.jitter);
    let mut delay = backoff.next_delay();
    for _ in 1..retry {
        delay = backoff.next_delay();
    }
    delay
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_and_is_capped() {
        let mut b = Backoff::new(Duration::from_millis(100), 2.0, Duration::from_secs(1), 0.0);
        let delays: Vec<_> = (0..6).map(|_| b.next_delay()).collect();
        assert_eq!(delays[0], Duration::from_millis(100));
        assert_eq!(delays[1], Duration::from_millis(200));
        assert_eq!(delays[2], Duration::from_millis(400));
        assert_eq!(delays[5], Duration::from_secs(1));
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(100));
    }

    #[test]
    fn retry_delays_follow_the_settings() {
        let settings = crate::settings::RetrySettings {
            initial: Duration::from_secs(60),
            multiplier: 3.0,
            max: Duration::from_secs(600),
            jitter: 0.0,
        };
        assert_eq!(retry_delay(&settings, 1), Duration::from_secs(60));
        assert_eq!(retry_delay(&settings, 2), Duration::from_secs(180));
        assert_eq!(retry_delay(&settings, 3), Duration::from_secs(540));
        assert_eq!(retry_delay(&settings, 4), Duration::from_secs(600));
    }

    #[test]
    fn jitter_stays_in_its_band() {
        let mut b = Backoff::new(Duration::from_secs(10), 2.0, Duration::from_secs(10), 0.2);
        for _ in 0..100 {
            let d = b.next_delay();
            assert!(d >= Duration::from_secs(8) && d <= Duration::from_secs(12), "{d:?}");
        }
    }
}
