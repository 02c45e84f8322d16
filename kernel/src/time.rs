//! Time: the monotonic clock in nanoseconds, from the architecture's
//! constant-rate counter (`arch::clock_ticks`) and its rate
//! (`arch::clock_hz`, found once at boot). Portable and host-tested.
//!
//! Invariants: `now_ns` never goes backwards (the counter does not, and
//! the conversion is monotonic in it); it is 0 before [`init`], or if no
//! rate was found (the boot banner says so).
#![forbid(unsafe_code)]

use core::sync::atomic::{AtomicU64, Ordering};

static HZ: AtomicU64 = AtomicU64::new(0);
/// Nanoseconds per tick in 32.32 fixed point (0: rate unknown), so that a
/// reading is one multiplication, no division.
static MULT: AtomicU64 = AtomicU64::new(0);

/// Records the clock counter's rate (0: unknown).
pub fn init(hz: Option<u64>) {
    let hz = hz.unwrap_or(0);
    HZ.store(hz, Ordering::Relaxed);
    MULT.store(mult_for(hz), Ordering::Relaxed);
}

/// The 32.32 fixed-point nanoseconds per tick of a `hz` counter (0 for
/// 0 Hz; rates below 1 kHz are not clocks Keel runs on and give 0 too).
pub fn mult_for(hz: u64) -> u64 {
    if hz < 1_000 {
        return 0;
    }
    u64::try_from((1_000_000_000u128 << 32) / u128::from(hz)).unwrap_or(0)
}

/// The clock counter's rate in Hz (0 if unknown).
pub fn hz() -> u64 {
    HZ.load(Ordering::Relaxed)
}

/// Nanoseconds since the counter started (boot, on every machine Keel
/// runs on).
#[inline]
pub fn now_ns() -> u64 {
    ticks_to_ns(crate::arch::clock_ticks(), MULT.load(Ordering::Relaxed))
}

/// `ticks` in nanoseconds at `mult` ([`mult_for`]): exact for rates that
/// divide 10^9 · 2^32, within one part in 2^32 otherwise; without overflow
/// for any 64-bit count (saturating past 2^64 ns, 584 years).
#[inline]
pub fn ticks_to_ns(ticks: u64, mult: u64) -> u64 {
    u64::try_from((u128::from(ticks) * u128::from(mult)) >> 32).unwrap_or(u64::MAX)
}

/// `ns` nanoseconds in ticks of the clock ([`ns_to_ticks_at`]).
pub fn ns_to_ticks(ns: u64) -> u64 {
    ns_to_ticks_at(ns, hz())
}

/// `ns` nanoseconds in ticks of a `hz` counter, rounded up (so a deadline
/// never comes early), saturating; `u64::MAX` (never) without a rate.
pub fn ns_to_ticks_at(ns: u64, hz: u64) -> u64 {
    if hz == 0 {
        return u64::MAX;
    }
    let ticks = (u128::from(ns) * u128::from(hz)).div_ceil(1_000_000_000);
    u64::try_from(ticks).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn conversion_is_exact_for_round_rates_and_zero_without_a_rate() {
        let ns = |ticks, hz| ticks_to_ns(ticks, mult_for(hz));
        assert_eq!(ns(10_000_000, 10_000_000), 1_000_000_000);
        assert_eq!(ns(1, 1_000_000_000), 1);
        assert_eq!(ns(3, 62_500_000), 48);
        assert_eq!(ns(u64::MAX, 1_000_000_000), u64::MAX);
        assert_eq!(ns(u64::MAX, 1_000), u64::MAX, "saturates");
        assert_eq!(ns(12345, 0), 0);
        assert_eq!(ns(12345, 999), 0, "not a clock");
        // An odd rate: within one part in 2^32 of the exact value.
        let hz = 2_599_516_123;
        let exact = 1_000_000_000_000u128 * 1_000_000_000 / hz as u128;
        let got = u128::from(ns(1_000_000_000_000, hz));
        assert!(exact - got <= (exact >> 32) + 1, "{got} for {exact}");
    }

    #[test]
    fn the_host_clock_runs_forward() {
        init(Some(1_000_000_000)); // the host stand-in's rate
        let a = now_ns();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = now_ns();
        assert!(b >= a + 2_000_000, "{a} then {b}");
    }

    proptest! {
        #[test]
        fn conversion_is_monotonic(a in any::<u64>(), b in any::<u64>(), hz in 1_000u64..10_000_000_000) {
            let (lo, hi) = (a.min(b), a.max(b));
            let m = mult_for(hz);
            prop_assert!(ticks_to_ns(lo, m) <= ticks_to_ns(hi, m));
        }
    }
}
