//! The cursor of a multiplexed stream: every topic's position in one SSE id, so that an
//! EventSource reconnect (`Last-Event-ID`) resumes each topic where it was.
//!
//! Format: one position per topic, in the order of the request's `topic` parameters, joined by
//! `.`. A position is the id of the topic's last event in lowercase base 36 (`u64::MAX` is
//! `3w5e11264sgsf`, 13 characters), or empty while the topic has had no event (it then starts
//! at its latest event, as a new viewer does). So a cursor is at most 14 × topics − 1 bytes:
//! 699 bytes for the default `--max-topics` of 50. It names no topic, user or tenant: a cursor
//! of another stream, or a forged one, only moves positions in topics this request may read.

/// One topic's position: the id of its last event, if it had one.
pub type Position = Option<u64>;

/// Why a cursor was refused (a 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CursorError {
    /// More bytes than any cursor of this many topics has.
    #[error("the cursor is longer than a cursor of {topics} topics can be")]
    TooLong {
        /// The request's topic count.
        topics: usize,
    },
    /// Not one position per topic.
    #[error("the cursor has {found} positions for {topics} topics")]
    Count {
        /// Positions found.
        found: usize,
        /// The request's topic count.
        topics: usize,
    },
    /// A position that is not 1 to 13 base-36 digits fitting a u64.
    #[error("a cursor position is not a base-36 event id")]
    Position,
}

/// The longest position: `u64::MAX` in base 36.
const MAX_DIGITS: usize = 13;

/// Parses a cursor of `topics` positions.
pub fn parse(cursor: &str, topics: usize) -> Result<Vec<Position>, CursorError> {
    if cursor.len() > topics * (MAX_DIGITS + 1) {
        return Err(CursorError::TooLong { topics });
    }
    let positions: Vec<&str> = cursor.split('.').collect();
    if positions.len() != topics {
        return Err(CursorError::Count { found: positions.len(), topics });
    }
    positions
        .into_iter()
        .map(|position| match position {
            "" => Ok(None),
            digits
                if digits.len() <= MAX_DIGITS
                    && digits.bytes().all(|b| b.is_ascii_digit() || b.is_ascii_lowercase()) =>
            {
                u64::from_str_radix(digits, 36).map(Some).map_err(|_| CursorError::Position)
            }
            _ => Err(CursorError::Position),
        })
        .collect()
}

/// Formats positions as a cursor.
pub fn format(positions: &[Position]) -> String {
    let mut out = String::with_capacity(positions.len() * 4);
    for (i, position) in positions.iter().enumerate() {
        if i > 0 {
            out.push('.');
        }
        if let Some(id) = position {
            push_base36(&mut out, *id);
        }
    }
    out
}

fn push_base36(out: &mut String, mut value: u64) {
    let mut digits = [0u8; MAX_DIGITS];
    let mut at = MAX_DIGITS;
    loop {
        at -= 1;
        let digit = (value % 36) as u8;
        digits[at] = if digit < 10 { b'0' + digit } else { b'a' + digit - 10 };
        value /= 36;
        if value == 0 {
            break;
        }
    }
    out.extend(digits[at..].iter().map(|&b| char::from(b)));
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn every_cursor_round_trips(positions in proptest::collection::vec(proptest::option::of(any::<u64>()), 1..60)) {
            let cursor = format(&positions);
            prop_assert!(cursor.len() < positions.len() * (MAX_DIGITS + 1));
            prop_assert_eq!(parse(&cursor, positions.len()), Ok(positions));
        }

        #[test]
        fn any_text_is_parsed_or_refused_without_panicking(text in "\\PC{0,900}", topics in 1usize..60) {
            if let Ok(positions) = parse(&text, topics) {
                prop_assert_eq!(positions.len(), topics);
                prop_assert_eq!(format(&positions).len() <= text.len(), true);
            }
        }
    }

    #[test]
    fn hostile_cursors_are_refused() {
        assert_eq!(parse("1.2", 3), Err(CursorError::Count { found: 2, topics: 3 }), "truncated");
        assert_eq!(parse("1.2.3.4", 3), Err(CursorError::Count { found: 4, topics: 3 }), "too many");
        assert_eq!(parse(&"z".repeat(100), 3), Err(CursorError::TooLong { topics: 3 }), "oversized");
        assert_eq!(parse("3w5e11264sgsg", 1), Err(CursorError::Position), "past u64::MAX");
        assert_eq!(parse("-1", 1), Err(CursorError::Position));
        assert_eq!(parse("A", 1), Err(CursorError::Position), "uppercase is not the format");
        assert_eq!(parse("+7", 1), Err(CursorError::Position));
        assert_eq!(parse("3w5e11264sgsf..a", 3), Ok(vec![Some(u64::MAX), None, Some(10)]));
    }
}
