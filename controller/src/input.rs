//! Reading objects (multi-document YAML, as `kubectl get -o yaml` prints them) and live ARM
//! bodies from files, with one-line errors that name the file, the object and the field.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;
use vmidentity_planner::{DesiredObject, LiveResource, ObjectRef};

use crate::crd::VirtualMachineIdentity;

pub const API_VERSION: &str = "vmidentity.dev/v1alpha1";
pub const KIND: &str = "VirtualMachineIdentity";

#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("{path}: {message}")]
    Io { path: String, message: String },
    #[error("{source_name}: YAML does not parse: {message}")]
    Yaml {
        source_name: String,
        message: String,
    },
    #[error("{source_name}: {object}: {field}: {message}")]
    Object {
        source_name: String,
        object: String,
        field: String,
        message: String,
    },
    #[error("{source_name}: {field}: {message}")]
    Live {
        source_name: String,
        field: String,
        message: String,
    },
    #[error("{0}")]
    Other(String),
}

/// One object read from a file.
#[derive(Debug, Clone)]
pub struct LoadedObject {
    /// `file.yaml#2` (the document's position in its file, from 1).
    pub source: String,
    pub object: VirtualMachineIdentity,
}

impl LoadedObject {
    pub fn object_ref(&self) -> ObjectRef {
        self.object.planner_ref()
    }

    /// Validates the spec and builds the planner's input (ownership from `status.applied`).
    pub fn to_desired(&self) -> Result<DesiredObject, InputError> {
        self.object.desired().map_err(|errs| {
            let more = if errs.len() > 1 {
                format!(" (and {} more)", errs.len() - 1)
            } else {
                String::new()
            };
            let (field, message) = errs.first().map_or_else(
                || ("spec".to_string(), "is not valid".to_string()),
                |first| (first.field.clone(), first.message.clone()),
            );
            InputError::Object {
                source_name: self.source.clone(),
                object: self.object_ref().to_string(),
                field,
                message: format!("{message}{more}"),
            }
        })
    }
}

/// Files named directly, and the `.yaml` / `.yml` / `.json` files of directories (sorted).
pub fn expand_paths(paths: &[PathBuf]) -> Result<Vec<PathBuf>, InputError> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let rd = std::fs::read_dir(p).map_err(|e| InputError::Io {
                path: p.display().to_string(),
                message: e.to_string(),
            })?;
            let mut files: Vec<PathBuf> = rd
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|f| {
                    f.is_file()
                        && matches!(
                            f.extension().and_then(|x| x.to_str()),
                            Some("yaml" | "yml" | "json")
                        )
                })
                .collect();
            files.sort();
            out.extend(files);
        } else {
            out.push(p.clone());
        }
    }
    Ok(out)
}

fn read(path: &Path) -> Result<String, InputError> {
    std::fs::read_to_string(path).map_err(|e| InputError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

/// Reads every object from the given files and directories.
pub fn load_objects(paths: &[PathBuf]) -> Result<Vec<LoadedObject>, InputError> {
    let mut out = Vec::new();
    for file in expand_paths(paths)? {
        let text = read(&file)?;
        out.extend(parse_objects(&file.display().to_string(), &text)?);
    }
    check_unique(&out)?;
    Ok(out)
}

fn check_unique(objects: &[LoadedObject]) -> Result<(), InputError> {
    let mut seen: BTreeMap<ObjectRef, &str> = BTreeMap::new();
    for o in objects {
        if let Some(first) = seen.insert(o.object_ref(), &o.source) {
            return Err(InputError::Object {
                source_name: o.source.clone(),
                object: o.object_ref().to_string(),
                field: "metadata.name".into(),
                message: format!("the same object is also defined at {first}"),
            });
        }
    }
    Ok(())
}

/// Parses multi-document YAML holding VirtualMachineIdentity objects (or `kind: List`).
pub fn parse_objects(source: &str, text: &str) -> Result<Vec<LoadedObject>, InputError> {
    use serde::Deserialize;
    let mut out = Vec::new();
    for (i, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let source_name = format!("{source}#{}", i + 1);
        let value = Value::deserialize(doc).map_err(|e| InputError::Yaml {
            source_name: source_name.clone(),
            message: e.to_string(),
        })?;
        match value {
            Value::Null => continue,
            Value::Object(ref m) if m.get("kind").and_then(Value::as_str) == Some("List") => {
                let items = m
                    .get("items")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                for (j, item) in items.into_iter().enumerate() {
                    out.push(parse_object(&format!("{source_name}.items[{j}]"), item)?);
                }
            }
            v => out.push(parse_object(&source_name, v)?),
        }
    }
    Ok(out)
}

fn parse_object(source_name: &str, value: Value) -> Result<LoadedObject, InputError> {
    let name_of = |v: &Value| {
        let md = v.get("metadata");
        let ns = md
            .and_then(|m| m.get("namespace"))
            .and_then(Value::as_str)
            .unwrap_or("default");
        match md.and_then(|m| m.get("name")).and_then(Value::as_str) {
            Some(n) => format!("{ns}/{n}"),
            None => "(unnamed)".to_string(),
        }
    };
    let object = name_of(&value);
    let err = |field: &str, message: String| InputError::Object {
        source_name: source_name.to_string(),
        object: object.clone(),
        field: field.to_string(),
        message,
    };
    if !value.is_object() {
        return Err(err("(document)", "is not a YAML mapping".into()));
    }
    let api = value.get("apiVersion").and_then(Value::as_str);
    if api != Some(API_VERSION) {
        return Err(err(
            "apiVersion",
            format!("is {api:?}, expected \"{API_VERSION}\""),
        ));
    }
    let kind = value.get("kind").and_then(Value::as_str);
    if kind != Some(KIND) {
        return Err(err("kind", format!("is {kind:?}, expected \"{KIND}\"")));
    }
    if value
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        return Err(err("metadata.name", "is missing".into()));
    }
    let parsed: VirtualMachineIdentity = serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        err(&path, e.into_inner().to_string())
    })?;
    Ok(LoadedObject {
        source: source_name.to_string(),
        object: parsed,
    })
}

