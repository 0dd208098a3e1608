//! The simulation's only source of choices: a seeded xoshiro256** generator, or (for a fuzz
//! target) a byte string read as the sequence of choices.
//!
//! Invariant: the same seed (or the same bytes) gives the same sequence of choices, so a run is
//! replayed exactly from its seed. Nothing in the simulation may consult any other randomness
//! (no `HashMap` iteration order, no clock).

#[derive(Clone, Debug)]
pub struct Rng {
    source: Source,
}

#[derive(Clone, Debug)]
enum Source {
    Seeded([u64; 4]),
    /// Fuzzer input: every choice eats eight bytes. Once they run out, choices come from a
    /// generator seeded by the input (the driver then ends the random phase, and the quiet
    /// phase needs fair choices to settle).
    Bytes {
        data: Vec<u8>,
        position: usize,
        after: Box<Rng>,
    },
}

/// SplitMix64, used only to expand a seed into the xoshiro state (its authors' advice).
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Rng {
    pub fn from_seed(seed: u64) -> Self {
        let mut state = seed;
        let s = [
            splitmix64(&mut state),
            splitmix64(&mut state),
            splitmix64(&mut state),
            splitmix64(&mut state),
        ];
        Self { source: Source::Seeded(s) }
    }

    pub fn from_bytes(data: Vec<u8>) -> Self {
        let seed = data.iter().fold(0u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
        let after = Box::new(Self::from_seed(seed));
        Self { source: Source::Bytes { data, position: 0, after } }
    }

    /// Whether a byte-driven generator has used up its input (never for a seeded one).
    pub fn is_exhausted(&self) -> bool {
        match &self.source {
            Source::Seeded(_) => false,
            Source::Bytes { data, position, .. } => *position >= data.len(),
        }
    }

    pub fn next_u64(&mut self) -> u64 {
        match &mut self.source {
            Source::Seeded(s) => {
                let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
                let t = s[1] << 17;
                s[2] ^= s[0];
                s[3] ^= s[1];
                s[1] ^= s[2];
                s[0] ^= s[3];
                s[2] ^= t;
                s[3] = s[3].rotate_left(45);
                result
            }
            Source::Bytes { data, position, after } if *position >= data.len() => {
                let _ = data;
                after.next_u64()
            }
            Source::Bytes { data, position, .. } => {
                let mut word = [0u8; 8];
                let end = (*position + 8).min(data.len());
                if *position < end {
                    word[..end - *position].copy_from_slice(&data[*position..end]);
                }
                *position = end;
                u64::from_le_bytes(word)
            }
        }
    }

    /// A number in `0..bound`; `bound` must be positive. The modulo bias is irrelevant here.
    pub fn below(&mut self, bound: u64) -> u64 {
        assert!(bound > 0, "Rng::below(0)");
        self.next_u64() % bound
    }

    /// An index into a collection of `len` elements.
    pub fn index(&mut self, len: usize) -> usize {
        self.below(len as u64) as usize
    }

    /// A number in `low..=high`.
    pub fn between(&mut self, low: u64, high: u64) -> u64 {
        assert!(low <= high, "Rng::between({low}, {high})");
        low + self.below(high - low + 1)
    }

    /// True with probability `per_mille`/1000.
    pub fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }

    /// An index chosen with the given weights (at least one positive).
    pub fn weighted(&mut self, weights: &[u64]) -> usize {
        let total: u64 = weights.iter().sum();
        assert!(total > 0, "Rng::weighted with all weights zero");
        let mut roll = self.below(total);
        for (index, weight) in weights.iter().enumerate() {
            if roll < *weight {
                return index;
            }
            roll -= weight;
        }
        unreachable!("roll below the total always lands in a bucket")
    }
}

/// A set of indices with O(1) insert, remove and uniform random pick, in a deterministic order
/// (the simulation never iterates a hash set).
#[derive(Clone, Debug, Default)]
pub struct RandomSet {
    members: Vec<usize>,
    /// `positions[i]` is `i`'s index in `members` plus one, or 0 when absent.
    positions: Vec<usize>,
}

impl RandomSet {
    pub fn insert(&mut self, item: usize) {
        if item >= self.positions.len() {
            self.positions.resize(item + 1, 0);
        }
        if self.positions[item] == 0 {
            self.members.push(item);
            self.positions[item] = self.members.len();
        }
    }

    pub fn remove(&mut self, item: usize) {
        let Some(&position) = self.positions.get(item) else { return };
        if position == 0 {
            return;
        }
        let index = position - 1;
        self.members.swap_remove(index);
        if let Some(&moved) = self.members.get(index) {
            self.positions[moved] = index + 1;
        }
        self.positions[item] = 0;
    }

    pub fn contains(&self, item: usize) -> bool {
        self.positions.get(item).is_some_and(|&p| p != 0)
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    pub fn pick(&self, rng: &mut Rng) -> Option<usize> {
        if self.members.is_empty() {
            return None;
        }
        Some(self.members[rng.index(self.members.len())])
    }

    pub fn members(&self) -> &[usize] {
        &self.members
    }
}
