//! The user-mode test harness: a table of `(name, fn() -> Result<(),
//! String>)`, run in order, one result line per test in the kernel's format
//! (`keel_abi::harness::TEST_PREFIX`), then `N passed, N failed`.
//!
//! A test reports failure by returning `Err(message)`; the `ensure*`
//! macros and [`Ctx::ctx`] build the message. The message is printed on its
//! own line before the test's `FAILED` line, so result lines stay whole.

use alloc::format;
use alloc::string::String;
use keel_abi::harness::TEST_PREFIX;
use keel_rt::println;

/// The outcome of one test.
pub type TestResult = Result<(), String>;
/// One test: its full name (`user::<module>::<name>`) and body.
pub type Test = (&'static str, fn() -> TestResult);

/// A table entry for the test function `module::name` (a module of
/// `tests`), named `user::module::name`.
macro_rules! test {
    ($module:ident :: $name:ident) => {
        (
            concat!("user::", stringify!($module), "::", stringify!($name)),
            $module::$name as fn() -> $crate::harness::TestResult,
        )
    };
}

/// Fails the test unless `cond` holds.
macro_rules! ensure {
    ($cond:expr $(,)?) => {
        if !$cond {
            return Err(alloc::format!("line {}: {}", line!(), stringify!($cond)));
        }
    };
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(alloc::format!(
                "line {}: {}: {}",
                line!(),
                stringify!($cond),
                format_args!($($msg)+)
            ));
        }
    };
}

/// Fails the test unless `left == right`, showing both (and the optional
/// message, with format arguments).
macro_rules! ensure_eq {
    ($left:expr, $right:expr $(,)?) => {
        ensure_eq!($left, $right, "")
    };
    ($left:expr, $right:expr, $($msg:tt)+) => {
        match (&$left, &$right) {
            (l, r) => {
                if l != r {
                    return Err(alloc::format!(
                        "line {}: {} == {}: left {:?}, right {:?} {}",
                        line!(),
                        stringify!($left),
                        stringify!($right),
                        l,
                        r,
                        format_args!($($msg)+)
                    ));
                }
            }
        }
    };
}

/// Turns an error into a test failure that says what was being done:
/// `mem_create(pool, 1, 0).ctx("mem_create")?`.
pub trait Ctx<T> {
    fn ctx(self, what: &str) -> Result<T, String>;
}

impl<T, E: core::fmt::Debug> Ctx<T> for Result<T, E> {
    fn ctx(self, what: &str) -> Result<T, String> {
        self.map_err(|e| format!("{what}: {e:?}"))
    }
}

impl<T> Ctx<T> for Option<T> {
    fn ctx(self, what: &str) -> Result<T, String> {
        self.ok_or_else(|| format!("{what}: none"))
    }
}

/// Runs every test in `tests`; returns how many failed.
/// Tests (by name prefix) written for threads taking turns on one CPU.
const ONE_CPU: [&str; 4] = [
    "user::time::",
    "user::threads::",
    "user::ipc::",
    "user::channels::",
];

/// Tests that measure time shares and latencies: they run only on one
/// CPU, which the test boots run under `-icount` (deterministic time);
/// several CPUs run as multi-threaded TCG, whose timing is the host's.
const TIMING: [&str; 7] = [
    "user::time::equal_priority_hogs_share_the_cpu",
    "user::time::a_woken_higher_priority_thread_preempts_a_hog",
    "user::time::equal_nice_hogs_share_the_cpu",
    "user::time::nice_weights_set_the_ratio",
    "user::time::real_time_beats_normal_beats_idle",
    "user::time::fifo_threads_are_not_time_sliced",
    "user::time::statistics_count_run_time_switches_and_idle",
];

pub fn run_all(tests: &[Test]) -> usize {
    println!(
        "systest: {} system tests in user mode on {}",
        tests.len(),
        keel_rt::ARCH
    );
    let (mut passed, mut failed) = (0, 0);
    let info = keel_rt::root_info();
    let me = info.map(|i| keel_abi::cap::CapToken::from_raw(i.thread));
    let single = info.is_some_and(|i| i.cpu_count == 1);
    if !single {
        println!("systest: {} timing tests run on one CPU only", TIMING.len());
    }
    // A development aid: `SYSTEST_ONLY=prefix,prefix...` at build time
    // runs only the tests whose names start with one of them.
    let only = option_env!("SYSTEST_ONLY").unwrap_or("");
    let picked = |n: &str| only.split(',').any(|p| n.starts_with(p));
    let chosen = |n: &&str| picked(n) && (single || !TIMING.contains(n));
    for (name, func) in tests.iter().filter(|(n, _)| chosen(n)) {
        // Tests that sequence threads by yields and priorities run with
        // the root thread on CPU 0, and so the threads it makes (they
        // inherit its affinity) unless they move them; the rest run on
        // every CPU.
        if let Some(me) = me {
            let one_cpu = ONE_CPU.iter().any(|m| name.starts_with(m));
            let mask = if one_cpu { 1 } else { usize::MAX };
            let _ = keel_rt::syscall::thread_set_affinity(me, mask);
        }
        match func() {
            Ok(()) => {
                println!("{TEST_PREFIX}{name} ... ok");
                passed += 1;
            }
            Err(msg) => {
                println!("    {name}: {msg}");
                println!("{TEST_PREFIX}{name} ... FAILED");
                failed += 1;
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    failed
}
