//! The kernel command line: `key=value` words separated by spaces.
//!
//! Parsing is strict: an unknown key or a malformed value is an error, so a
//! typo is reported at boot instead of silently ignored.
#![forbid(unsafe_code)]

/// The log levels the `log=` option accepts, most to least verbose.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogLevel {
    /// `log=trace`: everything, including per-event tracing.
    Trace,
    /// `log=debug`: debugging detail and everything above it.
    Debug,
    /// `log=info`: normal boot progress and above (the default).
    Info,
    /// `log=warn`: warnings and errors only.
    Warn,
    /// `log=error`: errors only.
    Error,
    /// `log=off`: no log output at all.
    Off,
}

/// The parsed command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cmdline<'a> {
    /// `log=LEVEL`: the most verbose level printed (default `info`).
    pub log_level: LogLevel,
    /// `ktest=SUBSTRING`: run only in-kernel tests whose path contains it.
    pub test_filter: Option<&'a str>,
    /// `crash=stack`: overflow the kernel stack after boot, to check the
    /// guard page and the "kernel stack overflow" report (used by
    /// `cargo xtask test`; honoured only in test builds).
    pub crash_stack: bool,
}

/// What is wrong with a command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CmdlineError<'a> {
    /// A word that is not `key=value` or has an unknown key.
    UnknownOption(&'a str),
    /// A known key with a value it does not accept.
    BadValue {
        /// The option's key, e.g. `log`.
        key: &'a str,
        /// The rejected value, e.g. `loud`.
        value: &'a str,
    },
}

impl core::fmt::Display for CmdlineError<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            CmdlineError::UnknownOption(w) => write!(
                f,
                "unknown option `{w}` (known: log=trace|debug|info|warn|error|off, ktest=FILTER, crash=stack)"
            ),
            CmdlineError::BadValue { key, value } => {
                write!(f, "bad value `{value}` for option `{key}`")
            }
        }
    }
}

impl<'a> Cmdline<'a> {
    /// The defaults, used for an empty command line.
    pub const DEFAULT: Cmdline<'static> = Cmdline {
        log_level: LogLevel::Info,
        test_filter: None,
        crash_stack: false,
    };

    /// Parses `text`; every word must be a known `key=value` option.
    pub fn parse(text: &'a str) -> Result<Cmdline<'a>, CmdlineError<'a>> {
        let mut out = Cmdline::DEFAULT;
        for word in text.split_ascii_whitespace() {
            let Some((key, value)) = word.split_once('=') else {
                return Err(CmdlineError::UnknownOption(word));
            };
            match key {
                "log" => {
                    out.log_level = match value {
                        "trace" => LogLevel::Trace,
                        "debug" => LogLevel::Debug,
                        "info" => LogLevel::Info,
                        "warn" => LogLevel::Warn,
                        "error" => LogLevel::Error,
                        "off" => LogLevel::Off,
                        _ => return Err(CmdlineError::BadValue { key, value }),
                    }
                }
                "ktest" if !value.is_empty() => out.test_filter = Some(value),
                "crash" if value == "stack" => out.crash_stack = true,
                "ktest" | "crash" => return Err(CmdlineError::BadValue { key, value }),
                _ => return Err(CmdlineError::UnknownOption(word)),
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_gives_defaults() {
        assert_eq!(Cmdline::parse(""), Ok(Cmdline::DEFAULT));
        assert_eq!(Cmdline::parse("   \t "), Ok(Cmdline::DEFAULT));
    }

    #[test]
    fn parses_known_options() {
        let c = Cmdline::parse(" log=debug  ktest=mm:: ").unwrap();
        assert_eq!(c.log_level, LogLevel::Debug);
        assert_eq!(c.test_filter, Some("mm::"));
    }

    #[test]
    fn rejects_unknown_and_malformed() {
        assert_eq!(
            Cmdline::parse("log=debug quiet"),
            Err(CmdlineError::UnknownOption("quiet"))
        );
        assert_eq!(
            Cmdline::parse("colour=on"),
            Err(CmdlineError::UnknownOption("colour=on"))
        );
        assert_eq!(
            Cmdline::parse("log=loud"),
            Err(CmdlineError::BadValue {
                key: "log",
                value: "loud"
            })
        );
        assert!(Cmdline::parse("ktest=").is_err());
        assert!(Cmdline::parse("crash=heap").is_err());
        assert!(Cmdline::parse("crash=stack").unwrap().crash_stack);
    }
}
