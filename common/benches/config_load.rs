//! Loading a large configuration: 5,000 services, 50,000 pods, 5,000 VirtualServices (plus a
//! DestinationRule per service) as YAML in a temp directory. Prints one cold load (parse +
//! validate + build) with memory before/after and peak, the reload after one file changes, then
//! lets criterion time both. Run: `cargo bench -p common --bench config_load`.

use std::time::Duration;

use common::load::Loader;
use common::synth::{measure, write_config, Scale};
use common::BuildOptions;
use criterion::{criterion_group, criterion_main, Criterion};

fn config_load(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    write_config(dir.path(), Scale::LARGE).expect("write config");
    let stats = measure(dir.path());
    println!(
        "config_load: {} resources ({} workloads, {} services): cold load {:.0} ms wall / {:.0} ms CPU (build {:.0} ms), \
         one-file reload {:.0} ms; VmRSS {} MB -> {} MB, VmHWM {} MB",
        stats.resources,
        stats.workloads,
        stats.services,
        stats.full_load.as_secs_f64() * 1e3,
        stats.full_load_cpu.as_secs_f64() * 1e3,
        stats.build.as_secs_f64() * 1e3,
        stats.one_file_reload.as_secs_f64() * 1e3,
        stats.rss_before_kb / 1024,
        stats.rss_after_kb / 1024,
        stats.peak_rss_kb / 1024,
    );

    let options = BuildOptions::default();
    let mut group = c.benchmark_group("config_load");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(20));
    group.bench_function("cold_load_validate_build", |b| {
        b.iter(|| {
            Loader::new()
                .load_dir(dir.path())
                .into_model(&options)
                .unwrap()
        })
    });
    let mut loader = Loader::new();
    loader.load_dir(dir.path());
    let file = dir.path().join("ns-1.yaml");
    let original = std::fs::read_to_string(&file).unwrap();
    let mut flip = false;
    group.bench_function("one_file_change_reload", |b| {
        b.iter(|| {
            // Alternate the file's content so every iteration sees a real change.
            flip = !flip;
            let text = if flip {
                format!("{original}# changed\n")
            } else {
                original.clone()
            };
            std::fs::write(&file, text).unwrap();
            loader.load_dir(dir.path()).into_model(&options).unwrap()
        })
    });
    group.finish();
}

criterion_group!(benches, config_load);
criterion_main!(benches);
