//! Namespace credentials, the pure part: what a tenant's credential Secret may say, and
//! whether the platform admin bound the Azure identity it names to the namespace.
//!
//! The trust model: a tenant (who may write Secrets in their own namespace) chooses *which*
//! of the identities the admin bound to their namespace the controller acts as, and supplies
//! that identity's client secret if it has one. Everything else — the Entra authority, the
//! federated token file, the ARM and Graph endpoints — is the controller's own configuration
//! and can never come from a Secret. Without a client secret the controller exchanges its
//! own federated token for the named client ID (workload identity, as Azure Service Operator
//! does), so the binding (`VirtualMachineIdentityPolicy.spec.credentials`) is what stops a
//! tenant from borrowing another team's identity, or the controller's own.

use std::collections::BTreeMap;
use std::fmt;

use crate::policy::{Namespace, Policy};

/// The keys a credential Secret may hold.
pub const TENANT_ID: &str = "AZURE_TENANT_ID";
pub const CLIENT_ID: &str = "AZURE_CLIENT_ID";
pub const CLIENT_SECRET: &str = "AZURE_CLIENT_SECRET";
pub const ALLOWED_KEYS: [&str; 3] = [TENANT_ID, CLIENT_ID, CLIENT_SECRET];

/// A client secret is a few hundred bytes at most; anything longer is refused unread.
pub const MAX_VALUE_BYTES: usize = 4096;

/// What a valid credential Secret says.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretCredential {
    /// A GUID (lower-cased) or a verified domain (lower-cased).
    pub tenant_id: String,
    /// A GUID, lower-cased.
    pub client_id: String,
    /// None: workload identity (the controller's federated token, exchanged for `client_id`).
    pub client_secret: Option<String>,
}

impl fmt::Debug for SecretCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretCredential")
            .field("tenant_id", &self.tenant_id)
            .field("client_id", &self.client_id)
            .field(
                "client_secret",
                &self.client_secret.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

impl SecretCredential {
    /// `clientSecret` or `workloadIdentity`.
    pub fn kind(&self) -> &'static str {
        if self.client_secret.is_some() {
            "clientSecret"
        } else {
            "workloadIdentity"
        }
    }
}

/// A GUID in its 8-4-4-4-12 form.
pub fn is_guid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// A DNS domain name such as `contoso.onmicrosoft.com`: at least two labels of letters,
/// digits and inner hyphens, at most 253 characters.
pub fn is_domain(s: &str) -> bool {
    s.len() <= 253
        && s.split('.').count() >= 2
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-')
        })
}

/// Reads a Secret's keys (values already decoded). Refuses any key but [`ALLOWED_KEYS`]:
/// the authority host, token file and endpoints are the controller's alone. Every problem
/// is named, so the tenant can fix the Secret from the message.
pub fn parse_secret(data: &BTreeMap<String, Vec<u8>>) -> Result<SecretCredential, String> {
    let mut problems = Vec::new();
    let others: Vec<&str> = data
        .keys()
        .map(String::as_str)
        .filter(|k| !ALLOWED_KEYS.contains(k))
        .collect();
    if !others.is_empty() {
        problems.push(format!(
            "key(s) {} not allowed: a credential Secret may hold only {}, {} and {} (the authority host, token file and endpoints come only from the controller's configuration)",
            others.join(", "),
            TENANT_ID,
            CLIENT_ID,
            CLIENT_SECRET
        ));
    }
    let mut value = |k: &str| -> Option<String> {
        let v = data.get(k)?;
        if v.len() > MAX_VALUE_BYTES {
            problems.push(format!("{k} is longer than {MAX_VALUE_BYTES} bytes"));
            return None;
        }
        match std::str::from_utf8(v) {
            Ok(s) if s.trim().chars().any(char::is_control) => {
                problems.push(format!("{k} contains control characters"));
                None
            }
            Ok(s) => Some(s.trim().to_string()).filter(|s| !s.is_empty()),
            Err(_) => {
                problems.push(format!("{k} is not UTF-8"));
                None
            }
        }
    };
    let tenant = value(TENANT_ID);
    let client = value(CLIENT_ID);
    let secret = value(CLIENT_SECRET);
    match &tenant {
        None => problems.push(format!("{TENANT_ID} is missing")),
        Some(t) if !is_guid(t) && !is_domain(t) => problems.push(format!(
            "{TENANT_ID} {t:?} is neither a GUID nor a domain name"
        )),
        Some(_) => {}
    }
    match &client {
        None => problems.push(format!("{CLIENT_ID} is missing")),
        Some(c) if !is_guid(c) => problems.push(format!(
            "{CLIENT_ID} {c:?} is not a GUID (the application's client ID)"
        )),
        Some(_) => {}
    }
    match (tenant, client, problems.is_empty()) {
        (Some(t), Some(c), true) => Ok(SecretCredential {
            tenant_id: t.to_ascii_lowercase(),
            client_id: c.to_ascii_lowercase(),
            client_secret: secret,
        }),
        _ => Err(problems.join("; ")),
    }
}

