//! The fake API server's coordination.k8s.io Leases, kept as the API server keeps them:
//! created by POST (409 AlreadyExists when present), read by GET, changed by PATCH. A
//! server-side apply (`application/apply-patch+yaml`) conflicts (409 Conflict) when it would
//! change a field another field manager owns, unless forced; a strategic-merge or merge patch
//! takes the fields it sets (null removes one). That is what leader election rests on: of two
//! replicas applying themselves as holder at once, exactly one wins.

use std::{collections::BTreeMap, sync::Mutex};

use serde_json::{Map, Value};

use crate::fake_apiserver::Call;

const PREFIX: &str = "/apis/coordination.k8s.io/v1/namespaces/";

/// One Lease: its spec's fields, and which field manager owns each.
#[derive(Debug, Clone, Default)]
struct Lease {
    spec: Map<String, Value>,
    owners: BTreeMap<String, String>,
    version: u64,
}

/// Every Lease, by (namespace, name).
#[derive(Debug, Default)]
pub struct Leases {
    leases: Mutex<BTreeMap<(String, String), Lease>>,
    version: Mutex<u64>,
}

fn status(code: u16, reason: &str, message: &str) -> (u16, Value) {
    (
        code,
        serde_json::json!({
            "apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
            "reason": reason, "code": code, "message": message,
        }),
    )
}

fn query<'a>(call: &'a Call, name: &str) -> Option<&'a str> {
    call.query.split('&').find_map(|pair| {
        pair.split_once('=')
            .filter(|(key, _)| *key == name)
            .map(|(_, value)| value)
    })
}

impl Leases {
    /// The Lease `namespace/name`'s spec, if it exists (for tests to look at).
    pub fn spec(&self, namespace: &str, name: &str) -> Option<Map<String, Value>> {
        self.leases
            .lock()
            .expect("leases")
            .get(&(namespace.to_owned(), name.to_owned()))
            .map(|lease| lease.spec.clone())
    }

    fn json(namespace: &str, name: &str, lease: &Lease) -> Value {
        serde_json::json!({
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "resourceVersion": lease.version.to_string(),
            },
            "spec": lease.spec,
        })
    }

    fn next_version(&self) -> u64 {
        let mut version = self.version.lock().expect("version");
        *version += 1;
        *version
    }

    /// Answers `call` when it is about Leases.
    pub fn answer(&self, call: &Call) -> Option<(u16, Value)> {
        let rest = call.path.strip_prefix(PREFIX)?;
        let (namespace, rest) = rest.split_once('/')?;
        let name = match rest.strip_prefix("leases") {
            Some("") => None,
            Some(name) => Some(name.strip_prefix('/')?.to_owned()),
            None => return None,
        };
        let manager = query(call, "fieldManager").unwrap_or("unknown").to_owned();
        let mut leases = self.leases.lock().expect("leases");
        Some(match (call.method.as_str(), name) {
            ("GET", Some(name)) => match leases.get(&(namespace.to_owned(), name.clone())) {
                Some(lease) => (200, Self::json(namespace, &name, lease)),
                None => status(404, "NotFound", &format!("leases {name:?} not found")),
            },
            ("POST", None) => {
                let body: Value = serde_json::from_str(&call.body).unwrap_or_default();
                let Some(name) = body["metadata"]["name"].as_str().map(str::to_owned) else {
                    return Some(status(422, "Invalid", "metadata.name: Required value"));
                };
                let key = (namespace.to_owned(), name.clone());
                if leases.contains_key(&key) {
                    return Some(status(
                        409,
                        "AlreadyExists",
                        &format!("leases {name:?} already exists"),
                    ));
                }
                let spec = body["spec"].as_object().cloned().unwrap_or_default();
                let owners = spec.keys().map(|k| (k.clone(), manager.clone())).collect();
                let lease = Lease {
                    spec,
                    owners,
                    version: self.next_version(),
                };
                let answer = Self::json(namespace, &name, &lease);
                leases.insert(key, lease);
                (201, answer)
            }
            ("PATCH", Some(name)) => {
                let Ok(patch) = serde_json::from_str::<Value>(&call.body) else {
                    return Some(status(400, "BadRequest", "the patch is not JSON"));
                };
                let fields = patch["spec"].as_object().cloned().unwrap_or_default();
                let key = (namespace.to_owned(), name.clone());
                let apply = call.content_type.contains("apply-patch");
                if !apply && !leases.contains_key(&key) {
                    return Some(status(
                        404,
                        "NotFound",
                        &format!("leases {name:?} not found"),
                    ));
                }
                let lease = leases.entry(key).or_default();
                if apply && query(call, "force") != Some("true") {
                    let conflicts: Vec<String> = fields
                        .iter()
                        .filter(|(field, value)| {
                            lease
                                .owners
                                .get(*field)
                                .is_some_and(|owner| *owner != manager)
                                && lease.spec.get(*field).is_some_and(|now| now != *value)
                        })
                        .map(|(field, _)| {
                            format!("conflict with {:?}: .spec.{field}", lease.owners[field])
                        })
                        .collect();
                    if !conflicts.is_empty() {
                        return Some(status(
                            409,
                            "Conflict",
                            &format!(
                                "Apply failed with {} conflict(s): {}",
                                conflicts.len(),
                                conflicts.join(", ")
                            ),
                        ));
                    }
                }
                for (field, value) in fields {
                    if value.is_null() {
                        lease.spec.remove(&field);
                        lease.owners.remove(&field);
                    } else {
                        lease.spec.insert(field.clone(), value);
                        lease.owners.insert(field, manager.clone());
                    }
                }
                lease.version = self.next_version();
                (200, Self::json(namespace, &name, lease))
            }
            _ => status(405, "MethodNotAllowed", "not served by the fake"),
        })
    }
}
