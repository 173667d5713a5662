//! Per-node NATS credentials on Kubernetes.
//!
//! With an account key (`--nats-account-key`), every Node gets a user credential holding
//! exactly its rights ([`causeway_api::grants::node_grants`]), in the Secret
//! `causeway-node-<node>` of its namespace, owned by the Node. The webhook mounts that Secret into
//! the Node's sidecars only; they reconnect with a renewed credential when the file changes.
//!
//! A credential is issued again when less than half its lifetime is left, and at once when its
//! grants would change (the Node's policy, its Listeners, the stores of a namespace its policy
//! covers) or the issuing key changes. Otherwise nothing is written: the Secret carries a
//! fingerprint of what it was issued for.
//!
//! A deleted Node's credential keeps working until it expires (at most the TTL): NATS
//! revocations would need the operator key and a push to every server. Its Secret is deleted with
//! the Node.

use std::time::Duration;

use base64::Engine;
use causeway_api::{
    DnsLabel,
    crd::{EventStore, Listener, Node, NodeCredentialsStatus},
    grants::{Grants, node_grants},
    naming,
    registry::{ListenerRecord, Meta, NodeRecord},
};
use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, Resource, ResourceExt,
    api::{DeleteParams, Patch, PatchParams},
};
use serde_json::json;

use super::{
    Caches,
    context::{Context, Error, FIELD_MANAGER},
};
use crate::identity::Issuer;

/// Label on every Secret the operator issues (and the selector of its watch).
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "causeway-operator");
/// Label naming the Node a credential Secret belongs to.
pub const NODE_LABEL: &str = "causeway.dev/node";
/// Annotation: when the credential expires (RFC 3339).
pub const EXPIRES_ANNOTATION: &str = "causeway.dev/expires-at";
/// Annotation: when it was issued (RFC 3339).
pub const ISSUED_ANNOTATION: &str = "causeway.dev/issued-at";
/// Annotation: the NATS user it authenticates as.
pub const USER_ANNOTATION: &str = "causeway.dev/nats-user";
/// Annotation: a fingerprint of the grants and the issuing key it was issued for.
pub const FINGERPRINT_ANNOTATION: &str = "causeway.dev/grants-fingerprint";

/// How the operator issues node credentials.
#[derive(Clone, Debug)]
pub struct Identity {
    /// Signs the credentials.
    pub issuer: Issuer,
    /// Lifetime of one credential.
    pub ttl: Duration,
}

/// The credential a Node holds after [`ensure`].
#[derive(Debug, Clone)]
pub struct Held {
    /// For the Node's status.
    pub status: NodeCredentialsStatus,
    /// When to look again (half its lifetime after issue).
    pub renew_in: Duration,
    /// `Some(reason)` when a credential was issued now: `Issued`, `Renewed` or
    /// `PermissionsChanged`.
    pub issued: Option<&'static str>,
}

