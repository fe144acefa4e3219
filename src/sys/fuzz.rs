//! Generated inputs for the parsers that read what others send: the ref lines git feeds the
//! hook, the config a user writes, the command an SSH client asks the gate for. Each is fed
//! random bytes and mutations of valid inputs, from a fixed seed and from a random one that is
//! printed (`ATS_HOOK_FUZZ_SEED=<hex>` replays it), and must answer with a value or an error,
//! never a panic.

use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};

/// Cases per seed.
pub const CASES: u32 = 2000;
const FIXED_SEED: [u8; 32] = *b"ats-hook: the parsers' own seed!";

/// Runs `test` on `CASES` values of `strategy` from the fixed seed, then from a random one;
/// panics, naming the seed, on the first case that fails or panics.
pub fn check<S: Strategy>(
    name: &str,
    strategy: S,
    test: impl Fn(S::Value) -> Result<(), TestCaseError>,
) {
    let random = match std::env::var("ATS_HOOK_FUZZ_SEED") {
        Ok(hex) => from_hex(&hex),
        Err(_) => random_seed(),
    };
    eprintln!(
        "{name}: {CASES} cases from the fixed seed, {CASES} from seed {} (ATS_HOOK_FUZZ_SEED replays it)",
        to_hex(&random)
    );
    for seed in [FIXED_SEED, random] {
        let config = Config {
            cases: CASES,
            failure_persistence: None,
            ..Config::default()
        };
        let mut runner =
            TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &seed));
        if let Err(err) = runner.run(&strategy, &test) {
            panic!("{name} (seed {}): {err}", to_hex(&seed));
        }
    }
}

/// Random bytes, or a valid input with up to eight edits: bytes replaced, inserted, removed,
/// a stretch repeated, the end cut.
pub fn inputs(valid: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    let mutated = (
        proptest::sample::select(valid),
        proptest::collection::vec((0u8..5, any::<usize>(), any::<u8>()), 0..8),
    )
        .prop_map(|(mut bytes, edits)| {
            for (kind, at, byte) in edits {
                let len = bytes.len();
                let at = if len == 0 { 0 } else { at % len };
                match kind {
                    0 if len > 0 => bytes[at] = byte,
                    1 => bytes.insert(at, byte),
                    2 if len > 0 => {
                        bytes.remove(at);
                    }
                    3 if len > 0 => {
                        let end = (at + 1 + byte as usize).min(len);
                        let stretch = bytes[at..end].to_vec();
                        bytes.splice(at..at, stretch);
                    }
                    4 => bytes.truncate(at),
                    _ => {}
                }
            }
            bytes
        });
    prop_oneof![
        1 => proptest::collection::vec(any::<u8>(), 0..300),
        3 => mutated,
    ]
}

fn random_seed() -> [u8; 32] {
    use std::hash::{BuildHasher, Hasher};
    let mut seed = [0u8; 32];
    for chunk in seed.chunks_mut(8) {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0),
        );
        chunk.copy_from_slice(&hasher.finish().to_le_bytes());
    }
    seed
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn from_hex(text: &str) -> [u8; 32] {
    let mut seed = [0u8; 32];
    for (i, byte) in seed.iter_mut().enumerate() {
        *byte = text
            .get(2 * i..2 * i + 2)
            .and_then(|h| u8::from_str_radix(h, 16).ok())
            .unwrap_or_else(|| panic!("ATS_HOOK_FUZZ_SEED must be 64 hex digits"));
    }
    seed
}
