//! Layer application on its own (no registry): whiteout corner cases and replacements.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use tar::EntryType;
use vmlet_agent::images::unpack::{Escape, UnpackError, Unpacker};
use vmlet_test_support::LayerBuilder;

fn apply(root: &Path, layer: LayerBuilder) -> Result<(), UnpackError> {
    Unpacker::new(root, Default::default()).apply(&layer.finish()[..])
}

#[test]
fn opaque_keeps_what_the_same_layer_wrote_below_it() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    apply(
        r,
        LayerBuilder::new()
            .dir("data", 0o755)
            .file("data/old", b"o", 0o644),
    )
    .unwrap();
    apply(
        r,
        LayerBuilder::new()
            .file("data/sub/new", b"n", 0o644)
            .opaque("data")
            .file("data/after", b"a", 0o644),
    )
    .unwrap();
    assert!(!r.join("data/old").exists());
    assert_eq!(fs::read(r.join("data/sub/new")).unwrap(), b"n");
    assert_eq!(fs::read(r.join("data/after")).unwrap(), b"a");
    assert!(!r.join("data/.wh..wh..opq").exists());
}

#[test]
fn whiteout_of_a_missing_directory_creates_nothing() {
    let root = tempfile::tempdir().unwrap();
    apply(root.path(), LayerBuilder::new().whiteout("no/such/file")).unwrap();
    assert!(!root.path().join("no").exists());
}

#[test]
fn replacements_never_write_through_symlinks() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    let outside = tempfile::tempdir().unwrap();
    let target = outside.path().join("victim");
    apply(
        r,
        LayerBuilder::new()
            .symlink("x", target.to_str().unwrap())
            .file("f", b"file", 0o644)
            .dir("d", 0o755)
            .file("d/inner", b"i", 0o644),
    )
    .unwrap();
    apply(
        r,
        LayerBuilder::new()
            .file("x", b"replaced", 0o644)
            .dir("f", 0o700)
            .file("d", b"now a file", 0o600),
    )
    .unwrap();
    assert!(!target.exists(), "wrote through a symlink");
    assert_eq!(fs::read(r.join("x")).unwrap(), b"replaced");
    assert!(r.join("f").is_dir());
    assert_eq!(fs::read(r.join("d")).unwrap(), b"now a file");
}

#[test]
fn hard_link_to_a_symlink_links_the_symlink() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    apply(
        r,
        LayerBuilder::new()
            .symlink("l", "/etc/passwd")
            .hardlink("l2", "l"),
    )
    .unwrap();
    let a = fs::symlink_metadata(r.join("l")).unwrap();
    let b = fs::symlink_metadata(r.join("l2")).unwrap();
    assert!(b.file_type().is_symlink());
    assert_eq!(a.ino(), b.ino());
}

#[test]
fn escapes_are_typed() {
    let cases: Vec<(LayerBuilder, Escape)> = vec![
        (
            LayerBuilder::new().raw(EntryType::Regular, b"./../x", b"", b"", 0o644),
            Escape::ParentDir,
        ),
        (
            LayerBuilder::new().raw(EntryType::Symlink, b"/abs-link", b"x", b"", 0o777),
            Escape::AbsolutePath,
        ),
        (
            LayerBuilder::new().symlink("up", "..").raw(
                EntryType::Regular,
                b"up/x",
                b"",
                b"",
                0o644,
            ),
            Escape::SymlinkTraversal,
        ),
        (
            LayerBuilder::new().dir("a", 0o755).symlink("a/b", "/").raw(
                EntryType::Char,
                b"a/b/dev",
                b"",
                b"",
                0o600,
            ),
            Escape::SymlinkTraversal,
        ),
        (
            LayerBuilder::new().raw(EntryType::Link, b"x", b"a/../../y", b"", 0o644),
            Escape::HardLinkTarget,
        ),
    ];
    for (i, (layer, want)) in cases.into_iter().enumerate() {
        let root = tempfile::tempdir().unwrap();
        match apply(root.path(), layer) {
            Err(UnpackError::PathEscape { kind, .. }) => assert_eq!(kind, want, "case {i}"),
            other => panic!("case {i}: {other:?}"),
        }
    }
}
