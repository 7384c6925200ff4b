//! Who may call the API, in a cluster. Every request but the OpenAPI document
//! carries `Authorization: Bearer TOKEN`; the [`Authorizer`] (Kubernetes: a
//! TokenReview, then a SubjectAccessReview, in `crate::cluster::auth`) says
//! who the token is and whether that caller may do what the request does.
//!
//! A request is allowed what the caller could do to the objects behind it
//! through Kubernetes itself:
//!
//! | request | verb | resource | namespace |
//! | --- | --- | --- | --- |
//! | `POST /api/v1/vms` | create | persistentvolumeclaims | the VM's |
//! | `GET /api/v1/vms?namespace=NS` | list | persistentvolumeclaims | NS |
//! | `GET /api/v1/vms` | list | persistentvolumeclaims | all (cluster-wide) |
//! | `GET /api/v1/vms/{id}` | get | persistentvolumeclaims | the VM's |
//! | `POST /api/v1/vms/{id}/resize` | patch | persistentvolumeclaims | the VM's |
//! | `DELETE /api/v1/vms/{id}` | delete | persistentvolumeclaims | the VM's |
//! | `GET /api/v1/pools/*` | get | nodes | cluster-wide |
//!
//! all-in-one has no authorizer: its API listens on loopback and every
//! request is allowed, as every CSI call on its socket is.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{FromRef, FromRequestParts};
use axum::http::StatusCode;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use futures_util::future::BoxFuture;

use super::{ApiError, ApiState};

/// Who a token belongs to, as the token review said.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Caller {
    pub user: String,
    pub uid: Option<String>,
    pub groups: Vec<String>,
    pub extra: BTreeMap<String, Vec<String>>,
}

/// What a request does, in Kubernetes' terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    pub verb: &'static str,
    /// The API group: "" for the core group.
    pub group: &'static str,
    pub resource: &'static str,
    /// None: cluster-wide (every namespace, or a cluster-scoped resource).
    pub namespace: Option<String>,
}

pub const PVCS: &str = "persistentvolumeclaims";
pub const NODES: &str = "nodes";

impl Access {
    /// A verb on the PVCs (a VM's record) of `namespace`, or of every namespace.
    pub fn vms(verb: &'static str, namespace: Option<&str>) -> Access {
        Access {
            verb,
            group: "",
            resource: PVCS,
            namespace: namespace.map(str::to_string),
        }
    }

    /// Reading pool status and health: `get` on Nodes, whose labels and
    /// annotations are the pools and the ledger.
    pub fn pools() -> Access {
        Access {
            verb: "get",
            group: "",
            resource: NODES,
            namespace: None,
        }
    }

    fn scope(&self) -> String {
        match (&self.namespace, self.resource) {
            (Some(namespace), _) => format!("in namespace {namespace:?}"),
            (None, NODES) => "(cluster-wide)".to_string(),
            (None, _) => "in all namespaces (cluster-wide)".to_string(),
        }
    }
}

/// The answer of an access review.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allowed,
    /// Not allowed, with the authorizer's reason when it gave one.
    Denied(String),
}

/// The identity and permission checks of a cluster.
pub trait Authorizer: Send + Sync {
    /// The caller a bearer token belongs to; None when it authenticates no one.
    fn authenticate<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Option<Caller>, String>>;
    /// Whether `caller` may do `access`.
    fn authorize<'a>(
        &'a self,
        caller: &'a Caller,
        access: &'a Access,
    ) -> BoxFuture<'a, Result<Decision, String>>;
}

/// A request's permission to act: every handler but the OpenAPI document's
/// takes one, and asks it before doing anything.
pub struct Guard {
    checked: Option<(Arc<dyn Authorizer>, Caller)>,
}

