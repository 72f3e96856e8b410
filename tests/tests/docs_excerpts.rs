//! The compile errors quoted in `docs/hooks.md` are the real ones: every line of a quoted excerpt must
//! appear in the `.stderr` file of the UI case it names, so the guide cannot drift from the macro.

use std::path::Path;

#[test]
fn every_error_excerpt_in_the_guide_matches_its_ui_test() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let guide = std::fs::read_to_string(root.join("../docs/hooks.md")).unwrap();
    let mut checked = 0;
    for block in guide.split("```text\n").skip(1) {
        let block = block.split("```").next().unwrap();
        let cases: Vec<&str> = block
            .lines()
            .filter_map(|l| l.trim_start().strip_prefix("--> ui/fail/"))
            .map(|l| l.split(".rs").next().unwrap())
            .collect();
        if cases.is_empty() {
            continue;
        }
        let stderr: String = cases
            .iter()
            .map(|case| std::fs::read_to_string(root.join(format!("ui/fail/{case}.stderr"))).unwrap())
            .collect();
        for line in block.lines().filter(|l| !l.trim().is_empty() && !l.contains('…')) {
            assert!(stderr.contains(line), "docs/hooks.md quotes a line that {cases:?} does not print:\n{line}");
        }
        checked += 1;
    }
    assert!(checked >= 15, "only {checked} excerpts found");
}
