//! The command line's own documentation and conventions, no KVM needed: shell completions and
//! manual pages generated from the command definitions, and usage errors exiting 2 (1 for
//! `vessel run`, where 2 means the guest rebooted).

use std::process::{Command, Output};

const VESSEL: &str = env!("CARGO_BIN_EXE_vessel");

fn vessel(args: &[&str]) -> Output {
    Command::new(VESSEL).args(args).output().unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn completions_cover_the_verbs_and_their_flags_in_every_shell() {
    for shell in ["bash", "zsh", "fish"] {
        let out = vessel(&["completions", shell]);
        assert_eq!(out.status.code(), Some(0), "{shell}: {out:?}");
        let script = stdout(&out);
        for word in ["create", "sched", "memory", "weight", "completions"] {
            assert!(script.contains(word), "{shell}: no {word} in\n{script}");
        }
    }
    let bad = vessel(&["completions", "tcsh"]);
    assert_eq!(bad.status.code(), Some(2), "{bad:?}");
}

#[test]
fn the_manual_pages_name_every_verb() {
    let out = vessel(&["man"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let page = stdout(&out);
    assert!(
        page.starts_with(".ie") || page.contains(".TH vessel 1"),
        "{page}"
    );
    for verb in ["run", "daemon", "create", "list", "sched", "net", "man"] {
        assert!(page.contains(verb), "no {verb} in\n{page}");
    }
    let dir = std::env::temp_dir().join(format!("vessel-man-{}", std::process::id()));
    let out = vessel(&["man", "--dir", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    for page in [
        "vessel.1",
        "vessel-create.1",
        "vessel-net-rule-add.1",
        "vessel-sched.1",
    ] {
        let text =
            std::fs::read_to_string(dir.join(page)).unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(text.contains(".TH"), "{page}: {text}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn usage_errors_exit_2_except_under_run() {
    for args in [
        &["list", "--no-such-flag"][..],
        &["no-such-verb"],
        &["create", "--memory", "lots"],
        &["--socket", "/tmp/x.sock", "sched", "--weight"],
    ] {
        let out = vessel(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        assert!(!out.stderr.is_empty(), "{args:?}: no message");
    }
    let run = vessel(&["run", "--memory", "lots", "--kernel", "/nonexistent"]);
    assert_eq!(run.status.code(), Some(1), "{run:?}");
    let help = vessel(&["list", "--help"]);
    assert_eq!(help.status.code(), Some(0), "{help:?}");
}

/// `--socket` is in the help of the verbs that talk to the daemon, and only theirs (and
/// `daemon`'s, where it is the socket it serves); given to a verb that does not, it is refused
/// rather than ignored.
#[test]
fn only_the_verbs_that_use_the_socket_offer_it() {
    let help = |args: &[&str]| {
        let out = vessel(args);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {out:?}");
        stdout(&out)
    };
    for verb in [
        &["list", "--help"][..],
        &["create", "--help"],
        &["sched", "--help"],
        &["disk", "set", "--help"],
        &["net", "port", "set", "--help"],
        &["net", "rule", "add", "--help"],
        &["pause", "--help"],
    ] {
        assert!(help(verb).contains("--socket"), "{verb:?} lacks --socket");
    }
    for verb in [
        &["run", "--help"][..],
        &["image", "--help"],
        &["image", "create", "--help"],
        &["completions", "--help"],
        &["man", "--help"],
    ] {
        assert!(!help(verb).contains("--socket"), "{verb:?} offers --socket");
    }
    let out = vessel(&["image", "--socket", "/tmp/x.sock", "info", "/nonexistent"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("does not talk to the daemon"), "{err}");
    // The global form before the verb still works for the verbs that use it.
    let out = vessel(&["--socket", "/nonexistent/api.sock", "list"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/api.sock"), "{err}");
}
