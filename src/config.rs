//! Configuration: every knob and limit, from the command line and an optional TOML file.
//! PLACEHOLDER until the skeleton work lands (issue 3).
