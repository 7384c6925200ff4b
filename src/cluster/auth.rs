//! The pool API's callers, checked by the cluster: a TokenReview says who a
//! bearer token is, a SubjectAccessReview whether that user (with the groups,
//! uid and extra of the review) may do what a request does. The controller's
//! own account needs `create` on both (the chart's RBAC).

use futures_util::future::BoxFuture;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::Client;
use kube::api::{Api, PostParams};

use crate::api::auth::{Access, Authorizer, Caller, Decision};

pub struct KubeAuth {
    client: Client,
}

impl KubeAuth {
    pub fn new(client: Client) -> KubeAuth {
        KubeAuth { client }
    }

    async fn review_token(&self, token: &str) -> Result<Option<Caller>, String> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: token.to_string(),
                audiences: None,
            },
            ..TokenReview::default()
        };
        let answer = Api::<TokenReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| e.to_string())?;
        Ok(answer.status.and_then(caller_of))
    }

    async fn review_access(&self, caller: &Caller, access: &Access) -> Result<Decision, String> {
        let answer = Api::<SubjectAccessReview>::all(self.client.clone())
            .create(&PostParams::default(), &access_review(caller, access))
            .await
            .map_err(|e| e.to_string())?;
        let status = answer.status.unwrap_or_default();
        Ok(if status.allowed && status.denied != Some(true) {
            Decision::Allowed
        } else {
            Decision::Denied(status.reason.unwrap_or_default())
        })
    }
}

impl Authorizer for KubeAuth {
    fn authenticate<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Option<Caller>, String>> {
        Box::pin(self.review_token(token))
    }

    fn authorize<'a>(
        &'a self,
        caller: &'a Caller,
        access: &'a Access,
    ) -> BoxFuture<'a, Result<Decision, String>> {
        Box::pin(self.review_access(caller, access))
    }
}

/// The caller of an authenticated review; None when the token is not.
fn caller_of(status: k8s_openapi::api::authentication::v1::TokenReviewStatus) -> Option<Caller> {
    if status.authenticated != Some(true) {
        return None;
    }
    let user = status.user?;
    let name = user.username.filter(|n| !n.is_empty())?;
    Some(Caller {
        user: name,
        uid: user.uid.filter(|u| !u.is_empty()),
        groups: user.groups.unwrap_or_default(),
        extra: user.extra.unwrap_or_default().into_iter().collect(),
    })
}

/// "May `caller` do `access`?", as the cluster's authorizers read it.
pub fn access_review(caller: &Caller, access: &Access) -> SubjectAccessReview {
    SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(caller.user.clone()),
            uid: caller.uid.clone(),
            groups: Some(caller.groups.clone()),
            extra: Some(caller.extra.clone().into_iter().collect()),
            resource_attributes: Some(ResourceAttributes {
                verb: Some(access.verb.to_string()),
                group: Some(access.group.to_string()),
                resource: Some(access.resource.to_string()),
                namespace: access.namespace.clone(),
                ..ResourceAttributes::default()
            }),
            non_resource_attributes: None,
        },
        ..SubjectAccessReview::default()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::authentication::v1::{TokenReviewStatus, UserInfo};

    use super::*;

    #[test]
    fn a_review_asks_for_the_callers_whole_identity() {
        let caller = Caller {
            user: "system:serviceaccount:vms-a:tenant".into(),
            uid: Some("0b7e".into()),
            groups: vec!["system:serviceaccounts".into()],
            extra: BTreeMap::from([(
                "authentication.kubernetes.io/pod-name".into(),
                vec!["p".into()],
            )]),
        };
        let review = access_review(&caller, &Access::vms("delete", Some("vms-a")));
        let spec = review.spec;
        assert_eq!(
            spec.user.as_deref(),
            Some("system:serviceaccount:vms-a:tenant")
        );
        assert_eq!(spec.uid.as_deref(), Some("0b7e"));
        assert_eq!(
            spec.groups,
            Some(vec!["system:serviceaccounts".to_string()])
        );
        assert_eq!(spec.extra.map(|e| e.len()), Some(1));
        let attributes = spec.resource_attributes.expect("a resource review");
        assert_eq!(attributes.verb.as_deref(), Some("delete"));
        assert_eq!(attributes.group.as_deref(), Some(""));
        assert_eq!(
            attributes.resource.as_deref(),
            Some("persistentvolumeclaims")
        );
        assert_eq!(attributes.namespace.as_deref(), Some("vms-a"));

        let pools = access_review(&caller, &Access::pools()).spec;
        let attributes = pools.resource_attributes.expect("a resource review");
        assert_eq!(attributes.resource.as_deref(), Some("nodes"));
        assert_eq!(attributes.verb.as_deref(), Some("get"));
        assert_eq!(attributes.namespace, None, "cluster-wide");
    }

    #[test]
    fn only_an_authenticated_review_names_a_caller() {
        let user = UserInfo {
            username: Some("alice".into()),
            groups: Some(vec!["devs".into()]),
            ..UserInfo::default()
        };
        let status = |authenticated| TokenReviewStatus {
            authenticated: Some(authenticated),
            user: Some(user.clone()),
            ..TokenReviewStatus::default()
        };
        let caller = caller_of(status(true)).expect("authenticated");
        assert_eq!(caller.user, "alice");
        assert_eq!(caller.groups, vec!["devs".to_string()]);
        assert_eq!(caller_of(status(false)), None);
        assert_eq!(caller_of(TokenReviewStatus::default()), None);
    }
}
