//! Placeholder: filled by the issue 3 work.
fn main() {}
