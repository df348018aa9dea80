//! The control plane's certificates as Secrets in sonde's namespace: `deploy` creates a CA
//! (`sonde-ca`), the daemons' certificate (`sonde-daemon-tls`, mounted by the DaemonSet) and a
//! client certificate (`sonde-client-tls`, read by sondectl and mounted by the monitor), each
//! a `kubernetes.io/tls` Secret with `ca.crt` as cert-manager writes them; with `deploy --job`,
//! the jobs' own client certificate (`sonde-job-tls`) too. Secrets already
//! there are kept: bring your own from any issuer. `--rotate-certs` issues new daemon and
//! client certificates from `sonde-ca`; the daemons reload theirs when the kubelet updates
//! the mounted files.

use std::collections::BTreeMap;

use k8s_openapi::{
    ByteString, api::core::v1::Secret, apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{
    Api, Client,
    api::{Patch, PatchParams},
};

use super::FIELD_MANAGER;
use crate::{
    error::{Context as _, refuse},
    tls::{
        CA_FILE, CA_SECRET, CERT_FILE, CLIENT_SECRET, DAEMON_NAME, DAEMON_SECRET, JOB_SECRET,
        KEY_FILE,
        issue::{Authority, Issued, Role},
    },
};

/// The CA's name in its certificate.
const CA_NAME: &str = "sonde CA";

/// Makes sure the three Secrets exist in `namespace` (and the jobs' with `job`; with `rotate`,
/// new leaf certificates from the CA); says what it did to each, one line a Secret.
pub async fn ensure(
    client: &Client,
    namespace: &str,
    rotate: bool,
    job: bool,
) -> crate::Result<Vec<String>> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let read = |name: &'static str| {
        let secrets = secrets.clone();
        async move {
            secrets
                .get_opt(name)
                .await
                .with_context(|| format!("reading Secret {namespace}/{name}"))
        }
    };
    let (ca, daemon, client_secret) = (
        read(CA_SECRET).await?,
        read(DAEMON_SECRET).await?,
        read(CLIENT_SECRET).await?,
    );
    let job_secret = if job { read(JOB_SECRET).await? } else { None };
    let mut said = Vec::new();
    let authority = match ca {
        Some(secret) => {
            said.push(format!("Secret {namespace}/{CA_SECRET} kept"));
            Some(Authority::from_pem(issued(&secret, CA_SECRET)?)?)
        }
        None if daemon.is_none() && client_secret.is_none() => {
            let authority = Authority::generate(CA_NAME)?;
            put(&secrets, CA_SECRET, &authority.issued, None).await?;
            said.push(format!("Secret {namespace}/{CA_SECRET} created"));
            Some(authority)
        }
        // Certificates of the user's own issuer: theirs to issue and rotate.
        None => None,
    };
    let mut leaves = vec![
        (DAEMON_SECRET, Role::Daemon, DAEMON_NAME, daemon),
        (CLIENT_SECRET, Role::Client, "sondectl", client_secret),
    ];
    if job {
        leaves.push((JOB_SECRET, Role::Client, "sondectl-job", job_secret));
    }
    for (name, role, common_name, existing) in leaves {
        match (existing.is_some(), &authority) {
            (true, _) if !rotate => said.push(format!("Secret {namespace}/{name} kept")),
            (exists, Some(authority)) => {
                let leaf = authority.issue(role, common_name)?;
                put(&secrets, name, &leaf, Some(&authority.issued)).await?;
                let done = if exists { "rotated" } else { "created" };
                said.push(format!("Secret {namespace}/{name} {done}"));
            }
            (true, None) => refuse!(
                "--rotate-certs: Secret {namespace}/{name} was not issued by sondectl (there is \
                 no {CA_SECRET} Secret): rotate it with its issuer"
            ),
            (false, None) => refuse!(
                "Secret {namespace}/{name} is missing and there is no {CA_SECRET} to issue it \
                 from: create it with your issuer (keys {CERT_FILE}, {KEY_FILE}, {CA_FILE}), or \
                 delete sonde's other TLS Secrets so that deploy makes all three"
            ),
        }
    }
    Ok(said)
}

/// The certificate and key a Secret holds.
fn issued(secret: &Secret, name: &str) -> crate::Result<Issued> {
    let data = secret.data.clone().unwrap_or_default();
    let text = |key: &str| {
        data.get(key)
            .and_then(|bytes| String::from_utf8(bytes.0.clone()).ok())
            .with_context(|| format!("Secret {name} has no {key} in PEM"))
    };
    Ok(Issued {
        cert_pem: text(CERT_FILE)?,
        key_pem: text(KEY_FILE)?,
    })
}

/// Applies Secret `name` holding `issued` (and the CA's certificate, for a leaf).
async fn put(
    secrets: &Api<Secret>,
    name: &str,
    issued: &Issued,
    ca: Option<&Issued>,
) -> crate::Result<()> {
    let mut data = BTreeMap::from([
        (
            CERT_FILE.to_owned(),
            ByteString(issued.cert_pem.clone().into_bytes()),
        ),
        (
            KEY_FILE.to_owned(),
            ByteString(issued.key_pem.clone().into_bytes()),
        ),
    ]);
    if let Some(ca) = ca {
        data.insert(
            CA_FILE.to_owned(),
            ByteString(ca.cert_pem.clone().into_bytes()),
        );
    }
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/name".to_owned(),
                "sonde".to_owned(),
            )])),
            ..ObjectMeta::default()
        },
        type_: Some("kubernetes.io/tls".to_owned()),
        data: Some(data),
        ..Secret::default()
    };
    let mut object = serde_json::to_value(&secret)?;
    object["apiVersion"] = "v1".into();
    object["kind"] = "Secret".into();
    secrets
        .patch(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(object),
        )
        .await
        .with_context(|| format!("applying Secret {name}"))?;
    Ok(())
}
