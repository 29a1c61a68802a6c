//! Tampering helpers for the demo: change exactly one byte of a signed file in a place that
//! matters, the way a corrupted download or a hostile mirror would.
//!
//! Bundles are uncompressed tar files, so a member's bytes and the compact JSON of
//! `manifest.dsse.json` can be found inside the bundle by searching for them.

use anyhow::{Result, bail};

/// The standard base64 alphabet (RFC 4648 section 4), which DSSE payloads use.
const BASE64_ALPHABET: &[u8; 64] =
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Where the first occurrence of `needle` starts in `haystack`.
pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return None;
    }
    haystack.windows(needle.len()).position(|window| window == needle)
}

/// Flips the lowest bit of the byte in the middle of the first occurrence of `needle` in
/// `data` and returns that byte's offset.
pub fn flip_byte_inside(data: &mut [u8], needle: &[u8]) -> Result<usize> {
    let Some(start) = find(data, needle) else {
        bail!("the {} bytes to tamper with do not occur in the file", needle.len());
    };
    let offset = start + needle.len() / 2;
    data[offset] ^= 0x01;
    Ok(offset)
}

/// Replaces one base64 character of the JSON string that follows the first occurrence of
/// `needle` (e.g. `"payload":"`) by a different base64 character, and returns its offset.
///
/// The character is taken from the middle of the string, away from the final quantum and its
/// `=` padding, so the result still decodes, to different bytes: the change is caught by the
/// signature, not by a base64 decoder.
pub fn flip_base64_char_after(data: &mut [u8], needle: &[u8]) -> Result<usize> {
    let Some(found) = find(data, needle) else {
        bail!("{:?} does not occur in the file", String::from_utf8_lossy(needle));
    };
    let start = found + needle.len();
    let Some(length) = data[start..].iter().position(|&byte| byte == b'"') else {
        bail!("the string after {:?} is not terminated", String::from_utf8_lossy(needle));
    };
    if length < 8 {
        bail!(
            "the string after {:?} is too short to tamper with ({length} characters)",
            String::from_utf8_lossy(needle)
        );
    }
    let offset = start + length / 2;
    let Some(index) = BASE64_ALPHABET.iter().position(|&letter| letter == data[offset]) else {
        bail!(
            "the string after {:?} is not base64 (found {:?})",
            String::from_utf8_lossy(needle),
            data[offset] as char
        );
    };
    data[offset] = other_base64_char(index);
    Ok(offset)
}

/// The base64 character after the one at `index` in the alphabet, wrapping around: always a
/// different valid character.
fn other_base64_char(index: usize) -> u8 {
    BASE64_ALPHABET[(index + 1) % BASE64_ALPHABET.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The offsets where `a` and `b` differ.
    fn differing_offsets(a: &[u8], b: &[u8]) -> Vec<usize> {
        assert_eq!(a.len(), b.len(), "tampering never changes the length");
        (0..a.len()).filter(|&i| a[i] != b[i]).collect()
    }

    #[test]
    fn find_locates_the_first_occurrence() {
        assert_eq!(find(b"xxabcab", b"ab"), Some(2));
        assert_eq!(find(b"abc", b"abcd"), None);
        assert_eq!(find(b"abc", b""), None);
        assert_eq!(find(b"", b"a"), None);
    }

    #[test]
    fn flipping_inside_changes_exactly_the_middle_byte_of_the_needle() -> Result<()> {
        let model = b"\x08\x08\x12\x06onnx-model-bytes\x00\xff";
        for (prefix, suffix) in [(&b"tar header.."[..], &b"..padding"[..]), (b"", b""), (b"x", b"")]
        {
            let original = [prefix, &model[..], suffix].concat();
            let mut tampered = original.clone();
            let offset = flip_byte_inside(&mut tampered, model)?;
            assert_eq!(offset, prefix.len() + model.len() / 2);
            assert_eq!(differing_offsets(&original, &tampered), [offset]);
        }
        Ok(())
    }

    #[test]
    fn flipping_a_missing_needle_is_an_error_and_changes_nothing() {
        let mut data = b"some bundle".to_vec();
        assert!(flip_byte_inside(&mut data, b"model.onnx bytes").is_err());
        assert!(flip_base64_char_after(&mut data, b"\"payload\":\"").is_err());
        assert_eq!(data, b"some bundle");
    }

    #[test]
    fn every_base64_char_has_a_different_valid_replacement() {
        for (index, &letter) in BASE64_ALPHABET.iter().enumerate() {
            let replacement = other_base64_char(index);
            assert_ne!(replacement, letter);
            assert!(BASE64_ALPHABET.contains(&replacement));
        }
    }

    #[test]
    fn flipping_a_payload_changes_one_base64_char_in_the_middle_of_the_payload() -> Result<()> {
        let envelope = concat!(
            r#"{"payloadType":"application/vnd.outpost.bundle-manifest+json","#,
            r#""payload":"eyJuYW1lIjoiZnJhdWQtc2NvcmVyIn0=","#,
            r#""signatures":[{"keyid":"k","sig":"c2ln"}]}"#
        )
        .as_bytes();
        let mut tampered = envelope.to_vec();
        let offset = flip_base64_char_after(&mut tampered, br#""payload":""#)?;
        assert_eq!(differing_offsets(envelope, &tampered), [offset]);
        let payload_start = find(envelope, b"eyJ").expect("payload present");
        let payload_end = payload_start + "eyJuYW1lIjoiZnJhdWQtc2NvcmVyIn0=".len();
        assert!(
            (payload_start..payload_end - 4).contains(&offset),
            "offset {offset} is inside the payload, before its last quantum"
        );
        assert!(BASE64_ALPHABET.contains(&tampered[offset]));
        assert_ne!(tampered[offset], envelope[offset]);
        Ok(())
    }

    #[test]
    fn the_payload_type_key_is_not_mistaken_for_the_payload() -> Result<()> {
        // `"payloadType":"` must not match `"payload":"`; the payload proper comes second.
        let mut envelope = br#"{"payloadType":"AAAAAAAAAAAA","payload":"BBBBBBBBBBBB"}"#.to_vec();
        let offset = flip_base64_char_after(&mut envelope, br#""payload":""#)?;
        assert!(offset > 30);
        assert_eq!(&envelope[..30], br#"{"payloadType":"AAAAAAAAAAAA","#);
        Ok(())
    }

    #[test]
    fn short_or_unterminated_payloads_are_refused() {
        assert!(
            flip_base64_char_after(&mut br#""payload":"abc""#.to_vec(), br#""payload":""#).is_err()
        );
        assert!(
            flip_base64_char_after(&mut br#""payload":"abcdefghijkl"#.to_vec(), br#""payload":""#)
                .is_err()
        );
        assert!(
            flip_base64_char_after(&mut br#""payload":"!!!!!!!!!!""#.to_vec(), br#""payload":""#)
                .is_err()
        );
    }
}
