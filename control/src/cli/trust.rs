//! `outpost trust`: create, show, change and check trust roots.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use outpost_shared::Verified;
use outpost_shared::dsse::Envelope;
use outpost_shared::keys::PublicKey;
use outpost_shared::trust::{self, KeyGroup, TrustRoot};
use outpost_shared::verify::Role;
use time::Duration;

use super::{SuccessorArgs, TrustCommand, now, rfc3339};
use crate::files::{load_public_key, load_secret_key, read_limited, write_atomic};

/// Reads and checks a trust root file (self-signed by a threshold of its root keys, unexpired).
pub fn load_trust(path: &Path) -> Result<Verified<TrustRoot>> {
    let bytes = read_limited(path, outpost_shared::dsse::MAX_ENVELOPE_BYTES as u64, "trust root")?;
    trust::verify_initial(&bytes, now()).with_context(|| format!("trust root {}", path.display()))
}

fn load_keys(paths: &[PathBuf], role: Role) -> Result<Vec<PublicKey>> {
    paths
        .iter()
        .map(|path| {
            let key = load_public_key(path)?;
            if key.role != role {
                bail!(
                    "{} is {} key, expected {} key",
                    path.display(),
                    key.role.with_article(),
                    role.with_article()
                );
            }
            Ok(key)
        })
        .collect()
}

fn sign_root(root: &TrustRoot, signers: &[PathBuf]) -> Result<Vec<u8>> {
    root.validate()?;
    let mut envelope = root.to_envelope();
    for path in signers {
        let key = load_secret_key(path)?;
        if key.role() != Role::Root {
            bail!(
                "{} is {} key; trust roots are signed by root keys",
                path.display(),
                key.role().with_article()
            );
        }
        envelope.sign(&key)?;
    }
    Ok(envelope.to_vec())
}

fn successor(
    current: &Verified<TrustRoot>,
    change: impl FnOnce(&mut TrustRoot) -> Result<()>,
    args: &SuccessorArgs,
) -> Result<()> {
    let mut next: TrustRoot = (**current).clone();
    next.version = current.version + 1;
    if let Some(days) = args.expires_in {
        next.expires = now() + Duration::days(i64::from(days));
    }
    change(&mut next)?;
    let bytes = sign_root(&next, &args.sign)?;
    let verified = trust::verify_rotation(current, &bytes, now())
        .context("the new root would not be accepted by devices holding the current one")?;
    write_atomic(&args.out, &bytes, false)?;
    println!("wrote trust root version {} to {}", verified.version, args.out.display());
    Ok(())
}

fn print_root(root: &TrustRoot, envelope: &Envelope) {
    println!("trust root version {} (expires {})", root.version, rfc3339(root.expires));
    for (title, group) in
        [("root", &root.root), ("approver", &root.approvers), ("publisher", &root.publishers)]
    {
        println!("  {title} keys: {} of {} must sign", group.threshold, group.keys.len());
        for key in &group.keys {
            println!("    {}  {}", key.keyid, key.name);
        }
    }
    println!(
        "  signed by: {}",
        envelope.signatures.iter().map(|s| s.keyid.as_str()).collect::<Vec<_>>().join(", ")
    );
}

