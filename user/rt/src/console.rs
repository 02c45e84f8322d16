//! `print!` and `println!` over the kernel debug console (`DebugWrite`).
//!
//! Each `print!` formats into a small buffer on the stack and hands it to
//! the kernel in as few calls as possible (one for a short line), so lines
//! of different threads interleave only at call boundaries. Output errors
//! are ignored: there is nowhere else to report them.

use core::fmt::{self, Write};

/// Bytes formatted before the buffer is handed to the kernel.
const BUFFER: usize = 256;

struct LineWriter {
    buf: [u8; BUFFER],
    len: usize,
}

impl LineWriter {
    fn flush(&mut self) {
        if let Some(bytes) = self.buf.get(..self.len) {
            let _ = crate::syscall::debug_write(bytes);
        }
        self.len = 0;
    }
}

impl Write for LineWriter {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let mut rest = s.as_bytes();
        while !rest.is_empty() {
            if self.len == BUFFER {
                self.flush();
            }
            let n = rest.len().min(BUFFER - self.len);
            let (now, later) = rest.split_at(n);
            if let Some(dst) = self.buf.get_mut(self.len..self.len + n) {
                dst.copy_from_slice(now);
            }
            self.len += n;
            rest = later;
        }
        Ok(())
    }
}

/// Formats `args` to the debug console. Used by [`print!`] and
/// [`println!`].
#[doc(hidden)]
pub fn _print(args: fmt::Arguments<'_>) {
    let mut w = LineWriter {
        buf: [0; BUFFER],
        len: 0,
    };
    let _ = w.write_fmt(args);
    w.flush();
}

/// Prints to the kernel debug console.
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => {
        $crate::console::_print(format_args!($($arg)*))
    };
}

/// Prints a line to the kernel debug console.
#[macro_export]
macro_rules! println {
    () => {
        $crate::console::_print(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::console::_print(format_args!("{}\n", format_args!($($arg)*)))
    };
}
