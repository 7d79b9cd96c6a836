//! `Masker`: fuzzed secret values and run output. The masked output never contains a
//! masked value, neither when the text is masked whole nor when it is masked line by
//! line, as run output flows (a multi-line value such as a PEM key must not leak line by
//! line). Values containing `*` are masked but not checked: `*****` itself can form them.
//! Line by line (lines end at `\n` or `\r`, as the masker cuts values), only values with a
//! line of 8 or more bytes, trimmed, are checked: a
//! bare line break, or a value made only of short lines such as `{` and `}`, cannot be
//! masked line by line without masking ordinary output.
#![no_main]

use launcher::masking::Masker;
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input {
    values: Vec<String>,
    text: String,
}

fuzz_target!(|input: Input| {
    let masker = Masker::new(input.values.iter().cloned());
    let checked: Vec<&String> = input
        .values
        .iter()
        .filter(|v| !v.is_empty() && !v.contains('*'))
        .collect();

    let whole = masker.mask(&input.text);
    for v in &checked {
        assert!(!whole.contains(v.as_str()), "{v:?} survives in {whole:?}");
    }

    let by_line: Vec<String> = input
        .text
        .split('\n')
        .map(|line| masker.mask(line).into_owned())
        .collect();
    let by_line = by_line.join("\n");
    // Lines as the masker cuts a value: at '\n' and at '\r' (a terminal's line rewrite).
    let long_line = |v: &str| v.split(['\n', '\r']).any(|l| l.trim().len() >= 8);
    for v in checked.iter().filter(|v| long_line(v)) {
        assert!(
            !by_line.contains(v.as_str()),
            "{v:?} survives line by line in {by_line:?}"
        );
    }
});
