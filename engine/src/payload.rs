//! The one codec of every payload the engine stores and reads back: workflow
//! inputs and outputs, step outputs, messages and events are JSON text, and
//! a recorded payload that does not decode into the type the code expects is
//! always the same typed error ([`Error::Decode`]) naming which payload it was.
//!
//! Public so that code reading tandem's tables itself (and the fuzz targets,
//! `fuzz/src/payload.rs`) decodes exactly as the engine does.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::Error;

/// Encodes `value` as JSON that PostgreSQL's `jsonb` can store; `what`
/// names the payload in the error (for example `output of step 2
/// ("charge")`).
pub fn encode<T: Serialize + ?Sized>(
    value: &T,
    what: impl Fn() -> String,
) -> Result<String, Error> {
    let json = to_json(value, &what)?;
    check_storable(&json, what)?;
    Ok(json)
}

/// [`encode`] without the storability check, for callers that check it
/// together with the size limit (`Shared::check_size`).
pub(crate) fn to_json<T: Serialize + ?Sized>(
    value: &T,
    what: impl FnOnce() -> String,
) -> Result<String, Error> {
    serde_json::to_string(value).map_err(|source| Error::Encode {
        what: what(),
        source,
    })
}

/// Refuses JSON text that `jsonb` cannot store: a string holding NUL
/// (`\u0000`; PostgreSQL fails the whole statement with 22P05). Refused
/// here, before anything is written, so both backends fail alike and the
/// error names the payload ([`crate::storage::jsonb_refuses`] says which).
pub fn check_storable(json: &str, what: impl FnOnce() -> String) -> Result<(), Error> {
    if crate::storage::jsonb_refuses(json) {
        return Err(Error::UnstorablePayload {
            what: what(),
            reason: "it holds a NUL character (\\u0000), which PostgreSQL's jsonb refuses",
        });
    }
    Ok(())
}

/// Decodes a recorded JSON payload into `T`, or fails with
/// [`Error::Decode`] naming it. Never panics, whatever `json` holds.
pub fn decode<T: DeserializeOwned>(json: &str, what: impl FnOnce() -> String) -> Result<T, Error> {
    serde_json::from_str(json).map_err(|source| Error::Decode {
        what: what(),
        source,
    })
}

/// An error message as it is stored: PostgreSQL's `text` cannot hold NUL,
/// so a message with one (a foreign library's, an unknown name's) would fail
/// the very write that records the failure. NUL becomes U+FFFD; the rest of
/// the message is kept.
pub fn error_text(message: String) -> String {
    if message.contains('\0') {
        message.replace('\0', "\u{fffd}")
    } else {
        message
    }
}

#[cfg(test)]
mod tests {
    use super::{check_storable, decode, encode, error_text};

    /// A step that returned this float must replay the very same float. With
    /// serde_json's default (fast, inexact) float parser it came back 1 ULP
    /// off; found by the `payload_decode` fuzz target.
    #[test]
    fn floats_replay_bit_for_bit() {
        let what = || "output".to_owned();
        for x in [
            1.116_124_483_990_404e-102,
            0.1 + 0.2,
            f64::MIN_POSITIVE,
            5e-324,
            f64::MAX,
        ] {
            let json = encode(&x, what).unwrap();
            let back: f64 = decode(&json, what).unwrap();
            assert_eq!(
                back.to_bits(),
                x.to_bits(),
                "{x:e} encoded as {json} decodes to {back:e}"
            );
        }
    }

    /// Only a real NUL is refused, not the text `\u0000` (an escaped
    /// backslash followed by `u0000`).
    #[test]
    fn nul_is_refused_wherever_it_hides() {
        let what = || "payload".to_owned();
        for refused in ["a\0", "\\\0", "\u{1}\0"] {
            let json = serde_json::to_string(refused).unwrap();
            assert!(check_storable(&json, what).is_err(), "{json}");
            assert!(encode(&vec![refused], what).is_err(), "{json}");
            assert!(encode(&std::collections::BTreeMap::from([(refused, 1)]), what).is_err());
        }
        for stored in ["\\u0000", "\\\\u0000", "u0000", "\u{1}", ""] {
            let json = encode(stored, what).unwrap();
            assert_eq!(decode::<String>(&json, what).unwrap(), stored);
        }
        assert_eq!(error_text("a\0b".to_owned()), "a\u{fffd}b");
    }
}
