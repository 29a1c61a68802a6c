//! A stand-in for the unmaintained `rustls-pemfile` crate (RUSTSEC-2025-0134): the functions
//! rumqttc 0.25 calls (`certs`, `read_one`, `Item`) on top of rustls-pki-types' PEM parser,
//! which is what that crate's last release wrapped too.
//!
//! rumqttc reads PEM only for `TlsConfiguration::Simple`; Outpost hands it a finished rustls
//! `ClientConfig` and parses its own PEM files with rustls-pki-types, so this code runs only
//! if a future caller uses the simple configuration. The root `Cargo.toml` patches crates.io's
//! `rustls-pemfile` with this crate, so the unmaintained one is not in the build.

#![forbid(unsafe_code)]

use std::io;

use rustls_pki_types::pem::{self, SectionKind};
use rustls_pki_types::{
    CertificateDer, CertificateRevocationListDer, CertificateSigningRequestDer, PrivatePkcs1KeyDer,
    PrivatePkcs8KeyDer, PrivateSec1KeyDer, SubjectPublicKeyInfoDer,
};

/// One PEM section of a kind TLS configuration uses.
#[non_exhaustive]
#[derive(Debug, PartialEq)]
pub enum Item {
    /// `CERTIFICATE`
    X509Certificate(CertificateDer<'static>),
    /// `PUBLIC KEY`
    SubjectPublicKeyInfo(SubjectPublicKeyInfoDer<'static>),
    /// `RSA PRIVATE KEY`
    Pkcs1Key(PrivatePkcs1KeyDer<'static>),
    /// `PRIVATE KEY`
    Pkcs8Key(PrivatePkcs8KeyDer<'static>),
    /// `EC PRIVATE KEY`
    Sec1Key(PrivateSec1KeyDer<'static>),
    /// `X509 CRL`
    Crl(CertificateRevocationListDer<'static>),
    /// `CERTIFICATE REQUEST`
    Csr(CertificateSigningRequestDer<'static>),
}

impl Item {
    fn of(kind: SectionKind, der: Vec<u8>) -> Option<Self> {
        Some(match kind {
            SectionKind::Certificate => Self::X509Certificate(der.into()),
            SectionKind::PublicKey => Self::SubjectPublicKeyInfo(der.into()),
            SectionKind::RsaPrivateKey => Self::Pkcs1Key(der.into()),
            SectionKind::PrivateKey => Self::Pkcs8Key(der.into()),
            SectionKind::EcPrivateKey => Self::Sec1Key(der.into()),
            SectionKind::Crl => Self::Crl(der.into()),
            SectionKind::Csr => Self::Csr(der.into()),
            _ => return None,
        })
    }
}

fn io_error(error: pem::Error) -> io::Error {
    match error {
        pem::Error::Io(error) => error,
        other => io::Error::new(io::ErrorKind::InvalidData, other.to_string()),
    }
}

/// The next section of a kind [`Item`] knows (others are skipped); `None` at the end.
pub fn read_one(reader: &mut dyn io::BufRead) -> Result<Option<Item>, io::Error> {
    loop {
        match pem::from_buf(reader).map_err(io_error)? {
            None => return Ok(None),
            Some((kind, der)) => {
                if let Some(item) = Item::of(kind, der) {
                    return Ok(Some(item));
                }
            }
        }
    }
}

/// Every `CERTIFICATE` section, in order; other sections are skipped.
pub fn certs(
    reader: &mut dyn io::BufRead,
) -> impl Iterator<Item = Result<CertificateDer<'static>, io::Error>> + '_ {
    std::iter::from_fn(move || {
        loop {
            match read_one(reader) {
                Ok(None) => return None,
                Ok(Some(Item::X509Certificate(certificate))) => return Some(Ok(certificate)),
                Ok(Some(_)) => continue,
                Err(error) => return Some(Err(error)),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEM: &str = "junk before\n\
        -----BEGIN CERTIFICATE-----\nAQID\n-----END CERTIFICATE-----\n\
        -----BEGIN PRIVATE KEY-----\nBAUG\n-----END PRIVATE KEY-----\n\
        -----BEGIN CERTIFICATE-----\nBwgJ\n-----END CERTIFICATE-----\n";

    #[test]
    fn certificates_come_out_in_order_and_keys_are_typed() {
        let certificates: Vec<_> =
            certs(&mut PEM.as_bytes()).collect::<Result<_, _>>().expect("valid PEM");
        assert_eq!(certificates, [CertificateDer::from(vec![1, 2, 3]), vec![7, 8, 9].into()]);
        let mut reader = PEM.as_bytes();
        assert!(matches!(read_one(&mut reader), Ok(Some(Item::X509Certificate(_)))));
        match read_one(&mut reader) {
            Ok(Some(Item::Pkcs8Key(key))) => assert_eq!(key.secret_pkcs8_der(), [4, 5, 6]),
            other => panic!("expected the PKCS #8 key, got {other:?}"),
        }
    }

    #[test]
    fn damaged_pem_is_an_invalid_data_error() {
        let damaged = "-----BEGIN CERTIFICATE-----\nAQID\n";
        let error = certs(&mut damaged.as_bytes()).next().expect("an item").expect_err("damaged");
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        assert!(read_one(&mut "no pem here\n".as_bytes()).expect("readable").is_none());
    }
}
