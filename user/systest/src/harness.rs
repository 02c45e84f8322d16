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
pub fn run_all(tests: &[Test]) -> usize {
    println!(
        "systest: {} system tests in user mode on {}",
        tests.len(),
        keel_rt::ARCH
    );
    let (mut passed, mut failed) = (0, 0);
    for (name, func) in tests {
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