/// Live bodies keyed by case-folded resource ID, with the raw body kept.
pub type LiveSet = BTreeMap<String, LiveResource>;

/// Reads `--live`: one ARM GET body (with its `id`), or an object mapping resource ID to GET
/// body.
pub fn load_live(path: &Path) -> Result<LiveSet, InputError> {
    let text = read(path)?;
    parse_live(&path.display().to_string(), &text)
}

pub fn parse_live(source: &str, text: &str) -> Result<LiveSet, InputError> {
    let value: Value = serde_json::from_str(text).map_err(|e| InputError::Live {
        source_name: source.to_string(),
        field: "(json)".into(),
        message: format!("does not parse: {e}"),
    })?;
    let mut out = LiveSet::new();
    let mut add = |field: String, body: &Value| -> Result<(), InputError> {
        let live = LiveResource::from_arm_json(body).map_err(|e| InputError::Live {
            source_name: source.to_string(),
            field: if field.is_empty() {
                e.field.clone()
            } else {
                format!("{field}.{}", e.field)
            },
            message: e.message.clone(),
        })?;
        out.insert(live.id.key().to_string(), live);
        Ok(())
    };
    match &value {
        Value::Object(m)
            if m.contains_key("id")
                || m.contains_key("identity")
                || m.contains_key("properties") =>
        {
            add(String::new(), &value)?
        }
        Value::Object(m) => {
            for (k, body) in m {
                let mut body = body.clone();
                match body.as_object_mut() {
                    Some(o) => {
                        let id = o
                            .entry("id")
                            .or_insert_with(|| Value::String(k.clone()))
                            .clone();
                        if id.as_str().map(str::to_ascii_lowercase) != Some(k.to_ascii_lowercase())
                        {
                            return Err(InputError::Live {
                                source_name: source.to_string(),
                                field: format!("[{k:?}].id"),
                                message: format!("is {id}, but the body is filed under {k:?}"),
                            });
                        }
                    }
                    None => {
                        return Err(InputError::Live {
                            source_name: source.to_string(),
                            field: format!("[{k:?}]"),
                            message: "is not an ARM GET body (a JSON object)".into(),
                        });
                    }
                }
                add(format!("[{k:?}]"), &body)?;
            }
        }
        _ => {
            return Err(InputError::Live {
                source_name: source.to_string(),
                field: "(root)".into(),
                message: "must be an ARM GET body or an object mapping resource ID to GET body"
                    .into(),
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const VM: &str =
        "/subscriptions/s1/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm1";

    fn doc(extra: &str) -> String {
        format!(
            "apiVersion: vmidentity.dev/v1alpha1\nkind: VirtualMachineIdentity\nmetadata:\n  name: web\n  namespace: team-a\nspec:\n  target: {VM}\n{extra}"
        )
    }

    #[test]
    fn reads_multi_document_yaml_and_lists() {
        let text = format!(
            "{}---\n---\n{}",
            doc(""),
            doc("").replace("name: web", "name: db")
        );
        let objs = parse_objects("f.yaml", &text).unwrap();
        assert_eq!(objs.len(), 2);
        assert_eq!(objs[1].source, "f.yaml#3");
        let list = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: vmidentity.dev/v1alpha1\n  kind: VirtualMachineIdentity\n  metadata: {name: a}\n  spec: {target: /subscriptions/s/resourceGroups/r/providers/Microsoft.Compute/virtualMachines/v}\n";
        assert_eq!(parse_objects("l.yaml", list).unwrap().len(), 1);
    }

    #[test]
    fn unknown_fields_name_the_object_and_field() {
        let e = parse_objects("f.yaml", &doc("  userAssignedIdentitiez: []\n"))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(
                "f.yaml#1: team-a/web: spec.userAssignedIdentitiez: unknown field `userAssignedIdentitiez`"
            ),
            "{e}"
        );
        let e = parse_objects("f.yaml", &doc("  systemAssigned: yes please\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("team-a/web: spec.systemAssigned"), "{e}");
        let e = parse_objects("f.yaml", "a: [b\n").unwrap_err().to_string();
        assert!(e.starts_with("f.yaml#1: YAML does not parse"), "{e}");
    }

    #[test]
    fn validation_errors_name_the_field() {
        let objs = parse_objects(
            "f.yaml",
            &doc("  userAssignedIdentities:\n  - /subscriptions/s1/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm2\n"),
        )
        .unwrap();
        let e = objs[0].to_desired().unwrap_err().to_string();
        assert!(
            e.starts_with("f.yaml#1: team-a/web: spec.userAssignedIdentities[0]: "),
            "{e}"
        );
    }

    #[test]
    fn live_bodies() {
        let one = parse_live("l.json", &format!(r#"{{"id":"{VM}"}}"#)).unwrap();
        assert_eq!(one.len(), 1);
        let map = parse_live(
            "l.json",
            &format!(r#"{{"{VM}": {{"identity": {{"type":"None"}}}}}}"#),
        )
        .unwrap();
        assert_eq!(map.len(), 1);
        let e = parse_live("l.json", r#"{"identity":{"type":"None"}}"#)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("l.json: id: is missing"), "{e}");
    }
}

/// What `--policy` files hold: `VirtualMachineIdentityPolicy` documents, and optionally
/// `Namespace` documents whose labels the policies' selectors are matched against.
#[derive(Debug, Clone, Default)]
pub struct PolicySet {
    pub policies: Vec<vmidentity_planner::policy::Policy>,
    pub namespace_labels: BTreeMap<String, BTreeMap<String, String>>,
}

/// Reads `--policy` files (multi-document YAML, `kind: List` too).
pub fn load_policies(paths: &[PathBuf]) -> Result<PolicySet, InputError> {
    let mut out = PolicySet::default();
    for file in expand_paths(paths)? {
        let text = read(&file)?;
        parse_policies_into(&file.display().to_string(), &text, &mut out)?;
    }
    Ok(out)
}

/// Parses one `--policy` file's text (multi-document YAML, `kind: List` too).
pub fn parse_policies(source: &str, text: &str) -> Result<PolicySet, InputError> {
    let mut out = PolicySet::default();
    parse_policies_into(source, text, &mut out)?;
    Ok(out)
}

fn parse_policies_into(source: &str, text: &str, out: &mut PolicySet) -> Result<(), InputError> {
    use serde::Deserialize;
    for (i, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let source_name = format!("{source}#{}", i + 1);
        let value = Value::deserialize(doc).map_err(|e| InputError::Yaml {
            source_name: source_name.clone(),
            message: e.to_string(),
        })?;
        let items = match value {
            Value::Null => continue,
            Value::Object(ref m) if m.get("kind").and_then(Value::as_str) == Some("List") => m
                .get("items")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default(),
            v => vec![v],
        };
        for item in items {
            add_policy_doc(&source_name, item, out)?;
        }
    }
    Ok(())
}

fn add_policy_doc(source_name: &str, value: Value, out: &mut PolicySet) -> Result<(), InputError> {
    let name = value
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let err = |field: &str, message: String| InputError::Object {
        source_name: source_name.to_string(),
        object: if name.is_empty() {
            "(unnamed)".into()
        } else {
            name.clone()
        },
        field: field.to_string(),
        message,
    };
    if name.is_empty() {
        return Err(err("metadata.name", "is missing".into()));
    }
    match value.get("kind").and_then(Value::as_str) {
        Some("Namespace") => {
            let labels = value
                .pointer("/metadata/labels")
                .cloned()
                .map(serde_json::from_value::<BTreeMap<String, String>>)
                .transpose()
                .map_err(|e| err("metadata.labels", e.to_string()))?
                .unwrap_or_default();
            out.namespace_labels.insert(name, labels);
            Ok(())
        }
        Some("VirtualMachineIdentityPolicy") => {
            let api = value.get("apiVersion").and_then(Value::as_str);
            if api != Some(API_VERSION) {
                return Err(err(
                    "apiVersion",
                    format!("is {api:?}, expected \"{API_VERSION}\""),
                ));
            }
            let parsed: crate::crd::VirtualMachineIdentityPolicy =
                serde_path_to_error::deserialize(value).map_err(|e| {
                    let path = e.path().to_string();
                    err(&path, e.into_inner().to_string())
                })?;
            if let Some(p) = vmidentity_planner::policy::validate(&parsed.spec.policy)
                .into_iter()
                .next()
            {
                return Err(err("spec", p));
            }
            out.policies.push(parsed.to_policy());
            Ok(())
        }
        kind => Err(err(
            "kind",
            format!("is {kind:?}, expected \"VirtualMachineIdentityPolicy\" or \"Namespace\""),
        )),
    }
}
