//! Phase timings of a large load (development aid): `cargo run --profile bench -p common --example loadtime`.

use std::time::Instant;

use serde::Deserialize;

fn main() {
    let dir = tempfile::tempdir().unwrap();
    common::synth::write_config(dir.path(), common::synth::Scale::LARGE).unwrap();
    let text = std::fs::read_to_string(dir.path().join("ns-0.yaml")).unwrap();
    let docs: Vec<&str> = text.split("\n---\n").collect();
    let t = Instant::now();
    let values: Vec<serde_yaml::Value> = docs
        .iter()
        .map(|d| serde_yaml::from_str(d).unwrap())
        .collect();
    println!(
        "{} docs ({} bytes): to Value {:?}",
        docs.len(),
        text.len(),
        t.elapsed()
    );
    let t = Instant::now();
    let mut n = 0;
    for v in values {
        if v["kind"] == "Pod" {
            let _p: common::k8s::Pod = serde_yaml::from_value(v).unwrap();
            n += 1;
        }
    }
    println!("Value->Pod x{n}: {:?}", t.elapsed());
    let t = Instant::now();
    for d in &docs {
        if d.contains("kind: Pod") {
            let _p: common::k8s::Pod =
                common::k8s::Pod::deserialize(serde_yaml::Deserializer::from_str(d)).unwrap();
        }
    }
    println!("text->Pod direct: {:?}", t.elapsed());
    let t = Instant::now();
    let n = serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde_yaml::Value::deserialize(d).unwrap())
        .count();
    println!("stream to Value x{n}: {:?}", t.elapsed());
    let t = Instant::now();
    let mut n = 0;
    for (d, raw) in serde_yaml::Deserializer::from_str(&text).zip(&docs) {
        if raw.contains("kind: Pod") {
            let _p = common::k8s::Pod::deserialize(d).unwrap();
            n += 1;
        } else {
            let _ = serde::de::IgnoredAny::deserialize(d);
        }
    }
    println!("stream to Pod x{n}: {:?}", t.elapsed());
    let t = Instant::now();
    let l = common::load::load_str(std::path::Path::new("x"), &text);
    println!(
        "load_str: {:?} ({} resources)",
        t.elapsed(),
        l.resources.len()
    );
    let t = Instant::now();
    let l = common::load::load_dir(dir.path());
    println!(
        "load_dir: {:?} ({} resources)",
        t.elapsed(),
        l.resources.len()
    );
    let t = Instant::now();
    let c = common::synth::cpu_time();
    let _m = common::Model::build(l.resources);
    println!(
        "build: {:?} wall, {:?} cpu",
        t.elapsed(),
        common::synth::cpu_time() - c
    );
    let stats = common::synth::measure(dir.path());
    println!("{stats:?}");
}