pub fn run(command: TrustCommand) -> Result<()> {
    match command {
        TrustCommand::Init {
            roots,
            root_threshold,
            approvers,
            approvals,
            publishers,
            publisher_threshold,
            expires_in,
            sign,
            out,
        } => {
            let root = TrustRoot {
                v: 1,
                version: 1,
                expires: now() + Duration::days(i64::from(expires_in)),
                root: KeyGroup { threshold: root_threshold, keys: load_keys(&roots, Role::Root)? },
                approvers: KeyGroup {
                    threshold: approvals,
                    keys: load_keys(&approvers, Role::Approver)?,
                },
                publishers: KeyGroup {
                    threshold: publisher_threshold,
                    keys: load_keys(&publishers, Role::Publisher)?,
                },
            };
            let bytes = sign_root(&root, &sign)?;
            trust::verify_initial(&bytes, now()).context("the new trust root does not verify")?;
            write_atomic(&out, &bytes, false)?;
            println!(
                "wrote trust root version 1 to {}: {root_threshold}-of-{} root, {approvals}-of-{} approvers, {} publisher(s)",
                out.display(),
                roots.len(),
                approvers.len(),
                publishers.len()
            );
            Ok(())
        }
        TrustCommand::Show { trust, json } => {
            let bytes = read_limited(
                &trust,
                outpost_shared::dsse::MAX_ENVELOPE_BYTES as u64,
                "trust root",
            )?;
            let envelope = Envelope::from_slice(&bytes)?;
            let root = trust::parse_unverified(&envelope)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&root)?);
            } else {
                print_root(&root, &envelope);
            }
            let status = trust::verify_initial(&bytes, now());
            match status {
                Ok(_) => {
                    println!("  status: valid (signed by {} of its root keys)", root.root.threshold)
                }
                Err(e) => println!("  status: NOT VALID: {e}"),
            }
            Ok(())
        }
        TrustCommand::AddKey { trust, key, successor: args } => {
            let current = load_trust(&trust)?;
            let key = load_public_key(&key)?;
            successor(
                &current,
                |next| {
                    let group = match key.role {
                        Role::Root => &mut next.root,
                        Role::Approver => &mut next.approvers,
                        Role::Publisher => &mut next.publishers,
                    };
                    group.keys.push(key);
                    Ok(())
                },
                &args,
            )
        }
        TrustCommand::RemoveKey { trust, keyid, successor: args } => {
            let current = load_trust(&trust)?;
            successor(&current, |next| remove(next, &keyid), &args)
        }
        TrustCommand::Rotate {
            trust,
            add,
            remove: removals,
            root_threshold,
            approvals,
            publisher_threshold,
            successor: args,
        } => {
            let current = load_trust(&trust)?;
            let added: Vec<PublicKey> =
                add.iter().map(|p| load_public_key(p)).collect::<Result<_>>()?;
            successor(
                &current,
                |next| {
                    for keyid in &removals {
                        remove(next, keyid)?;
                    }
                    for key in added {
                        match key.role {
                            Role::Root => next.root.keys.push(key),
                            Role::Approver => next.approvers.keys.push(key),
                            Role::Publisher => next.publishers.keys.push(key),
                        }
                    }
                    if let Some(t) = root_threshold {
                        next.root.threshold = t;
                    }
                    if let Some(t) = approvals {
                        next.approvers.threshold = t;
                    }
                    if let Some(t) = publisher_threshold {
                        next.publishers.threshold = t;
                    }
                    Ok(())
                },
                &args,
            )
        }
        TrustCommand::Verify { trust, new } => {
            let current = load_trust(&trust)?;
            let bytes =
                read_limited(&new, outpost_shared::dsse::MAX_ENVELOPE_BYTES as u64, "trust root")?;
            match trust::verify_rotation(&current, &bytes, now()) {
                Ok(next) => {
                    println!(
                        "accepted: trust root version {} succeeds version {}",
                        next.version, current.version
                    );
                    Ok(())
                }
                Err(e) => bail!("rejected: {e}"),
            }
        }
    }
}

fn remove(root: &mut TrustRoot, keyid: &str) -> Result<()> {
    let before = root.root.keys.len() + root.approvers.keys.len() + root.publishers.keys.len();
    for group in [&mut root.root, &mut root.approvers, &mut root.publishers] {
        group.keys.retain(|k| k.keyid != keyid);
    }
    let after = root.root.keys.len() + root.approvers.keys.len() + root.publishers.keys.len();
    if before == after {
        bail!("key {keyid} is not in the trust root");
    }
    Ok(())
}
