//! Sidekiq's `error_backtrace` encoding: a JSON array of lines, zlib-compressed, base64-encoded.
//!
//! Errand writes strict base64 (Sidekiq 7.3+) and reads leniently (MIME base64 with newlines from
//! 6.4–7.2, and a plain JSON array from very old jobs), as every Sidekiq version does.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use flate2::Compression;
use flate2::read::ZlibDecoder;
use flate2::write::ZlibEncoder;
use std::io::{Read, Write};

/// Encodes backtrace lines as Sidekiq stores them in `error_backtrace`.
pub fn encode(lines: &[String]) -> String {
    let json = serde_json::to_vec(lines).unwrap_or_else(|_| b"[]".to_vec());
    let mut z = ZlibEncoder::new(Vec::new(), Compression::default());
    // Writing into a Vec cannot fail.
    let _ = z.write_all(&json);
    STANDARD.encode(z.finish().unwrap_or_default())
}

/// Decodes an `error_backtrace` value written by any Sidekiq version or by Errand.
pub fn decode(value: &serde_json::Value) -> Option<Vec<String>> {
    if let Some(arr) = value.as_array() {
        return Some(
            arr.iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| v.to_string())
                })
                .collect(),
        );
    }
    let text: String = value
        .as_str()?
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    let compressed = STANDARD.decode(text).ok()?;
    let mut json = Vec::new();
    ZlibDecoder::new(&compressed[..])
        .read_to_end(&mut json)
        .ok()?;
    serde_json::from_slice(&json).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_with_zlib_header() {
        let lines = vec!["a.rs:1".to_string(), "b.rs:2 in `x`".to_string()];
        let enc = encode(&lines);
        let raw = STANDARD.decode(&enc).unwrap();
        assert_eq!(&raw[..2], &[0x78, 0x9c]);
        assert!(!enc.contains('\n'));
        assert_eq!(decode(&serde_json::Value::from(enc)).unwrap(), lines);
    }

    #[test]
    fn reads_mime_base64_with_newlines() {
        let lines: Vec<String> = (0..40).map(|i| format!("line number {i}")).collect();
        let enc = encode(&lines);
        let mut mime = String::new();
        for chunk in enc.as_bytes().chunks(60) {
            mime.push_str(std::str::from_utf8(chunk).unwrap());
            mime.push('\n');
        }
        assert_eq!(decode(&serde_json::Value::from(mime)).unwrap(), lines);
    }

    #[test]
    fn reads_plain_arrays() {
        let v = serde_json::json!(["x", "y"]);
        assert_eq!(decode(&v).unwrap(), vec!["x", "y"]);
    }
}
