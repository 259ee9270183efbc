//! The one rule for short human text both services store and show:
//! nicknames (auth) and task titles (task).
//!
//! Such text is shown to people, in lists and beside other text, so it must
//! be visible, one line, and not able to reorder what is around it. The
//! rule, in order:
//! 1. Unicode NFC normalisation, so that one visible string has one stored
//!    form and the length limit counts what a reader sees;
//! 2. leading and trailing white space is trimmed;
//! 3. control characters (NUL, ESC, line breaks, tabs: Unicode `Cc`) are
//!    refused;
//! 4. bidirectional embedding, override and isolate characters
//!    (U+202A–U+202E, U+2066–U+2069) are refused: they let text display
//!    in another order than it is stored ("Trojan Source");
//! 5. text with nothing left once invisible characters (zero-width spaces,
//!    joiners, word joiner, BOM, soft hyphen, variation selectors, other
//!    default-ignorable code points) and white space are removed is refused;
//! 6. then the length is checked, in characters of the NFC form.
use unicode_normalization::UnicodeNormalization;

/// Why text was refused; each is a field violation's description.
pub const EMPTY: &str = "must not be empty";
pub const CONTROL: &str = "must not contain control characters (such as NUL, ESC or a line break)";
pub const BIDI: &str =
    "must not contain bidirectional override or isolate characters (U+202A-U+202E, U+2066-U+2069)";
pub const INVISIBLE: &str = "must contain a visible character";

/// Validates and normalises `raw` per the module rule; at most `max_chars`
/// characters after normalisation. The `Err` is the violation description.
pub fn display_text(raw: &str, max_chars: usize) -> Result<String, String> {
    let nfc: String = raw.nfc().collect();
    let text = nfc.trim();
    if text.is_empty() {
        return Err(EMPTY.into());
    }
    if text.chars().any(char::is_control) {
        return Err(CONTROL.into());
    }
    if text.chars().any(is_bidi_control) {
        return Err(BIDI.into());
    }
    if text.chars().all(|c| c.is_whitespace() || is_invisible(c)) {
        return Err(INVISIBLE.into());
    }
    if text.chars().count() > max_chars {
        return Err(format!("must be at most {max_chars} characters"));
    }
    Ok(text.to_owned())
}

/// Embeddings, overrides (U+202A–U+202E) and isolates (U+2066–U+2069).
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// Unicode's Default_Ignorable_Code_Point: characters that render as nothing.
fn is_invisible(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{034F}' | '\u{061C}' | '\u{115F}' | '\u{1160}' | '\u{17B4}' | '\u{17B5}'
        | '\u{180B}'..='\u{180F}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{206F}' | '\u{3164}' | '\u{FE00}'..='\u{FE0F}' | '\u{FEFF}'
        | '\u{FFA0}' | '\u{FFF0}'..='\u{FFF8}' | '\u{1BCA0}'..='\u{1BCA3}'
        | '\u{1D173}'..='\u{1D17A}' | '\u{E0000}'..='\u{E0FFF}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_refused() {
        for bad in [
            "a\0b",
            "a\u{1b}[31mb",
            "two\nlines",
            "a\rb",
            "tab\there",
            "del\u{7f}",
        ] {
            assert_eq!(display_text(bad, 32).unwrap_err(), CONTROL, "{bad:?}");
        }
    }

    #[test]
    fn bidi_overrides_and_isolates_are_refused() {
        for bad in ["abc\u{202E}txt.exe", "\u{2066}x\u{2069}", "a\u{202A}b"] {
            assert_eq!(display_text(bad, 32).unwrap_err(), BIDI, "{bad:?}");
        }
        // Right-to-left text itself is fine.
        assert_eq!(display_text("שלום", 32).unwrap(), "שלום");
    }

    #[test]
    fn invisible_only_text_is_refused_but_joiners_inside_text_are_kept() {
        for bad in [
            "\u{200B}",
            "\u{200B}\u{200D}\u{FEFF}",
            " \u{2060} ",
            "\u{00AD}",
        ] {
            assert_eq!(display_text(bad, 32).unwrap_err(), INVISIBLE, "{bad:?}");
        }
        assert_eq!(display_text("   ", 32).unwrap_err(), EMPTY);
        // A family emoji is joined by U+200D: visible, accepted.
        assert!(display_text("👨\u{200D}👩\u{200D}👧", 32).is_ok());
    }

    #[test]
    fn nfc_comes_before_the_length_check() {
        // "é" as e + combining acute is two code points, one after NFC.
        let decomposed = "e\u{301}".repeat(32);
        let stored = display_text(&decomposed, 32).unwrap();
        assert_eq!(stored, "é".repeat(32));
        assert_eq!(stored.chars().count(), 32);
        assert!(display_text(&"e\u{301}".repeat(33), 32).is_err());
        assert_eq!(display_text("  ann ", 32).unwrap(), "ann");
    }
}
