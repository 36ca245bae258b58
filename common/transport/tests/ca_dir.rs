//! Plugged-in CA directories made by openssl (RSA PKCS#8, RSA PKCS#1, ECDSA): the mesh CA loads
//! them, issues leaves, and two peers complete mTLS with them.

use std::path::Path;
use std::process::Command;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use transport::identity::{CaDir, Identity, IdentityCert};
use transport::tls;

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl is installed");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn make_ca(dir: &Path, key_args: &[&str], pkcs1: bool) {
    openssl(
        dir,
        &[&["genpkey"], key_args, &["-out", "ca-key.pem"]].concat(),
    );
    if pkcs1 {
        openssl(
            dir,
            &[
                "rsa",
                "-in",
                "ca-key.pem",
                "-traditional",
                "-out",
                "ca-key.pem",
            ],
        );
        let k = std::fs::read_to_string(dir.join("ca-key.pem")).unwrap();
        assert!(k.contains("BEGIN RSA PRIVATE KEY"), "PKCS#1 key");
    }
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-new",
            "-key",
            "ca-key.pem",
            "-days",
            "30",
            "-subj",
            "/O=cluster.local/CN=plugged root",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-out",
            "ca-cert.pem",
        ],
    );
    std::fs::copy(dir.join("ca-cert.pem"), dir.join("root-cert.pem")).unwrap();
    std::fs::copy(dir.join("ca-cert.pem"), dir.join("cert-chain.pem")).unwrap();
}

async fn mtls_works(ca: &CaDir) {
    let a = Identity::new("cluster.local", "ns", "a");
    let b = Identity::new("cluster.local", "ns", "b");
    let ca_a = IdentityCert::from_issued(&ca.issue(&a, Duration::from_secs(600)).unwrap()).unwrap();
    let ca_b = IdentityCert::from_issued(&ca.issue(&b, Duration::from_secs(600)).unwrap()).unwrap();
    let server = tls::server_config(ca_b, ca.roots(), "cluster.local").unwrap();
    let client = tls::client_config(ca_a, ca.roots(), vec![b.clone()]).unwrap();
    let (c, s) = tokio::io::duplex(1 << 16);
    let srv = tokio::spawn(async move {
        let mut t = tokio_rustls::TlsAcceptor::from(server)
            .accept(s)
            .await
            .unwrap();
        let peer = tls::peer_identity(t.get_ref().1);
        let mut buf = [0u8; 2];
        t.read_exact(&mut buf).await.unwrap();
        t.write_all(b"ok").await.unwrap();
        t.flush().await.unwrap();
        peer
    });
    let mut t = tokio_rustls::TlsConnector::from(client)
        .connect(tls::dummy_server_name(), c)
        .await
        .unwrap();
    assert_eq!(t.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    assert_eq!(
        t.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    t.write_all(b"hi").await.unwrap();
    let mut buf = [0u8; 2];
    t.read_exact(&mut buf).await.unwrap();
    assert_eq!(srv.await.unwrap(), Some(a));
}

#[tokio::test]
async fn rsa_pkcs8_root() {
    let d = tempfile::tempdir().unwrap();
    make_ca(
        d.path(),
        &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
        false,
    );
    mtls_works(&CaDir::load_or_generate(d.path(), "cluster.local").unwrap()).await;
}

#[tokio::test]
async fn rsa_pkcs1_root() {
    let d = tempfile::tempdir().unwrap();
    make_ca(
        d.path(),
        &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
        true,
    );
    mtls_works(&CaDir::load_or_generate(d.path(), "cluster.local").unwrap()).await;
}

#[tokio::test]
async fn ecdsa_root_and_generated_root() {
    let d = tempfile::tempdir().unwrap();
    make_ca(
        d.path(),
        &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
        false,
    );
    mtls_works(&CaDir::load_or_generate(d.path(), "cluster.local").unwrap()).await;
    let empty = tempfile::tempdir().unwrap();
    let gen = CaDir::load_or_generate(&empty.path().join("ca"), "cluster.local").unwrap();
    mtls_works(&gen).await;
}
