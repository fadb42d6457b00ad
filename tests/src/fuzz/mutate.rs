//! A brief, seeded mutation run of a target body, for CI.
//!
//! libFuzzer (`scripts/fuzz`) is the real fuzzer: coverage-guided, under
//! AddressSanitizer. Building the dependency graph with its instrumentation
//! costs more than CI's budget allows, so on every test run each target is
//! instead fed a few thousand inputs made from its corpus by the classic
//! byte-level mutations (bit flips, interesting values, inserted, deleted,
//! duplicated and spliced ranges, truncation). It finds shallow panics and
//! wrong answers early and keeps the targets exercised beyond their seeds;
//! it is no substitute for the longer libFuzzer run.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};

use super::Target;

/// The longest input a mutation may produce.
const MAX_INPUT: usize = 64 * 1024;

/// Bytes that often sit on a parser's edges.
const INTERESTING: [u8; 10] = [0x00, 0x01, 0x7f, 0x80, 0xff, b'"', b'%', b'/', b'\n', b'{'];

/// An input that made a target panic.
#[derive(Debug)]
pub struct Crash {
    /// The input, to be saved and replayed.
    pub input: Vec<u8>,
    /// What the panic said.
    pub message: String,
}

/// Runs `target` on mutations of `corpus` until `budget` is spent or
/// `max_inputs` were tried; returns how many ran, or the first crash.
///
/// # Errors
/// The first input on which the target panicked.
pub fn brief_run(
    target: Target,
    corpus: &[Vec<u8>],
    seed: u64,
    budget: Duration,
    max_inputs: usize,
) -> Result<usize, Crash> {
    let mut rng = StdRng::seed_from_u64(seed);
    let started = Instant::now();
    let mut ran = 0;
    while ran < max_inputs && started.elapsed() < budget {
        let base = corpus.get(rng.random_range(0..corpus.len().max(1))).cloned().unwrap_or_default();
        let input = mutate(base, corpus, &mut rng);
        if let Err(panic) = catch_unwind(AssertUnwindSafe(|| target(&input))) {
            return Err(Crash { input, message: panic_message(panic.as_ref()) });
        }
        ran += 1;
    }
    Ok(ran)
}

/// One to four stacked mutations of `data`.
fn mutate(mut data: Vec<u8>, corpus: &[Vec<u8>], rng: &mut StdRng) -> Vec<u8> {
    for _ in 0..rng.random_range(1..=4) {
        match rng.random_range(0..7) {
            0 => flip_bit(&mut data, rng),
            1 => set_interesting(&mut data, rng),
            2 => insert_random(&mut data, rng),
            3 => delete_range(&mut data, rng),
            4 => duplicate_range(&mut data, rng),
            5 => splice(&mut data, corpus, rng),
            _ => data.truncate(rng.random_range(0..=data.len())),
        }
    }
    data.truncate(MAX_INPUT);
    data
}

fn flip_bit(data: &mut [u8], rng: &mut StdRng) {
    if !data.is_empty() {
        let at = rng.random_range(0..data.len());
        data[at] ^= 1 << rng.random_range(0..8);
    }
}

fn set_interesting(data: &mut [u8], rng: &mut StdRng) {
    if !data.is_empty() {
        let at = rng.random_range(0..data.len());
        data[at] = INTERESTING[rng.random_range(0..INTERESTING.len())];
    }
}

fn insert_random(data: &mut Vec<u8>, rng: &mut StdRng) {
    let at = rng.random_range(0..=data.len());
    let count = rng.random_range(1..=16);
    let bytes: Vec<u8> = (0..count).map(|_| rng.random()).collect();
    data.splice(at..at, bytes);
}

fn delete_range(data: &mut Vec<u8>, rng: &mut StdRng) {
    if !data.is_empty() {
        let start = rng.random_range(0..data.len());
        let end = rng.random_range(start..=data.len().min(start + 64));
        data.drain(start..end);
    }
}

fn duplicate_range(data: &mut Vec<u8>, rng: &mut StdRng) {
    if !data.is_empty() {
        let start = rng.random_range(0..data.len());
        let end = rng.random_range(start..=data.len().min(start + 256));
        let copy = data[start..end].to_vec();
        let at = rng.random_range(0..=data.len());
        data.splice(at..at, copy);
    }
}

/// Replaces the tail of `data` with the tail of another corpus input.
fn splice(data: &mut Vec<u8>, corpus: &[Vec<u8>], rng: &mut StdRng) {
    let Some(other) = corpus.get(rng.random_range(0..corpus.len().max(1))) else { return };
    let cut = rng.random_range(0..=data.len());
    let from = rng.random_range(0..=other.len());
    data.truncate(cut);
    data.extend_from_slice(&other[from..]);
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "a panic without a message".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn panics_on_two_zero_bytes(data: &[u8]) {
        assert!(!data.windows(2).any(|w| w == [0, 0]), "two zero bytes");
    }

    #[test]
    fn a_planted_bug_is_found_and_its_input_kept() {
        let crash = brief_run(panics_on_two_zero_bytes, &[b"ab".to_vec()], 7, Duration::from_secs(30), 1_000_000)
            .expect_err("the mutator reaches two zero bytes");
        assert!(crash.input.windows(2).any(|w| w == [0, 0]), "kept input {:?}", crash.input);
        assert!(crash.message.contains("two zero bytes"), "{}", crash.message);
    }

    #[test]
    fn the_same_seed_gives_the_same_inputs() {
        let corpus = [b"{\"model\":\"x\"}".to_vec(), b"/v1/chat".to_vec()];
        let mut a = StdRng::seed_from_u64(42);
        let mut b = StdRng::seed_from_u64(42);
        for _ in 0..100 {
            assert_eq!(mutate(corpus[0].clone(), &corpus, &mut a), mutate(corpus[0].clone(), &corpus, &mut b));
        }
    }
}