/// Whether the admin bound `cred`'s identity to namespace `ns`: at least one policy covers
/// the namespace, and every covering policy lists the client ID in
/// `spec.credentials.clientIds` (and the tenant in `spec.credentials.tenantIds`, when that
/// list is not empty). The controller's own client ID is never accepted from a Secret.
pub fn check_binding(
    policies: &[Policy],
    ns: Namespace<'_>,
    cred: &SecretCredential,
    controller_client_id: Option<&str>,
) -> Result<(), String> {
    if controller_client_id.is_some_and(|own| own.eq_ignore_ascii_case(&cred.client_id)) {
        return Err(format!(
            "{CLIENT_ID} {} is the controller's own identity; a namespace can never act as the controller",
            cred.client_id
        ));
    }
    let covering: Vec<&Policy> = policies.iter().filter(|p| p.covers(ns)).collect();
    if covering.is_empty() {
        return Err(format!(
            "no VirtualMachineIdentityPolicy covers namespace {:?}, so no Azure identity is bound to it",
            ns.name
        ));
    }
    let mut problems = Vec::new();
    for p in covering {
        let b = &p.spec.credentials;
        if !b
            .client_ids
            .iter()
            .any(|c| c.trim().eq_ignore_ascii_case(&cred.client_id))
        {
            problems.push(format!(
                "client ID {} is not bound to this namespace (policy {}, spec.credentials.clientIds)",
                cred.client_id, p.name
            ));
        }
        if !b.tenant_ids.is_empty()
            && !b
                .tenant_ids
                .iter()
                .any(|t| t.trim().eq_ignore_ascii_case(&cred.tenant_id))
        {
            problems.push(format!(
                "tenant {} is not allowed (policy {}, spec.credentials.tenantIds)",
                cred.tenant_id, p.name
            ));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{CredentialBinding, NamespaceSelection, RawPolicy};

    const T: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
    const C: &str = "bbbbbbbb-0000-0000-0000-00000000000a";
    const OTHER: &str = "cccccccc-0000-0000-0000-00000000000c";

    fn data(pairs: &[(&str, &str)]) -> BTreeMap<String, Vec<u8>> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect()
    }

    fn policy(name: &str, ns: &str, clients: &[&str], tenants: &[&str]) -> Policy {
        Policy::new(
            name,
            RawPolicy {
                namespaces: NamespaceSelection {
                    names: vec![ns.into()],
                    selector: None,
                },
                credentials: CredentialBinding {
                    client_ids: clients.iter().map(|s| s.to_string()).collect(),
                    tenant_ids: tenants.iter().map(|s| s.to_string()).collect(),
                },
                ..Default::default()
            },
        )
    }

    fn ns(name: &str) -> Namespace<'_> {
        Namespace { name, labels: None }
    }

    #[test]
    fn a_secret_may_not_set_the_authority_the_token_file_or_endpoints() {
        for key in [
            "AZURE_AUTHORITY_HOST",
            "AZURE_FEDERATED_TOKEN_FILE",
            "VMIDENTITY_AUTH",
            "VMIDENTITY_IMDS_ENDPOINT",
            "AZURE_ACCESS_TOKEN",
            "VMIDENTITY_ARM_ENDPOINT",
        ] {
            let err = parse_secret(&data(&[
                (TENANT_ID, T),
                (CLIENT_ID, C),
                (key, "https://attacker.example"),
            ]))
            .unwrap_err();
            assert!(err.contains(key), "{key}: {err}");
            assert!(err.contains("not allowed"), "{err}");
        }
    }

    #[test]
    fn tenant_and_client_are_checked() {
        let ok = parse_secret(&data(&[
            (TENANT_ID, " contoso.onmicrosoft.com "),
            (CLIENT_ID, C),
        ]))
        .unwrap();
        assert_eq!(ok.tenant_id, "contoso.onmicrosoft.com");
        assert_eq!(ok.kind(), "workloadIdentity");
        let ok = parse_secret(&data(&[
            (TENANT_ID, T),
            (CLIENT_ID, &C.to_uppercase()),
            (CLIENT_SECRET, "s3cret"),
        ]))
        .unwrap();
        assert_eq!(ok.client_id, C);
        assert_eq!(ok.kind(), "clientSecret");
        assert!(!format!("{ok:?}").contains("s3cret"));
        for (pairs, fragment) in [
            (vec![(CLIENT_ID, C)], "AZURE_TENANT_ID is missing"),
            (vec![(TENANT_ID, T)], "AZURE_CLIENT_ID is missing"),
            (
                vec![(TENANT_ID, "https://evil/x"), (CLIENT_ID, C)],
                "neither a GUID nor a domain",
            ),
            (vec![(TENANT_ID, T), (CLIENT_ID, "my-app")], "is not a GUID"),
            (
                vec![(TENANT_ID, T), (CLIENT_ID, C), (CLIENT_SECRET, "a\u{0}b")],
                "control characters",
            ),
        ] {
            let err = parse_secret(&data(&pairs)).unwrap_err();
            assert!(err.contains(fragment), "{err}");
        }
        let mut big = data(&[(TENANT_ID, T), (CLIENT_ID, C)]);
        big.insert(CLIENT_SECRET.into(), vec![b'x'; MAX_VALUE_BYTES + 1]);
        assert!(parse_secret(&big).unwrap_err().contains("longer than"));
    }

    #[test]
    fn only_a_client_id_every_covering_policy_binds_is_accepted() {
        let cred = parse_secret(&data(&[(TENANT_ID, T), (CLIENT_ID, C)])).unwrap();
        let bound = policy("team-a", "team-a", &[C], &[]);
        assert!(check_binding(std::slice::from_ref(&bound), ns("team-a"), &cred, None).is_ok());
        // Another team's identity: not bound here.
        let other = parse_secret(&data(&[(TENANT_ID, T), (CLIENT_ID, OTHER)])).unwrap();
        let err =
            check_binding(std::slice::from_ref(&bound), ns("team-a"), &other, None).unwrap_err();
        assert!(err.contains("not bound") && err.contains("team-a"), "{err}");
        // Nothing bound at all (the default): refused.
        let none = policy("team-a", "team-a", &[], &[]);
        assert!(check_binding(&[none], ns("team-a"), &cred, None).is_err());
        // No policy covers the namespace.
        assert!(
            check_binding(std::slice::from_ref(&bound), ns("team-b"), &cred, None)
                .unwrap_err()
                .contains("no VirtualMachineIdentityPolicy covers")
        );
        // Every covering policy must bind it (policies only narrow).
        let narrow = policy("narrow", "team-a", &[OTHER], &[]);
        assert!(check_binding(&[bound.clone(), narrow], ns("team-a"), &cred, None).is_err());
        // A tenant list narrows the tenant too.
        let tenant_bound = policy("t", "team-a", &[C], &["contoso.onmicrosoft.com"]);
        assert!(
            check_binding(&[tenant_bound], ns("team-a"), &cred, None)
                .unwrap_err()
                .contains("tenant")
        );
        // The controller's own client ID, even when an admin listed it by mistake.
        let err =
            check_binding(&[bound], ns("team-a"), &cred, Some(&C.to_uppercase())).unwrap_err();
        assert!(err.contains("controller's own identity"), "{err}");
    }
}
