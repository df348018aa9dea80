//! `sondectl deploy` and `undeploy`: the manifests' objects, applied with server-side apply
//! (field manager `sondectl`) and removed in the reverse order.

use kube::{
    Api, Client,
    api::{ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams},
};

use super::FIELD_MANAGER;
use crate::error::Context as _;

/// The API of `object`'s kind, in its namespace when it has one.
fn api_of(client: &Client, object: &DynamicObject) -> crate::Result<(Api<DynamicObject>, String)> {
    let types = object
        .types
        .as_ref()
        .context("an object without apiVersion and kind")?;
    let gvk = GroupVersionKind::try_from(types).context("an object's apiVersion")?;
    let resource = ApiResource::from_gvk(&gvk);
    let name = object
        .metadata
        .name
        .clone()
        .context("an object without a name")?;
    let api = match &object.metadata.namespace {
        Some(namespace) => Api::namespaced_with(client.clone(), namespace, &resource),
        None => Api::all_with(client.clone(), &resource),
    };
    Ok((api, name))
}

/// A short name for messages: `DaemonSet sonde/sonded`.
pub fn describe(object: &DynamicObject) -> String {
    let kind = object.types.as_ref().map_or("?", |t| t.kind.as_str());
    match (&object.metadata.namespace, &object.metadata.name) {
        (Some(namespace), Some(name)) => format!("{kind} {namespace}/{name}"),
        (None, Some(name)) => format!("{kind} {name}"),
        _ => kind.to_owned(),
    }
}

/// Applies every object, in order; stops at the first the server refuses. Returns the
/// objects as the server has them after each apply.
pub async fn apply(
    client: &Client,
    objects: &[DynamicObject],
) -> crate::Result<Vec<DynamicObject>> {
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let mut applied = Vec::new();
    for object in objects {
        let (api, name) = api_of(client, object)?;
        let answer = api
            .patch(&name, &params, &Patch::Apply(object))
            .await
            .with_context(|| format!("applying {}", describe(object)))?;
        applied.push(answer);
    }
    Ok(applied)
}

/// Makes the Job `name` among `applied` the owner of the ConfigMap of the same name, so
/// that the cluster's garbage collector removes the ConfigMap with the Job. `false` when the
/// server gave the Job no UID (then the ConfigMap stays, and says nothing wrong).
pub async fn own_configmap(
    client: &Client,
    applied: &[DynamicObject],
    name: &str,
) -> crate::Result<bool> {
    let of_kind = |kind: &str| {
        applied.iter().find(|o| {
            o.metadata.name.as_deref() == Some(name)
                && o.types.as_ref().is_some_and(|t| t.kind == kind)
        })
    };
    let (Some(job), Some(configmap)) = (of_kind("Job"), of_kind("ConfigMap")) else {
        return Ok(false);
    };
    let Some(uid) = &job.metadata.uid else {
        return Ok(false);
    };
    let owned = serde_json::json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": name,
            "namespace": configmap.metadata.namespace,
            "ownerReferences": [{
                "apiVersion": "batch/v1",
                "kind": "Job",
                "name": name,
                "uid": uid,
            }],
        },
    });
    let owned: DynamicObject = serde_json::from_value(owned)?;
    let (api, _) = api_of(client, configmap)?;
    // Its own field manager: the ConfigMap's data stays under sondectl's, unchanged.
    api.patch(
        name,
        &PatchParams::apply(OWNER_MANAGER).force(),
        &Patch::Apply(&owned),
    )
    .await
    .with_context(|| format!("making Job {name} the owner of its ConfigMap"))?;
    Ok(true)
}

/// The field manager of the ConfigMap's owner reference (an apply of only that field).
const OWNER_MANAGER: &str = "sondectl-job-owner";

/// Deletes every object, in reverse order; one already gone is fine.
pub async fn delete(client: &Client, objects: &[DynamicObject]) -> crate::Result<Vec<String>> {
    let mut deleted = Vec::new();
    for object in objects.iter().rev() {
        let (api, name) = api_of(client, object)?;
        match api.delete(&name, &DeleteParams::background()).await {
            Ok(_) => deleted.push(describe(object)),
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(err) => {
                return Err(err).with_context(|| format!("deleting {}", describe(object)));
            }
        }
    }
    Ok(deleted)
}
