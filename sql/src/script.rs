//! Splitting a script into statements the way a SQL shell does: by the tokenizer, so that a
//! `;` inside a string, a quoted name or a comment does not end one.

use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer, Whitespace};

/// Whether `buf` ends a statement: its last token, comments aside, is a `;` (one inside a
/// string, a quoted name or a comment is not; an unclosed string is not complete).
pub fn complete(buf: &str) -> bool {
    match Tokenizer::new(&GenericDialect {}, buf).tokenize() {
        Ok(tokens) => tokens
            .iter()
            .rev()
            .find(|t| !matches!(t, Token::Whitespace(_)))
            .is_some_and(|t| *t == Token::SemiColon),
        Err(_) => false,
    }
}

/// Whether `buf` holds nothing but whitespace and comments.
pub fn only_comments(buf: &str) -> bool {
    match Tokenizer::new(&GenericDialect {}, buf).tokenize() {
        Ok(tokens) => tokens.iter().all(|t| {
            matches!(
                t,
                Token::Whitespace(
                    Whitespace::Space
                        | Whitespace::Newline
                        | Whitespace::Tab
                        | Whitespace::SingleLineComment { .. }
                        | Whitespace::MultiLineComment(_)
                )
            )
        }),
        Err(_) => buf.trim().is_empty(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_end_at_a_semicolon_outside_strings_and_comments() {
        assert!(complete("SELECT 1;"));
        assert!(complete("SELECT 1; -- done\n"));
        assert!(complete("SELECT 1; SELECT 2;"));
        assert!(!complete("SELECT 1"));
        assert!(!complete("SELECT ';"));
        assert!(!complete("SELECT 1 -- ;\n"));
        assert!(!complete("SELECT 1 /* ; */"));
        assert!(only_comments("  -- nothing\n/* here */\n"));
        assert!(!only_comments("SELECT 1"));
    }
}