impl Guard {
    /// Ok when the caller may do `access`; 403 `forbidden` naming the user,
    /// the verb, the resource and the namespace when not.
    pub async fn allow(&self, access: Access) -> Result<(), ApiError> {
        let Some((authorizer, caller)) = &self.checked else {
            return Ok(());
        };
        let decision = authorizer
            .authorize(caller, &access)
            .await
            .map_err(|e| unavailable(format!("cannot review the caller's access: {e}")))?;
        match decision {
            Decision::Allowed => Ok(()),
            Decision::Denied(reason) => Err(forbidden(caller, &access, &reason)),
        }
    }
}

impl<S> FromRequestParts<S> for Guard
where
    ApiState: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let state = ApiState::from_ref(state);
        let Some(authorizer) = state.auth else {
            return Ok(Guard { checked: None });
        };
        let header = parts
            .headers
            .get(AUTHORIZATION)
            .map(|value| value.to_str().unwrap_or(""));
        let token = bearer_token(header)?;
        let caller = authorizer
            .authenticate(token)
            .await
            .map_err(|e| unavailable(format!("cannot review the token: {e}")))?
            .ok_or_else(|| {
                unauthorized(
                    "the bearer token is not valid (expired, revoked, or not for this cluster)",
                )
            })?;
        Ok(Guard {
            checked: Some((authorizer, caller)),
        })
    }
}

/// The token of an `Authorization: Bearer TOKEN` header.
pub fn bearer_token(header: Option<&str>) -> Result<&str, ApiError> {
    let Some(header) = header else {
        return Err(unauthorized(
            "no Authorization header: send `Authorization: Bearer TOKEN` with a Kubernetes token (e.g. `kubectl create token NAME`)",
        ));
    };
    let (scheme, token) = header.trim().split_once(' ').unwrap_or((header, ""));
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(unauthorized(
            "the Authorization header is not `Bearer TOKEN`: send a Kubernetes bearer token",
        ));
    }
    Ok(token)
}

pub fn unauthorized(message: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
}

pub fn forbidden(caller: &Caller, access: &Access, reason: &str) -> ApiError {
    let group = if access.group.is_empty() {
        String::new()
    } else {
        format!(".{}", access.group)
    };
    let mut message = format!(
        "user {:?} may not {} {}{group} {}",
        caller.user,
        access.verb,
        access.resource,
        access.scope()
    );
    if !reason.is_empty() {
        message.push_str(&format!(": {reason}"));
    }
    if access.resource == PVCS && access.namespace.is_none() {
        message.push_str(" (list one namespace with ?namespace=NAME)");
    }
    ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
}

fn unavailable(message: String) -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_bearer_token_passes() {
        assert_eq!(bearer_token(Some("Bearer abc.def")), Ok("abc.def"));
        assert_eq!(bearer_token(Some("bearer  abc ")), Ok("abc"));
        for header in [
            None,
            Some(""),
            Some("Bearer"),
            Some("Bearer  "),
            Some("Basic dXNlcg=="),
        ] {
            let err = bearer_token(header).expect_err("refused");
            assert_eq!(err.status, StatusCode::UNAUTHORIZED, "{header:?}");
            assert_eq!(err.kind, "unauthorized");
        }
    }

    fn alice() -> Caller {
        Caller {
            user: "system:serviceaccount:vms-a:alice".into(),
            ..Caller::default()
        }
    }

    #[test]
    fn forbidden_names_user_verb_resource_and_namespace() {
        let err = forbidden(&alice(), &Access::vms("create", Some("vms-b")), "");
        assert_eq!(err.status, StatusCode::FORBIDDEN);
        assert_eq!(err.kind, "forbidden");
        assert_eq!(
            err.message,
            "user \"system:serviceaccount:vms-a:alice\" may not create persistentvolumeclaims in namespace \"vms-b\""
        );
        let all = forbidden(
            &alice(),
            &Access::vms("list", None),
            "no RBAC policy matched",
        );
        assert!(
            all.message
                .contains("list persistentvolumeclaims in all namespaces")
        );
        assert!(all.message.contains("no RBAC policy matched"));
        assert!(all.message.contains("?namespace="));
        let pools = forbidden(&alice(), &Access::pools(), "");
        assert!(pools.message.ends_with("may not get nodes (cluster-wide)"));
    }
}
