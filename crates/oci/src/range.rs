//! Byte ranges: the `Range` header of a blob GET and the `Content-Range` of an upload PATCH.
//!
//! Ranges are inclusive on both ends, as on the wire.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    pub start: u64,
    /// Inclusive.
    pub end: u64,
}

impl ByteRange {
    /// The number of bytes, saturating: a range as long as `u64` itself (`0-18446744073709551615`)
    /// reads as `u64::MAX` bytes, which no body carries, so it is refused where it is checked.
    pub fn len(&self) -> u64 {
        (self.end - self.start).saturating_add(1)
    }

    pub fn is_empty(&self) -> bool {
        false
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    #[error("range {0:?} is malformed")]
    Malformed(String),
    #[error("range cannot be satisfied for a blob of {size} bytes")]
    Unsatisfiable { size: u64 },
}

/// A well-formed `Range` that starts beyond the blob's `size` bytes (or asks for none of them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("range cannot be satisfied for a blob of {size} bytes")]
pub struct Unsatisfiable {
    pub size: u64,
}

/// Resolves a `Range` request header against a blob of `size` bytes.
///
/// `Ok(None)` means "send the whole blob": the header is not a single valid byte range (multiple
/// ranges, other units, `bytes=9-0`, `bytes=5`), which RFC 9110 lets a server ignore; a client
/// asking nonsense gets the whole blob rather than an error. Only a well-formed range outside
/// the blob is `Unsatisfiable` (416).
pub fn resolve_request_range(header: &str, size: u64) -> Result<Option<ByteRange>, Unsatisfiable> {
    match resolve_single_range(header, size) {
        Ok(range) => Ok(range),
        Err(RangeError::Malformed(_)) => Ok(None),
        Err(RangeError::Unsatisfiable { size }) => Err(Unsatisfiable { size }),
    }
}

fn resolve_single_range(header: &str, size: u64) -> Result<Option<ByteRange>, RangeError> {
    let Some(spec) = header.trim().strip_prefix("bytes=") else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let (first, last) = spec
        .trim()
        .split_once('-')
        .ok_or_else(|| RangeError::Malformed(header.to_owned()))?;
    let parse = |text: &str| {
        text.trim()
            .parse::<u64>()
            .map_err(|_| RangeError::Malformed(header.to_owned()))
    };
    let range = match (first.trim().is_empty(), last.trim().is_empty()) {
        (true, true) => return Err(RangeError::Malformed(header.to_owned())),
        (true, false) => {
            let suffix = parse(last)?;
            if suffix == 0 || size == 0 {
                return Err(RangeError::Unsatisfiable { size });
            }
            ByteRange {
                start: size.saturating_sub(suffix),
                end: size - 1,
            }
        }
        (false, open_end) => {
            let start = parse(first)?;
            let end = if open_end { u64::MAX } else { parse(last)? };
            if end < start {
                return Err(RangeError::Malformed(header.to_owned()));
            }
            if start >= size {
                return Err(RangeError::Unsatisfiable { size });
            }
            ByteRange {
                start,
                end: end.min(size - 1),
            }
        }
    };
    Ok(Some(range))
}

/// Parses the `Content-Range` of an upload chunk: `start-end`, as the distribution spec
/// writes it, or the RFC form `bytes start-end/total`.
pub fn parse_content_range(header: &str) -> Result<ByteRange, RangeError> {
    let malformed = || RangeError::Malformed(header.to_owned());
    let text = header.trim();
    let text = text
        .strip_prefix("bytes ")
        .or_else(|| text.strip_prefix("bytes="))
        .unwrap_or(text);
    let text = text.split_once('/').map_or(text, |(range, _total)| range);
    let (start, end) = text.split_once('-').ok_or_else(malformed)?;
    let start: u64 = start.trim().parse().map_err(|_| malformed())?;
    let end: u64 = end.trim().parse().map_err(|_| malformed())?;
    if end < start {
        return Err(malformed());
    }
    Ok(ByteRange { start, end })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn show(result: Result<Option<ByteRange>, Unsatisfiable>) -> String {
        match result {
            Ok(Some(range)) => format!("{}-{}", range.start, range.end),
            Ok(None) => "whole".into(),
            Err(Unsatisfiable { .. }) => "416".into(),
        }
    }

    #[test]
    fn request_ranges_resolve_against_the_blob_size() {
        let cases: &[(&str, u64, &str)] = &[
            ("bytes=0-9", 100, "0-9"),
            ("bytes=10-", 100, "10-99"),
            ("bytes=90-200", 100, "90-99"),
            ("bytes=-10", 100, "90-99"),
            ("bytes=-200", 100, "0-99"),
            ("bytes=99-99", 100, "99-99"),
            ("bytes=100-", 100, "416"),
            ("bytes=100-200", 100, "416"),
            ("bytes=-0", 100, "416"),
            ("bytes=0-", 0, "416"),
            ("bytes=9-0", 100, "whole"),
            ("bytes=a-b", 100, "whole"),
            ("bytes=-", 100, "whole"),
            ("bytes=5", 100, "whole"),
            ("bytes=-18446744073709551615", 100, "0-99"),
            ("bytes=0-18446744073709551615", 100, "0-99"),
            ("bytes=0-1,5-6", 100, "whole"),
            ("items=0-1", 100, "whole"),
        ];
        for (header, size, expected) in cases {
            assert_eq!(
                show(resolve_request_range(header, *size)),
                *expected,
                "header {header:?} size {size}"
            );
        }
    }

    #[test]
    fn content_ranges_accept_the_spec_and_rfc_forms() {
        let cases: &[(&str, Option<(u64, u64)>)] = &[
            ("0-99", Some((0, 99))),
            ("100-199", Some((100, 199))),
            ("bytes 0-99/100", Some((0, 99))),
            ("bytes 0-99/*", Some((0, 99))),
            ("bytes=5-9", Some((5, 9))),
            ("9-5", None),
            ("-5", None),
            ("5-", None),
            ("", None),
            ("abc", None),
            ("0-18446744073709551616", None),
        ];
        for (header, expected) in cases {
            let got = parse_content_range(header).ok().map(|r| (r.start, r.end));
            assert_eq!(got, *expected, "header {header:?}");
        }
    }

    #[test]
    fn a_range_as_long_as_u64_does_not_overflow_its_length() {
        let range = parse_content_range("0-18446744073709551615").expect("parses");
        assert_eq!(range.len(), u64::MAX);
        assert_eq!(ByteRange { start: 5, end: 5 }.len(), 1);
    }

    #[test]
    fn the_range_fuzz_corpus_replays() {
        crate::fuzz::replay("range", crate::fuzz::range);
    }
}
