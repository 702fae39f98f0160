//! Minimal PEM helpers: strict single-block reading and encoding.
//!
//! Decoding uses rustls-pki-types (the maintained PEM reader in our tree).
//! Encoding is done here so private keys are written straight into a
//! zeroizing buffer instead of passing through intermediate `String`s.

use base64::Engine as _;
use rustls_pki_types::pem::{PemObject, SectionKind};
use zeroize::{Zeroize, Zeroizing};

/// Lines starting with `-----BEGIN `, whatever the label.
pub(crate) fn begin_labels(text: &[u8]) -> Vec<String> {
    text.split(|&b| b == b'\n' || b == b'\r')
        .filter_map(|line| line.strip_prefix(b"-----BEGIN "))
        .map(|rest| {
            let end = rest.iter().position(|&b| b == b'-').unwrap_or(rest.len());
            String::from_utf8_lossy(&rest[..end])
                .chars()
                .take(40)
                .collect()
        })
        .collect()
}

/// Outcome of [`single_block`].
pub(crate) enum Single {
    /// Exactly one block of the wanted kind; its DER body.
    Found(Zeroizing<Vec<u8>>),
    /// No `BEGIN` line at all.
    None,
    /// More than one `BEGIN` line.
    Many(usize),
    /// One block, other label.
    WrongLabel(String),
    /// Armour or base64 broken.
    Broken,
}

/// Reads exactly one PEM block of kind `want` from `text`. Anything else
/// (zero blocks, several blocks, another label) is reported distinctly.
pub(crate) fn single_block(text: &[u8], want: SectionKind) -> Single {
    let labels = begin_labels(text);
    match labels.len() {
        0 => return Single::None,
        1 => {}
        n => return Single::Many(n),
    }
    let mut found = None;
    for item in <(SectionKind, Vec<u8>) as PemObject>::pem_slice_iter(text) {
        match item {
            Ok((kind, der)) => {
                let der = Zeroizing::new(der);
                if kind == want && found.is_none() {
                    found = Some(der);
                } else {
                    return Single::WrongLabel(labels[0].clone());
                }
            }
            Err(_) => return Single::Broken,
        }
    }
    match found {
        Some(der) => Single::Found(der),
        // The one BEGIN line carried a label rustls-pki-types does not know.
        None if labels[0].as_bytes() == want_label(want) => Single::Broken,
        None => Single::WrongLabel(labels[0].clone()),
    }
}

fn want_label(kind: SectionKind) -> &'static [u8] {
    match kind {
        SectionKind::Certificate => b"CERTIFICATE",
        SectionKind::Csr => b"CERTIFICATE REQUEST",
        SectionKind::PrivateKey => b"PRIVATE KEY",
        _ => b"",
    }
}

/// Encodes `der` as PEM with 64-column lines and a trailing newline, the
/// layout Go's `pem.Encode` produces.
pub(crate) fn encode(label: &str, der: &[u8]) -> Zeroizing<Vec<u8>> {
    let mut out = Zeroizing::new(Vec::with_capacity(der.len() * 4 / 3 + 100));
    out.extend_from_slice(b"-----BEGIN ");
    out.extend_from_slice(label.as_bytes());
    out.extend_from_slice(b"-----\n");
    let mut line = [0u8; 64];
    for chunk in der.chunks(48) {
        let n = base64::engine::general_purpose::STANDARD
            .encode_slice(chunk, &mut line)
            .unwrap_or(0);
        out.extend_from_slice(&line[..n]);
        out.push(b'\n');
    }
    line.zeroize();
    out.extend_from_slice(b"-----END ");
    out.extend_from_slice(label.as_bytes());
    out.extend_from_slice(b"-----\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_matches_go_layout_and_decodes() {
        let der: Vec<u8> = (0..=255u8).collect();
        let pem = encode("CERTIFICATE", &der);
        let text = std::str::from_utf8(&pem).unwrap();
        assert!(text.ends_with("-----END CERTIFICATE-----\n"));
        assert!(text.lines().all(|l| l.len() <= 64));
        match single_block(&pem, SectionKind::Certificate) {
            Single::Found(d) => assert_eq!(*d, der),
            _ => panic!("no block"),
        }
    }

    #[test]
    fn single_block_cases() {
        let one = encode("CERTIFICATE", b"abc");
        let mut two = one.to_vec();
        two.extend_from_slice(&one);
        assert!(matches!(
            single_block(b"", SectionKind::Certificate),
            Single::None
        ));
        assert!(matches!(
            single_block(&two, SectionKind::Certificate),
            Single::Many(2)
        ));
        assert!(
            matches!(single_block(&one, SectionKind::Csr), Single::WrongLabel(l) if l == "CERTIFICATE")
        );
        let odd = encode("FOO BAR", b"abc");
        assert!(
            matches!(single_block(&odd, SectionKind::Csr), Single::WrongLabel(l) if l == "FOO BAR")
        );
        let cut = &one[..one.len() - 10];
        assert!(matches!(
            single_block(cut, SectionKind::Certificate),
            Single::Broken
        ));
        let bad64 = b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n";
        assert!(matches!(
            single_block(bad64, SectionKind::Certificate),
            Single::Broken
        ));
    }
}
