//! Replaces secret values (`SPACELIFT_MASK_ENVS`) in run output with `*****` before it
//! leaves the launcher, to the backend or to stdout.

use std::borrow::Cow;

/// What a masked value is replaced by.
pub const MASK: &str = "*****";

/// Masks every occurrence of every non-empty value. Longer values are replaced first, so
/// a secret that contains another secret is masked whole rather than leaving a tail.
#[derive(Debug, Clone, Default)]
pub struct Masker {
    values: Vec<String>,
}

impl Masker {
    pub fn new<I, S>(values: I) -> Masker
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut values: Vec<String> = values
            .into_iter()
            .map(Into::into)
            .filter(|v| !v.is_empty())
            .collect();
        // Longest first; ties broken by content so the order never depends on input order.
        values.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        values.dedup();
        Masker { values }
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

    #[test]
    fn empty_values_are_ignored_and_clean_text_is_borrowed() {
        let m = Masker::new(["", "tok"]);
        assert!(matches!(m.mask("nothing here"), Cow::Borrowed(_)));
        assert_eq!(m.mask("tok"), MASK);
        assert!(Masker::new([""]).is_empty());
        assert_eq!(Masker::new([""]).mask("abc"), "abc");
    }
}
