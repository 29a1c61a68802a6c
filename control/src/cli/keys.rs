//! `outpost keys`: generate and show keys.

use anyhow::{Context as _, Result, bail};
use outpost_shared::keys::{KdfCost, SecretKey};

use super::KeysCommand;
use crate::files::{load_public_key, passphrase, write_atomic};

pub fn run(command: KeysCommand) -> Result<()> {
    match command {
        KeysCommand::Generate { name, role, out, force } => {
            if name.is_empty()
                || !name.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
            {
                bail!("key name {name:?} must be letters, digits, '.', '_' or '-'");
            }
            std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
            let private_path = out.join(format!("{name}.key.json"));
            let public_path = out.join(format!("{name}.pub.json"));
            for path in [&private_path, &public_path] {
                if path.exists() && !force {
                    bail!("{} exists; pass --force to overwrite", path.display());
                }
            }
            let pass = passphrase(&format!("Passphrase for new key {name}: "), true)?;
            let key = SecretKey::generate(&name, role.into())?;
            let sealed = key.encrypt(&pass, KdfCost::DEFAULT)?;
            write_atomic(&private_path, &serde_json::to_vec_pretty(&sealed)?, true)?;
            write_atomic(&public_path, &serde_json::to_vec_pretty(&key.public)?, false)?;
            println!("{} {} key {}", key.public.role, name, key.keyid());
            println!("  private (encrypted): {}", private_path.display());
            println!("  public:              {}", public_path.display());
            Ok(())
        }
        KeysCommand::Show { key } => {
            let public = load_public_key(&key)?;
            println!("{}\t{}\t{}", public.keyid, public.role, public.name);
            Ok(())
        }
    }
}
