//! The loader never panics: arbitrary bytes, YAML-ish text, and structurally valid YAML built
//! from the real key names with random values. Every error it returns is located.
use std::path::Path;

use hako_policies::{load_slice, load_str, LoadError};
use proptest::prelude::*;
use serde_yaml::{Mapping, Value};

const KEYS: &[&str] = &[
    "listen",
    "admin",
    "allow_public_admin",
    "state_dir",
    "apps",
    "governor",
    "name",
    "hosts",
    "path_prefix",
    "rootfs",
    "command",
    "env",
    "workdir",
    "port",
    "network",
    "user",
    "uid",
    "gid",
    "limits",
    "cpu",
    "memory",
    "pids",
    "lifetime",
    "idle_timeout",
    "max_lifetime",
    "grace",
    "stop_timeout",
    "prestart_successor",
    "hibernate_after",
    "scaling",
    "max_instances",
    "concurrency",
    "queue",
    "queue_timeout",
    "readiness",
    "probe",
    "path",
    "timeout",
    "spike",
    "cpu_above",
    "for",
    "tighten_cpu",
    "tighten_memory_high",
    "capabilities",
    "seccomp",
    "enabled",
    "interval",
    "cpu_pressure",
    "memory_pressure",
    "relax_after",
    "relax_step",
    "floor_cpu",
    "floor_memory",
    "max_live_instances",
    "max_memory",
    "bogus",
];

const WORDS: &[&str] = &[
    "host",
    "isolated",
    "http",
    "connect",
    "listen_fds",
    "default",
    "unconfined",
    "30s",
    "250ms",
    "-1s",
    "1h30m",
    "64Mi",
    "1Gi",
    "-1Gi",
    "0",
    "127.0.0.1:80",
    "0.0.0.0:1",
    "[::1]:9",
    "/",
    "/bin/sh",
    "..",
    "a b",
    "web.test",
    "WEB.test:80",
    "CAP_KILL",
    "CAP_NOPE",
    "",
    "~",
    "é",
    "1e400",
    ".nan",
    "-.inf",
];

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| Value::Number(n.into())),
        any::<f64>().prop_map(|f| Value::Number(f.into())),
        prop::sample::select(WORDS).prop_map(|w| Value::String(w.to_owned())),
        "[ -~]{0,12}".prop_map(Value::String),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    scalar().prop_recursive(5, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Sequence),
            prop::collection::vec((prop::sample::select(KEYS), inner), 0..8).prop_map(|kvs| {
                let mut m = Mapping::new();
                for (k, v) in kvs {
                    m.insert(Value::String(k.to_owned()), v);
                }
                Value::Mapping(m)
            }),
        ]
    })
}

fn check(result: Result<hako_policies::Config, LoadError>, text_lines: usize) {
    if let Err(LoadError::Invalid(diags)) = result {
        assert!(!diags.is_empty());
        for d in diags {
            assert!(d.line >= 1 && d.column >= 1, "{d}");
            assert!(d.line <= text_lines + 1, "{d} beyond {text_lines} lines");
            assert!(!d.message.is_empty());
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let lines = bytes.iter().filter(|b| **b == b'\n').count() + 1;
        check(load_slice(&bytes, Path::new("fuzz.yaml")), lines);
    }

    #[test]
    fn yaml_like_text_never_panics(text in "[a-z_:\\-\\[\\]{}, \n\t\"'&*!|>#%@0-9.~?]{0,300}") {
        check(load_str(&text, Path::new("fuzz.yaml")), text.lines().count() + 1);
    }

    #[test]
    fn structured_yaml_never_panics(v in value(), apps in prop::collection::vec(value(), 0..4)) {
        // Top level: a random mapping with a random `apps` list spliced in.
        let mut top = match v {
            Value::Mapping(m) => m,
            other => {
                let mut m = Mapping::new();
                m.insert(Value::String("governor".into()), other);
                m
            }
        };
        top.insert(Value::String("apps".into()), Value::Sequence(apps));
        let text = serde_yaml::to_string(&Value::Mapping(top)).unwrap();
        check(load_str(&text, Path::new("fuzz.yaml")), text.lines().count() + 1);
    }

    #[test]
    fn mutated_valid_config_never_panics(pos in 0usize..2000, cut in 0usize..40, insert in "[ -~\n]{0,8}") {
        let base = include_str!("../../examples/hako.yaml");
        let pos = floor_char_boundary(base, pos.min(base.len()));
        let end = floor_char_boundary(base, (pos + cut).min(base.len()));
        let text = format!("{}{}{}", &base[..pos], insert, &base[end..]);
        check(load_str(&text, Path::new("fuzz.yaml")), text.lines().count() + 1);
    }
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}
