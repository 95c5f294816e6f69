//! How text becomes words, the same for what is indexed and what is asked:
//! Unicode words (runs of letters and digits), lower-cased; no stemming and
//! no stop words, so a query matches the words a person typed.

use tantivy::Index;
use tantivy::tokenizer::LowerCaser;
use tantivy::tokenizer::SimpleTokenizer;
use tantivy::tokenizer::TextAnalyzer;

/// Longest query, characters.
pub const MAX_QUERY_CHARS: usize = 500;
/// Most distinct words a query may hold.
pub const MAX_QUERY_WORDS: usize = 16;

/// Why a query is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    /// Nothing to look for.
    #[error("the query holds no word")]
    Empty,
    /// Over [`MAX_QUERY_CHARS`].
    #[error("the query is longer than {MAX_QUERY_CHARS} characters")]
    TooLong,
    /// Over [`MAX_QUERY_WORDS`].
    #[error("the query holds more than {MAX_QUERY_WORDS} different words")]
    TooManyWords,
}

fn analyzer() -> TextAnalyzer {
    TextAnalyzer::builder(SimpleTokenizer::default()).filter(LowerCaser).build()
}

/// Makes the index split text as [`words`] does.
pub(super) fn register(index: &Index) {
    index.tokenizers().register(super::TOKENIZER, analyzer());
}

/// The distinct words of `q`, in the order first seen.
pub fn words(q: &str) -> Result<Vec<String>, QueryError> {
    if q.chars().count() > MAX_QUERY_CHARS {
        return Err(QueryError::TooLong);
    }
    let mut analyzer = analyzer();
    let mut stream = analyzer.token_stream(q);
    let mut words: Vec<String> = Vec::new();
    while stream.advance() {
        let word = &stream.token().text;
        if !words.contains(word) {
            words.push(word.clone());
        }
    }
    match words.len() {
        0 => Err(QueryError::Empty),
        n if n > MAX_QUERY_WORDS => Err(QueryError::TooManyWords),
        _ => Ok(words),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_unicode_and_lower_cased() {
        assert_eq!(words("Hello, WORLD! héllo").expect("words"), vec!["hello", "world", "héllo"]);
        assert_eq!(words("Straße ÜBER").expect("words"), vec!["straße", "über"]);
        assert_eq!(words("a-b a").expect("words"), vec!["a", "b"]);
    }

    #[test]
    fn bad_queries_are_refused() {
        assert_eq!(words("  ,.! "), Err(QueryError::Empty));
        assert_eq!(words(&"x".repeat(MAX_QUERY_CHARS + 1)), Err(QueryError::TooLong));
        let many: Vec<String> = (0..=MAX_QUERY_WORDS).map(|i| format!("w{i}")).collect();
        assert_eq!(words(&many.join(" ")), Err(QueryError::TooManyWords));
    }
}