/// The grants of Node `rec`, from the caches of Listeners and EventStores.
pub fn grants_for(rec: &NodeRecord, spec: &causeway_api::crd::NodeSpec, caches: &Caches) -> Grants {
    let ns = &rec.meta.namespace;
    let listeners: Vec<ListenerRecord> = caches
        .listeners
        .iter()
        .flat_map(|s| s.state())
        .filter(|l| l.namespace().as_deref() == Some(ns.as_str()) && l.spec.node == rec.meta.name)
        .filter(|l| l.meta().deletion_timestamp.is_none())
        .filter_map(|l| {
            let meta = Meta {
                namespace: ns.clone(),
                name: DnsLabel::new(l.name_any()).ok()?,
                generation: None,
                manager: String::new(),
            };
            ListenerRecord::resolve(meta, &l.spec, spec).ok()
        })
        .collect();
    let stores_of = |sns: &DnsLabel| -> Vec<DnsLabel> {
        let mut v: Vec<DnsLabel> = caches
            .stores
            .iter()
            .flat_map(|s| s.state())
            .filter(|s| s.namespace().as_deref() == Some(sns.as_str()) && s.meta().deletion_timestamp.is_none())
            .filter_map(|s| DnsLabel::new(s.name_any()).ok())
            .collect();
        v.sort();
        v.dedup();
        v
    };
    node_grants(rec, &listeners, &stores_of)
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Makes sure `node` holds a current credential for `grants`: issues one when there is none,
/// when its grants or issuer changed, or when less than half its lifetime is left. Otherwise
/// makes no write.
pub async fn ensure(ctx: &Context, id: &Identity, node: &Node, grants: &Grants) -> Result<Held, Error> {
    let ns = node.namespace().unwrap_or_default();
    let name = DnsLabel::new(node.name_any()).map_err(|e| Error::Credentials(e.to_string()))?;
    let secret_name = naming::node_secret(&name);
    let api: Api<Secret> = Api::namespaced(ctx.kube.clone(), &ns);
    let wanted = crate::identity::fingerprint(grants, &id.issuer);
    let now = Utc::now();
    let half = chrono::Duration::from_std(id.ttl / 2).unwrap_or(chrono::Duration::MAX);
    let current = api.get_opt(&secret_name).await?;
    let reason = match &current {
        None => "Issued",
        Some(s) => {
            let ann = s.annotations();
            let expires = ann.get(EXPIRES_ANNOTATION).and_then(|t| DateTime::parse_from_rfc3339(t).ok());
            let has_data = s.data.as_ref().is_some_and(|d| d.contains_key(naming::NODE_CREDS_KEY));
            match expires {
                _ if ann.get(FINGERPRINT_ANNOTATION) != Some(&wanted) => "PermissionsChanged",
                Some(exp) if has_data && exp.with_timezone(&Utc) - now > half => {
                    let renew_at = exp.with_timezone(&Utc) - half;
                    return Ok(Held {
                        status: NodeCredentialsStatus {
                            secret: secret_name,
                            user: ann.get(USER_ANNOTATION).cloned().unwrap_or_default(),
                            issued_at: ann.get(ISSUED_ANNOTATION).cloned().unwrap_or_default(),
                            expires_at: rfc3339(exp.with_timezone(&Utc)),
                        },
                        renew_in: (renew_at - now).to_std().unwrap_or_default(),
                        issued: None,
                    });
                }
                _ => "Renewed",
            }
        }
    };
    let cred = id.issuer.issue(&format!("{ns}/{name}"), grants, id.ttl);
    let (issued_at, expires_at) = (rfc3339(cred.issued_at), rfc3339(cred.expires_at));
    let owner = json!({
        "apiVersion": Node::api_version(&()),
        "kind": Node::kind(&()),
        "name": node.name_any(),
        "uid": node.uid().unwrap_or_default(),
        "controller": true,
        "blockOwnerDeletion": true,
    });
    let secret = json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": secret_name,
            "namespace": ns,
            "labels": {MANAGED_BY.0: MANAGED_BY.1, NODE_LABEL: name.as_str()},
            "annotations": {
                EXPIRES_ANNOTATION: expires_at,
                ISSUED_ANNOTATION: issued_at,
                USER_ANNOTATION: cred.user,
                FINGERPRINT_ANNOTATION: wanted,
            },
            "ownerReferences": [owner],
        },
        "type": "Opaque",
        "data": {naming::NODE_CREDS_KEY: base64::engine::general_purpose::STANDARD.encode(cred.creds.as_bytes())},
    });
    api.patch(&secret_name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&secret)).await?;
    tracing::info!(node = %format!("{ns}/{name}"), user = %cred.user, expires = %expires_at, reason, "issued a NATS credential");
    Ok(Held {
        status: NodeCredentialsStatus { secret: secret_name, user: cred.user.clone(), issued_at, expires_at },
        renew_in: id.ttl / 2,
        issued: Some(reason),
    })
}

/// Deletes a Node's credential Secret (a deleted Node's credential then only lives until it
/// expires in sidecars that already hold it).
pub async fn remove(ctx: &Context, ns: &str, node: &DnsLabel) -> Result<(), Error> {
    let api: Api<Secret> = Api::namespaced(ctx.kube.clone(), ns);
    match api.delete(&naming::node_secret(node), &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The Nodes (in `nodes`) whose credentials depend on EventStore `store`: those whose policy
/// reads or appends to its namespace.
pub fn nodes_covering(
    nodes: &[kube::runtime::reflector::Store<Node>],
    store: &EventStore,
) -> Vec<kube::runtime::reflector::ObjectRef<Node>> {
    use causeway_api::crd::AccessAction;
    let sns = store.namespace().unwrap_or_default();
    let sname = store.name_any();
    nodes
        .iter()
        .flat_map(|s| s.state())
        .filter(|n| {
            let own = n.namespace().unwrap_or_default();
            [AccessAction::Read, AccessAction::Append]
                .iter()
                .any(|a| n.spec.access.entries(*a).iter().any(|r| r.covers(&own, &sns, &sname)))
        })
        .map(|n| kube::runtime::reflector::ObjectRef::from_obj(&*n))
        .collect()
}

/// The Node a Listener's credential grants belong to.
pub fn node_of(l: &Listener) -> Option<kube::runtime::reflector::ObjectRef<Node>> {
    Some(kube::runtime::reflector::ObjectRef::new(l.spec.node.as_str()).within(&l.namespace()?))
}
