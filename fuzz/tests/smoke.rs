//! CI's smoke run of every fuzz target: its seeds, then mutations of them (bit flips, cuts,
//! insertions, splices) from a fixed-seed generator, so a failure reproduces. The long,
//! coverage-guided runs are libFuzzer's (fuzz/libfuzzer).

use std::path::Path;

/// xorshift64*: enough to mutate inputs, and the same sequence every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn mutate(rng: &mut Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
    let mut data = seeds[rng.below(seeds.len())].clone();
    for _ in 0..=rng.below(4) {
        match rng.below(5) {
            0 if !data.is_empty() => {
                let i = rng.below(data.len());
                data[i] ^= 1 << rng.below(8);
            }
            1 if !data.is_empty() => data.truncate(rng.below(data.len())),
            2 => {
                let at = rng.below(data.len() + 1);
                data.insert(at, rng.next() as u8);
            }
            3 => {
                let other = &seeds[rng.below(seeds.len())];
                let from = rng.below(other.len() + 1);
                let at = rng.below(data.len() + 1);
                data.splice(at..at, other[from..].iter().copied());
            }
            _ if !data.is_empty() => {
                let i = rng.below(data.len());
                data[i] = [0, 0xff, b'/', b'.', b'"', b'\\', b'%'][rng.below(7)];
            }
            _ => {}
        }
    }
    data
}

fn seeds(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds").join(target);
    let mut seeds: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    seeds.sort();
    assert!(!seeds.is_empty(), "{target} has no seeds");
    seeds
}

#[test]
fn every_target_survives_its_seeds_and_their_mutations() {
    for (name, target) in cliscale_fuzz::TARGETS {
        let seeds = seeds(name);
        let runs = if name == "archives" { 1_500 } else { 20_000 };
        for seed in &seeds {
            target(seed);
        }
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ name.len() as u64);
        for _ in 0..runs {
            target(&mutate(&mut rng, &seeds));
        }
    }
}
