//! Fails, with an explanation, when the simulator was built without
//! `--cfg madsim` (then every simulation test silently vanishes).

#[cfg(not(madsim))]
#[test]
fn built_with_cfg_madsim() {
    panic!(
        "the sim crate was built without `--cfg madsim`, so no simulation ran. \
         .cargo/config.toml sets it for the workspace, but a RUSTFLAGS (or \
         CARGO_ENCODED_RUSTFLAGS) environment variable replaces config rustflags. \
         Run with RUSTFLAGS=\"$RUSTFLAGS --cfg madsim\" or unset RUSTFLAGS."
    );
}

#[cfg(madsim)]
#[test]
fn built_with_cfg_madsim() {}
