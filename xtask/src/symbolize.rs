//! Turns code addresses in kernel output into `function at file:line`,
//! using the kernel image's DWARF line tables (the `addr2line` crate).
//!
//! Recognised lines: backtrace frames (`frame #<i> 0x<addr>`) and fault
//! reports (`... at pc 0x<addr>`).

use keel_abi::harness::FRAME_PREFIX;
use std::path::Path;

pub struct Symbolizer {
    loader: Option<addr2line::Loader>,
}

impl Symbolizer {
    /// A symbolizer for `image`; if the image cannot be read, lines pass
    /// through unchanged.
    pub fn new(image: &Path) -> Symbolizer {
        Symbolizer {
            loader: addr2line::Loader::new(image).ok(),
        }
    }

    /// `line`, with ` <- function at file:line` appended if it names a
    /// code address the image knows.
    pub fn annotate(&self, line: &str) -> String {
        match self.describe_line(line) {
            Some(desc) => format!("{line}  <- {desc}"),
            None => line.to_string(),
        }
    }

    /// Where the code address in `line` is, if it has one.
    pub fn describe_line(&self, line: &str) -> Option<String> {
        let (addr, is_return) = code_address(line)?;
        self.describe(addr, is_return)
    }

    fn describe(&self, addr: u64, is_return: bool) -> Option<String> {
        let loader = self.loader.as_ref()?;
        // A return address points after the call; look up the call itself.
        let probe = if is_return {
            addr.checked_sub(1)?
        } else {
            addr
        };
        let mut parts = Vec::new();
        if let Ok(mut frames) = loader.find_frames(probe) {
            while let Ok(Some(frame)) = frames.next() {
                let func = frame
                    .function
                    .as_ref()
                    .and_then(|f| f.demangle().ok().map(|s| s.to_string()))
                    .unwrap_or_else(|| "??".into());
                let loc = frame
                    .location
                    .as_ref()
                    .map(|l| {
                        format!(
                            "{}:{}",
                            short_path(l.file.unwrap_or("??")),
                            l.line.unwrap_or(0)
                        )
                    })
                    .unwrap_or_else(|| "??".into());
                parts.push(format!("{func} at {loc}"));
            }
        }
        if parts.is_empty() {
            parts.push(loader.find_symbol(probe)?.to_string());
        }
        Some(parts.join(" (inlined into) "))
    }
}

/// Trims a source path to start at the workspace or the Rust library.
fn short_path(path: &str) -> &str {
    for marker in ["/kernel/src/", "/library/", "/registry/src/"] {
        if let Some(i) = path.find(marker) {
            return &path[i + 1..];
        }
    }
    path
}

/// The code address a line reports, and whether it is a return address.
fn code_address(line: &str) -> Option<(u64, bool)> {
    if let Some(i) = line.find(FRAME_PREFIX) {
        let rest = &line[i + FRAME_PREFIX.len()..];
        let mut words = rest.split_whitespace();
        let index: u32 = words.next()?.parse().ok()?;
        let addr = parse_hex(words.next()?)?;
        return Some((addr, index > 0));
    }
    if let Some(i) = line.find(" at pc ") {
        let addr = parse_hex(line[i + 7..].split_whitespace().next()?)?;
        return Some((addr, false));
    }
    None
}

fn parse_hex(word: &str) -> Option<u64> {
    let digits = word.trim_end_matches([',', ':', ')']).strip_prefix("0x")?;
    u64::from_str_radix(digits, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_addresses() {
        assert_eq!(
            code_address("  frame #0 0xffffffff80101234"),
            Some((0xffffffff80101234, false))
        );
        assert_eq!(code_address("  frame #3 0x10"), Some((0x10, true)));
        assert_eq!(
            code_address("KERNEL FAULT: Breakpoint at pc 0x1234"),
            Some((0x1234, false))
        );
        assert_eq!(code_address("test foo ... ok"), None);
        assert_eq!(code_address("  frame #x 0x10"), None);
    }

    #[test]
    fn shortens_paths() {
        assert_eq!(
            short_path("/work/main/kernel/src/boot.rs"),
            "kernel/src/boot.rs"
        );
        assert_eq!(short_path("lib.rs"), "lib.rs");
    }
}
