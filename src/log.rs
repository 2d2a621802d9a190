//! Logging for users of the library that bring no `tracing` subscriber of their own
//! (the C ABI): one global subscriber writing to stderr, installed once, whose
//! level can be changed at any time through a reload handle.
//!
//! The level comes from `CLIP_LOG_LEVEL` when the subscriber is installed, and from
//! [`set_level`] afterwards. Levels: `trace`, `debug`, `info`, `warn` (the default),
//! `error`, `off`; also `warning` for `warn`, and `none` or `disabled` for `off`.
//! Only clip's own events are shown, not those of its dependencies.

use std::sync::OnceLock;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::{EnvFilter, Registry, reload};

use crate::error::{Error, Result};

/// The level names [`set_level`] accepts, most verbose first.
pub const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];

/// The level used when `CLIP_LOG_LEVEL` is unset or invalid.
pub const DEFAULT_LEVEL: &str = "warn";

/// The reload handle, or `None` if another global subscriber was installed first
/// (then that one decides what is logged).
static HANDLE: OnceLock<Option<reload::Handle<EnvFilter, Registry>>> = OnceLock::new();

fn filter(level: &str) -> Result<EnvFilter> {
    let l = match level.trim().to_ascii_lowercase().as_str() {
        "warning" => "warn".to_string(),
        "none" | "disabled" => "off".to_string(),
        l => l.to_string(),
    };
    if !LEVELS.contains(&l.as_str()) {
        return Err(Error::Invalid(format!(
            "log level {level:?} is not one of {}",
            LEVELS.join(", ")
        )));
    }
    let directive = if l == "off" {
        "off".to_string()
    } else {
        format!("off,clip={l}")
    };
    EnvFilter::try_new(&directive).map_err(|e| Error::Invalid(format!("log level {level:?}: {e}")))
}

/// Installs the global stderr subscriber once, at the level `CLIP_LOG_LEVEL` names
/// (else [`DEFAULT_LEVEL`]). Cheap after the first call.
pub fn init() {
    HANDLE.get_or_init(|| {
        let level = std::env::var("CLIP_LOG_LEVEL").unwrap_or_default();
        let f = filter(&level).unwrap_or_else(|_| filter(DEFAULT_LEVEL).expect("default level"));
        let (layer, handle) = reload::Layer::new(f);
        let subscriber = tracing_subscriber::registry().with(layer).with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(false),
        );
        tracing::subscriber::set_global_default(subscriber)
            .ok()
            .map(|()| handle)
    });
}

/// Sets the level of clip's log output (see the module docs for the names);
/// installs the subscriber first if needed. An unknown name is an
/// [`Error::Invalid`] naming it.
pub fn set_level(level: &str) -> Result<()> {
    let f = filter(level)?;
    init();
    if let Some(Some(h)) = HANDLE.get() {
        h.reload(f)
            .map_err(|e| Error::Invalid(format!("setting log level {level:?}: {e}")))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels() {
        for l in LEVELS {
            filter(l).unwrap();
        }
        filter("WARN").unwrap();
        filter("warning").unwrap();
        filter("disabled").unwrap();
        let e = filter("loud").unwrap_err().to_string();
        assert!(e.contains("\"loud\""), "{e}");
        set_level("debug").unwrap();
        set_level("off").unwrap();
        assert!(set_level("nope").is_err());
    }
}
