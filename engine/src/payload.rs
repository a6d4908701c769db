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

/// Encodes `value` as JSON; `what` names the payload in the error (for
/// example `output of step 2 ("charge")`).
pub fn encode<T: Serialize + ?Sized>(
    value: &T,
    what: impl FnOnce() -> String,
) -> Result<String, Error> {
    serde_json::to_string(value).map_err(|source| Error::Encode {
        what: what(),
        source,
    })
}

/// Decodes a recorded JSON payload into `T`, or fails with
/// [`Error::Decode`] naming it. Never panics, whatever `json` holds.
pub fn decode<T: DeserializeOwned>(json: &str, what: impl FnOnce() -> String) -> Result<T, Error> {
    serde_json::from_str(json).map_err(|source| Error::Decode {
        what: what(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::{decode, encode};

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
}
