//! Replaces secret values (`SPACELIFT_MASK_ENVS`) in run output with `*****` before it
//! leaves the launcher, to the backend or to stdout.
//!
//! Output is masked line by line, so a multi-line value (a PEM key, JSON credentials) is
//! also masked line by line: each of its lines of at least [`MIN_LINE_LEN`] bytes (leading
//! and trailing white space aside) is a masked value of its own. Shorter lines (`{`, `}`,
//! `"a": 1,`) are not: they would mask ordinary output, and reveal little.
//!
//! A line the Docker adapter cut (over 64 KiB) comes in pieces: [`Masker::safe_cut`] says
//! how much of a piece can go out now, holding back what might be the start of a value
//! that the next piece completes.

use std::borrow::Cow;

/// What a masked value is replaced by.
pub const MASK: &str = "*****";

/// Lines of a multi-line value shorter than this are not masked on their own.
pub const MIN_LINE_LEN: usize = 8;

/// Masks every occurrence of every non-empty value. Longer values are replaced first, so
/// a secret that contains another secret is masked whole rather than leaving a tail.
#[derive(Clone, Default)]
pub struct Masker {
    values: Vec<String>,
    /// The longest value that fits in one line.
    longest: usize,
}

/// Never the values themselves.
impl std::fmt::Debug for Masker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Masker({} values, redacted)", self.values.len())
    }
}

impl Masker {
    pub fn new<I, S>(values: I) -> Masker
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut all: Vec<String> = Vec::new();
        for value in values.into_iter().map(Into::into) {
            if value.contains(['\n', '\r']) {
                all.extend(
                    value
                        .split(['\n', '\r'])
                        .map(str::trim)
                        .filter(|l| l.len() >= MIN_LINE_LEN)
                        .map(str::to_string),
                );
            }
            if !value.is_empty() {
                all.push(value);
            }
        }
        // Longest first; ties broken by content so the order never depends on input order.
        all.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        all.dedup();
        let longest = all
            .iter()
            .filter(|v| !v.contains('\n'))
            .map(String::len)
            .max()
            .unwrap_or(0);
        let values = all;
        Masker { values, longest }
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    pub fn mask<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let mut out = Cow::Borrowed(text);
        for value in &self.values {
            if out.contains(value.as_str()) {
                out = Cow::Owned(out.replace(value.as_str(), MASK));
            }
        }
        out
    }

    /// For a piece of a line whose rest is still to come: the length of the prefix that
    /// can be masked and sent now. The rest (at most about twice the longest value) may
    /// begin a value and must wait for the next piece; no value straddles the cut.
    pub fn safe_cut(&self, text: &str) -> usize {
        let mut cut = text.len().saturating_sub(self.longest.saturating_sub(1));
        loop {
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            let straddling = self
                .values
                .iter()
                .filter_map(|v| straddle(text, v, cut))
                .min();
            match straddling {
                Some(start) => cut = start,
                None => return cut,
            }
        }
    }
}

/// The start of an occurrence of `value` in `text` that begins before `cut` and ends after.
fn straddle(text: &str, value: &str, cut: usize) -> Option<usize> {
    if value.len() < 2 || cut == 0 || cut >= text.len() {
        return None;
    }
    let mut from = cut.saturating_sub(value.len() - 1);
    while !text.is_char_boundary(from) {
        from += 1;
    }
    let mut hi = (cut + value.len() - 1).min(text.len());
    while !text.is_char_boundary(hi) {
        hi -= 1;
    }
    if from >= cut || hi <= from {
        return None;
    }
    // Any occurrence inside [from, hi) starts before `cut` and ends after it.
    text[from..hi].find(value).map(|i| from + i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_every_occurrence_of_every_value() {
        let m = Masker::new(["hunter2", "s3cr3t"]);
        assert_eq!(
            m.mask("a hunter2 b s3cr3t c hunter2"),
            "a ***** b ***** c *****"
        );
    }

    #[test]
    fn longest_value_wins_over_its_substring() {
        // If "abc" were replaced first, "abcdef" would leak as "*****def".
        let m = Masker::new(["abc", "abcdef"]);
        assert_eq!(m.mask("x abcdef y abc"), "x ***** y *****");
        let m = Masker::new(["abcdef", "abc"]);
        assert_eq!(m.mask("x abcdef y abc"), "x ***** y *****");
    }

    const PEM: &str = "-----BEGIN PRIVATE KEY-----\n\
        MIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n\
        BKcwggSjAgEAAoIBAQC7VJTUt9Us8cKj\n\
        -----END PRIVATE KEY-----\n";

    #[test]
    fn every_line_of_a_multi_line_value_is_masked() {
        let m = Masker::new([PEM]);
        for line in PEM.lines() {
            assert_eq!(m.mask(line), MASK, "{line}");
            // Indented, or with a Windows line end, as a tool may print it.
            assert_eq!(m.mask(&format!("  {line}\r")), format!("  {MASK}\r"));
        }
        let json = "{\n  \"type\": \"sa\",\n  \"private_key\": \"abc123secret\"\n}";
        let m = Masker::new([json]);
        assert_eq!(
            m.mask("  \"private_key\": \"abc123secret\""),
            format!("  {MASK}")
        );
        // Lines shorter than MIN_LINE_LEN are not masked on their own.
        assert_eq!(m.mask("{"), "{");
        assert_eq!(m.mask("}"), "}");
    }

    #[test]
    fn debug_shows_no_value() {
        let m = Masker::new(["hunter2", PEM]);
        let debug = format!("{m:?} {m:#?}");
        assert!(
            !debug.contains("hunter2") && !debug.contains("MIIE"),
            "{debug}"
        );
    }

    #[test]
    fn safe_cut_never_splits_a_value() {
        let m = Masker::new(["s3cr3t-value", "abc"]);
        // Nothing to hold back without values, or when the piece is short.
        assert_eq!(Masker::default().safe_cut("xyz"), 3);
        // The last (longest - 1) bytes wait: they may begin a value.
        let text = format!("{}s3cr3t-", "x".repeat(100));
        assert_eq!(m.safe_cut(&text), 100 - 4);
        // A complete value over the plain cut moves the cut before it.
        let text = format!("{}s3cr3t-valuexxxxxxx", "x".repeat(100));
        let cut = m.safe_cut(&text);
        assert!(cut <= 100, "{cut}");
        // Every cut of every text leaves each value whole on one side.
        let text = "ab s3cr3t-value abc s3cr3t-v";
        for end in 0..=text.len() {
            let piece = &text[..end];
            let cut = m.safe_cut(piece);
            assert!(piece.len() - cut < 2 * "s3cr3t-value".len(), "{piece:?}");
            for v in ["s3cr3t-value", "abc"] {
                for (i, _) in piece.match_indices(v) {
                    assert!(i + v.len() <= cut || i >= cut, "{piece:?} cut at {cut}");
                }
            }
        }
    }

    #[test]
    fn empty_values_are_ignored_and_clean_text_is_borrowed() {
        let m = Masker::new(["", "tok"]);
        assert!(matches!(m.mask("nothing here"), Cow::Borrowed(_)));
        assert_eq!(m.mask("tok"), MASK);
        assert!(Masker::new([""]).is_empty());
        assert_eq!(Masker::new([""]).mask("abc"), "abc");
    }
}
