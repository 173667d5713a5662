//! `crds/` is generated from the types and valid: no drift, structural schemas, and the
//! Kubernetes OpenAPI schema for CustomResourceDefinition (via `kubernetes-validate`).

use std::process::Command;

use causeway_tests::workspace_root;
use serde_json::Value;

#[test]
fn checked_in_crds_match_the_types() {
    let dir = workspace_root().join("crds");
    let rendered = causeway_operator::crdgen::render();
    let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
        .expect("crds/ exists")
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    on_disk.sort();
    let mut names: Vec<String> = rendered.iter().map(|(n, _)| n.clone()).collect();
    names.sort();
    assert_eq!(on_disk, names, "crds/ has other files than the generated ones");
    for (name, yaml) in rendered {
        let disk = std::fs::read_to_string(dir.join(&name)).unwrap();
        assert!(
            disk == yaml,
            "crds/{name} drifted from the types: run `cargo run -p causeway-cli -- crdgen` and commit"
        );
    }
}

/// The rules of a structural schema (Kubernetes "Specifying a structural schema").
fn structural(path: &str, s: &Value, problems: &mut Vec<String>) {
    let Some(m) = s.as_object() else { return };
    let escape = m.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true))
        || m.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
    if !escape && m.get("type").and_then(Value::as_str).is_none_or(str::is_empty) {
        problems.push(format!("{path}: no type"));
    }
    for bad in ["$ref", "definitions", "$defs", "$schema"] {
        if m.contains_key(bad) {
            problems.push(format!("{path}: has {bad}"));
        }
    }
    if m.contains_key("properties") && m.contains_key("additionalProperties") {
        problems.push(format!("{path}: properties and additionalProperties together"));
    }
    for j in ["anyOf", "oneOf", "allOf"] {
        for (i, sub) in m.get(j).and_then(Value::as_array).into_iter().flatten().enumerate() {
            let int_or_string = m.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true));
            for k in ["description", "default", "nullable", "additionalProperties", "properties"] {
                if sub.get(k).is_some() {
                    problems.push(format!("{path}.{j}[{i}]: {k} inside a junctor"));
                }
            }
            if sub.get("type").is_some() && !int_or_string {
                problems.push(format!("{path}.{j}[{i}]: type inside a junctor"));
            }
        }
    }
    if let Some(props) = m.get("properties").and_then(Value::as_object) {
        for (k, v) in props {
            structural(&format!("{path}.{k}"), v, problems);
        }
    }
    if let Some(items) = m.get("items") {
        if items.is_array() {
            problems.push(format!("{path}: items is a list"));
        }
        structural(&format!("{path}[]"), items, problems);
    }
    if let Some(ap) = m.get("additionalProperties").filter(|v| v.is_object()) {
        structural(&format!("{path}{{}}"), ap, problems);
    }
}

