//! The in-kernel test harness.
//!
//! Tests sit next to the code they test, declared with [`ktest!`]; each
//! becomes a [`KTest`] in the `.ktests` linker section. A kernel built with
//! the `ktest` feature runs them all at boot (see [`crate::boot`]), printing
//! `test <path> ... ok|FAILED` per test and `N passed, N failed` at the end,
//! then exits QEMU with `EXIT_PASS` or `EXIT_FAIL`. A test that crashes the
//! kernel ends the run with `EXIT_CRASH`.
//!
//! Tests return [`TestResult`]; the `kassert*` macros print what failed and
//! return an error, so one failing test does not stop the others.

/// The outcome of one test.
pub type TestResult = Result<(), TestFailed>;

/// A test failed; the details were already printed.
#[derive(Debug, Clone, Copy)]
pub struct TestFailed;

/// One registered test.
#[repr(C)]
pub struct KTest {
    /// Module path and function name.
    pub name: &'static str,
    /// The test body.
    pub func: fn() -> TestResult,
}

/// Declares an in-kernel test. Compiled only in the `ktest` build.
///
/// ```ignore
/// ktest!(fn breakpoint_is_recorded() {
///     kassert!(1 + 1 == 2);
///     Ok(())
/// });
/// ```
#[macro_export]
macro_rules! ktest {
    (fn $name:ident() $body:block) => {
        #[cfg(feature = "ktest")]
        fn $name() -> $crate::ktest::TestResult $body
        #[cfg(feature = "ktest")]
        const _: () = {
            #[used]
            #[unsafe(link_section = ".ktests")]
            static TEST: $crate::ktest::KTest = $crate::ktest::KTest {
                name: concat!(module_path!(), "::", stringify!($name)),
                func: $name,
            };
        };
    };
}

/// Fails the current test unless `cond` holds.
#[macro_export]
macro_rules! kassert {
    ($cond:expr $(,)?) => {
        if !$cond {
            $crate::kprintln!("\n    assertion failed at {}:{}: {}", file!(), line!(), stringify!($cond));
            return Err($crate::ktest::TestFailed);
        }
    };
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            $crate::kprintln!("\n    assertion failed at {}:{}: {}: {}", file!(), line!(),
                stringify!($cond), format_args!($($msg)+));
            return Err($crate::ktest::TestFailed);
        }
    };
}

/// Fails the current test unless `left == right`, printing both (and the
/// optional message, a string literal).
#[macro_export]
macro_rules! kassert_eq {
    ($left:expr, $right:expr $(, $msg:expr)? $(,)?) => {
        match (&$left, &$right) {
            (l, r) => {
                if l != r {
                    $crate::kprintln!(
                        "\n    assertion failed at {}:{}: {} == {}{}\n      left: {:?}\n     right: {:?}",
                        file!(), line!(), stringify!($left), stringify!($right),
                        concat!($(": ", $msg)?), l, r
                    );
                    return Err($crate::ktest::TestFailed);
                }
            }
        }
    };
}

/// Unwraps an `Option` or `Result`, or fails the current test saying what
/// could not be done: `let s = kexpect!(UserSpace::new(0), "creating a space");`
#[macro_export]
macro_rules! kexpect {
    ($value:expr, $what:expr $(,)?) => {
        match $crate::ktest::Expect::expect_value($value) {
            Ok(v) => v,
            Err(e) => {
                $crate::kprintln!("\n    {} failed at {}:{}: {}", $what, file!(), line!(), e);
                return Err($crate::ktest::TestFailed);
            }
        }
    };
}

/// What [`kexpect!`] accepts.
pub trait Expect<T> {
    /// The success value, or a printable description of why there is none
    /// (`"None"`, or the error's `Debug` form).
    fn expect_value(self) -> Result<T, alloc::string::String>;
}

impl<T> Expect<T> for Option<T> {
    fn expect_value(self) -> Result<T, alloc::string::String> {
        self.ok_or_else(|| alloc::string::String::from("None"))
    }
}

impl<T, E: core::fmt::Debug> Expect<T> for Result<T, E> {
    fn expect_value(self) -> Result<T, alloc::string::String> {
        self.map_err(|e| alloc::format!("{e:?}"))
    }
}

#[cfg(target_os = "none")]
unsafe extern "C" {
    // Defined by every architecture's linker.ld around `.ktests` (KEEP,
    // 8-byte aligned). Declared as bytes: only their addresses are used.
    static __ktests_start: u8;
    static __ktests_end: u8;
}

/// The array of `T`s the linker script gathers between two section
/// symbols (`.ktests`, `.kbenches`).
///
/// # Safety
/// `start..end` must be such a section: `T` statics placed contiguously
/// by the linker, immutable for the whole run.
#[cfg(target_os = "none")]
pub(crate) unsafe fn section<T>(start: *const u8, end: *const u8) -> &'static [T] {
    let len = (end as usize - start as usize) / core::mem::size_of::<T>();
    // SAFETY: the caller's contract: a valid, immutable array of `T`s that
    // lives for the whole run.
    unsafe { core::slice::from_raw_parts(start.cast::<T>(), len) }
}

/// All tests registered in the `.ktests` section by [`ktest!`].
#[cfg(target_os = "none")]
fn registered() -> &'static [KTest] {
    // SAFETY: the linker script places every `KTest` static emitted by
    // `ktest!` contiguously between these two symbols.
    unsafe { section(&raw const __ktests_start, &raw const __ktests_end) }
}

/// Runs every registered test whose path contains `filter` and returns
/// `(passed, failed)`.
#[cfg(target_os = "none")]
pub fn run_all(filter: Option<&str>) -> (usize, usize) {
    let (mut passed, mut failed) = (0, 0);
    for test in registered() {
        if filter.is_some_and(|f| !test.name.contains(f)) {
            continue;
        }
        kprint!("{}{} ... ", keel_abi::harness::TEST_PREFIX, test.name);
        match (test.func)() {
            Ok(()) => {
                kprintln!("ok");
                passed += 1;
            }
            Err(TestFailed) => {
                // The assertion broke the line; repeat the name so the
                // result line is whole.
                kprintln!("{}{} ... FAILED", keel_abi::harness::TEST_PREFIX, test.name);
                failed += 1;
            }
        }
    }
    (passed, failed)
}
