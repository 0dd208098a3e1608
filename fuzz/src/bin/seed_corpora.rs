//! Writes the seed inputs into `corpus/decode` and `corpus/decode_stream` (run from `fuzz/`:
//! `cargo run --bin seed_corpora`). The broker target's corpus grows from the fuzzer itself:
//! its inputs are `arbitrary`-structured, not packets.

use std::path::Path;

fn main() -> std::io::Result<()> {
    for (target, seeds) in [
        ("decode", ringmq_fuzz::seeds::decode_seeds()),
        ("decode_stream", ringmq_fuzz::seeds::stream_seeds()),
    ] {
        let dir = Path::new("corpus").join(target);
        std::fs::create_dir_all(&dir)?;
        for (name, bytes) in &seeds {
            std::fs::write(dir.join(name), bytes)?;
        }
        println!("{}: {} seeds", dir.display(), seeds.len());
    }
    Ok(())
}