#[test]
fn crd_schemas_are_structural_and_documented() {
    for (name, yaml) in causeway_operator::crdgen::render() {
        let crd: Value = serde_yaml::from_str(&yaml).unwrap();
        let v = &crd["spec"]["versions"][0];
        let schema = &v["schema"]["openAPIV3Schema"];
        let mut problems = Vec::new();
        structural("", schema, &mut problems);
        assert!(problems.is_empty(), "{name} is not structural: {problems:#?}");
        // kubectl explain shows descriptions: every spec field has one.
        let mut undocumented = Vec::new();
        fn docs(path: &str, s: &Value, out: &mut Vec<String>) {
            if let Some(props) = s.get("properties").and_then(Value::as_object) {
                for (k, v) in props {
                    if v.get("description").and_then(Value::as_str).is_none_or(str::is_empty) {
                        out.push(format!("{path}.{k}"));
                    }
                    docs(&format!("{path}.{k}"), v, out);
                }
            }
        }
        docs("spec", &schema["properties"]["spec"], &mut undocumented);
        assert!(undocumented.is_empty(), "{name}: fields without description: {undocumented:?}");
        // DESIGN: category causeway, short names, Ready + target + Age printer columns.
        assert_eq!(crd["spec"]["names"]["categories"][0], "causeway", "{name}");
        assert!(crd["spec"]["names"]["shortNames"][0].as_str().unwrap().starts_with("cw"), "{name}");
        let cols: Vec<&str> =
            v["additionalPrinterColumns"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
        assert_eq!(cols.first(), Some(&"Ready"), "{name}: {cols:?}");
        assert_eq!(cols.last(), Some(&"Age"), "{name}: {cols:?}");
        assert!(v["subresources"]["status"].is_object(), "{name}: status subresource");
    }
}

#[test]
fn crds_pass_kubernetes_validate() {
    let tool = workspace_root().join(".tools/bin/kubernetes-validate");
    assert!(
        tool.exists(),
        "kubernetes-validate is not installed at {}: run scripts/setup.sh --test (this test never passes without it)",
        tool.display()
    );
    let files: Vec<_> =
        causeway_operator::crdgen::render().into_iter().map(|(n, _)| workspace_root().join("crds").join(n)).collect();
    let out =
        Command::new(&tool).args(["--strict", "-k", "1.33.0"]).args(&files).output().expect("run kubernetes-validate");
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "kubernetes-validate failed:\n{text}");
    assert_eq!(text.matches("passed").count(), files.len(), "{text}");
}

/// Every property of the schema, with its path.
fn properties<'a>(path: String, s: &'a Value, out: &mut Vec<(String, &'a Value)>) {
    if let Some(props) = s.get("properties").and_then(Value::as_object) {
        for (k, v) in props {
            let p = format!("{path}.{k}");
            out.push((p.clone(), v));
            properties(p, v, out);
        }
    }
    if let Some(items) = s.get("items") {
        properties(format!("{path}[]"), items, out);
    }
    if let Some(add) = s.get("additionalProperties").filter(|a| a.is_object()) {
        properties(format!("{path}{{}}"), add, out);
    }
}

#[test]
fn every_field_of_every_crd_has_a_description_for_kubectl_explain() {
    let mut missing = Vec::new();
    let mut counted = 0;
    for (name, yaml) in causeway_operator::crdgen::render() {
        let crd: Value = serde_yaml::from_str(&yaml).unwrap();
        for version in crd["spec"]["versions"].as_array().unwrap() {
            let schema = &version["schema"]["openAPIV3Schema"];
            let mut props = Vec::new();
            properties(String::new(), schema, &mut props);
            for (path, v) in props {
                // apiVersion, kind and metadata are described by Kubernetes itself.
                if matches!(path.as_str(), ".apiVersion" | ".kind" | ".metadata") {
                    continue;
                }
                counted += 1;
                if v.get("description").and_then(Value::as_str).is_none_or(|d| d.trim().is_empty()) {
                    missing.push(format!("{name}: {path}"));
                }
            }
        }
    }
    assert!(counted > 60, "the walk found only {counted} fields");
    assert!(
        missing.is_empty(),
        "fields without a description (kubectl explain shows nothing):\n{}",
        missing.join("\n")
    );
}

#[test]
fn printer_columns_show_readiness_reason_target_figures_and_age() {
    for (name, yaml) in causeway_operator::crdgen::render() {
        let crd: Value = serde_yaml::from_str(&yaml).unwrap();
        let cols: Vec<String> = crd["spec"]["versions"][0]["additionalPrinterColumns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap().to_owned())
            .collect();
        for want in ["Ready", "Reason", "Age"] {
            assert!(cols.iter().any(|c| c == want), "{name} lacks a {want} column: {cols:?}");
        }
        let figure = ["Events", "Pending"].iter().any(|f| cols.iter().any(|c| c == f));
        let target = ["Stream", "Inbox", "Consumer"].iter().any(|f| cols.iter().any(|c| c == f));
        assert!(figure && target, "{name}: {cols:?}");
    }
}
