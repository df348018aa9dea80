//! Issuing sonde's certificates (rcgen): a CA, the daemons' certificate (one name for every
//! daemon, checked whatever address sondectl dials) and clients' certificates. What `deploy`
//! puts in Secrets and `lab up` writes for its daemons.

use std::{path::Path, time::Duration};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use time::OffsetDateTime;

use super::{CA_FILE, CERT_FILE, DAEMON_NAME, KEY_FILE};
use crate::error::Context as _;

/// How long a CA is valid for.
pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// How long daemon and client certificates are valid for (rotated by issuing new ones).
pub const LEAF_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);

/// A certificate and its key, PEM.
#[derive(Clone)]
pub struct Issued {
    /// The certificate.
    pub cert_pem: String,
    /// Its private key (PKCS#8).
    pub key_pem: String,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("key_pem", &"<secret>")
            .finish_non_exhaustive()
    }
}

/// Which side a leaf certificate is for: its name and key usage differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A daemon (server authentication, named [`DAEMON_NAME`]).
    Daemon,
    /// A client (client authentication only: a daemon's certificate cannot call daemons).
    Client,
}

/// A CA that signs sonde's certificates.
#[derive(Debug)]
pub struct Authority {
    /// Its certificate and key.
    pub issued: Issued,
    issuer: Issuer<'static, KeyPair>,
}

impl Authority {
    /// A new CA named `name`, valid from an hour ago (clocks differ) for [`CA_VALIDITY`].
    pub fn generate(name: &str) -> crate::Result<Self> {
        let key = KeyPair::generate().context("generating the CA's key")?;
        let params = ca_params(name, OffsetDateTime::now_utc(), CA_VALIDITY);
        let cert = params.self_signed(&key).context("signing the CA")?;
        let issued = Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        };
        Ok(Self {
            issued,
            issuer: Issuer::new(params, key),
        })
    }

    /// A CA from its certificate and key (as a Secret keeps them): `generate`'s, or one of the
    /// user's (its name, key usages and key identifier are read from its certificate, so that
    /// what it issues chains to it).
    pub fn from_pem(issued: Issued) -> crate::Result<Self> {
        let key = KeyPair::from_pem(&issued.key_pem).context("reading the CA's key")?;
        let issuer = Issuer::from_ca_cert_pem(&issued.cert_pem, key)
            .context("reading the CA's certificate")?;
        Ok(Self { issued, issuer })
    }

    /// A certificate for `role` named `name`, valid from `not_before` for `validity`.
    pub fn issue_at(
        &self,
        role: Role,
        name: &str,
        not_before: OffsetDateTime,
        validity: Duration,
    ) -> crate::Result<Issued> {
        let key = KeyPair::generate().context("generating a key")?;
        let sans = match role {
            Role::Daemon => vec![DAEMON_NAME.to_owned()],
            Role::Client => vec![],
        };
        let mut params = CertificateParams::new(sans).context("certificate names")?;
        params.distinguished_name = common_name(name);
        params.not_before = not_before;
        params.not_after = not_before + validity;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![match role {
            Role::Daemon => ExtendedKeyUsagePurpose::ServerAuth,
            Role::Client => ExtendedKeyUsagePurpose::ClientAuth,
        }];
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&key, &self.issuer)
            .context("signing a certificate")?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// A certificate for `role`, valid from an hour ago for [`LEAF_VALIDITY`].
    pub fn issue(&self, role: Role, name: &str) -> crate::Result<Issued> {
        let an_hour_ago = OffsetDateTime::now_utc() - Duration::from_secs(3600);
        self.issue_at(role, name, an_hour_ago, LEAF_VALIDITY)
    }

    /// Writes `issued` with this CA as a directory laid out as a `kubernetes.io/tls` Secret
    /// with its CA (`tls.crt`, `tls.key`, `ca.crt`), readable by its owner only.
    pub fn write_dir(&self, dir: &Path, issued: &Issued) -> crate::Result<()> {
        use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
        for (file, text) in [
            (CERT_FILE, &issued.cert_pem),
            (KEY_FILE, &issued.key_pem),
            (CA_FILE, &self.issued.cert_pem),
        ] {
            let path = dir.join(file);
            let mut out = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&path)
                .with_context(|| format!("writing {}", path.display()))?;
            std::io::Write::write_all(&mut out, text.as_bytes())
                .with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(())
    }
}

fn ca_params(name: &str, now: OffsetDateTime, validity: Duration) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = common_name(name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = now - Duration::from_secs(3600);
    params.not_after = now + validity;
    params
}

fn common_name(name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    dn
}
