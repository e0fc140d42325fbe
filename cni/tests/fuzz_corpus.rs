//! Replays the `cni_config` fuzz target's seed corpus (cni/fuzz/seeds/cni_config)
//! through the same property the fuzzer checks.

use std::path::Path;

#[test]
fn seed_corpus_holds_the_fuzz_properties() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/cni_config");
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        switchyard_cni::fuzzing::check_config_input(&data);
        count += 1;
    }
    assert!(
        count >= 9,
        "seed corpus in {} has only {count} files",
        dir.display()
    );
}
